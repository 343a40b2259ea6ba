//! Where buffers live and kernels run: the CPU, or a CUDA GPU.

use crate::{Error, Result};

/// A compute device. `Device::Cpu` always works; [`Device::cuda`] opens a GPU when the crate is
/// built with the `cuda` feature and a usable GPU and driver are present.
#[derive(Clone, Debug, Default)]
pub enum Device {
    /// The CPU backend (rayon), the default wherever no GPU is present.
    #[default]
    Cpu,
    /// A CUDA GPU (see [`CudaDevice`]).
    Cuda(CudaDevice),
}

/// A handle to an opened CUDA GPU (its context, stream and loaded kernels). Cheap to clone.
/// Without the `cuda` feature this type has no values.
#[derive(Clone)]
pub struct CudaDevice {
    #[cfg(feature = "cuda")]
    pub(crate) inner: std::sync::Arc<crate::cuda::CudaBackend>,
    #[cfg(not(feature = "cuda"))]
    never: std::convert::Infallible,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({})", self.ordinal())
    }
}

impl CudaDevice {
    /// The CUDA backend behind this handle (context, stream, loaded kernels), for calling the
    /// `crate::cuda` twins directly on `CudaView`s.
    #[cfg(feature = "cuda")]
    pub fn backend(&self) -> &std::sync::Arc<crate::cuda::CudaBackend> {
        &self.inner
    }

    /// The GPU's ordinal.
    pub fn ordinal(&self) -> usize {
        #[cfg(feature = "cuda")]
        {
            self.inner.ordinal()
        }
        #[cfg(not(feature = "cuda"))]
        match self.never {}
    }

    /// The GPU's name as the driver reports it.
    pub fn name(&self) -> String {
        #[cfg(feature = "cuda")]
        {
            self.inner.name()
        }
        #[cfg(not(feature = "cuda"))]
        match self.never {}
    }
}

impl Device {
    /// The CPU.
    pub fn cpu() -> Self {
        Device::Cpu
    }

    /// Opens CUDA GPU `ordinal`. Errors (never panics) when the crate was built without the
    /// `cuda` feature ([`Error::CudaNotCompiled`]), or when no driver or no such GPU is present
    /// ([`Error::CudaUnavailable`]).
    pub fn cuda(ordinal: usize) -> Result<Self> {
        #[cfg(feature = "cuda")]
        {
            Ok(Device::Cuda(CudaDevice {
                inner: crate::cuda::CudaBackend::open(ordinal)?,
            }))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            Err(Error::CudaNotCompiled)
        }
    }

    /// Parses `cpu`, `cuda` (GPU 0) or `cuda:N`, and opens the device.
    pub fn from_name(name: &str) -> Result<Self> {
        match name.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Device::cuda(0),
            s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Device::cuda(n),
                _ => Err(Error::invalid("device", s, "one of cpu, cuda, cuda:N")),
            },
        }
    }

    /// Whether this is a GPU.
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// Waits for all queued work on the device (a no-op on the CPU).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => d.inner.synchronize(),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(d) => match d.never {},
        }
    }

    /// A short description: `cpu (avx2+fma)` or `cpu (baseline)` (see [`crate::cpu::simd_path`]),
    /// or `cuda:N (NAME)`.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => format!("cpu ({})", crate::cpu::simd_path()),
            Device::Cuda(d) => format!("cuda:{} ({})", d.ordinal(), d.name()),
        }
    }

    pub(crate) fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Cuda(a), Device::Cuda(b)) => a.ordinal() == b.ordinal(),
            _ => false,
        }
    }
}
