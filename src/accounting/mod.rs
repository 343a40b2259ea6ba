//! Privacy accounting for DP-SGD with Poisson sampling and Gaussian noise.
//!
//! Two accountants over the same history of `(noise multiplier σ, sample rate q, steps)`:
//!
//! - [`rdp`]: Rényi DP of the subsampled Gaussian mechanism (Mironov, Talwar, Zhang 2019),
//!   converted with Balle et al. (2020). Matches Opacus 1.6's `RDPAccountant` to ~1e-12.
//! - [`pld`]: a privacy-loss-distribution accountant with pessimistic "connect-the-dots"
//!   discretisation (Doroshenko et al. 2022) and FFT composition (Koskela et al. 2020; Gopi, Lee,
//!   Wutschitz 2021). Gives the tightest ε, always as an upper bound. This is what the CLI calls
//!   `prv`. The same accountant also composes the Poisson-subsampled **Laplace** mechanism
//!   with L1 clipping ([`epsilon_pld_laplace`], checked against dp_accounting's
//!   `LaplacePrivacyLoss`).
//!
//! [`composition`] composes pure ε-DP mechanisms (the Laplace mechanism, randomized response):
//! basic, advanced, Rényi-DP and optimal (exact PLD of randomized response) composition.
//!
//! [`gs_wgan`] accounts GS-WGAN's sanitised generator gradients (a per-row subsampled Gaussian
//! over `K` disjoint partitions; it refuses the authors' shared-discriminator scheme).
//!
//! [`calibrate()`] finds the smallest noise multiplier meeting a target ε with either accountant.
//! [`Accountant`] is the serialisable state a trainer keeps: `step`, `epsilon`, `history`.
//!
//! # References
//! - M. Abadi et al. *Deep Learning with Differential Privacy*, CCS 2016 (the moments accountant).
//! - I. Mironov, K. Talwar, L. Zhang. *Rényi Differential Privacy of the Sampled Gaussian
//!   Mechanism*, 2019.
//! - S. Gopi, Y. T. Lee, L. Wutschitz. *Numerical Composition of Differential Privacy*, NeurIPS 2021.
//! - V. Doroshenko, B. Ghazi, P. Kamath, R. Kumar, P. Manurangsi. *Connect the Dots: Tighter
//!   Discrete Approximations of Privacy Loss Distributions*, PoPETs 2022.

pub mod calibrate;
pub mod composition;
pub mod gs_wgan;
pub mod pld;
pub mod rdp;

pub use calibrate::{calibrate, calibrate_after, calibrate_noise_multiplier, Calibration};
pub use pld::{epsilon_pld, epsilon_pld_laplace, LaplaceEntry, PldEpsilon, PldOptions};
pub use rdp::{default_orders, epsilon_rdp};

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// One homogeneous stretch of training: `steps` steps with the same `σ` and `q`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Noise multiplier σ (noise std / L2 sensitivity), ≥ 0.
    pub noise_multiplier: f64,
    /// Poisson sampling rate q ∈ [0, 1].
    pub sample_rate: f64,
    /// Number of steps, ≥ 1.
    pub steps: u64,
}

impl HistoryEntry {
    /// A validated entry.
    pub fn new(noise_multiplier: f64, sample_rate: f64, steps: u64) -> Result<Self> {
        let e = HistoryEntry {
            noise_multiplier,
            sample_rate,
            steps,
        };
        e.validate()?;
        Ok(e)
    }

    /// Checks σ ≥ 0, q ∈ [0, 1], steps ≥ 1.
    pub fn validate(&self) -> Result<()> {
        validate_q_sigma(self.sample_rate, self.noise_multiplier)?;
        validate_steps(self.steps)
    }
}

pub(crate) fn validate_q_sigma(q: f64, sigma: f64) -> Result<()> {
    if !(q.is_finite() && (0.0..=1.0).contains(&q)) {
        return Err(Error::invalid("sample_rate", q, "in [0, 1]"));
    }
    if !(sigma.is_finite() && sigma >= 0.0) {
        return Err(Error::invalid("noise_multiplier", sigma, "finite and >= 0"));
    }
    Ok(())
}

pub(crate) fn validate_steps(steps: u64) -> Result<()> {
    if steps == 0 {
        return Err(Error::invalid("steps", steps, ">= 1"));
    }
    Ok(())
}

pub(crate) fn validate_delta(delta: f64) -> Result<()> {
    if !(delta.is_finite() && delta > 0.0 && delta < 1.0) {
        return Err(Error::invalid(
            "delta",
            delta,
            "in the open interval (0, 1)",
        ));
    }
    Ok(())
}

pub(crate) fn validate_epsilon(eps: f64) -> Result<()> {
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::invalid("epsilon", eps, "finite and > 0"));
    }
    Ok(())
}

/// Steps in `epochs` epochs at sample rate `q`: `epochs × round(1/q)`.
///
/// One epoch of Poisson sampling is `round(1/q)` steps, so that an epoch visits each example once
/// in expectation (Opacus uses `int(epochs / q)`, which can lose a step to rounding, e.g. q = 0.1
/// stored as 0.1000000000000000055…).
pub fn steps_for_epochs(epochs: u64, sample_rate: f64) -> Result<u64> {
    if !(sample_rate.is_finite() && sample_rate > 0.0 && sample_rate <= 1.0) {
        return Err(Error::invalid(
            "sample_rate",
            sample_rate,
            "in (0, 1] to count epochs",
        ));
    }
    if epochs == 0 {
        return Err(Error::invalid("epochs", epochs, ">= 1"));
    }
    let per = (1.0 / sample_rate).round() as u64;
    epochs.checked_mul(per).ok_or_else(|| {
        Error::invalid(
            "epochs",
            epochs,
            "small enough that epochs × round(1/q) fits in u64",
        )
    })
}

/// A training run's privacy history; consecutive identical `(σ, q)` steps are merged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    entries: Vec<HistoryEntry>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `steps` steps at `(σ, q)`, merging with the last entry if identical.
    pub fn push(&mut self, noise_multiplier: f64, sample_rate: f64, steps: u64) -> Result<()> {
        let e = HistoryEntry::new(noise_multiplier, sample_rate, steps)?;
        if let Some(last) = self.entries.last_mut() {
            if last.noise_multiplier == noise_multiplier && last.sample_rate == sample_rate {
                last.steps = last
                    .steps
                    .checked_add(steps)
                    .ok_or_else(|| Error::invalid("steps", steps, "a total that fits in u64"))?;
                return Ok(());
            }
        }
        self.entries.push(e);
        Ok(())
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[HistoryEntry] {
        &self.entries
    }

    /// Total number of steps.
    pub fn total_steps(&self) -> u64 {
        self.entries.iter().map(|e| e.steps).sum()
    }

    /// Validates every entry (used after deserialising untrusted state).
    pub fn validate(&self) -> Result<()> {
        self.entries.iter().try_for_each(HistoryEntry::validate)
    }
}

impl From<Vec<HistoryEntry>> for History {
    fn from(entries: Vec<HistoryEntry>) -> Self {
        History { entries }
    }
}

/// Which accounting method an [`Accountant`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Rényi DP ([`rdp`]), Opacus's default.
    Rdp,
    /// Privacy-loss distribution ([`pld`]); tightest, an upper bound with a stated error.
    Prv,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "rdp" => Ok(Method::Rdp),
            "prv" | "pld" => Ok(Method::Prv),
            _ => Err(Error::invalid("accountant", s, "one of `rdp`, `prv`")),
        }
    }
}

/// ε of a history under `method`, for `delta`.
///
/// For [`Method::Rdp`] the default Opacus orders are used; for [`Method::Prv`] the default
/// [`PldOptions`] (ε error 0.01, δ error δ/1000) and the returned value is the upper bound.
pub fn epsilon(method: Method, history: &[HistoryEntry], delta: f64) -> Result<f64> {
    match method {
        Method::Rdp => Ok(epsilon_rdp(history, delta, &default_orders())?.0),
        Method::Prv => Ok(epsilon_pld(history, delta, &PldOptions::default())?.epsilon),
    }
}

/// What a trainer needs from an accountant.
pub trait PrivacyAccountant {
    /// Records one step with noise multiplier σ and sample rate q.
    fn step(&mut self, noise_multiplier: f64, sample_rate: f64) -> Result<()>;
    /// ε spent so far for `delta` (an upper bound).
    fn epsilon(&self, delta: f64) -> Result<f64>;
    /// The history so far.
    fn history(&self) -> &History;
}

/// Serialisable accountant state (save it with a checkpoint, restore it to resume a run).
///
/// ```
/// use dpsgd::accounting::{Accountant, Method, PrivacyAccountant};
/// let mut acc = Accountant::new(Method::Rdp);
/// for _ in 0..100 { acc.step(1.0, 0.01)?; }
/// let saved = serde_json::to_string(&acc)?;
/// let restored: Accountant = serde_json::from_str(&saved)?;
/// assert_eq!(acc.epsilon(1e-5)?, restored.epsilon(1e-5)?);
/// # Ok::<(), dpsgd::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accountant {
    /// The accounting method.
    pub method: Method,
    /// PLD options (used by [`Method::Prv`]).
    #[serde(default)]
    pub pld_options: PldOptions,
    history: History,
}

impl Accountant {
    /// A fresh accountant.
    pub fn new(method: Method) -> Self {
        Accountant {
            method,
            pld_options: PldOptions::default(),
            history: History::new(),
        }
    }

    /// Records `steps` steps at once.
    pub fn step_many(&mut self, noise_multiplier: f64, sample_rate: f64, steps: u64) -> Result<()> {
        self.history.push(noise_multiplier, sample_rate, steps)
    }

    /// For RDP, `(ε, optimal order)`; for PRV, `(ε upper bound, NaN)`.
    pub fn epsilon_and_order(&self, delta: f64) -> Result<(f64, f64)> {
        self.history.validate()?;
        match self.method {
            Method::Rdp => epsilon_rdp(self.history.entries(), delta, &default_orders()),
            Method::Prv => Ok((
                epsilon_pld(self.history.entries(), delta, &self.pld_options)?.epsilon,
                f64::NAN,
            )),
        }
    }

    /// Parses state saved with `serde_json` and validates it.
    pub fn from_json(s: &str) -> Result<Self> {
        let a: Accountant = serde_json::from_str(s)?;
        a.history.validate()?;
        a.pld_options.validate()?;
        Ok(a)
    }
}

impl PrivacyAccountant for Accountant {
    fn step(&mut self, noise_multiplier: f64, sample_rate: f64) -> Result<()> {
        self.history.push(noise_multiplier, sample_rate, 1)
    }
    fn epsilon(&self, delta: f64) -> Result<f64> {
        Ok(self.epsilon_and_order(delta)?.0)
    }
    fn history(&self) -> &History {
        &self.history
    }
}
