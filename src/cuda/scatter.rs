//! The scattering transform on the GPU (`kernels/scatter.cu`): the CUDA twin of
//! [`Scattering2d::transform`], same arguments in the same order (`images`, `c`, `out`), same
//! checks, same output layout, computed in f64 and rounded to f32 as on the CPU.
//!
//! The kernel runs one block per image plane (grid-stride), in global f64 scratch of
//! [`SCRATCH_PLANES`] complex `M_p × N_p` planes per block; its DFTs are dense products with
//! twiddle tables computed on the host (no device `sin`/`cos`), the Morlet and low-pass filters
//! are [`Scattering2d`]'s own f64 arrays, uploaded once ([`Scattering2d::kernel_tables`]).
//! [`Scattering2d::transform_by_tables`] is the kernel's algorithm on the host (same tables,
//! loops and operation order, every f64 operation separately rounded on both sides), tested
//! on the CPU against the rustfft transform; on a GPU, `tests/scatter.rs` checks this wrapper
//! against both.
//!
//! Work per 28 × 28 plane (J = 2, L = 8): about 3.4 M complex f64 multiply-adds (see the
//! kernel's header); speed was secondary — the features are computed once per dataset and
//! cached.

use super::ffi::{DpsgdScatterArgs, DPSGD_SCATTER_PLANES};
use super::grad::{cfg, cfg_elems};
use super::{drv, CudaBackend};
use crate::cpu::scatter::{ScatterParams, Scattering2d, SCRATCH_PLANES};
use crate::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};
use std::sync::Arc;

// The kernel's scratch layout is the emulation's.
const _: () = assert!(DPSGD_SCATTER_PLANES as usize == SCRATCH_PLANES);

/// Blocks (scratch slots) per SM of one launch: enough to fill the GPU; each slot holds
/// `SCRATCH_PLANES · M_p · N_p` complex f64 (104 KB for 28 × 28 images).
const SLOTS_PER_SM: usize = 8;

/// Image planes per upload in [`CudaScattering2d::transform_host`] (28 × 28: 26 MB in,
/// 130 MB out on the device).
const HOST_CHUNK: usize = 8192;

/// A [`Scattering2d`] with its tables on a GPU.
pub struct CudaScattering2d {
    dev: Arc<CudaBackend>,
    cpu: Scattering2d,
    args: DpsgdScatterArgs,
    filt: CudaSlice<f64>,
    tw: CudaSlice<f64>,
    off: CudaSlice<u64>,
}

impl std::fmt::Debug for CudaScattering2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaScattering2d")
            .field("params", &self.cpu.params())
            .field("device", &self.dev)
            .finish_non_exhaustive()
    }
}

impl CudaScattering2d {
    /// Uploads `s`'s filters and the DFT twiddle tables ([`Scattering2d::kernel_tables`]).
    pub fn new(dev: &Arc<CudaBackend>, s: &Scattering2d) -> Result<Self> {
        let p = s.params();
        let t = s.kernel_tables();
        let (oh, ow) = p.out_hw();
        let u32_of = |what: &str, v: usize| -> Result<u32> {
            u32::try_from(v)
                .ok()
                .filter(|&x| x <= i32::MAX as u32)
                .ok_or_else(|| {
                    Error::invalid(
                        "scattering image size",
                        format!("{what} = {v}"),
                        "below 2^31 (the kernel's 32-bit plane indices)",
                    )
                })
        };
        u32_of("padded plane M_p·N_p", t.mp * t.np)?;
        let args = DpsgdScatterArgs {
            count: 0,
            out_len: s.out_len() as u64,
            m: u32_of("M", p.height)?,
            n: u32_of("N", p.width)?,
            mp: u32_of("M_p", t.mp)?,
            np: u32_of("N_p", t.np)?,
            pad_top: t.pad_top as u32,
            pad_left: t.pad_left as u32,
            j: p.j as u32,
            l: p.l as u32,
            oh: oh as u32,
            ow: ow as u32,
        };
        Ok(CudaScattering2d {
            filt: dev.htod(&t.filters)?,
            tw: dev.htod(&t.twiddles)?,
            off: dev.htod(&t.offsets)?,
            dev: Arc::clone(dev),
            cpu: s.clone(),
            args,
        })
    }

    /// The parameters.
    pub fn params(&self) -> ScatterParams {
        self.cpu.params()
    }

    /// Output values per input channel ([`Scattering2d::out_len`]).
    pub fn out_len(&self) -> usize {
        self.cpu.out_len()
    }

    /// GPU twin of [`Scattering2d::transform`]: `images` holds `n` examples of `[c, M, N]`,
    /// `out` receives `n` examples of `[c · K, M/2^J, N/2^J]`. Typed errors before any launch
    /// for `c = 0` or lengths that do not match ([`Error::InvalidParameter`],
    /// [`Error::Shape`]); a non-finite input value is found by a first kernel and reported as
    /// [`Error::NonFinite`] (offset and value) before the transform runs, `out` untouched.
    /// Waits for the check (one small device-to-host copy); the transform itself is queued on
    /// the backend's stream.
    pub fn transform(
        &self,
        images: &CudaView<'_, f32>,
        c: usize,
        out: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let count =
            self.cpu
                .check_batch("CudaScattering2d::transform", images.len(), c, out.len())?;
        if count == 0 {
            return Ok(());
        }
        let dev = &self.dev;
        let mut bad = dev.htod(&[u64::MAX])?;
        {
            let n = images.len() as u64;
            let mut b = dev.stream.launch_builder(&dev.nn.scatter_check_finite);
            b.arg(images).arg(&n).arg(&mut bad);
            // SAFETY: argument types and order match dpsgd_scatter_check_finite; x holds n
            // floats, bad one u64; grid-stride loop over x.
            unsafe { b.launch(cfg_elems(dev, images.len())) }
                .map_err(drv("dpsgd_scatter_check_finite"))?;
        }
        let first = dev.dtoh(&bad.slice(..))?[0];
        if first != u64::MAX {
            let i = first as usize;
            let v = dev.dtoh(&images.slice(i..i + 1))?[0];
            return Err(Error::NonFinite {
                what: "scattering input",
                detail: format!("value {v} at offset {i}"),
            });
        }
        let slots = count.min(dev.sm_count as usize * SLOTS_PER_SM);
        let plane = self.args.mp as usize * self.args.np as usize;
        let mut scratch = dev.alloc_zeros::<f64>(slots * SCRATCH_PLANES * plane * 2)?;
        let mut a = self.args;
        a.count = count as u64;
        let mut b = dev.stream.launch_builder(&dev.nn.scatter);
        b.arg(&a)
            .arg(images)
            .arg(&self.filt)
            .arg(&self.tw)
            .arg(&self.off)
            .arg(&mut scratch)
            .arg(out);
        // SAFETY: argument types and order match dpsgd_scatter; images holds count·M·N floats
        // and out count·out_len (check_batch); filt, tw and off are the KernelTables of the
        // same Scattering2d, whose offsets index inside them; scratch holds
        // slots·DPSGD_SCATTER_PLANES planes of M_p·N_p double2 and the grid has `slots` blocks.
        unsafe { b.launch(cfg((slots, 1, 1))) }.map_err(drv("dpsgd_scatter"))?;
        Ok(())
    }

    /// [`CudaScattering2d::transform`] of host data, in chunks of at most 8192 image planes
    /// (uploaded, transformed, copied back), so device memory stays bounded whatever the
    /// dataset's size. Same arguments and checks as [`Scattering2d::transform`] (all before
    /// anything is uploaded); waits for the GPU.
    pub fn transform_host(&self, images: &[f32], c: usize, out: &mut [f32]) -> Result<()> {
        let count = self.cpu.check_batch(
            "CudaScattering2d::transform_host",
            images.len(),
            c,
            out.len(),
        )?;
        if let Some(i) = images.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "scattering input",
                detail: format!("value {} at offset {i}", images[i]),
            });
        }
        let p = self.params();
        let inp = p.height * p.width;
        let ol = self.out_len();
        // Whole examples per chunk, so that each chunk is a valid batch of c channels.
        let per = (HOST_CHUNK / c).max(1) * c;
        let mut done = 0;
        while done < count {
            let k = per.min(count - done);
            let x = self.dev.htod(&images[done * inp..(done + k) * inp])?;
            let mut y = self.dev.alloc_zeros::<f32>(k * ol)?;
            self.transform(&x.slice(..k * inp), c, &mut y.slice_mut(..k * ol))?;
            let host = self.dev.dtoh(&y.slice(..k * ol))?;
            out[done * ol..(done + k) * ol].copy_from_slice(&host);
            done += k;
        }
        Ok(())
    }
}
