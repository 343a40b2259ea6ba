//! Optimizer settings for the fused noisy step, and the step's noise.
//!
//! The fused step computes, for every parameter j,
//! `ĝ_j = (sum_j + σ·C·ξ_j) / E` with ξ_j ~ N(0, 1) drawn inside the kernel (Abadi et al. 2016,
//! Algorithm 1: "add noise", then divide by the (expected) lot size E), and then one optimizer
//! update with ĝ. See [`crate::cpu::optim`] for the exact formulas.

use crate::error::{check_finite, check_non_negative, check_positive, check_range};
use crate::{NoiseKey, Result};

/// SGD with optional momentum, dampening, Nesterov and L2 weight decay, as `torch.optim.SGD`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    /// Learning rate (finite, ≥ 0).
    pub lr: f32,
    /// Momentum μ ∈ [0, 1); 0 disables the momentum buffer.
    pub momentum: f32,
    /// Dampening ∈ [0, 1].
    pub dampening: f32,
    /// L2 weight decay λ ≥ 0 (added to the noisy gradient: ĝ + λp).
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl SgdConfig {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f32) -> Self {
        SgdConfig {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }

    /// Sets the momentum.
    pub fn momentum(mut self, m: f32) -> Self {
        self.momentum = m;
        self
    }

    /// Sets the weight decay.
    pub fn weight_decay(mut self, wd: f32) -> Self {
        self.weight_decay = wd;
        self
    }

    /// Checks every field; called before any noise is drawn.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr as f64)?;
        check_range("momentum", self.momentum as f64, 0.0, 1.0, "in [0, 1)")?;
        check_range(
            "dampening",
            self.dampening as f64,
            0.0,
            1.0 + f64::EPSILON,
            "in [0, 1]",
        )?;
        check_non_negative("weight_decay", self.weight_decay as f64)?;
        Ok(())
    }
}

/// Adam (Kingma & Ba 2015), or AdamW (Loshchilov & Hutter 2019) with `decoupled`, as
/// `torch.optim.Adam` / `torch.optim.AdamW`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// Learning rate (finite, ≥ 0).
    pub lr: f32,
    /// β₁ ∈ [0, 1).
    pub beta1: f32,
    /// β₂ ∈ [0, 1).
    pub beta2: f32,
    /// ε > 0 added to the denominator.
    pub eps: f32,
    /// Weight decay ≥ 0: L2 (added to the gradient) or decoupled (AdamW).
    pub weight_decay: f32,
    /// AdamW's decoupled weight decay: p ← p·(1 − lr·λ) before the Adam update.
    pub decoupled: bool,
}

impl AdamConfig {
    /// Adam with PyTorch's defaults (β = (0.9, 0.999), ε = 1e-8, no weight decay).
    pub fn new(lr: f32) -> Self {
        AdamConfig {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        }
    }

    /// Checks every field; called before any noise is drawn.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr as f64)?;
        check_range("beta1", self.beta1 as f64, 0.0, 1.0, "in [0, 1)")?;
        check_range("beta2", self.beta2 as f64, 0.0, 1.0, "in [0, 1)")?;
        check_positive("eps", self.eps as f64)?;
        check_non_negative("weight_decay", self.weight_decay as f64)?;
        Ok(())
    }
}

/// The DP part of a step: noise standard deviation σ·C, expected batch size E, and the stream.
/// Both numbers are f64 and reach the kernels unrounded; the noised gradient is computed in f64
/// and rounded once to f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoisyStep {
    /// Standard deviation of the noise added to the clipped sum: σ·C (≥ 0; 0 = no noise).
    pub noise_std: f64,
    /// The divisor E: the expected batch size q·N under Poisson sampling (> 0).
    pub expected_batch_size: f64,
    /// The stream of this step's noise (secret: its `Debug` is redacted).
    pub key: NoiseKey,
}

impl NoisyStep {
    /// Noise σ·C for a noise multiplier σ and clipping bound C (the product in f64).
    pub fn new(
        noise_multiplier: f64,
        max_grad_norm: f64,
        expected_batch_size: f64,
        key: NoiseKey,
    ) -> Result<Self> {
        check_non_negative("noise_multiplier", noise_multiplier)?;
        check_positive("max_grad_norm", max_grad_norm)?;
        let s = NoisyStep {
            noise_std: noise_multiplier * max_grad_norm,
            expected_batch_size,
            key,
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks every field; called before any noise is drawn.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("noise_std", self.noise_std)?;
        check_positive("expected_batch_size", self.expected_batch_size)?;
        check_finite("1/expected_batch_size", 1.0 / self.expected_batch_size)?;
        Ok(())
    }
}

/// Adadelta (Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701, 2012,
/// Algorithm 1), with PyTorch's `torch.optim.Adadelta` semantics and defaults (ρ = 0.9,
/// ε = 1e-6, lr = 1.0, no weight decay). For every parameter, with the gradient g:
///
/// ```text
/// g += λ·p;   v = ρv + (1−ρ)g²;   Δ = √(u + ε) / √(v + ε) · g;   u = ρu + (1−ρ)Δ²;   p −= lr·Δ
/// ```
///
/// A plain (non-fused, noise-free) update of a gradient the caller has already formed — e.g.
/// a noised gradient; it adds no privacy of its own (post-processing). The state (v, u) is held
/// by [`Adadelta`]. CPU only: the GPU twin is pending.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdadeltaConfig {
    /// Learning rate (finite, ≥ 0; PyTorch's default 1.0).
    pub lr: f32,
    /// ρ ∈ [0, 1] (default 0.9).
    pub rho: f32,
    /// ε > 0 (default 1e-6).
    pub eps: f32,
    /// L2 weight decay λ ≥ 0 (default 0).
    pub weight_decay: f32,
}

impl Default for AdadeltaConfig {
    /// PyTorch's defaults: lr 1.0, ρ 0.9, ε 1e-6, no weight decay.
    fn default() -> Self {
        AdadeltaConfig {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
        }
    }
}

impl AdadeltaConfig {
    /// The defaults with learning rate `lr`.
    pub fn new(lr: f32) -> Self {
        AdadeltaConfig {
            lr,
            ..Default::default()
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr as f64)?;
        check_range("rho", self.rho as f64, 0.0, 1.0 + f64::EPSILON, "in [0, 1]")?;
        check_positive("eps", self.eps as f64)?;
        check_non_negative("weight_decay", self.weight_decay as f64)?;
        Ok(())
    }
}

/// An Adadelta optimizer over a flat parameter vector: the [`AdadeltaConfig`] and its state
/// (the running averages of g² and Δ², zero at the start as in PyTorch).
#[derive(Clone, Debug, PartialEq)]
pub struct Adadelta {
    /// The settings (the learning rate may be changed between steps, e.g. by [`StepLr`]).
    pub config: AdadeltaConfig,
    square_avg: Vec<f32>,
    acc_delta: Vec<f32>,
    steps: u64,
}

impl Adadelta {
    /// An optimizer for `num_params` parameters. Errors on an invalid configuration or
    /// `num_params = 0`.
    pub fn new(config: AdadeltaConfig, num_params: usize) -> Result<Self> {
        config.validate()?;
        if num_params == 0 {
            return Err(crate::Error::invalid("num_params", 0, ">= 1"));
        }
        Ok(Adadelta {
            config,
            square_avg: vec![0.0; num_params],
            acc_delta: vec![0.0; num_params],
            steps: 0,
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update of `params` with gradient `grad` (both P values; see [`AdadeltaConfig`] for
    /// the formula). Validates everything (lengths, the configuration, a finite gradient)
    /// before changing anything.
    pub fn step(&mut self, params: &mut [f32], grad: &[f32]) -> Result<()> {
        self.config.validate()?;
        crate::cpu::optim::adadelta_step(
            params,
            grad,
            &mut self.square_avg,
            &mut self.acc_delta,
            &self.config,
        )?;
        self.steps += 1;
        Ok(())
    }

    /// [`Adadelta::step`] on [`crate::Buffer`]s (CPU buffers; a GPU buffer is an error: the
    /// GPU twin is pending).
    pub fn step_buffers(
        &mut self,
        params: &mut crate::Buffer<f32>,
        grad: &crate::Buffer<f32>,
    ) -> Result<()> {
        let no_gpu = || {
            crate::Error::invalid(
                "device",
                "Cuda",
                "CPU buffers: Adadelta's GPU twin is pending",
            )
        };
        let g = grad.as_slice().ok_or_else(no_gpu)?;
        let p = params.as_mut_slice().ok_or_else(no_gpu)?;
        self.step(p, g)
    }
}

/// PyTorch's `StepLR`: the learning rate of epoch `e` (0-based) is
/// `base_lr · γ^⌊e / step_size⌋`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepLr {
    /// The learning rate of the first `step_size` epochs (finite, ≥ 0).
    pub base_lr: f64,
    /// The multiplicative decay γ (finite, > 0).
    pub gamma: f64,
    /// Epochs between decays (≥ 1).
    pub step_size: u64,
}

impl StepLr {
    /// A schedule; errors on a negative or non-finite rate, γ ≤ 0, or `step_size = 0`.
    pub fn new(base_lr: f64, gamma: f64, step_size: u64) -> Result<Self> {
        check_non_negative("base_lr", base_lr)?;
        check_positive("gamma", gamma)?;
        if step_size == 0 {
            return Err(crate::Error::invalid("step_size", 0, ">= 1 epoch"));
        }
        Ok(StepLr {
            base_lr,
            gamma,
            step_size,
        })
    }

    /// The learning rate of epoch `epoch` (0-based).
    pub fn lr(&self, epoch: u64) -> f64 {
        let k = (epoch / self.step_size).min(i32::MAX as u64) as i32;
        self.base_lr * self.gamma.powi(k)
    }
}
