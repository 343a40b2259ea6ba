//! `MaxPool2d` and `AvgPool2d` on the GPU (`kernels/pool.cu`). Same shapes and semantics as
//! [`crate::cpu::pool`] (first maximum of a window wins; overlapping windows accumulate); the
//! backward kernels gather per input element, so no atomics.

use super::ffi::DpsgdPoolArgs;
use super::grad::{cfg_elems, check_view, u32_of};
use super::{drv, CudaBackend};
use crate::cpu::pool::PoolShape;
use crate::Result;
use cudarc::driver::{CudaFunction, CudaView, CudaViewMut, PushKernelArg};

fn args(op: &'static str, s: &PoolShape, x: usize, y: usize) -> Result<DpsgdPoolArgs> {
    let (oh, ow) = s.out_hw()?;
    check_view(op, "x", x, s.batch * s.c * s.h * s.w)?;
    check_view(op, "y/dy", y, s.batch * s.c * oh * ow)?;
    u32_of(op, "image plane", s.h * s.w)?;
    Ok(DpsgdPoolArgs {
        planes: (s.batch * s.c) as u64,
        h: s.h as u32,
        w: s.w as u32,
        k: s.k as u32,
        stride: s.stride as u32,
        oh: oh as u32,
        ow: ow as u32,
    })
}

fn launch_fwd(
    dev: &CudaBackend,
    f: &CudaFunction,
    name: &'static str,
    a: &DpsgdPoolArgs,
    x: &CudaView<'_, f32>,
    y: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    let n = y.len();
    if n == 0 {
        return Ok(());
    }
    let mut b = dev.stream.launch_builder(f);
    b.arg(a).arg(x).arg(y);
    // SAFETY: argument types and order match dpsgd_{max,avg}_pool_fwd; x holds planes·h·w and
    // y planes·oh·ow floats (checked by `args`); grid-stride loop over y.
    unsafe { b.launch(cfg_elems(dev, n)) }.map_err(drv(name))?;
    Ok(())
}

/// GPU twin of [`crate::cpu::pool::max_pool2d_forward`].
pub fn max_pool2d_forward(
    dev: &CudaBackend,
    s: &PoolShape,
    x: &CudaView<'_, f32>,
    y: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    let a = args("max_pool2d_forward", s, x.len(), y.len())?;
    launch_fwd(dev, &dev.nn.max_pool_fwd, "dpsgd_max_pool_fwd", &a, x, y)
}

/// GPU twin of [`crate::cpu::pool::avg_pool2d_forward`].
pub fn avg_pool2d_forward(
    dev: &CudaBackend,
    s: &PoolShape,
    x: &CudaView<'_, f32>,
    y: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    let a = args("avg_pool2d_forward", s, x.len(), y.len())?;
    launch_fwd(dev, &dev.nn.avg_pool_fwd, "dpsgd_avg_pool_fwd", &a, x, y)
}

/// GPU twin of [`crate::cpu::pool::max_pool2d_backward`]: `dx` (overwritten) gets each `dy`
/// at its window's arg-max.
pub fn max_pool2d_backward(
    dev: &CudaBackend,
    s: &PoolShape,
    x: &CudaView<'_, f32>,
    dy: &CudaView<'_, f32>,
    dx: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    const OP: &str = "max_pool2d_backward";
    let a = args(OP, s, x.len(), dy.len())?;
    check_view(OP, "dx", dx.len(), x.len())?;
    if dx.is_empty() {
        return Ok(());
    }
    let n = dx.len();
    let mut b = dev.stream.launch_builder(&dev.nn.max_pool_bwd);
    b.arg(&a).arg(x).arg(dy).arg(dx);
    // SAFETY: argument types and order match dpsgd_max_pool_bwd; x and dx hold planes·h·w, dy
    // planes·oh·ow floats (checked above); grid-stride loop over dx.
    unsafe { b.launch(cfg_elems(dev, n)) }.map_err(drv("dpsgd_max_pool_bwd"))?;
    Ok(())
}

/// GPU twin of [`crate::cpu::pool::avg_pool2d_backward`]: `dx` (overwritten) gets `dy / k²`
/// over each window.
pub fn avg_pool2d_backward(
    dev: &CudaBackend,
    s: &PoolShape,
    dy: &CudaView<'_, f32>,
    dx: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    let a = args("avg_pool2d_backward", s, dx.len(), dy.len())?;
    if dx.is_empty() {
        return Ok(());
    }
    let n = dx.len();
    let mut b = dev.stream.launch_builder(&dev.nn.avg_pool_bwd);
    b.arg(&a).arg(dy).arg(dx);
    // SAFETY: argument types and order match dpsgd_avg_pool_bwd; dx holds planes·h·w and dy
    // planes·oh·ow floats (checked by `args`); grid-stride loop over dx.
    unsafe { b.launch(cfg_elems(dev, n)) }.map_err(drv("dpsgd_avg_pool_bwd"))?;
    Ok(())
}
