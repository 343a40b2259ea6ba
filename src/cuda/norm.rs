//! `GroupNorm` on the GPU (`kernels/norm.cu`): one block per (group, example), statistics in
//! double as on the CPU. Same shapes and semantics as [`crate::cpu::norm`]; per-sample (dγ, dβ)
//! go straight into the rows of the `[B, P]` matrix, and a summed gradient is the ordered sum
//! of per-example rows written to the scratch ([`group_norm_scratch_len`]).

use super::ffi::DpsgdGroupNormArgs;
use super::grad::{cfg, check_rows, check_view, sum_rows, u32_of, DeviceGrad};
use super::{drv, CudaBackend};
use crate::cpu::norm::GroupNormShape;
use crate::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

fn check(
    op: &'static str,
    s: &GroupNormShape,
    x: usize,
    params: usize,
) -> Result<DpsgdGroupNormArgs> {
    if s.c == 0 || s.spatial == 0 {
        return Err(Error::shape(op, "zero channels or spatial size"));
    }
    if s.groups == 0 || s.c % s.groups != 0 {
        return Err(Error::invalid(
            "groups",
            s.groups,
            format!("a divisor of the channel count {}", s.c),
        ));
    }
    if !(s.eps.is_finite() && s.eps > 0.0) {
        return Err(Error::invalid("eps", s.eps, "finite and > 0"));
    }
    check_view(op, "x", x, s.batch * s.c * s.spatial)?;
    check_view(op, "params", params, 2 * s.c)?;
    u32_of(op, "example size", s.c * s.spatial)?;
    Ok(DpsgdGroupNormArgs {
        batch: u32_of(op, "batch", s.batch)?,
        c: s.c as u32,
        spatial: s.spatial as u32,
        groups: s.groups as u32,
        eps: s.eps,
        out_stride: 0,
        want_grad: 0,
        want_dx: 0,
    })
}

/// Scratch (f32 values) that [`group_norm_backward`] needs for a [`DeviceGrad::Sum`]: one row
/// of `2·c` values per example (required: a shorter scratch is an error).
pub fn group_norm_scratch_len(s: &GroupNormShape) -> usize {
    s.batch * 2 * s.c
}

/// GPU twin of [`crate::cpu::norm::group_norm_forward`] (`y` overwritten).
pub fn group_norm_forward(
    dev: &CudaBackend,
    s: &GroupNormShape,
    x: &CudaView<'_, f32>,
    params: &CudaView<'_, f32>,
    y: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    const OP: &str = "group_norm_forward";
    let a = check(OP, s, x.len(), params.len())?;
    check_view(OP, "y", y.len(), x.len())?;
    if s.batch == 0 {
        return Ok(());
    }
    let mut b = dev.stream.launch_builder(&dev.nn.group_norm_fwd);
    b.arg(&a).arg(x).arg(params).arg(y);
    // SAFETY: argument types and order match dpsgd_group_norm_fwd; x and y hold batch·c·spatial
    // and params 2·c floats (checked above); blocks loop over examples beyond 65535.
    unsafe { b.launch(cfg((s.groups, s.batch, 1))) }.map_err(drv("dpsgd_group_norm_fwd"))?;
    Ok(())
}

/// GPU twin of [`crate::cpu::norm::group_norm_backward`]: the input gradient into `dx`
/// (overwritten) when given, (dγ, dβ) to `grad`. A [`DeviceGrad::Sum`] needs
/// [`group_norm_scratch_len`] values of `scratch`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward(
    dev: &CudaBackend,
    s: &GroupNormShape,
    x: &CudaView<'_, f32>,
    params: &CudaView<'_, f32>,
    dy: &CudaView<'_, f32>,
    dx: Option<&mut CudaViewMut<'_, f32>>,
    grad: DeviceGrad<'_>,
    scratch: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    const OP: &str = "group_norm_backward";
    let mut a = check(OP, s, x.len(), params.len())?;
    let n = s.batch * s.c * s.spatial;
    check_view(OP, "dy", dy.len(), n)?;
    if let Some(dx) = &dx {
        check_view(OP, "dx", dx.len(), n)?;
    }
    let np = 2 * s.c;
    // Where the kernel writes each example's (dγ, dβ), and the summed gradient to finish.
    let mut finish: Option<(CudaViewMut<'_, f32>, f32)> = None;
    let mut use_scratch = false;
    let mut gout: Option<(CudaViewMut<'_, f32>, usize)> = None;
    match grad {
        DeviceGrad::None => {}
        DeviceGrad::PerSample {
            rows,
            stride,
            offset,
        } => {
            check_rows(OP, rows.len(), s.batch, stride, offset, np)?;
            a.out_stride = stride as u64;
            gout = Some((rows, offset));
        }
        DeviceGrad::Sum {
            mut grad,
            accumulate,
        } => {
            check_view(OP, "grad", grad.len(), np)?;
            if s.batch == 0 {
                if !accumulate {
                    dev.memset_zero(&mut grad)?;
                }
            } else {
                let need = group_norm_scratch_len(s);
                if scratch.len() < need {
                    return Err(Error::shape(
                        OP,
                        format!(
                            "scratch has {} values, a summed gradient needs {need}",
                            scratch.len()
                        ),
                    ));
                }
                a.out_stride = np as u64;
                use_scratch = true;
                finish = Some((grad, if accumulate { 1.0 } else { 0.0 }));
            }
        }
    }
    if s.batch == 0 {
        return Ok(());
    }
    a.want_grad = (gout.is_some() || use_scratch) as u32;
    a.want_dx = dx.is_some() as u32;
    if a.want_grad == 0 && a.want_dx == 0 {
        return Ok(());
    }
    {
        let need = group_norm_scratch_len(s);
        let mut rows = gout;
        let mut rows_sub = rows.as_mut().map(|(r, off)| r.slice_mut(*off..));
        let mut scratch_sub = use_scratch.then(|| scratch.slice_mut(..need));
        let mut b = dev.stream.launch_builder(&dev.nn.group_norm_bwd);
        b.arg(&a).arg(x).arg(params).arg(dy);
        // Unused outputs get a valid pointer that the kernel never writes (its flag is 0).
        match dx {
            Some(d) => b.arg(d),
            None => b.arg(x),
        };
        match (rows_sub.as_mut(), scratch_sub.as_mut()) {
            (Some(g), _) | (None, Some(g)) => b.arg(g),
            (None, None) => b.arg(dy),
        };
        // SAFETY: argument types and order match dpsgd_group_norm_bwd; x, dy (and dx when
        // want_dx) hold batch·c·spatial floats, params 2·c; with want_grad, example b's 2·c
        // values at b·out_stride lie inside the gradient view (check_rows / the scratch check).
        unsafe { b.launch(cfg((s.groups, s.batch, 1))) }.map_err(drv("dpsgd_group_norm_bwd"))?;
    }
    if let Some((mut grad, beta)) = finish {
        let part = scratch.slice(..group_norm_scratch_len(s));
        sum_rows(dev, &part, s.batch, np, beta, &mut grad)?;
    }
    Ok(())
}
