//! Where the GPU layer kernels write parameter gradients ([`DeviceGrad`], the twin of
//! [`crate::cpu::grad::ParamGrad`]), and the reductions of `kernels/grad.cu` behind them: bias
//! gradients and the ordered sum of split partial gradients.
//!
//! A [`DeviceGrad::Sum`] is computed without atomics: the batch is cut into at most
//! [`MAX_SPLITS`] contiguous splits of examples, each split's partial gradient goes to the
//! caller's scratch, and `dpsgd_sum_rows` adds the splits in order — the same input and the
//! same scratch length give the same bits on every run. With no scratch (or one split) the
//! kernel sums the whole batch itself.

use super::ffi::DPSGD_BLOCK;
use super::{drv, CudaBackend};
use crate::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

/// The destination of a layer's parameter gradients on the GPU (see
/// [`crate::cpu::grad::ParamGrad`] for the semantics, which are the same).
#[derive(Debug)]
pub enum DeviceGrad<'a> {
    /// No parameter gradient.
    None,
    /// Per-sample gradients into a row-major `[B, stride]` matrix at column `offset`
    /// (overwritten; rows beyond the batch are not touched).
    PerSample {
        /// The matrix, at least `batch · stride` long.
        rows: CudaViewMut<'a, f32>,
        /// Row length P (the model's parameter count).
        stride: usize,
        /// Column of the layer's first parameter (its segment offset).
        offset: usize,
    },
    /// The gradient summed over the batch, `num_params` long.
    Sum {
        /// The summed gradient (weight then bias).
        grad: CudaViewMut<'a, f32>,
        /// `true`: add to `grad`; `false`: overwrite it.
        accumulate: bool,
    },
}

impl DeviceGrad<'_> {
    /// Whether no parameter gradient is wanted.
    pub fn is_none(&self) -> bool {
        matches!(self, DeviceGrad::None)
    }
}

/// Most splits a summed weight gradient is cut into.
pub const MAX_SPLITS: usize = 64;
/// Most scratch (f32 values) a layer asks for to split a summed gradient (16 MiB).
const MAX_SPLIT_SCRATCH: usize = 1 << 22;

/// Splits of the batch for a summed gradient of `nw` values: about 8 examples each, at most
/// [`MAX_SPLITS`], and within 16 MiB of scratch.
pub(crate) fn wanted_splits(batch: usize, nw: usize) -> usize {
    batch
        .div_ceil(8)
        .clamp(1, MAX_SPLITS)
        .min((MAX_SPLIT_SCRATCH / nw.max(1)).max(1))
}

/// Scratch (f32 values) that a [`DeviceGrad::Sum`] of `nw` weight values over `batch` examples
/// uses at most (0 when the kernel sums the batch in one pass).
pub(crate) fn split_scratch_len(batch: usize, nw: usize) -> usize {
    let s = wanted_splits(batch, nw);
    if s <= 1 {
        0
    } else {
        s * nw
    }
}

/// `n` as a kernel's 32-bit size, or a typed error naming `what`.
pub(crate) fn u32_of(op: &'static str, what: &str, n: usize) -> Result<u32> {
    if n > i32::MAX as usize {
        return Err(Error::shape(
            op,
            format!("{what} = {n} exceeds the GPU kernels' 32-bit index range (2^31 − 1)"),
        ));
    }
    Ok(n as u32)
}

/// Checks that a device view has exactly `want` elements.
pub(crate) fn check_view(op: &'static str, what: &str, len: usize, want: usize) -> Result<()> {
    crate::cpu::grad::check_len(op, what, len, want)
}

/// A launch of `grid` blocks of [`DPSGD_BLOCK`] threads (each dimension at least 1).
pub(crate) fn cfg(grid: (usize, usize, usize)) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            grid.0.max(1) as u32,
            grid.1.clamp(1, 65535) as u32,
            grid.2.clamp(1, 65535) as u32,
        ),
        block_dim: (DPSGD_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid-stride launch over `n` elements.
pub(crate) fn cfg_elems(dev: &CudaBackend, n: usize) -> LaunchConfig {
    cfg((dev.grid_for(n as u64) as usize, 1, 1))
}

/// Tiles of [`super::ffi::DPSGD_GEMM_TILE`] needed to cover `n`.
pub(crate) fn tiles(n: usize) -> usize {
    n.div_ceil(super::ffi::DPSGD_GEMM_TILE as usize)
}

/// How a layer's weight-gradient kernel is launched: into `out`, block z covering `ex_per`
/// examples and writing at `out + z·z_stride` as value + `beta`·old.
pub(crate) type WeightLaunch<'f> =
    dyn Fn(&mut CudaViewMut<'_, f32>, usize, usize, f32) -> Result<()> + 'f;

/// Writes a layer's parameter gradients to `grad`: the weight part (`nw` values) through
/// `weight`, the bias part (`nb` values) through `bias` (same convention; not called when
/// `nb` is 0). Validates `grad` like [`crate::cpu::grad`] does.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_param_grads(
    dev: &CudaBackend,
    op: &'static str,
    batch: usize,
    nw: usize,
    nb: usize,
    grad: DeviceGrad<'_>,
    scratch: &mut CudaViewMut<'_, f32>,
    weight: &WeightLaunch<'_>,
    bias: &WeightLaunch<'_>,
) -> Result<()> {
    let np = nw + nb;
    match grad {
        DeviceGrad::None => Ok(()),
        DeviceGrad::PerSample {
            mut rows,
            stride,
            offset,
        } => {
            check_rows(op, rows.len(), batch, stride, offset, np)?;
            if batch == 0 {
                return Ok(());
            }
            weight(&mut rows.slice_mut(offset..), 1, stride, 0.0)?;
            if nb > 0 {
                bias(&mut rows.slice_mut(offset + nw..), 1, stride, 0.0)?;
            }
            Ok(())
        }
        DeviceGrad::Sum {
            mut grad,
            accumulate,
        } => {
            check_view(op, "grad", grad.len(), np)?;
            if batch == 0 {
                if !accumulate {
                    dev.memset_zero(&mut grad)?;
                }
                return Ok(());
            }
            let beta = if accumulate { 1.0 } else { 0.0 };
            let splits = wanted_splits(batch, nw).min(scratch.len() / nw.max(1));
            let ex_per = batch.div_ceil(splits.max(1));
            let splits = batch.div_ceil(ex_per);
            if splits <= 1 {
                weight(&mut grad.slice_mut(..nw), batch, 0, beta)?;
            } else {
                let mut part = scratch.slice_mut(..splits * nw);
                weight(&mut part, ex_per, nw, 0.0)?;
                sum_rows(
                    dev,
                    &part.as_view(),
                    splits,
                    nw,
                    beta,
                    &mut grad.slice_mut(..nw),
                )?;
            }
            if nb > 0 {
                bias(&mut grad.slice_mut(nw..), batch, 0, beta)?;
            }
            Ok(())
        }
    }
}

/// Validates a per-sample destination: the segment `offset..offset + np` fits in rows of
/// `stride`, and the matrix holds `batch` rows.
pub(crate) fn check_rows(
    op: &'static str,
    len: usize,
    batch: usize,
    stride: usize,
    offset: usize,
    np: usize,
) -> Result<()> {
    if offset.checked_add(np).is_none_or(|e| e > stride) {
        return Err(Error::shape(
            op,
            format!("segment {offset}..{offset}+{np} does not fit in rows of {stride}"),
        ));
    }
    if batch.checked_mul(stride).is_none_or(|n| len < n) {
        return Err(Error::shape(
            op,
            format!("per-sample matrix has {len} elements, need {batch} rows × {stride}"),
        ));
    }
    Ok(())
}

/// `out[col] = Σ_r partial[r·n + col] + beta·out[col]` for `col < n`, rows added in order.
pub(crate) fn sum_rows(
    dev: &CudaBackend,
    partial: &CudaView<'_, f32>,
    rows: usize,
    n: usize,
    beta: f32,
    out: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    const OP: &str = "dpsgd_sum_rows";
    if partial.len() < rows * n || out.len() < n {
        return Err(Error::shape(OP, "partial or output too short"));
    }
    if n == 0 {
        return Ok(());
    }
    let (r32, n64) = (u32_of(OP, "rows", rows)?, n as u64);
    let mut l = dev.stream.launch_builder(&dev.nn.sum_rows);
    l.arg(partial).arg(&r32).arg(&n64).arg(&beta).arg(out);
    // SAFETY: argument types and order match dpsgd_sum_rows; partial holds rows·n and out at
    // least n floats (checked above); one thread per column < n.
    unsafe { l.launch(cfg((n.div_ceil(DPSGD_BLOCK as usize), 1, 1))) }.map_err(drv(OP))?;
    Ok(())
}

/// Bias gradients: block (c, z) writes Σ over z's `ex_per` examples and the `l` positions of
/// channel c of `dy` (`[batch, channels, l]`) at `out[z·z_stride + c]` (+ `beta`·old).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bias_grad(
    dev: &CudaBackend,
    dy: &CudaView<'_, f32>,
    batch: usize,
    channels: usize,
    l: usize,
    out: &mut CudaViewMut<'_, f32>,
    ex_per: usize,
    z_stride: usize,
    beta: f32,
) -> Result<()> {
    const OP: &str = "dpsgd_bias_grad";
    let nz = batch.div_ceil(ex_per.max(1));
    if dy.len() < batch * channels * l || out.len() < (nz.max(1) - 1) * z_stride + channels {
        return Err(Error::shape(OP, "dy or the output is too short"));
    }
    if batch == 0 || channels == 0 {
        return Ok(());
    }
    let (b32, c32, l32, e32, zs) = (
        u32_of(OP, "batch", batch)?,
        u32_of(OP, "channels", channels)?,
        u32_of(OP, "positions", l)?,
        u32_of(OP, "examples per split", ex_per)?,
        z_stride as u64,
    );
    let mut lb = dev.stream.launch_builder(&dev.nn.bias_grad);
    lb.arg(dy)
        .arg(&b32)
        .arg(&c32)
        .arg(&l32)
        .arg(&e32)
        .arg(&zs)
        .arg(&beta)
        .arg(out);
    // SAFETY: argument types and order match dpsgd_bias_grad; dy holds batch·channels·l floats
    // and out covers every (z, c) written (checked above); blocks loop over z beyond 65535.
    unsafe { lb.launch(cfg((channels, nz, 1))) }.map_err(drv(OP))?;
    Ok(())
}
