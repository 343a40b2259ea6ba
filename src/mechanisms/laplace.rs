//! The Laplace mechanism in floating point.

use crate::error::check_positive;
use crate::mechanisms::check_all_finite;
use crate::rng::RandomBits;
use crate::Result;

/// One draw from the Laplace distribution with location 0 and scale `scale` (density
/// `exp(−|x|/b)/(2b)`), by inversion: a random sign times `−b·ln U`, U uniform on (0, 1]
/// resolved to 2⁻¹¹⁷ ([`RandomBits::next_laplace_f64`]: |x| is cut only beyond ≈ 81·b, an event
/// of probability < 2⁻¹¹⁶).
///
/// Not safe against floating-point attacks (see [`Laplace`]).
pub fn sample_laplace(scale: f64, rng: &mut impl RandomBits) -> Result<f64> {
    check_positive("scale", scale)?;
    Ok(draw(scale, rng))
}

fn draw(scale: f64, rng: &mut impl RandomBits) -> f64 {
    scale * rng.next_laplace_f64()
}

/// The Laplace mechanism: releases `f(D) + Lap(Δ/ε)` for a query `f` with L1 sensitivity Δ
/// (for a vector-valued query, independent Lap(Δ/ε) noise on every coordinate).
///
/// # Proof Definition
/// Dwork, McSherry, Nissim, Smith, "Calibrating Noise to Sensitivity in Private Data Analysis"
/// (TCC 2006); Dwork & Roth, "The Algorithmic Foundations of Differential Privacy" (2014),
/// Theorem 3.6: the Laplace mechanism with scale Δ/ε is (ε, 0)-differentially private for a query
/// of L1 sensitivity Δ.
///
/// # Floating-point safety
/// **Not safe** against floating-point attacks (Mironov, CCS 2012): the noise is computed in IEEE
/// doubles with `ln`, so the set of reachable outputs depends on `f(D)`. Use
/// [`crate::mechanisms::DiscreteLaplace`] for integer-valued queries and
/// [`crate::mechanisms::Snapping`] for real-valued ones when the released bits face an adversary.
///
/// ```
/// use dpsgd::mechanisms::Laplace;
/// use dpsgd::rng::{Purpose, RunKeys};
/// let keys = RunKeys::secure()?; // a 256-bit OS key; ChaCha20
/// let mut rng = keys.key(Purpose::Mechanism).rng(0);
/// let count = Laplace::new(1.0, 0.5)?; // a count (Δ = 1) at ε = 0.5: scale 2
/// let noisy = count.release(42.0, &mut rng)?;
/// assert!(noisy.is_finite() && count.scale() == 2.0);
/// assert!(Laplace::new(1.0, 0.0).is_err()); // ε ≤ 0 is an error, before any noise
/// # Ok::<(), dpsgd::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Laplace {
    sensitivity: f64,
    epsilon: f64,
}

impl Laplace {
    /// A Laplace mechanism for L1 sensitivity `sensitivity` (Δ > 0) at `epsilon` (ε > 0).
    pub fn new(sensitivity: f64, epsilon: f64) -> Result<Self> {
        check_positive("sensitivity", sensitivity)?;
        check_positive("epsilon", epsilon)?;
        check_positive("scale", sensitivity / epsilon)?;
        Ok(Laplace {
            sensitivity,
            epsilon,
        })
    }

    /// The L1 sensitivity Δ.
    pub fn sensitivity(&self) -> f64 {
        self.sensitivity
    }

    /// The privacy parameter ε.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// The noise scale b = Δ/ε (variance 2b²).
    pub fn scale(&self) -> f64 {
        self.sensitivity / self.epsilon
    }

    /// Releases `value + Lap(Δ/ε)`; `value` must be finite.
    pub fn release(&self, value: f64, rng: &mut impl RandomBits) -> Result<f64> {
        check_all_finite("Laplace mechanism input", &[value])?;
        Ok(value + draw(self.scale(), rng))
    }

    /// Releases every coordinate of a vector-valued query (L1 sensitivity Δ over the whole
    /// vector) with independent Lap(Δ/ε) noise; every value must be finite.
    pub fn release_vec(&self, values: &[f64], rng: &mut impl RandomBits) -> Result<Vec<f64>> {
        check_all_finite("Laplace mechanism input", values)?;
        let b = self.scale();
        Ok(values.iter().map(|v| v + draw(b, rng)).collect())
    }
}
