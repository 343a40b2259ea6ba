//! `Conv2d` and `ConvTranspose2d` on the GPU (`kernels/conv.cu`): implicit-GEMM kernels with
//! shared-memory tiles, im2col gathered on the fly. Same shapes, parameter layout and semantics
//! as [`crate::cpu::conv`]; the forward needs no scratch, the backward's scratch only serves a
//! [`DeviceGrad::Sum`] (see [`conv2d_scratch_len`]).
//!
//! A `ConvTranspose2d` is the adjoint of the convolution described by its
//! [`ConvTranspose2dShape::geom`], so the same three kernels serve both layers: the forward of
//! one is the backward-to-input of the other, and the weight gradient swaps the roles of the
//! activation and the im2col'ed image.

use super::ffi::{DpsgdConvArgs, DpsgdConvGeom};
use super::grad::{
    bias_grad, cfg, check_view, split_scratch_len, tiles, u32_of, write_param_grads, DeviceGrad,
};
use super::{drv, CudaBackend};
use crate::cpu::conv::{Conv2dShape, ConvGeom, ConvTranspose2dShape};
use crate::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

fn geom(op: &'static str, g: &ConvGeom) -> Result<DpsgdConvGeom> {
    // Per-example sizes must fit the kernels' 32-bit indices.
    u32_of(op, "image size", g.in_len())?;
    u32_of(op, "im2col size", g.col_rows().max(g.out_positions()))?;
    Ok(DpsgdConvGeom {
        c: g.c as u32,
        h: g.h as u32,
        w: g.w as u32,
        k: g.k as u32,
        stride: g.stride as u32,
        pad: g.pad as u32,
        oh: g.oh as u32,
        ow: g.ow as u32,
    })
}

fn args(g: DpsgdConvGeom, m: u32, batch: u32, has_bias: bool) -> DpsgdConvArgs {
    DpsgdConvArgs {
        g,
        m,
        batch,
        has_bias: has_bias as u32,
        ex_per: 1,
        z_stride: 0,
        beta: 0.0,
        pad_: 0,
    }
}

/// `y_b = W · im2col(x_b) (+ bias)`: `x` `[batch, g.c, g.h, g.w]`, `w` `[m, g.c·k·k]`,
/// `y` `[batch, m, g.oh·g.ow]`.
#[allow(clippy::too_many_arguments)]
fn launch_fwd(
    dev: &CudaBackend,
    a: &DpsgdConvArgs,
    x: &CudaView<'_, f32>,
    w: &CudaView<'_, f32>,
    bias: &CudaView<'_, f32>,
    y: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    let l = (a.g.oh * a.g.ow) as usize;
    let grid = (tiles(l), tiles(a.m as usize), a.batch as usize);
    let mut b = dev.stream.launch_builder(&dev.nn.conv_fwd);
    b.arg(a).arg(x).arg(w).arg(bias).arg(y);
    // SAFETY: argument types and order match dpsgd_conv_fwd; the callers checked that x, w,
    // bias (when has_bias) and y hold the sizes the kernel indexes (documented above); the
    // grid covers all output tiles and loops over examples beyond 65535.
    unsafe { b.launch(cfg(grid)) }.map_err(drv("dpsgd_conv_fwd"))?;
    Ok(())
}

/// `dx_b = col2im(Wᵀ · dy_b) (+ bias)`: `dy` `[batch, m, g.oh·g.ow]`, `w` `[m, g.c, k, k]`,
/// `dx` `[batch, g.c, g.h, g.w]` (overwritten).
fn launch_bwd_data(
    dev: &CudaBackend,
    a: &DpsgdConvArgs,
    dy: &CudaView<'_, f32>,
    w: &CudaView<'_, f32>,
    bias: &CudaView<'_, f32>,
    dx: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    let hw = (a.g.h * a.g.w) as usize;
    let grid = (tiles(hw), tiles(a.g.c as usize), a.batch as usize);
    let mut b = dev.stream.launch_builder(&dev.nn.conv_bwd_data);
    b.arg(a).arg(dy).arg(w).arg(bias).arg(dx);
    // SAFETY: argument types and order match dpsgd_conv_bwd_data; the callers checked the
    // sizes of dy, w, bias (when has_bias) and dx; the grid covers all output tiles.
    unsafe { b.launch(cfg(grid)) }.map_err(drv("dpsgd_conv_bwd_data"))?;
    Ok(())
}

/// Weight gradients `Σ_b act_b · im2col(img_b)ᵀ` (`act` `[batch, m, g.oh·g.ow]`, `img`
/// `[batch, g.c, g.h, g.w]`): block z sums examples `[z·ex_per, (z+1)·ex_per)` into
/// `out + z·z_stride` (`[m, g.c·k·k]`, + beta·old).
#[allow(clippy::too_many_arguments)]
fn launch_wgrad(
    dev: &CudaBackend,
    op: &'static str,
    base: &DpsgdConvArgs,
    act: &CudaView<'_, f32>,
    img: &CudaView<'_, f32>,
    out: &mut CudaViewMut<'_, f32>,
    ex_per: usize,
    z_stride: usize,
    beta: f32,
) -> Result<()> {
    let g = base.g;
    let (l, n) = ((g.oh * g.ow) as usize, (g.c * g.k * g.k) as usize);
    let batch = base.batch as usize;
    u32_of(op, "examples per split × output positions", ex_per * l)?;
    let nz = batch.div_ceil(ex_per);
    let nw = base.m as usize * n;
    let need = (nz.max(1) - 1) * z_stride + nw;
    if out.len() < need {
        return Err(Error::shape(
            op,
            format!(
                "gradient destination has {} elements, need {need}",
                out.len()
            ),
        ));
    }
    let a = DpsgdConvArgs {
        ex_per: ex_per as u32,
        z_stride: z_stride as u64,
        beta,
        ..*base
    };
    let grid = (tiles(n), tiles(base.m as usize), nz);
    let mut b = dev.stream.launch_builder(&dev.nn.conv_wgrad);
    b.arg(&a).arg(act).arg(img).arg(out);
    // SAFETY: argument types and order match dpsgd_conv_wgrad; act and img hold `batch`
    // examples (checked by the callers), out covers every block's [m, c·k·k] region (checked
    // above); blocks loop over z beyond 65535.
    unsafe { b.launch(cfg(grid)) }.map_err(drv("dpsgd_conv_wgrad"))?;
    Ok(())
}

/// Scratch (f32 values) that [`conv2d_backward`] uses for a [`DeviceGrad::Sum`]: the split
/// partial weight gradients. Less (even none) is fine: fewer splits, less parallelism.
pub fn conv2d_scratch_len(s: &Conv2dShape) -> usize {
    split_scratch_len(s.batch, s.weight_len())
}

/// Scratch (f32 values) that [`conv_transpose2d_backward`] uses for a [`DeviceGrad::Sum`].
pub fn conv_transpose2d_scratch_len(s: &ConvTranspose2dShape) -> usize {
    split_scratch_len(s.batch, s.weight_len())
}

/// GPU twin of [`crate::cpu::conv::conv2d_forward`] (no scratch needed).
pub fn conv2d_forward(
    dev: &CudaBackend,
    s: &Conv2dShape,
    x: &CudaView<'_, f32>,
    params: &CudaView<'_, f32>,
    y: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    const OP: &str = "conv2d_forward";
    let g = s.geom()?;
    check_view(OP, "x", x.len(), s.batch * g.in_len())?;
    check_view(OP, "params", params.len(), s.num_params())?;
    check_view(OP, "y", y.len(), s.batch * s.cout * g.out_positions())?;
    if s.batch == 0 {
        return Ok(());
    }
    let a = args(
        geom(OP, &g)?,
        u32_of(OP, "out_channels", s.cout)?,
        u32_of(OP, "batch", s.batch)?,
        s.bias,
    );
    let nw = s.weight_len();
    let bias = if s.bias {
        params.slice(nw..)
    } else {
        params.slice(..)
    };
    launch_fwd(dev, &a, x, &params.slice(..nw), &bias, y)
}

/// GPU twin of [`crate::cpu::conv::conv2d_backward`]: the input gradient into `dx` when given,
/// the parameter gradients to `grad`. `scratch` serves a [`DeviceGrad::Sum`] (any length,
/// see [`conv2d_scratch_len`]).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    dev: &CudaBackend,
    s: &Conv2dShape,
    x: &CudaView<'_, f32>,
    params: &CudaView<'_, f32>,
    dy: &CudaView<'_, f32>,
    dx: Option<&mut CudaViewMut<'_, f32>>,
    grad: DeviceGrad<'_>,
    scratch: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    const OP: &str = "conv2d_backward";
    let g = s.geom()?;
    let l = g.out_positions();
    check_view(OP, "x", x.len(), s.batch * g.in_len())?;
    check_view(OP, "params", params.len(), s.num_params())?;
    check_view(OP, "dy", dy.len(), s.batch * s.cout * l)?;
    if let Some(dx) = &dx {
        check_view(OP, "dx", dx.len(), s.batch * g.in_len())?;
    }
    let a = args(
        geom(OP, &g)?,
        u32_of(OP, "out_channels", s.cout)?,
        u32_of(OP, "batch", s.batch)?,
        false,
    );
    let nw = s.weight_len();
    let nb = if s.bias { s.cout } else { 0 };
    let weight = |out: &mut CudaViewMut<'_, f32>, ex_per: usize, zs: usize, beta: f32| {
        launch_wgrad(dev, OP, &a, dy, x, out, ex_per, zs, beta)
    };
    let bias = |out: &mut CudaViewMut<'_, f32>, ex_per: usize, zs: usize, beta: f32| {
        bias_grad(dev, dy, s.batch, s.cout, l, out, ex_per, zs, beta)
    };
    write_param_grads(dev, OP, s.batch, nw, nb, grad, scratch, &weight, &bias)?;
    if let Some(dx) = dx {
        if s.batch > 0 {
            let w = params.slice(..nw);
            launch_bwd_data(dev, &a, dy, &w, &w, dx)?;
        }
    }
    Ok(())
}

/// GPU twin of [`crate::cpu::conv::conv_transpose2d_forward`] (no scratch needed).
pub fn conv_transpose2d_forward(
    dev: &CudaBackend,
    s: &ConvTranspose2dShape,
    x: &CudaView<'_, f32>,
    params: &CudaView<'_, f32>,
    y: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    const OP: &str = "conv_transpose2d_forward";
    let g = s.geom()?;
    check_view(OP, "x", x.len(), s.batch * s.cin * s.h * s.w)?;
    check_view(OP, "params", params.len(), s.num_params())?;
    check_view(OP, "y", y.len(), s.batch * g.in_len())?;
    if s.batch == 0 {
        return Ok(());
    }
    // The adjoint convolution maps y [cout, H, W] to x [cin, h, w]; its input gradient is
    // this layer's forward, with the weight [cin, cout, k, k] = [m, c, k, k].
    let a = args(
        geom(OP, &g)?,
        u32_of(OP, "in_channels", s.cin)?,
        u32_of(OP, "batch", s.batch)?,
        s.bias,
    );
    let nw = s.weight_len();
    let bias = if s.bias {
        params.slice(nw..)
    } else {
        params.slice(..)
    };
    launch_bwd_data(dev, &a, x, &params.slice(..nw), &bias, y)
}

/// GPU twin of [`crate::cpu::conv::conv_transpose2d_backward`]. `scratch` serves a
/// [`DeviceGrad::Sum`] (any length, see [`conv_transpose2d_scratch_len`]).
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_backward(
    dev: &CudaBackend,
    s: &ConvTranspose2dShape,
    x: &CudaView<'_, f32>,
    params: &CudaView<'_, f32>,
    dy: &CudaView<'_, f32>,
    dx: Option<&mut CudaViewMut<'_, f32>>,
    grad: DeviceGrad<'_>,
    scratch: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    const OP: &str = "conv_transpose2d_backward";
    let g = s.geom()?;
    let il = s.cin * s.h * s.w;
    check_view(OP, "x", x.len(), s.batch * il)?;
    check_view(OP, "params", params.len(), s.num_params())?;
    check_view(OP, "dy", dy.len(), s.batch * g.in_len())?;
    if let Some(dx) = &dx {
        check_view(OP, "dx", dx.len(), s.batch * il)?;
    }
    let a = args(
        geom(OP, &g)?,
        u32_of(OP, "in_channels", s.cin)?,
        u32_of(OP, "batch", s.batch)?,
        false,
    );
    let nw = s.weight_len();
    let nb = if s.bias { s.cout } else { 0 };
    // dW_b [cin, cout·k·k] = x_b [cin, h·w] · im2col(dy_b)ᵀ; db = Σ dy over positions.
    let weight = |out: &mut CudaViewMut<'_, f32>, ex_per: usize, zs: usize, beta: f32| {
        launch_wgrad(dev, OP, &a, x, dy, out, ex_per, zs, beta)
    };
    let bias = |out: &mut CudaViewMut<'_, f32>, ex_per: usize, zs: usize, beta: f32| {
        bias_grad(dev, dy, s.batch, s.cout, g.h * g.w, out, ex_per, zs, beta)
    };
    write_param_grads(dev, OP, s.batch, nw, nb, grad, scratch, &weight, &bias)?;
    if let Some(dx) = dx {
        if s.batch > 0 {
            // dx_b [cin, h·w] = W [cin, cout·k·k] · im2col(dy_b): the adjoint's forward.
            let w = params.slice(..nw);
            launch_fwd(dev, &a, dy, &w, &w, dx)?;
        }
    }
    Ok(())
}
