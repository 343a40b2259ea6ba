//! Noise on the GPU (`kernels/noise.cu`): Philox4x32-10 or ChaCha20 streams, f64 transforms.
//! Same signatures and semantics as [`crate::cpu::noise`]; the random words are bit-identical
//! to the CPU's.

use super::ffi::DpsgdNoiseKey;
use super::{drv, CudaBackend};
use crate::error::check_non_negative;
use crate::{NoiseKey, Result};
use cudarc::driver::{CudaFunction, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};

pub(crate) fn ffi_key(k: NoiseKey) -> DpsgdNoiseKey {
    DpsgdNoiseKey {
        key: *k.words(),
        stream: k.stream(),
        generator: match k.generator() {
            crate::rng::Generator::Philox => super::ffi::DPSGD_GEN_PHILOX,
            crate::rng::Generator::ChaCha20 => super::ffi::DPSGD_GEN_CHACHA20,
        },
        pad: 0,
    }
}

fn launch<T: DeviceRepr>(
    dev: &CudaBackend,
    f: &CudaFunction,
    name: &'static str,
    out: &mut CudaViewMut<'_, T>,
    scale: Option<f64>,
    key: NoiseKey,
    grid: u32,
) -> Result<()> {
    let n = out.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let k = ffi_key(key);
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (super::ffi::DPSGD_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = dev.stream.launch_builder(f);
    l.arg(&mut *out).arg(&n);
    if let Some(s) = &scale {
        l.arg(s);
    }
    l.arg(&k);
    // SAFETY: argument types and order match the kernel `name` (out, n[, scale], key); out holds
    // n elements and the kernels bound every access by n.
    unsafe { l.launch(cfg) }.map_err(drv(name))?;
    Ok(())
}

/// GPU twin of [`crate::cpu::noise::random_bits`].
pub fn random_bits(dev: &CudaBackend, out: &mut CudaViewMut<'_, u32>, key: NoiseKey) -> Result<()> {
    let g = dev.grid_for((out.len() as u64).div_ceil(16));
    launch(
        dev,
        &dev.k.random_bits,
        "dpsgd_random_bits",
        out,
        None,
        key,
        g,
    )
}

/// The same bits as [`random_bits`] for a Philox key, drawn through cuRAND's `curand_init` +
/// `curand4` (one state per 4 outputs). For tests that the kernels use cuRAND's stream.
pub fn philox_bits_curand(
    dev: &CudaBackend,
    out: &mut CudaViewMut<'_, u32>,
    key: NoiseKey,
) -> Result<()> {
    if key.generator() != crate::rng::Generator::Philox {
        return Err(crate::Error::invalid(
            "key",
            "a ChaCha20 key",
            "a Philox key (cuRAND has no ChaCha20)",
        ));
    }
    let blocks = (out.len() as u64)
        .div_ceil(4)
        .div_ceil(super::ffi::DPSGD_BLOCK as u64)
        .max(1);
    let g =
        u32::try_from(blocks).map_err(|_| crate::Error::shape("philox_bits_curand", "too long"))?;
    launch(
        dev,
        &dev.k.philox_bits_curand,
        "dpsgd_philox_bits_curand",
        out,
        None,
        key,
        g,
    )
}

/// GPU twin of [`crate::cpu::noise::add_gaussian`].
pub fn add_gaussian(
    dev: &CudaBackend,
    out: &mut CudaViewMut<'_, f32>,
    std: f64,
    key: NoiseKey,
) -> Result<()> {
    check_non_negative("std", std)?;
    let g = dev.grid_for((out.len() as u64).div_ceil(2));
    launch(
        dev,
        &dev.k.add_gaussian,
        "dpsgd_add_gaussian",
        out,
        Some(std),
        key,
        g,
    )
}

/// GPU twin of [`crate::cpu::noise::add_laplace`].
pub fn add_laplace(
    dev: &CudaBackend,
    out: &mut CudaViewMut<'_, f32>,
    scale: f64,
    key: NoiseKey,
) -> Result<()> {
    check_non_negative("scale", scale)?;
    let g = dev.grid_for((out.len() as u64).div_ceil(4));
    launch(
        dev,
        &dev.k.add_laplace,
        "dpsgd_add_laplace",
        out,
        Some(scale),
        key,
        g,
    )
}

/// cuRAND's host API (`curandGenerateNormal` with the default XORWOW generator, through
/// cudarc's `CudaRng`) filling `out` with N(0, std²): the peer our `add_gaussian` is benchmarked
/// against. Not used for privacy noise (its stream is not the CPU twin's). Errors when
/// libcurand cannot be loaded.
pub struct CurandHost {
    rng: cudarc::curand::CudaRng,
}

impl CurandHost {
    /// A generator on `dev`'s stream. Needs libcurand.so on the library path.
    pub fn new(dev: &CudaBackend, seed: u64) -> Result<Self> {
        // SAFETY: is_culib_present only tries to dlopen libcurand and reports whether it could.
        if !unsafe { cudarc::curand::sys::is_culib_present() } {
            return Err(crate::Error::CudaUnavailable(
                "libcurand.so not found: add the directory holding it to LD_LIBRARY_PATH".into(),
            ));
        }
        let rng = cudarc::curand::CudaRng::new(seed, dev.stream.clone()).map_err(|e| {
            crate::Error::Cuda {
                op: "curandCreateGenerator",
                msg: format!("{e:?}"),
            }
        })?;
        Ok(CurandHost { rng })
    }

    /// Overwrites `out` with N(0, std²) samples (cuRAND needs an even length for normals).
    pub fn fill_normal(&self, out: &mut CudaViewMut<'_, f32>, std: f32) -> Result<()> {
        self.rng
            .fill_with_normal(out, 0.0, std)
            .map_err(|e| crate::Error::Cuda {
                op: "curandGenerateNormal",
                msg: format!("{e:?}"),
            })
    }
}
