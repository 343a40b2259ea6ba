//! Device-resident buffers.

use crate::device::{CudaDevice, Device};
use crate::{Element, Error, Result};

/// A typed, device-resident array. On the CPU it is a `Vec<T>`; on a GPU, device memory.
pub struct Buffer<T: Element> {
    pub(crate) storage: Storage<T>,
}

pub(crate) enum Storage<T: Element> {
    Cpu(Vec<T>),
    #[cfg(feature = "cuda")]
    Cuda(cudarc::driver::CudaSlice<T>, CudaDevice, usize),
    #[cfg(not(feature = "cuda"))]
    #[allow(dead_code)]
    Cuda(
        std::convert::Infallible,
        std::marker::PhantomData<(T, CudaDevice)>,
    ),
}

impl<T: Element> std::fmt::Debug for Buffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Buffer<{}>(len {}, {})",
            T::NAME,
            self.len(),
            self.device().describe()
        )
    }
}

impl<T: Element> Buffer<T> {
    /// A buffer of `len` zeros on `device`.
    pub fn zeros(device: &Device, len: usize) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Buffer {
                storage: Storage::Cpu(vec![T::default(); len]),
            }),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => Ok(Buffer {
                storage: Storage::Cuda(d.inner.alloc_zeros::<T>(len)?, d.clone(), len),
            }),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(Error::CudaNotCompiled),
        }
    }

    /// Copies `data` to `device`.
    pub fn from_slice(device: &Device, data: &[T]) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Buffer {
                storage: Storage::Cpu(data.to_vec()),
            }),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => Ok(Buffer {
                storage: Storage::Cuda(d.inner.htod(data)?, d.clone(), data.len()),
            }),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(Error::CudaNotCompiled),
        }
    }

    /// Wraps a host vector as a CPU buffer (no copy).
    pub fn from_vec(data: Vec<T>) -> Self {
        Buffer {
            storage: Storage::Cpu(data),
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Cpu(v) => v.len(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_, _, n) => *n,
            #[cfg(not(feature = "cuda"))]
            Storage::Cuda(n, _) => match *n {},
        }
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device the buffer lives on.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda(_, d, _) => Device::Cuda(d.clone()),
            #[cfg(not(feature = "cuda"))]
            Storage::Cuda(n, _) => match *n {},
        }
    }

    /// Copies the contents to a host vector (waits for the device).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v.clone()),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s, d, n) => d.inner.dtoh(&s.slice(0..*n)),
            #[cfg(not(feature = "cuda"))]
            Storage::Cuda(n, _) => match *n {},
        }
    }

    /// Overwrites the contents from a host slice of the same length.
    pub fn copy_from_slice(&mut self, data: &[T]) -> Result<()> {
        if data.len() != self.len() {
            return Err(Error::shape(
                "Buffer::copy_from_slice",
                format!(
                    "buffer has {} elements, slice has {}",
                    self.len(),
                    data.len()
                ),
            ));
        }
        match &mut self.storage {
            Storage::Cpu(v) => {
                v.copy_from_slice(data);
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda(s, d, n) => d.inner.htod_into(data, &mut s.slice_mut(0..*n)),
            #[cfg(not(feature = "cuda"))]
            Storage::Cuda(n, _) => match *n {},
        }
    }

    /// Sets every element to zero.
    pub fn fill_zero(&mut self) -> Result<()> {
        match &mut self.storage {
            Storage::Cpu(v) => {
                v.fill(T::default());
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda(s, d, n) => d.inner.memset_zero(&mut s.slice_mut(0..*n)),
            #[cfg(not(feature = "cuda"))]
            Storage::Cuda(n, _) => match *n {},
        }
    }

    /// The host slice of a CPU buffer; `None` on a GPU.
    pub fn as_slice(&self) -> Option<&[T]> {
        match &self.storage {
            Storage::Cpu(v) => Some(v),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The mutable host slice of a CPU buffer; `None` on a GPU.
    pub fn as_mut_slice(&mut self) -> Option<&mut [T]> {
        match &mut self.storage {
            Storage::Cpu(v) => Some(v),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// A view of a GPU buffer's memory (exactly `len()` elements); `None` on the CPU.
    #[cfg(feature = "cuda")]
    pub fn cuda_view(&self) -> Option<cudarc::driver::CudaView<'_, T>> {
        match &self.storage {
            Storage::Cuda(s, _, n) => Some(s.slice(0..*n)),
            _ => None,
        }
    }

    /// A mutable view of a GPU buffer's memory (exactly `len()` elements); `None` on the CPU.
    #[cfg(feature = "cuda")]
    pub fn cuda_view_mut(&mut self) -> Option<cudarc::driver::CudaViewMut<'_, T>> {
        match &mut self.storage {
            Storage::Cuda(s, _, n) => Some(s.slice_mut(0..*n)),
            _ => None,
        }
    }
}
