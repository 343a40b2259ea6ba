//! Fused noisy optimizer steps on the CPU: the reference twins of `kernels/optim.cu`.
//!
//! DP-SGD (Abadi et al., CCS 2016, Algorithm 1) adds Gaussian noise N(0, σ²C²) to the sum of
//! clipped per-example gradients and divides by the (expected) lot size E. Here the noise is
//! drawn inside the update, element by element, from the same stream as
//! [`add_gaussian`](crate::cpu::noise::add_gaussian) (no noise buffer). For every j:
//!
//! ```text
//! ĝ = (sum_j + σC·ξ_j) / E                    ξ_j ~ N(0,1) from noisy.key (σC = noisy.noise_std)
//! SGD:   ĝ += λ·p;  if μ > 0 { m = μ·m + (1−d)·ĝ;  ĝ = nesterov ? ĝ + μ·m : m };  p −= lr·ĝ
//! Adam:  decoupled ? p ·= (1 − lr·λ) : ĝ += λ·p
//!        m = β₁m + (1−β₁)ĝ;  v = β₂v + (1−β₂)ĝ²;  p −= lr · (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)
//! ```
//!
//! Momentum buffers start at zero (PyTorch initialises them with the first gradient, which
//! differs only when dampening ≠ 0).

use crate::check;
use crate::cpu::noise::{normals, RUN};
use crate::optim::{AdamConfig, NoisyStep, SgdConfig};
use crate::Result;
use rayon::prelude::*;

/// Elements per parallel task (a multiple of 16: tasks own whole noise groups).
const TASK: usize = 4 * 1024;

/// The noised mean gradients ĝ_j = (sum_j + σC·ξ_j)/E of the `out.len()` (≤ [`RUN`]) elements
/// from group `g` on, computed in f64 and rounded once to f32 (the kernels compute the same with
/// explicitly rounded f64 ops).
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn noisy_run(noisy: &NoisyStep, g: u64, s: &[f32], out: &mut [f32]) {
    let inv = 1.0 / noisy.expected_batch_size;
    let mut z = [0.0; RUN];
    if noisy.noise_std != 0.0 {
        normals(&noisy.key, g, &mut z[..out.len()]);
    }
    for ((o, &sj), zj) in out.iter_mut().zip(s).zip(z) {
        *o = ((sj as f64 + noisy.noise_std * zj) * inv) as f32;
    }
}

/// One fused noisy SGD step over the flat parameters (see the module docs for the formula).
///
/// `momentum_buf` must be given (length P) when `cfg.momentum > 0`. All parameters are
/// validated before any noise is drawn.
pub fn noisy_sgd_step(
    params: &mut [f32],
    grad_sum: &[f32],
    momentum_buf: Option<&mut [f32]>,
    cfg: &SgdConfig,
    noisy: &NoisyStep,
) -> Result<()> {
    check::sgd(
        params.len(),
        grad_sum.len(),
        momentum_buf.as_ref().map(|m| m.len()),
        cfg,
        noisy,
    )?;
    let has_m = cfg.momentum > 0.0;
    let mut dummy = [];
    let mbuf: &mut [f32] = match momentum_buf {
        Some(m) if has_m => m,
        _ => &mut dummy,
    };
    let run = |t: usize, p: &mut [f32], s: &[f32], mut m: Option<&mut [f32]>| {
        let g0 = (t * TASK / 16) as u64;
        let mut gh = [0f32; RUN];
        for (k, pq) in p.chunks_mut(RUN).enumerate() {
            noisy_run(
                noisy,
                g0 + (k * RUN / 16) as u64,
                &s[RUN * k..],
                &mut gh[..pq.len()],
            );
            for i in 0..pq.len() {
                let j = RUN * k + i;
                let pj = pq[i];
                let mut g = gh[i];
                g += cfg.weight_decay * pj;
                if let Some(m) = m.as_deref_mut() {
                    let mj = cfg.momentum * m[j] + (1.0 - cfg.dampening) * g;
                    m[j] = mj;
                    g = if cfg.nesterov {
                        cfg.momentum * mj + g
                    } else {
                        mj
                    };
                }
                pq[i] = (-cfg.lr) * g + pj;
            }
        }
    };
    if has_m {
        params
            .par_chunks_mut(TASK)
            .zip(grad_sum.par_chunks(TASK))
            .zip(mbuf.par_chunks_mut(TASK))
            .enumerate()
            .for_each(|(t, ((p, s), m))| run(t, p, s, Some(m)));
    } else {
        params
            .par_chunks_mut(TASK)
            .zip(grad_sum.par_chunks(TASK))
            .enumerate()
            .for_each(|(t, (p, s))| run(t, p, s, None));
    }
    Ok(())
}

/// One fused noisy Adam/AdamW step; `t` is the 1-based step count (for bias correction).
/// All parameters are validated before any noise is drawn.
pub fn noisy_adam_step(
    params: &mut [f32],
    grad_sum: &[f32],
    m1: &mut [f32],
    m2: &mut [f32],
    t: u64,
    cfg: &AdamConfig,
    noisy: &NoisyStep,
) -> Result<()> {
    check::adam(
        params.len(),
        grad_sum.len(),
        m1.len(),
        m2.len(),
        t,
        cfg,
        noisy,
    )?;
    let (bc1, bc2) = check::bias_corrections(cfg, t);
    params
        .par_chunks_mut(TASK)
        .zip(grad_sum.par_chunks(TASK))
        .zip(m1.par_chunks_mut(TASK).zip(m2.par_chunks_mut(TASK)))
        .enumerate()
        .for_each(|(ti, ((p, s), (m, v)))| {
            let g0 = (ti * TASK / 16) as u64;
            let mut gh = [0f32; RUN];
            for (k, pq) in p.chunks_mut(RUN).enumerate() {
                noisy_run(
                    noisy,
                    g0 + (k * RUN / 16) as u64,
                    &s[RUN * k..],
                    &mut gh[..pq.len()],
                );
                for i in 0..pq.len() {
                    let j = RUN * k + i;
                    let mut pj = pq[i];
                    let mut g = gh[i];
                    if cfg.decoupled {
                        pj *= 1.0 - cfg.lr * cfg.weight_decay;
                    } else {
                        g += cfg.weight_decay * pj;
                    }
                    let mj = cfg.beta1 * m[j] + (1.0 - cfg.beta1) * g;
                    let vj = cfg.beta2 * v[j] + (1.0 - cfg.beta2) * g * g;
                    m[j] = mj;
                    v[j] = vj;
                    let denom = (vj / bc2).sqrt() + cfg.eps;
                    pq[i] = pj - cfg.lr * (mj / bc1) / denom;
                }
            }
        });
    Ok(())
}

/// The noised mean gradient `out[j] = (grad_sum[j] + σC·ξ_j) / E` (ξ_j the same element
/// [`add_gaussian`](crate::cpu::noise::add_gaussian) draws for j; computed in f64 and rounded
/// once), for trainers that run their own optimizer. Parameters are validated before any noise
/// is drawn.
pub fn noisy_mean(out: &mut [f32], grad_sum: &[f32], noisy: &NoisyStep) -> Result<()> {
    check::noisy_mean(out.len(), grad_sum.len(), noisy)?;
    out.par_chunks_mut(TASK)
        .zip(grad_sum.par_chunks(TASK))
        .enumerate()
        .for_each(|(t, (o, s))| {
            let g0 = (t * TASK / 16) as u64;
            for (k, oq) in o.chunks_mut(RUN).enumerate() {
                noisy_run(noisy, g0 + (k * RUN / 16) as u64, &s[RUN * k..], oq);
            }
        });
    Ok(())
}

/// One Adadelta update (PyTorch's `torch.optim.Adadelta`; formula in
/// [`crate::optim::AdadeltaConfig`]), element by element in f32 as PyTorch computes it.
/// `square_avg` and `acc_delta` are the state (P values each). Checks every length and that
/// the gradient is finite before changing anything. GPU twin: pending.
pub fn adadelta_step(
    params: &mut [f32],
    grad: &[f32],
    square_avg: &mut [f32],
    acc_delta: &mut [f32],
    cfg: &crate::optim::AdadeltaConfig,
) -> Result<()> {
    use crate::cpu::grad::check_len;
    cfg.validate()?;
    let p = params.len();
    check_len("adadelta_step", "grad", grad.len(), p)?;
    check_len("adadelta_step", "square_avg", square_avg.len(), p)?;
    check_len("adadelta_step", "acc_delta", acc_delta.len(), p)?;
    if let Some(j) = grad.iter().position(|g| !g.is_finite()) {
        return Err(crate::Error::NonFinite {
            what: "gradient",
            detail: format!("element {j} is {}", grad[j]),
        });
    }
    let (lr, rho, eps, wd) = (cfg.lr, cfg.rho, cfg.eps, cfg.weight_decay);
    params
        .par_chunks_mut(TASK)
        .zip(grad.par_chunks(TASK))
        .zip(square_avg.par_chunks_mut(TASK))
        .zip(acc_delta.par_chunks_mut(TASK))
        .for_each(|(((p, g), v), u)| {
            for j in 0..p.len() {
                let mut gj = g[j];
                if wd != 0.0 {
                    gj += wd * p[j];
                }
                v[j] = v[j] * rho + (1.0 - rho) * gj * gj;
                let std = (v[j] + eps).sqrt();
                let delta = (u[j] + eps).sqrt() / std * gj;
                u[j] = u[j] * rho + (1.0 - rho) * delta * delta;
                p[j] -= lr * delta;
            }
        });
    Ok(())
}
