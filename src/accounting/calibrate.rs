//! Noise calibration: the smallest noise multiplier σ whose ε (by either accountant) stays at or
//! below a target over a planned run.
//!
//! # Proof Definition
//! For fixed (q, T, δ), ε(σ) is non-increasing in σ for the subsampled Gaussian (more noise is
//! post-processing-equivalent to less privacy loss; Mironov, Talwar, Zhang 2019 for RDP, Gopi et
//! al. 2021 for PRV). Bisection keeps the invariant ε(σ_hi) ≤ target and returns σ_hi, so the
//! returned σ never exceeds the target; the bracket shrinks to the caller's tolerance.

use super::{epsilon, validate_delta, validate_epsilon, HistoryEntry, Method};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The outcome of a calibration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The noise multiplier: the upper end of the final bracket.
    pub noise_multiplier: f64,
    /// ε at that σ (≤ the target).
    pub epsilon: f64,
}

/// The smallest σ (to `tol`) with ε(σ; q, steps, δ) ≤ `target_epsilon` under `method`.
///
/// Errors: ε ≤ 0, δ ∉ (0, 1), q ∉ (0, 1], steps = 0, tol ≤ 0, or a target no σ ≤ 1e4 reaches.
///
/// ```
/// use dpsgd::accounting::{calibrate, steps_for_epochs, Method};
/// // σ for ε = 3 at δ = 1e-5 after 40 epochs at q = 256/60000 (the README's main job).
/// let q = 256.0 / 60_000.0;
/// let steps = steps_for_epochs(40, q)?;
/// let c = calibrate(Method::Rdp, 3.0, 1e-5, q, steps, 1e-4)?;
/// assert!(c.epsilon <= 3.0 && (c.noise_multiplier - 0.91).abs() < 0.01);
/// # Ok::<(), dpsgd::Error>(())
/// ```
pub fn calibrate(
    method: Method,
    target_epsilon: f64,
    delta: f64,
    sample_rate: f64,
    steps: u64,
    tol: f64,
) -> Result<Calibration> {
    calibrate_after(method, &[], target_epsilon, delta, sample_rate, steps, tol)
}

/// [`calibrate`] for a run that follows earlier releases `prior` (e.g. private feature
/// statistics, [`crate::mechanisms::feature_stats`]): the smallest σ with
/// ε(prior ∘ (σ; q, steps); δ) ≤ `target_epsilon`, the composition computed by `method` over the
/// whole history. The prior's own cost counts against the target, so the returned σ is larger
/// than [`calibrate`]'s. Errors as [`calibrate`], and when the prior alone already exceeds the
/// target (no σ can help).
///
/// # Proof Definition
/// ε of the composed history is non-increasing in the last entry's σ (each accountant composes
/// the entries' RDP curves / PLDs, and one entry's is monotone in its σ), so the bisection's
/// invariant ε(σ_hi) ≤ target holds as in [`calibrate`].
pub fn calibrate_after(
    method: Method,
    prior: &[HistoryEntry],
    target_epsilon: f64,
    delta: f64,
    sample_rate: f64,
    steps: u64,
    tol: f64,
) -> Result<Calibration> {
    validate_epsilon(target_epsilon)?;
    prior.iter().try_for_each(HistoryEntry::validate)?;
    validate_delta(delta)?;
    if !(sample_rate > 0.0 && sample_rate <= 1.0) {
        return Err(Error::invalid("sample_rate", sample_rate, "in (0, 1]"));
    }
    if steps == 0 {
        return Err(Error::invalid("steps", 0, ">= 1"));
    }
    if !(tol.is_finite() && tol > 0.0) {
        return Err(Error::invalid("tol", tol, "finite and > 0"));
    }
    let eps = |s: f64| -> Result<f64> {
        let mut h = prior.to_vec();
        h.push(HistoryEntry::new(s, sample_rate, steps)?);
        epsilon(method, &h, delta)
    };
    if !prior.is_empty() {
        let e0 = epsilon(method, prior, delta)?;
        if e0 >= target_epsilon {
            return Err(Error::invalid(
                "epsilon",
                target_epsilon,
                format!("more than the earlier releases' own ε = {e0:.4} (δ = {delta:.3e}): raise the target ε or the earlier releases' noise (e.g. --norm-noise)"),
            ));
        }
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    let mut e_hi = eps(hi)?;
    while e_hi > target_epsilon {
        lo = hi;
        hi *= 2.0;
        if hi > 1e4 {
            return Err(Error::invalid(
                "epsilon",
                target_epsilon,
                "reachable with a noise multiplier <= 1e4 (raise ε or δ, or lower q or the steps)",
            ));
        }
        e_hi = eps(hi)?;
    }
    while hi - lo > tol {
        let mid = 0.5 * (lo + hi);
        let e = eps(mid)?;
        if e > target_epsilon {
            lo = mid;
        } else {
            hi = mid;
            e_hi = e;
        }
    }
    Ok(Calibration {
        noise_multiplier: hi,
        epsilon: e_hi,
    })
}

/// [`calibrate`]'s σ.
pub fn calibrate_noise_multiplier(
    method: Method,
    target_epsilon: f64,
    delta: f64,
    sample_rate: f64,
    steps: u64,
    tol: f64,
) -> Result<f64> {
    Ok(calibrate(method, target_epsilon, delta, sample_rate, steps, tol)?.noise_multiplier)
}
