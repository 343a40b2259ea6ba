//! The private training engine, in the spirit of Opacus's `make_private`, usable without our
//! layers: hand it the `[B, P]` per-sample gradients of a Poisson-sampled batch (any number of
//! physical batches per logical step), and it clips, accumulates, adds noise, steps (or returns
//! the noised mean gradient) and accounts.
//!
//! One DP-SGD step (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016,
//! Algorithm 1) over a lot L sampled with rate q from N examples:
//!
//! ```text
//! ḡ = ( Σ_{i ∈ L} clip_C(g_i) + N(0, σ²C²·I) ) / (q·N)      then θ ← optimizer(θ, ḡ)
//! ```
//!
//! The divisor is the *expected* lot size q·N (not |L|): with Poisson sampling the lot size is
//! itself data-dependent, and dividing by it would leak (Opacus does the same).
//!
//! # Privacy bookkeeping
//! - Every step — including one whose lot is empty — is recorded in the accountant
//!   ([`crate::accounting`]) before its noisy result is released.
//! - With a target ε the engine refuses ([`Error::BudgetExhausted`]) a step that would take ε
//!   past the target, before any noise is drawn (Opacus only reports).
//! - Step `t` draws its noise from stream `t << 16` of the run's
//!   [`Purpose::GradientNoise`](crate::rng::Purpose) key ([`NoiseKey::for_step_with`]): a fresh
//!   stream per step, under a key no other purpose (initialisation, sampling) uses, never
//!   reused, also across resumed runs (the step counter is checkpointed).
//! - In secure mode the key is derived from a 256-bit OS key and the noise is ChaCha20 with the
//!   sum-of-four-normals hardening ([`crate::noise`]); the key is never printed, formatted
//!   (`Debug` is written by hand) or saved: a resumed secure run draws a new key.
//! - Everything a step needs is validated before the step is recorded; a step that fails after
//!   it is recorded stays recorded (ε only over-counts) and its lot is cleared, so the next
//!   step never releases two lots under one noise draw.
//! - The noise standard deviation σ·√ΣC² is computed in f64 and reaches the kernels unrounded.
//! - The samplers' truncation (probability 2⁻⁷⁶ per Box–Muller pair, [`crate::noise`]) is
//!   charged to δ: ε is reported at δ − (1 + e^ε)·η where η sums the truncation mass of every
//!   step, and calibration plans for it.

use crate::accounting::{self, Accountant, Method, PrivacyAccountant};
use crate::check;
use crate::ops::{self, ClipStats, ClipWorkspace, Clipping};
use crate::optim::{AdamConfig, NoisyStep, SgdConfig};
use crate::rng::{Purpose, RunKeys, StreamKey};
use crate::{Buffer, Device, Error, GradElement, Layout, NoiseKey, Result};
use serde::{Deserialize, Serialize};

/// How much noise: a fixed noise multiplier σ, or the smallest σ that keeps ε ≤ target over the
/// planned number of steps (calibrated with the configured accountant).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseSpec {
    /// A fixed noise multiplier σ ≥ 0 (ε is reported, not bounded).
    NoiseMultiplier(f64),
    /// A target ε > 0: σ is calibrated for `steps`, and steps beyond the budget are refused.
    TargetEpsilon(f64),
}

/// The privacy configuration of a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivacyConfig {
    /// Noise multiplier or target ε.
    pub noise: NoiseSpec,
    /// δ ∈ (0, 1).
    pub delta: f64,
    /// Flat or per-layer clipping bounds.
    pub clipping: Clipping,
    /// Poisson sampling rate q ∈ (0, 1].
    pub sample_rate: f64,
    /// Dataset size N (the expected lot size is q·N).
    pub dataset_size: usize,
    /// The number of steps the run plans (for calibration with a target ε).
    pub planned_steps: u64,
    /// RDP or PRV accounting.
    pub accountant: Method,
}

impl PrivacyConfig {
    /// Checks every field (before anything is drawn).
    pub fn validate(&self) -> Result<()> {
        match self.noise {
            NoiseSpec::NoiseMultiplier(s) => {
                if !(s.is_finite() && s >= 0.0) {
                    return Err(Error::invalid("noise_multiplier", s, "finite and >= 0"));
                }
            }
            NoiseSpec::TargetEpsilon(e) => {
                if !(e.is_finite() && e > 0.0) {
                    return Err(Error::invalid("epsilon", e, "finite and > 0"));
                }
            }
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(Error::invalid("delta", self.delta, "in (0, 1)"));
        }
        if !(self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
            return Err(Error::invalid("sample_rate", self.sample_rate, "in (0, 1]"));
        }
        if self.dataset_size == 0 {
            return Err(Error::invalid("dataset_size", 0, ">= 1"));
        }
        if self.planned_steps == 0 {
            return Err(Error::invalid("planned_steps", 0, ">= 1"));
        }
        check::max_norms(self.clipping.bounds())
    }

    /// The expected lot size q·N, the divisor of the noisy sum.
    pub fn expected_batch_size(&self) -> f64 {
        self.sample_rate * self.dataset_size as f64
    }
}

/// The engine's resumable state (serde): the accountant, the step counter and — outside secure
/// mode — the noise seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EngineState {
    /// The accountant with every step taken so far.
    pub accountant: Accountant,
    /// Steps taken (the next step's noise subsequence).
    pub step: u64,
    /// The noise seed; `None` in secure mode (a resumed run draws a fresh OS seed).
    pub seed: Option<u64>,
    /// The calibrated (or given) noise multiplier.
    pub noise_multiplier: f64,
    /// The noise samplers' truncation mass summed over the steps taken ([`crate::noise`]).
    #[serde(default)]
    pub truncation_mass: f64,
}

/// The private training engine. See the module docs. Holds a secret key: its `Debug` is
/// written by hand and shows no key.
///
/// ```
/// use dpsgd::accounting::Method;
/// use dpsgd::engine::{NoiseSpec, PrivacyConfig, PrivacyEngine};
/// use dpsgd::{Buffer, Clipping, Device, Layout, SgdConfig};
/// let device = Device::Cpu;
/// let layout = Layout::from_sizes(&[3, 1])?; // a weight of 3 values and a bias: P = 4
/// let cfg = PrivacyConfig {
///     noise: NoiseSpec::NoiseMultiplier(1.0),
///     delta: 1e-5,
///     clipping: Clipping::Flat(1.0),
///     sample_rate: 0.01,
///     dataset_size: 1000,
///     planned_steps: 100,
///     accountant: Method::Rdp,
/// };
/// let mut engine = PrivacyEngine::new(cfg, layout, &device, Some(1))?; // None: secure mode
/// // Two examples' gradients, one row of P values each; the second is clipped to norm 1.
/// let rows = Buffer::from_slice(&device, &[0.1f32, -0.2, 0.3, 0.05, 3.0, 4.0, 0.0, 0.0])?;
/// engine.accumulate(&rows, 2)?;
/// let mut params = Buffer::from_slice(&device, &[0.0f32; 4])?;
/// engine.step_sgd(&mut params, None, &SgdConfig::new(0.1))?; // noise, divide by q·N, step
/// assert_eq!(engine.steps(), 1);
/// let eps = engine.epsilon()?; // (RDP) at δ = 1e-5
/// assert!(eps > 0.0 && eps.is_finite());
/// # Ok::<(), dpsgd::Error>(())
/// ```
pub struct PrivacyEngine {
    cfg: PrivacyConfig,
    sigma: f64,
    layout: Layout,
    device: Device,
    accountant: Accountant,
    step: u64,
    /// The seed of a seeded run (`None` in secure mode).
    seed: Option<u64>,
    /// The run's gradient-noise key.
    noise_key: StreamKey,
    /// Truncation mass of the steps taken.
    trunc: f64,
    ws: ClipWorkspace,
    sum: Buffer<f32>,
    rows: usize,
    /// `accumulate_model`'s per-sample matrix on a GPU (allocated on first use).
    rows_buf: Option<Buffer<f32>>,
    allowed: Option<(u64, u64)>,
}

impl std::fmt::Debug for PrivacyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivacyEngine")
            .field("config", &self.cfg)
            .field("noise_multiplier", &self.sigma)
            .field("layout", &self.layout)
            .field("device", &self.device)
            .field("steps", &self.step)
            .field("secure", &self.seed.is_none())
            .field("noise_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl PrivacyEngine {
    /// An engine for a model with `layout` on `device`. `seed: None` = secure mode (a 256-bit
    /// key from the OS, ChaCha20 noise, never logged or saved); `Some(s)` = reproducible runs
    /// (tests, experiments; Philox). With a target ε, σ is calibrated here (bisection; the
    /// returned σ never exceeds the target over `planned_steps`, truncation included).
    pub fn new(
        cfg: PrivacyConfig,
        layout: Layout,
        device: &Device,
        seed: Option<u64>,
    ) -> Result<Self> {
        cfg.validate()?;
        Self::with_keys(cfg, layout, device, &RunKeys::from_seed(seed)?)
    }

    /// [`PrivacyEngine::new`] with the run's keys (a trainer derives its sampling and
    /// initialisation keys from the same [`RunKeys`]; the engine uses
    /// [`Purpose::GradientNoise`]'s).
    pub fn with_keys(
        cfg: PrivacyConfig,
        layout: Layout,
        device: &Device,
        keys: &RunKeys,
    ) -> Result<Self> {
        Self::with_keys_after(cfg, layout, device, keys, &[], 0.0)
    }

    /// [`PrivacyEngine::with_keys`] for a run that follows earlier releases of the same data:
    /// `prior` (their accounting entries, e.g.
    /// [`FeatureStatsConfig::history`](crate::mechanisms::feature_stats::FeatureStatsConfig::history))
    /// starts the accountant, so every ε the engine reports (RDP and PRV, from before the first
    /// step on) is that of the composition; `prior_truncation_mass` is their noise samplers'
    /// truncation mass, charged to δ with the steps' own. With a target ε, σ is calibrated for
    /// the whole composition ([`accounting::calibrate_after`]): the prior's cost comes out of
    /// the target.
    pub fn with_keys_after(
        cfg: PrivacyConfig,
        layout: Layout,
        device: &Device,
        keys: &RunKeys,
        prior: &[accounting::HistoryEntry],
        prior_truncation_mass: f64,
    ) -> Result<Self> {
        cfg.validate()?;
        prior
            .iter()
            .try_for_each(accounting::HistoryEntry::validate)?;
        if !(prior_truncation_mass.is_finite() && prior_truncation_mass >= 0.0) {
            return Err(Error::invalid(
                "prior_truncation_mass",
                prior_truncation_mass,
                "finite and >= 0",
            ));
        }
        if let Clipping::PerLayer(v) = &cfg.clipping {
            if v.len() != layout.num_segments() {
                return Err(Error::shape(
                    "PrivacyEngine::new",
                    format!(
                        "{} per-layer bounds for {} parameter tensors",
                        v.len(),
                        layout.num_segments()
                    ),
                ));
            }
        }
        let noise_key = keys.key(Purpose::GradientNoise);
        let per_step = crate::noise::gaussian_truncation_mass(
            layout.num_params() as u64,
            noise_key.generator(),
        );
        let sigma = match cfg.noise {
            NoiseSpec::NoiseMultiplier(s) => s,
            NoiseSpec::TargetEpsilon(eps) => {
                // Plan for the truncation term at the target: ε(δ − (1 + e^ε)·η) ≤ target.
                let tau = (1.0 + eps.exp())
                    * (per_step * cfg.planned_steps as f64 + prior_truncation_mass);
                if tau.is_nan() || tau > cfg.delta / 2.0 {
                    return Err(Error::invalid(
                        "delta",
                        cfg.delta,
                        format!(
                            "> 2·(1 + e^ε)·(noise truncation mass {tau:.3e}): raise δ or lower ε"
                        ),
                    ));
                }
                accounting::calibrate_after(
                    cfg.accountant,
                    prior,
                    eps,
                    cfg.delta - tau,
                    cfg.sample_rate,
                    cfg.planned_steps,
                    1e-3,
                )?
                .noise_multiplier
            }
        };
        let mut accountant = Accountant::new(cfg.accountant);
        for e in prior {
            accountant.step_many(e.noise_multiplier, e.sample_rate, e.steps)?;
        }
        let ws = ClipWorkspace::new(device, 1, &layout)?;
        let sum = Buffer::zeros(device, layout.num_params())?;
        Ok(PrivacyEngine {
            sigma,
            layout,
            device: device.clone(),
            accountant,
            step: 0,
            seed: keys.seed(),
            noise_key,
            trunc: prior_truncation_mass,
            ws,
            sum,
            rows: 0,
            rows_buf: None,
            allowed: None,
            cfg,
        })
    }

    /// Restores a saved state (a resumed run). The configuration must be the run's own.
    pub fn restore(&mut self, state: EngineState) -> Result<()> {
        if !(state.noise_multiplier.is_finite() && state.noise_multiplier >= 0.0) {
            return Err(Error::invalid(
                "noise_multiplier",
                state.noise_multiplier,
                "finite and >= 0",
            ));
        }
        if state.accountant.method != self.cfg.accountant {
            return Err(Error::invalid(
                "accountant",
                format!("{:?}", state.accountant.method),
                format!("the run's own accountant ({:?})", self.cfg.accountant),
            ));
        }
        if !(state.truncation_mass.is_finite() && state.truncation_mass >= 0.0) {
            return Err(Error::invalid(
                "truncation_mass",
                state.truncation_mass,
                "finite and >= 0",
            ));
        }
        let keys = match state.seed {
            Some(s) if self.seed.is_some() => RunKeys::seeded(s),
            // Secure mode (or a secure checkpoint): a fresh key. Streams continue from `step`,
            // so no (key, stream) pair repeats either way.
            _ => RunKeys::secure()?,
        };
        self.accountant = state.accountant;
        self.step = state.step;
        self.sigma = state.noise_multiplier;
        self.trunc = state.truncation_mass;
        self.seed = keys.seed();
        self.noise_key = keys.key(Purpose::GradientNoise);
        self.allowed = None;
        self.clear_lot()
    }

    /// The state to checkpoint (no key material in secure mode).
    pub fn state(&self) -> EngineState {
        EngineState {
            accountant: self.accountant.clone(),
            step: self.step,
            seed: self.seed,
            noise_multiplier: self.sigma,
            truncation_mass: self.trunc,
        }
    }

    /// The noise key's words (tests that no output holds them).
    #[cfg(test)]
    pub(crate) fn noise_key_words(&self) -> [u32; 8] {
        *self.noise_key.words()
    }

    /// Whether the engine runs in secure mode (OS key, ChaCha20 noise).
    pub fn is_secure(&self) -> bool {
        self.seed.is_none()
    }

    /// The truncation mass of one step's noise ([`crate::noise::gaussian_truncation_mass`]).
    pub fn truncation_mass_per_step(&self) -> f64 {
        crate::noise::gaussian_truncation_mass(
            self.layout.num_params() as u64,
            self.noise_key.generator(),
        )
    }

    /// The noise samplers' truncation mass η summed over the steps taken: the total-variation
    /// bound between this run's noise and ideal Gaussian noise ([`crate::noise`]).
    pub fn truncation_mass(&self) -> f64 {
        self.trunc
    }

    /// ε under `method` for `entries` at the configured δ, charging the truncation mass
    /// `mass`: ε(δ − (1 + e^ε)·mass), with e^ε bounded by ε(δ/2) (module docs); infinite when
    /// (1 + e^ε(δ/2))·mass exceeds δ/2 (ε is then astronomically large anyway, e.g. σ = 0).
    fn epsilon_of(
        &self,
        method: Method,
        entries: &[accounting::HistoryEntry],
        mass: f64,
    ) -> Result<f64> {
        let delta = self.cfg.delta;
        if mass == 0.0 {
            return accounting::epsilon(method, entries, delta);
        }
        let hi = accounting::epsilon(method, entries, delta / 2.0)?;
        let tau = (1.0 + hi.exp()) * mass;
        if tau.is_nan() || tau > delta / 2.0 {
            // ε is so large (e.g. σ = 0) that e^ε·η exceeds δ/2: no finite ε can be certified
            // at this δ with this argument.
            return Ok(f64::INFINITY);
        }
        accounting::epsilon(method, entries, delta - tau)
    }

    /// The device the lot's sum lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The configuration.
    pub fn config(&self) -> &PrivacyConfig {
        &self.cfg
    }

    /// The noise multiplier σ in use (calibrated when a target ε was given).
    pub fn noise_multiplier(&self) -> f64 {
        self.sigma
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The accountant (every step so far).
    pub fn accountant(&self) -> &Accountant {
        &self.accountant
    }

    /// ε spent so far at the configured δ (0 before the first step, unless the engine was made
    /// after earlier releases: [`PrivacyEngine::with_keys_after`]).
    ///
    /// The noise samplers' truncation is charged to δ ([`PrivacyEngine::truncation_mass`]):
    /// the value is ε at δ − (1 + e^ε)·η, so the run is (ε, δ)-DP with the samplers as they
    /// are, not only with ideal Gaussians.
    pub fn epsilon(&self) -> Result<f64> {
        self.epsilon_with(self.cfg.accountant)
    }

    /// ε so far under `method` (e.g. to report RDP and PRV side by side), truncation charged
    /// as in [`PrivacyEngine::epsilon`].
    pub fn epsilon_with(&self, method: Method) -> Result<f64> {
        if self.accountant.history().entries().is_empty() {
            return Ok(0.0);
        }
        self.epsilon_of(method, self.accountant.history().entries(), self.trunc)
    }

    /// Clips a physical batch of per-sample gradients (`grads`: `[batch, P]`, on the engine's
    /// device) and adds them to the current lot's sum. Call once per physical batch, then one
    /// of the step functions. NaN/Inf gradients are an error (nothing is added).
    pub fn accumulate<T: GradElement>(
        &mut self,
        grads: &Buffer<T>,
        batch: usize,
    ) -> Result<ClipStats> {
        let st = ops::clip_and_accumulate(
            grads,
            batch,
            &self.layout,
            &self.cfg.clipping,
            &mut self.ws,
            &mut self.sum,
        )?;
        self.rows += batch;
        Ok(st)
    }

    /// Clips and accumulates the per-sample gradients of `model`'s last forward and loss (the
    /// physical batch in `ws`), like [`PrivacyEngine::accumulate`] on the rows that
    /// `model.backward(ws, Grads::PerSample(..))` would give — the same norms and factors,
    /// the sum equal up to f32 rounding order. On the CPU the clipping is fused into the
    /// backward ([`Grads::ClippedSum`]): each small group of examples is clipped while its
    /// rows are in cache and the `[B, P]` matrix is never written; on a GPU the rows go to a
    /// buffer the engine keeps (allocated on first use) and through the clipping kernels.
    /// The engine's layout must be the model's parameter count; model and engine must be on
    /// the same device. NaN/Inf gradients are an error, naming the example; nothing of that
    /// batch is added.
    ///
    /// [`Grads::ClippedSum`]: crate::nn::Grads::ClippedSum
    pub fn accumulate_model(
        &mut self,
        model: &crate::nn::Sequential,
        ws: &mut crate::nn::Workspace,
    ) -> Result<ClipStats> {
        use crate::nn::Grads;
        self.check_model(model)?;
        if ws.mean_reduced() {
            return Err(Error::invalid(
                "reduction",
                "Mean",
                "Reduction::Sum in the loss before accumulate_model: under Mean each example's gradient depends on the realised batch size (sensitivity 2C, not C)",
            ));
        }
        let p = model.num_params();
        let batch = ws.batch();
        if self.device.is_cuda() {
            let need = ws.max_batch() * p;
            if self.rows_buf.as_ref().is_none_or(|b| b.len() < need) {
                self.rows_buf = Some(Buffer::zeros(&self.device, need)?);
            }
            let mut rows = self.rows_buf.take().expect("allocated above");
            let r = model
                .backward(ws, Grads::PerSample(&mut rows), false)
                .and_then(|()| self.accumulate(&rows, batch));
            self.rows_buf = Some(rows);
            return r;
        }
        model.backward(ws, self.clipped_sum(), false)?;
        self.rows += batch;
        Ok(ClipStats { batch })
    }

    /// One physical batch end to end: `model`'s forward on `x`, the loss against the targets
    /// in `loss` (summed over the examples, so each per-sample gradient is its example's own),
    /// and the per-sample gradients clipped into the lot's sum — the same lot as
    /// `forward_slice` + `loss(.., Reduction::Sum)` + [`PrivacyEngine::accumulate_model`], in
    /// one pass on the CPU ([`crate::nn::Sequential::forward_backward`]: each group of
    /// examples goes forward, backward and through the clipping while it is in cache). On a GPU
    /// it makes those three calls. Returns the summed loss of the batch.
    pub fn accumulate_batch(
        &mut self,
        model: &crate::nn::Sequential,
        ws: &mut crate::nn::Workspace,
        x: &[f32],
        loss: crate::nn::Loss<'_>,
    ) -> Result<f64> {
        use crate::cpu::loss::Reduction;
        if self.device.is_cuda() {
            model.forward_slice(ws, x)?;
            let l = model.loss(ws, loss, Reduction::Sum)?;
            self.accumulate_model(model, ws)?;
            return Ok(l);
        }
        self.check_model(model)?;
        let l = model.forward_backward(ws, x, loss, Reduction::Sum, self.clipped_sum(), false)?;
        self.rows += ws.batch();
        Ok(l)
    }

    /// One physical batch with augmentation multiplicity K (De, Berrada, Hayes, Smith & Balle
    /// 2022, §3.1; [`crate::augment`]): `x` holds `b·k` rows, the K augmented copies of each
    /// of b examples next to each other (rows `i·k .. i·k + k` are example i's, as
    /// [`crate::augment::Augmentation::fill_copies`] writes them), and `loss` has `b·k`
    /// targets in the same order. Each example's gradient is the **mean of its K copies'
    /// gradients, clipped once**, so it adds one vector of norm ≤ C to the lot's sum and the
    /// lot counts b examples: the sensitivity, the noise and the accounting are those of K = 1.
    /// Returns the loss summed over the `b·k` rows.
    ///
    /// `k = 1` is [`PrivacyEngine::accumulate_batch`] (the same values, bit for bit). For
    /// K > 1 on the CPU's depth-first schedule (the default) it is the fused clipped pass of
    /// [`PrivacyEngine::accumulate_batch`] with groups of K rows: each small group of examples'
    /// per-sample gradients (K rows each) are summed before the norm while in cache — for a
    /// `Linear` layer by the ghost norm, ‖(1/K) Σ_j dy_j x_jᵀ‖² = (1/K²) Σ_{j,j'} (dy_j·dy_j')
    /// (x_j·x_j'), no per-sample matrix at all — and each row is added with its example's factor
    /// over K; no `[b·k, P]` matrix. On the layer-major schedule the per-sample rows are
    /// materialised (`[b·k, P]`, in a buffer the engine keeps), averaged in groups of K in f32,
    /// then clipped with [`PrivacyEngine::accumulate`]. `ws` must hold `b·k` examples.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for `k` outside `1..=`[`crate::augment::MAX_AUGMULT`], or
    /// a CUDA engine with K > 1 (the group averaging runs on the host only: train on the CPU,
    /// or with K = 1); [`Error::Shape`] when `x` is not `b·k` examples; errors of the model's
    /// passes. On an error nothing is added to the lot.
    pub fn accumulate_augmented(
        &mut self,
        model: &crate::nn::Sequential,
        ws: &mut crate::nn::Workspace,
        x: &[f32],
        loss: crate::nn::Loss<'_>,
        k: usize,
    ) -> Result<f64> {
        use crate::cpu::loss::Reduction;
        use crate::nn::Grads;
        crate::augment::check_augmult(k)?;
        if k == 1 {
            return self.accumulate_batch(model, ws, x, loss);
        }
        if self.device.is_cuda() {
            return Err(Error::invalid(
                "augmult",
                k,
                "1 on a CUDA device (averaging each example's K copies before clipping runs on the host): use --device cpu, or --augmult 1",
            ));
        }
        self.check_model(model)?;
        let ex: usize = model.input_shape().iter().product();
        let rows_total = x.len().checked_div(ex).unwrap_or(0);
        if ex == 0 || x.len() % ex != 0 || rows_total % k != 0 || rows_total == 0 {
            return Err(Error::shape(
                "PrivacyEngine::accumulate_augmented",
                format!(
                    "{} input values are not a whole number of groups of k = {k} examples of {ex} values",
                    x.len()
                ),
            ));
        }
        let b = rows_total / k;
        if ws.is_depth_first() {
            ws.set_clip_views(k);
            let r = model.forward_backward(ws, x, loss, Reduction::Sum, self.clipped_sum(), false);
            ws.set_clip_views(1);
            let l = r?;
            self.rows += b;
            return Ok(l);
        }
        let p = model.num_params();
        model.forward_slice(ws, x)?;
        let l = model.loss(ws, loss, Reduction::Sum)?;
        let need = rows_total * p;
        if self.rows_buf.as_ref().is_none_or(|r| r.len() < need) {
            self.rows_buf = Some(Buffer::zeros(&self.device, need)?);
        }
        let mut rows = self.rows_buf.take().expect("allocated above");
        let r = model
            .backward(ws, Grads::PerSample(&mut rows), false)
            .and_then(|()| {
                let s = rows.as_mut_slice().ok_or_else(|| {
                    Error::invalid("device", "cuda", "the CPU for augmentation multiplicity")
                })?;
                average_row_groups(&mut s[..need], p, k);
                self.accumulate(&rows, b).map(|_| ())
            });
        self.rows_buf = Some(rows);
        r?;
        Ok(l)
    }

    /// The lot's sum as the destination of a fused clipping pass.
    fn clipped_sum(&mut self) -> crate::nn::Grads<'_> {
        crate::nn::Grads::ClippedSum {
            layout: &self.layout,
            clipping: &self.cfg.clipping,
            sum: &mut self.sum,
        }
    }

    fn check_model(&self, model: &crate::nn::Sequential) -> Result<()> {
        if !model.device().same(&self.device) {
            return Err(Error::invalid(
                "device",
                format!("model on {:?}, engine on {:?}", model.device(), self.device),
                "the same device for the model and the engine",
            ));
        }
        let p = model.num_params();
        if self.layout.num_params() != p {
            return Err(Error::shape(
                "PrivacyEngine",
                format!(
                    "the engine's layout covers {} parameters, the model has {p}",
                    self.layout.num_params()
                ),
            ));
        }
        Ok(())
    }

    /// Examples accumulated into the current lot.
    pub fn lot_size(&self) -> usize {
        self.rows
    }

    /// The current lot's clipped sum `Σ_i clip(g_i)` (P values in [`PrivacyEngine::layout`]'s
    /// order, on the engine's device): what the next step adds noise to. Zero after a step or
    /// [`PrivacyEngine::clear_lot`]. **Not private**: it is computed from the training data
    /// with no noise, so inspect it (tests, debugging, custom clipping checks) but never
    /// release it or anything computed from it; release only what the step functions return.
    pub fn lot_sum(&self) -> &Buffer<f32> {
        &self.sum
    }

    /// The parameter layout the engine was built with (P and the per-layer segments that
    /// per-layer clipping uses).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The number of steps the budget still allows with the current σ and q (`None` without a
    /// target ε).
    pub fn remaining_steps(&mut self) -> Result<Option<u64>> {
        let NoiseSpec::TargetEpsilon(target) = self.cfg.noise else {
            return Ok(None);
        };
        // Cached per step count; recomputed by exponential + binary search over extra steps.
        if let Some((at, n)) = self.allowed {
            if at == self.step {
                return Ok(Some(n));
            }
            if at < self.step && n >= self.step - at {
                // Same (σ, q) history: the allowance shrinks step for step.
                return Ok(Some(n - (self.step - at)));
            }
        }
        let per_step = self.truncation_mass_per_step();
        let fits = |extra: u64| -> Result<bool> {
            let mut a = self.accountant.clone();
            a.step_many(self.sigma, self.cfg.sample_rate, extra)?;
            let mass = self.trunc + per_step * extra as f64;
            Ok(self.epsilon_of(a.method, a.history().entries(), mass)? <= target)
        };
        let n = if !fits(1)? {
            0
        } else {
            let mut lo = 1u64;
            let mut hi = 2u64;
            while fits(hi)? {
                lo = hi;
                hi = hi.saturating_mul(2);
                if hi > 1 << 40 {
                    break;
                }
            }
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if fits(mid)? {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        self.allowed = Some((self.step, n));
        Ok(Some(n))
    }

    /// Refuses a step the budget does not allow or whose arguments `check` rejects; records
    /// the step otherwise, and returns its noise. Runs before any noise is drawn; on an error
    /// nothing is recorded and the lot is kept (the caller may fix the arguments and retry).
    fn begin_step(&mut self, check: impl FnOnce(&NoisyStep) -> Result<()>) -> Result<NoisyStep> {
        if let Some(0) = self.remaining_steps()? {
            let NoiseSpec::TargetEpsilon(target) = self.cfg.noise else {
                unreachable!("remaining_steps is Some only with a target")
            };
            return Err(Error::BudgetExhausted(format!(
                "step {} would take ε past the target {target} (δ = {}, σ = {:.4}, q = {}); stop training or raise the target",
                self.step + 1,
                self.cfg.delta,
                self.sigma,
                self.cfg.sample_rate
            )));
        }
        // σ·√ΣC² in f64 from the f32 bounds, unrounded all the way into the kernels.
        let c = self
            .cfg
            .clipping
            .bounds()
            .iter()
            .map(|&b| (b as f64) * (b as f64))
            .sum::<f64>()
            .sqrt();
        let noisy = NoisyStep {
            noise_std: self.sigma * c,
            expected_batch_size: self.cfg.expected_batch_size(),
            key: NoiseKey::for_step_with(self.noise_key, self.step, 0)?,
        };
        noisy.validate()?;
        check(&noisy)?;
        // The accountant sees the step before its result is released.
        self.accountant.step(self.sigma, self.cfg.sample_rate)?;
        self.step += 1;
        self.trunc += self.truncation_mass_per_step();
        Ok(noisy)
    }

    /// Ends a recorded step: the lot is cleared whether or not the release succeeded (a
    /// failed step must not leave its lot to be released again under the next step's noise).
    fn end_step(&mut self, released: Result<()>) -> Result<()> {
        let cleared = self.clear_lot();
        released.and(cleared)
    }

    /// Empties the current lot (its clipped sum and count).
    pub fn clear_lot(&mut self) -> Result<()> {
        self.rows = 0;
        self.sum.fill_zero()
    }

    fn check_buffer<T: crate::Element>(&self, what: &'static str, b: &Buffer<T>) -> Result<()> {
        if !b.device().same(&self.device) {
            return Err(Error::invalid(
                "device",
                format!("{what} on {:?}, engine on {:?}", b.device(), self.device),
                "the engine's device",
            ));
        }
        Ok(())
    }

    /// A fused noisy SGD step on `params` with the current lot: p −= lr·(Σ clip(g) + σC·ξ)/(qN)
    /// (plus momentum/weight decay). An empty lot is a valid step (noise only).
    pub fn step_sgd(
        &mut self,
        params: &mut Buffer<f32>,
        momentum: Option<&mut Buffer<f32>>,
        cfg: &SgdConfig,
    ) -> Result<()> {
        cfg.validate()?;
        let (plen, slen) = (params.len(), self.sum.len());
        let mlen = momentum.as_ref().map(|m| m.len());
        self.check_buffer("params", params)?;
        if let Some(m) = &momentum {
            self.check_buffer("momentum", m)?;
        }
        let noisy = self.begin_step(|n| check::sgd(plen, slen, mlen, cfg, n))?;
        let r = ops::noisy_sgd_step(params, &self.sum, momentum, cfg, &noisy);
        self.end_step(r)
    }

    /// A fused noisy Adam step (`t` = this optimizer's 1-based step count).
    pub fn step_adam(
        &mut self,
        params: &mut Buffer<f32>,
        m: &mut Buffer<f32>,
        v: &mut Buffer<f32>,
        t: u64,
        cfg: &AdamConfig,
    ) -> Result<()> {
        cfg.validate()?;
        let lens = (params.len(), self.sum.len(), m.len(), v.len());
        self.check_buffer("params", params)?;
        self.check_buffer("m", m)?;
        self.check_buffer("v", v)?;
        let noisy = self.begin_step(|n| check::adam(lens.0, lens.1, lens.2, lens.3, t, cfg, n))?;
        let r = ops::noisy_adam_step(params, &self.sum, m, v, t, cfg, &noisy);
        self.end_step(r)
    }

    /// For trainers with their own optimizer: writes the noised mean gradient
    /// (Σ clip(g) + σC·ξ)/(qN) of the current lot to `out` (length P, on the engine's device)
    /// and returns ε spent so far.
    pub fn noisy_gradient(&mut self, out: &mut Buffer<f32>) -> Result<f64> {
        if out.len() != self.layout.num_params() {
            return Err(Error::shape(
                "PrivacyEngine::noisy_gradient",
                format!(
                    "out has {} values, expected P = {}",
                    out.len(),
                    self.layout.num_params()
                ),
            ));
        }
        self.check_buffer("out", out)?;
        let (olen, slen) = (out.len(), self.sum.len());
        let noisy = self.begin_step(|n| check::noisy_mean(olen, slen, n))?;
        let r = ops::noisy_mean(out, &self.sum, &noisy);
        self.end_step(r)?;
        self.epsilon()
    }
}

/// Row `i` of `rows` (`[g·k, p]`, row-major) becomes the mean of rows `i·k .. i·k + k`, for each
/// of the g groups (in place: group i is read before any row ≥ i·k is written).
fn average_row_groups(rows: &mut [f32], p: usize, k: usize) {
    let g = rows.len() / (p * k);
    let mut acc = vec![0f32; p];
    let inv = 1.0 / k as f32;
    for i in 0..g {
        acc.copy_from_slice(&rows[i * k * p..(i * k + 1) * p]);
        for j in 1..k {
            let r = &rows[(i * k + j) * p..(i * k + j + 1) * p];
            for (a, v) in acc.iter_mut().zip(r) {
                *a += *v;
            }
        }
        for (d, a) in rows[i * p..(i + 1) * p].iter_mut().zip(&acc) {
            *d = *a * inv;
        }
    }
}
