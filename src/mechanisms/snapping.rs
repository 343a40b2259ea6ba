//! Mironov's snapping mechanism: a Laplace mechanism for real-valued queries that is safe against
//! floating-point attacks.

use crate::error::check_positive;
use crate::mechanisms::check_all_finite;
use crate::rng::RandomBits;
use crate::{Error, Result};

/// 2⁻⁴⁹ — Mironov's bound on the extra ε per unit of B/Δ, covering 12·η with η = 2⁻⁵³ the unit
/// roundoff of doubles (12·2⁻⁵³ < 2⁻⁴⁹).
pub const ROUNDING_TERM: f64 = 1.0 / (1u64 << 49) as f64;

/// A uniform double U* on (0, 1) that takes every representable double in [2⁻¹⁰²², 1) with
/// probability proportional to its spacing, as Mironov's proof requires: the binary exponent is
/// geometric (count the leading zero bits of a random bit stream: U* ∈ [2^(−e−1), 2^(−e)) with
/// probability 2^(−e−1)) and the 52 mantissa bits are uniform. Exponents below −1022 (probability
/// 2⁻¹⁰²²) are folded into the lowest normal binade.
pub fn uniform_ulp(rng: &mut impl RandomBits) -> f64 {
    let mut e: u64 = 0;
    loop {
        let w = rng.next_u32();
        if w == 0 {
            e += 32;
            if e >= 1021 {
                e = 1021;
                break;
            }
            continue;
        }
        e = (e + w.leading_zeros() as u64).min(1021);
        break;
    }
    let mantissa = rng.next_u64() >> 12;
    f64::from_bits(((1022 - e) << 52) | mantissa)
}

/// The snapping mechanism (Mironov 2012, Section 5.2) for a real-valued query with sensitivity Δ
/// at ε, with output bound B:
///
/// f̃(D) = clamp_B( ⌊ clamp_B(f(D)) ⊕ S ⊗ λ ⊗ LN(U*) ⌉_Λ ),
///
/// where λ = Δ/ε, S is a uniform random sign, U* is [`uniform_ulp`], ⊕ ⊗ LN are IEEE double
/// operations, ⌊·⌉_Λ rounds to the nearest multiple of Λ = the smallest power of two ≥ λ (ties
/// away from zero) and clamp_B clamps to [−B, B].
///
/// # Proof Definition
/// Mironov, "On Significance of the Least Significant Bits for Differential Privacy" (CCS 2012),
/// Section 5.2 (the snapping mechanism's privacy theorem): for a sensitivity-1 query the snapping
/// mechanism with scale λ is
/// (1/λ + 2⁻⁴⁹·B/λ)-DP provided λ < B < 2⁴⁶·λ (the 2⁻⁴⁹ term bounds 12·B·η/λ, η = 2⁻⁵³).
/// Mironov states it for sensitivity 1; for sensitivity Δ the density-ratio term becomes Δ/λ = ε
/// and the rounding term (an absolute error of at most ~12·B·η in the interval endpoints, divided
/// by λ) stays 12·B·η/λ, so the guarantee implemented and reported by
/// [`Snapping::effective_epsilon`] is (equivalently: the sensitivity-1 theorem applied to f/Δ
/// with scale 1/ε and bound B/Δ)
///
/// ε′ = ε·(1 + 2⁻⁴⁹·B/Δ), under the condition Δ/ε < B < 2⁴⁶·Δ/ε
///
/// (checked by [`Snapping::new`]). Mironov's theorem assumes a correctly rounded natural
/// logarithm; this implementation uses Rust's `f64::ln` (the platform libm: typically within one
/// ulp, but not guaranteed to be correctly rounded), so the guarantee holds to the extent the
/// platform `ln` is correctly rounded on the values drawn — use a correctly rounded `ln` (e.g.
/// CRlibm) for a proof-grade deployment.
///
/// # Floating-point safety
/// **Safe** against floating-point attacks in the sense of Mironov 2012 (with the `ln` caveat
/// above): the output is a multiple of Λ in [−B, B], so its low-order bits carry no information.
/// The price is a slightly larger ε′ and an error of up to Λ/2 ≤ λ from the snapping.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Snapping {
    sensitivity: f64,
    epsilon: f64,
    bound: f64,
    lambda: f64,
    snap: f64,
}

/// The smallest power of two ≥ x (x > 0, finite, normal).
fn next_power_of_two(x: f64) -> f64 {
    let mut p = 2f64.powi(x.log2().ceil() as i32);
    while p < x {
        p *= 2.0;
    }
    while p / 2.0 >= x {
        p /= 2.0;
    }
    p
}

impl Snapping {
    /// The snapping mechanism for sensitivity Δ > 0 at ε > 0 with output bound B, which must
    /// satisfy λ < B < 2⁴⁶·λ for λ = Δ/ε (Mironov's condition).
    pub fn new(sensitivity: f64, epsilon: f64, bound: f64) -> Result<Self> {
        check_positive("sensitivity", sensitivity)?;
        check_positive("epsilon", epsilon)?;
        check_positive("bound", bound)?;
        let lambda = sensitivity / epsilon;
        if !(lambda.is_normal()) {
            return Err(Error::invalid(
                "epsilon",
                epsilon,
                "such that λ = Δ/ε is a normal finite double",
            ));
        }
        let max_bound = lambda * (1u64 << 46) as f64;
        if !(bound > lambda && bound < max_bound) {
            return Err(Error::invalid(
                "bound",
                bound,
                format!("in (λ, 2^46·λ) = ({lambda}, {max_bound}) for λ = Δ/ε (Mironov 2012, Section 5.2)"),
            ));
        }
        Ok(Snapping {
            sensitivity,
            epsilon,
            bound,
            lambda,
            snap: next_power_of_two(lambda),
        })
    }

    /// The nominal ε (the Laplace scale is λ = Δ/ε).
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// The sensitivity Δ.
    pub fn sensitivity(&self) -> f64 {
        self.sensitivity
    }

    /// The output bound B.
    pub fn bound(&self) -> f64 {
        self.bound
    }

    /// The Laplace scale λ = Δ/ε.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// The snapping grid Λ: the smallest power of two ≥ λ.
    pub fn grid(&self) -> f64 {
        self.snap
    }

    /// The guarantee actually provided: ε′ = ε·(1 + 2⁻⁴⁹·B/Δ) (see the type's docs).
    pub fn effective_epsilon(&self) -> f64 {
        self.epsilon * (1.0 + ROUNDING_TERM * self.bound / self.sensitivity)
    }

    /// Releases the snapped, clamped noisy value; `value` must be finite.
    pub fn release(&self, value: f64, rng: &mut impl RandomBits) -> Result<f64> {
        check_all_finite("snapping mechanism input", &[value])?;
        let b = self.bound;
        let x = value.clamp(-b, b);
        let sign = if rng.next_u32() & 1 == 1 { -1.0 } else { 1.0 };
        let noise = sign * self.lambda * uniform_ulp(rng).ln();
        let y = x + noise;
        // Λ is a power of two, so the division and multiplication are exact (outside subnormals).
        let snapped = (y / self.snap).round() * self.snap;
        Ok(snapped.clamp(-b, b))
    }
}
