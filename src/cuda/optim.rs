//! Fused noisy optimizer steps on the GPU (`kernels/optim.cu`). Same signatures and semantics
//! as [`crate::cpu::optim`].

use super::ffi::{DpsgdAdamParams, DpsgdSgdParams, DPSGD_BLOCK};
use super::noise::ffi_key;
use super::{drv, CudaBackend};
use crate::check;
use crate::optim::{AdamConfig, NoisyStep, SgdConfig};
use crate::Result;
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

fn cfg(dev: &CudaBackend, n: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (dev.grid_for(n.div_ceil(4)), 1, 1),
        block_dim: (DPSGD_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// GPU twin of [`crate::cpu::optim::noisy_sgd_step`].
pub fn noisy_sgd_step(
    dev: &CudaBackend,
    params: &mut CudaViewMut<'_, f32>,
    grad_sum: &CudaView<'_, f32>,
    momentum_buf: Option<&mut CudaViewMut<'_, f32>>,
    cfg_: &SgdConfig,
    noisy: &NoisyStep,
) -> Result<()> {
    check::sgd(
        params.len(),
        grad_sum.len(),
        momentum_buf.as_ref().map(|m| m.len()),
        cfg_,
        noisy,
    )?;
    let n = params.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let has_m = cfg_.momentum > 0.0;
    let a = DpsgdSgdParams {
        key: ffi_key(noisy.key),
        n,
        lr: cfg_.lr,
        momentum: cfg_.momentum,
        dampening: cfg_.dampening,
        weight_decay: cfg_.weight_decay,
        noise_std: noisy.noise_std,
        inv_batch: 1.0 / noisy.expected_batch_size,
        nesterov: cfg_.nesterov as i32,
        has_momentum: has_m as i32,
    };
    let null: u64 = 0;
    let mut l = dev.stream.launch_builder(&dev.k.noisy_sgd);
    l.arg(&mut *params).arg(grad_sum);
    match momentum_buf {
        Some(m) if has_m => {
            l.arg(m);
        }
        _ => {
            l.arg(&null);
        }
    }
    l.arg(&a);
    // SAFETY: types and order match dpsgd_noisy_sgd (param, grad_sum, momentum_buf, params);
    // all buffers hold n floats (checked above); the momentum pointer is null exactly when
    // has_momentum is 0, and the kernel touches it only when has_momentum is 1.
    unsafe { l.launch(cfg(dev, n)) }.map_err(drv("dpsgd_noisy_sgd"))?;
    Ok(())
}

/// GPU twin of [`crate::cpu::optim::noisy_adam_step`].
#[allow(clippy::too_many_arguments)]
pub fn noisy_adam_step(
    dev: &CudaBackend,
    params: &mut CudaViewMut<'_, f32>,
    grad_sum: &CudaView<'_, f32>,
    m1: &mut CudaViewMut<'_, f32>,
    m2: &mut CudaViewMut<'_, f32>,
    t: u64,
    cfg_: &AdamConfig,
    noisy: &NoisyStep,
) -> Result<()> {
    check::adam(
        params.len(),
        grad_sum.len(),
        m1.len(),
        m2.len(),
        t,
        cfg_,
        noisy,
    )?;
    let n = params.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let (bc1, bc2) = check::bias_corrections(cfg_, t);
    let a = DpsgdAdamParams {
        key: ffi_key(noisy.key),
        n,
        lr: cfg_.lr,
        beta1: cfg_.beta1,
        beta2: cfg_.beta2,
        eps: cfg_.eps,
        weight_decay: cfg_.weight_decay,
        noise_std: noisy.noise_std,
        inv_batch: 1.0 / noisy.expected_batch_size,
        bias_correction1: bc1,
        bias_correction2: bc2,
        decoupled: cfg_.decoupled as i32,
    };
    let mut l = dev.stream.launch_builder(&dev.k.noisy_adam);
    l.arg(&mut *params)
        .arg(grad_sum)
        .arg(&mut *m1)
        .arg(&mut *m2)
        .arg(&a);
    // SAFETY: types and order match dpsgd_noisy_adam; all four buffers hold n floats (checked).
    unsafe { l.launch(cfg(dev, n)) }.map_err(drv("dpsgd_noisy_adam"))?;
    Ok(())
}

/// GPU twin of [`crate::cpu::optim::noisy_mean`].
pub fn noisy_mean(
    dev: &CudaBackend,
    out: &mut CudaViewMut<'_, f32>,
    grad_sum: &CudaView<'_, f32>,
    noisy: &NoisyStep,
) -> Result<()> {
    check::noisy_mean(out.len(), grad_sum.len(), noisy)?;
    let n = out.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let key = ffi_key(noisy.key);
    let inv = 1.0f64 / noisy.expected_batch_size;
    let mut l = dev.stream.launch_builder(&dev.k.noisy_mean);
    l.arg(&mut *out)
        .arg(grad_sum)
        .arg(&n)
        .arg(&noisy.noise_std)
        .arg(&inv)
        .arg(&key);
    // SAFETY: types and order match dpsgd_noisy_mean (out, grad_sum, n, noise_std, inv_batch,
    // key); both buffers hold n floats (checked above) and the kernel bounds every access by n.
    unsafe { l.launch(cfg(dev, n)) }.map_err(drv("dpsgd_noisy_mean"))?;
    Ok(())
}
