//! Element-wise activations on the GPU (`kernels/activation.cu`). Same semantics as
//! [`crate::cpu::activation`]: the backward reads `x` for ReLU/LeakyReLU and `y` for
//! Tanh/Sigmoid.

use super::ffi::{DPSGD_ACT_LEAKY_RELU, DPSGD_ACT_RELU, DPSGD_ACT_SIGMOID, DPSGD_ACT_TANH};
use super::grad::{cfg_elems, check_view};
use super::{drv, CudaBackend};
use crate::cpu::activation::Activation;
use crate::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

fn kind(act: Activation) -> Result<(i32, f32)> {
    Ok(match act {
        Activation::Relu => (DPSGD_ACT_RELU as i32, 0.0),
        Activation::LeakyRelu(a) => {
            if !a.is_finite() {
                return Err(Error::invalid("negative_slope", a, "finite"));
            }
            (DPSGD_ACT_LEAKY_RELU as i32, a as f32)
        }
        Activation::Tanh => (DPSGD_ACT_TANH as i32, 0.0),
        Activation::Sigmoid => (DPSGD_ACT_SIGMOID as i32, 0.0),
    })
}

/// GPU twin of [`crate::cpu::activation::activation_forward`]: `y = act(x)` (overwritten).
pub fn activation_forward(
    dev: &CudaBackend,
    act: Activation,
    x: &CudaView<'_, f32>,
    y: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    let (k, slope) = kind(act)?;
    check_view("activation_forward", "y", y.len(), x.len())?;
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    let n64 = n as u64;
    let mut b = dev.stream.launch_builder(&dev.nn.act_fwd);
    b.arg(&k).arg(&slope).arg(&n64).arg(x).arg(y);
    // SAFETY: argument types and order match dpsgd_act_fwd; x and y hold n floats (checked
    // above); grid-stride loop over n.
    unsafe { b.launch(cfg_elems(dev, n)) }.map_err(drv("dpsgd_act_fwd"))?;
    Ok(())
}

/// GPU twin of [`crate::cpu::activation::activation_backward`]: `dx = dy · act'(x)`
/// (overwritten); `x`, `y` are the forward's input and output.
pub fn activation_backward(
    dev: &CudaBackend,
    act: Activation,
    x: &CudaView<'_, f32>,
    y: &CudaView<'_, f32>,
    dy: &CudaView<'_, f32>,
    dx: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    const OP: &str = "activation_backward";
    let (k, slope) = kind(act)?;
    let n = x.len();
    check_view(OP, "y", y.len(), n)?;
    check_view(OP, "dy", dy.len(), n)?;
    check_view(OP, "dx", dx.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let n64 = n as u64;
    let mut b = dev.stream.launch_builder(&dev.nn.act_bwd);
    b.arg(&k)
        .arg(&slope)
        .arg(&n64)
        .arg(x)
        .arg(y)
        .arg(dy)
        .arg(dx);
    // SAFETY: argument types and order match dpsgd_act_bwd; x, y, dy and dx hold n floats
    // (checked above); grid-stride loop over n.
    unsafe { b.launch(cfg_elems(dev, n)) }.map_err(drv("dpsgd_act_bwd"))?;
    Ok(())
}
