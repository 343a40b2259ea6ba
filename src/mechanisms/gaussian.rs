//! The Gaussian mechanism in floating point, with the classic and the analytic calibration.

use crate::error::check_positive;
use crate::mechanisms::{check_all_finite, check_delta};
use crate::rng::RandomBits;
use crate::{Error, Result};

/// The standard normal CDF Φ(x) = erfc(−x/√2)/2, through `libm::erfc` (accurate to a few ulp,
/// also deep in the tails where `1 − Φ` would cancel).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// The exact δ of the Gaussian mechanism with noise σ on a query of L2 sensitivity Δ at ε
/// (Balle & Wang 2018, Theorem 8):
/// δ(σ) = Φ(Δ/(2σ) − εσ/Δ) − e^ε · Φ(−Δ/(2σ) − εσ/Δ).
pub fn exact_delta(sigma: f64, epsilon: f64, sensitivity: f64) -> Result<f64> {
    check_positive("sigma", sigma)?;
    check_positive("epsilon", epsilon)?;
    check_positive("sensitivity", sensitivity)?;
    Ok(delta_of(sigma, epsilon, sensitivity))
}

fn delta_of(sigma: f64, epsilon: f64, sensitivity: f64) -> f64 {
    let a = sensitivity / (2.0 * sigma);
    let b = epsilon * sigma / sensitivity;
    let first = normal_cdf(a - b);
    let tail = normal_cdf(-a - b);
    // e^ε·Φ(·) in log space so that a large ε does not overflow while Φ underflows.
    let second = if tail > 0.0 {
        (epsilon + tail.ln()).exp()
    } else {
        0.0
    };
    (first - second).max(0.0)
}

/// The classic calibration σ = √(2 ln(1.25/δ))·Δ/ε (Dwork & Roth 2014, Theorem A.1), valid only
/// for ε < 1: returns [`Error::InvalidParameter`] for ε ≥ 1.
pub fn classic_sigma(epsilon: f64, delta: f64, sensitivity: f64) -> Result<f64> {
    check_positive("epsilon", epsilon)?;
    check_delta(delta)?;
    check_positive("sensitivity", sensitivity)?;
    if epsilon >= 1.0 {
        return Err(Error::invalid(
            "epsilon",
            epsilon,
            "< 1 for the classic Gaussian bound (Dwork & Roth, Theorem A.1); use the analytic calibration for ε ≥ 1",
        ));
    }
    Ok((2.0 * (1.25 / delta).ln()).sqrt() * sensitivity / epsilon)
}

/// The analytic calibration (Balle & Wang 2018, Algorithm 1 / Theorem 8): the smallest σ with
/// δ(σ) ≤ δ for the exact δ(σ) of [`exact_delta`], found by bisection on σ (δ(σ) decreases in σ).
/// The returned σ is the upper end of the final bracket, so `exact_delta(σ) ≤ δ` always holds;
/// it is within a relative 1e-12 of the exact root. Valid for every ε > 0.
pub fn analytic_sigma(epsilon: f64, delta: f64, sensitivity: f64) -> Result<f64> {
    check_positive("epsilon", epsilon)?;
    check_delta(delta)?;
    check_positive("sensitivity", sensitivity)?;
    let f = |s: f64| delta_of(s, epsilon, sensitivity);
    let mut hi = sensitivity;
    let mut guard = 0;
    while f(hi) > delta {
        hi *= 2.0;
        guard += 1;
        if guard > 2000 || !hi.is_finite() {
            return Err(Error::invalid(
                "delta",
                delta,
                "large enough for a finite σ",
            ));
        }
    }
    let mut lo = hi;
    guard = 0;
    while f(lo) <= delta {
        lo *= 0.5;
        guard += 1;
        if guard > 2000 || lo == 0.0 {
            // Even a vanishing σ meets the target: δ(σ) → 1 as σ → 0 unless δ ≥ 1, so this
            // is unreachable for valid δ; report it rather than loop.
            return Err(Error::invalid("delta", delta, "< 1"));
        }
    }
    for _ in 0..400 {
        if hi - lo <= 1e-13 * hi {
            break;
        }
        let mid = 0.5 * (lo + hi);
        if f(mid) <= delta {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// How a [`Gaussian`] mechanism's σ was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calibration {
    /// Balle & Wang 2018's exact condition ([`analytic_sigma`]).
    Analytic,
    /// √(2 ln(1.25/δ))·Δ/ε, ε < 1 only ([`classic_sigma`]).
    Classic,
}

/// The Gaussian mechanism: releases `f(D) + N(0, σ²)` (independently per coordinate) for a query
/// of L2 sensitivity Δ, with σ calibrated for (ε, δ).
///
/// # Proof Definition
/// Analytic: Balle & Wang, "Improving the Gaussian Mechanism for Differential Privacy: Analytical
/// Calibration and Optimal Denoising" (ICML 2018), Theorem 8 (the exact condition) and
/// Algorithm 1 (calibration). Classic: Dwork & Roth, "The Algorithmic Foundations of Differential
/// Privacy" (2014), Theorem A.1 (ε < 1). Either σ makes the mechanism (ε, δ)-DP.
///
/// # Floating-point safety
/// **Not safe** against floating-point attacks (Mironov, CCS 2012): the noise is drawn by
/// Box–Muller in IEEE doubles. For integer-valued queries use
/// [`crate::mechanisms::DiscreteGaussian`].
///
/// ```
/// use dpsgd::mechanisms::Gaussian;
/// use dpsgd::rng::{Purpose, RunKeys};
/// let mut rng = RunKeys::seeded(7).key(Purpose::Mechanism).rng(0);
/// // A mean of values in [0, 1] over 1 000 people (L2 sensitivity 1/1000) at (0.5, 1e-6)-DP.
/// let g = Gaussian::analytic(0.5, 1e-6, 1e-3)?;
/// let released = g.release(0.37, &mut rng)?;
/// assert!(g.sigma() < Gaussian::classic(0.5, 1e-6, 1e-3)?.sigma()); // analytic is tighter
/// assert!((released - 0.37).abs() < 0.05);
/// # Ok::<(), dpsgd::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gaussian {
    sigma: f64,
    epsilon: f64,
    delta: f64,
    sensitivity: f64,
    calibration: Calibration,
}

impl Gaussian {
    /// The analytically calibrated mechanism (any ε > 0, 0 < δ < 1, Δ > 0).
    pub fn analytic(epsilon: f64, delta: f64, sensitivity: f64) -> Result<Self> {
        let sigma = analytic_sigma(epsilon, delta, sensitivity)?;
        Ok(Gaussian {
            sigma,
            epsilon,
            delta,
            sensitivity,
            calibration: Calibration::Analytic,
        })
    }

    /// The classically calibrated mechanism (0 < ε < 1, 0 < δ < 1, Δ > 0).
    pub fn classic(epsilon: f64, delta: f64, sensitivity: f64) -> Result<Self> {
        let sigma = classic_sigma(epsilon, delta, sensitivity)?;
        Ok(Gaussian {
            sigma,
            epsilon,
            delta,
            sensitivity,
            calibration: Calibration::Classic,
        })
    }

    /// The noise standard deviation σ.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// The privacy parameter ε.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// The privacy parameter δ.
    pub fn delta(&self) -> f64 {
        self.delta
    }

    /// The L2 sensitivity Δ.
    pub fn sensitivity(&self) -> f64 {
        self.sensitivity
    }

    /// Which calibration chose σ.
    pub fn calibration(&self) -> Calibration {
        self.calibration
    }

    /// Releases `value + N(0, σ²)`; `value` must be finite.
    pub fn release(&self, value: f64, rng: &mut impl RandomBits) -> Result<f64> {
        check_all_finite("Gaussian mechanism input", &[value])?;
        Ok(value + self.sigma * rng.next_normal_f64())
    }

    /// Releases a vector-valued query (L2 sensitivity Δ over the vector) with independent
    /// N(0, σ²) noise per coordinate; every value must be finite.
    pub fn release_vec(&self, values: &[f64], rng: &mut impl RandomBits) -> Result<Vec<f64>> {
        check_all_finite("Gaussian mechanism input", values)?;
        Ok(values
            .iter()
            .map(|v| v + self.sigma * rng.next_normal_f64())
            .collect())
    }
}
