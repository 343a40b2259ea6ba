//! `Linear` on the GPU (`kernels/linear.cu`): forward and backward-to-input as tiled GEMMs,
//! per-sample weight gradients as one outer product `dy_i ⊗ x_i` per example written straight
//! into row i of the `[B, P]` matrix, summed gradients as a split GEMM over the batch. Same
//! shapes and semantics as [`crate::cpu::linear`].

use super::ffi::{DpsgdLinearArgs, DPSGD_BLOCK};
use super::grad::{
    bias_grad, cfg, check_view, split_scratch_len, tiles, u32_of, write_param_grads, DeviceGrad,
};
use super::{drv, CudaBackend};
use crate::cpu::linear::LinearShape;
use crate::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

fn args(op: &'static str, s: &LinearShape) -> Result<DpsgdLinearArgs> {
    if s.inf == 0 || s.outf == 0 {
        return Err(Error::shape(
            op,
            format!("Linear({}, {}) has a zero dimension", s.inf, s.outf),
        ));
    }
    u32_of(op, "weight size", s.num_params())?;
    if tiles(s.batch) > 65535 {
        return Err(Error::shape(
            op,
            format!("batch {} exceeds the GPU kernels' grid", s.batch),
        ));
    }
    Ok(DpsgdLinearArgs {
        batch: u32_of(op, "batch", s.batch)?,
        inf: s.inf as u32,
        outf: s.outf as u32,
        has_bias: s.bias as u32,
        ex_per: 1,
        pad_: 0,
        z_stride: 0,
        beta: 0.0,
        pad2_: 0,
    })
}

fn check(op: &'static str, s: &LinearShape, x: usize, params: usize) -> Result<DpsgdLinearArgs> {
    let a = args(op, s)?;
    check_view(op, "x", x, s.batch * s.inf)?;
    check_view(op, "params", params, s.num_params())?;
    Ok(a)
}

/// Scratch (f32 values) that [`linear_backward`] uses for a [`DeviceGrad::Sum`] (split partial
/// weight gradients; less, even none, is fine).
pub fn linear_scratch_len(s: &LinearShape) -> usize {
    split_scratch_len(s.batch, s.weight_len())
}

/// GPU twin of [`crate::cpu::linear::linear_forward`]: `y = x·Wᵀ + b` (overwritten).
pub fn linear_forward(
    dev: &CudaBackend,
    s: &LinearShape,
    x: &CudaView<'_, f32>,
    params: &CudaView<'_, f32>,
    y: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    const OP: &str = "linear_forward";
    let a = check(OP, s, x.len(), params.len())?;
    check_view(OP, "y", y.len(), s.batch * s.outf)?;
    if s.batch == 0 {
        return Ok(());
    }
    let nw = s.weight_len();
    let (w, bias) = (
        params.slice(..nw),
        if s.bias {
            params.slice(nw..)
        } else {
            params.slice(..)
        },
    );
    let mut b = dev.stream.launch_builder(&dev.nn.linear_fwd);
    b.arg(&a).arg(x).arg(&w).arg(&bias).arg(y);
    // SAFETY: argument types and order match dpsgd_linear_fwd; x holds batch·inf, w outf·inf,
    // bias outf (when has_bias) and y batch·outf floats (checked above); the grid covers every
    // output tile.
    unsafe { b.launch(cfg((tiles(s.outf), tiles(s.batch), 1))) }
        .map_err(drv("dpsgd_linear_fwd"))?;
    Ok(())
}

/// GPU twin of [`crate::cpu::linear::linear_backward`]: `dx = dy·W` (overwritten) when given;
/// parameter gradients to `grad`. `scratch` serves a [`DeviceGrad::Sum`] (any length, see
/// [`linear_scratch_len`]).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dev: &CudaBackend,
    s: &LinearShape,
    x: &CudaView<'_, f32>,
    params: &CudaView<'_, f32>,
    dy: &CudaView<'_, f32>,
    dx: Option<&mut CudaViewMut<'_, f32>>,
    grad: DeviceGrad<'_>,
    scratch: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    const OP: &str = "linear_backward";
    let a = check(OP, s, x.len(), params.len())?;
    check_view(OP, "dy", dy.len(), s.batch * s.outf)?;
    if let Some(dx) = &dx {
        check_view(OP, "dx", dx.len(), s.batch * s.inf)?;
    }
    let nw = s.weight_len();
    let nb = if s.bias { s.outf } else { 0 };
    match grad {
        DeviceGrad::PerSample {
            mut rows,
            stride,
            offset,
        } => {
            super::grad::check_rows(OP, rows.len(), s.batch, stride, offset, nw + nb)?;
            if s.batch > 0 {
                let pa = DpsgdLinearArgs {
                    z_stride: stride as u64,
                    ..a
                };
                let mut out = rows.slice_mut(offset..);
                let mut b = dev.stream.launch_builder(&dev.nn.linear_per_sample);
                b.arg(&pa).arg(dy).arg(x).arg(&mut out);
                // SAFETY: argument types and order match dpsgd_linear_per_sample; dy and x hold
                // batch rows (checked above); row b's writes stay in [b·stride, b·stride + np)
                // of `out`, which holds at least (batch − 1)·stride + np values (check_rows).
                unsafe { b.launch(cfg(((nw + nb).div_ceil(DPSGD_BLOCK as usize), s.batch, 1))) }
                    .map_err(drv("dpsgd_linear_per_sample"))?;
            }
        }
        grad => {
            let weight = |out: &mut CudaViewMut<'_, f32>, ex_per: usize, zs: usize, beta: f32| {
                let nz = s.batch.div_ceil(ex_per);
                if out.len() < (nz.max(1) - 1) * zs + nw {
                    return Err(Error::shape(OP, "gradient destination too short"));
                }
                let wa = DpsgdLinearArgs {
                    ex_per: u32_of(OP, "examples per split", ex_per)?,
                    z_stride: zs as u64,
                    beta,
                    ..a
                };
                let mut b = dev.stream.launch_builder(&dev.nn.linear_wgrad_sum);
                b.arg(&wa).arg(dy).arg(x).arg(out);
                // SAFETY: argument types and order match dpsgd_linear_wgrad_sum; dy and x hold
                // batch rows, out covers every split's [outf, inf] region (checked above).
                unsafe { b.launch(cfg((tiles(s.inf), tiles(s.outf), nz))) }
                    .map_err(drv("dpsgd_linear_wgrad_sum"))?;
                Ok(())
            };
            let bias = |out: &mut CudaViewMut<'_, f32>, ex_per: usize, zs: usize, beta: f32| {
                bias_grad(dev, dy, s.batch, s.outf, 1, out, ex_per, zs, beta)
            };
            write_param_grads(dev, OP, s.batch, nw, nb, grad, scratch, &weight, &bias)?;
        }
    }
    if let Some(dx) = dx {
        if s.batch > 0 {
            let w = params.slice(..nw);
            let mut b = dev.stream.launch_builder(&dev.nn.linear_bwd_data);
            b.arg(&a).arg(dy).arg(&w).arg(dx);
            // SAFETY: argument types and order match dpsgd_linear_bwd_data; dy holds
            // batch·outf, w outf·inf and dx batch·inf floats (checked above).
            unsafe { b.launch(cfg((tiles(s.inf), tiles(s.batch), 1))) }
                .map_err(drv("dpsgd_linear_bwd_data"))?;
        }
    }
    Ok(())
}
