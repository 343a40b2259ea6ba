//! Exact samplers of Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy"
//! (NeurIPS 2020), Algorithms 1 and 2: Bernoulli(exp(−γ)) for rational γ and the discrete
//! Laplace distribution, in integer arithmetic only (arbitrary-precision [`BigUint`]s), from
//! uniform random bits of the crate's streams (Philox or ChaCha20). No floating-point number is involved in
//! sampling, so the output distribution is exactly the stated one.

use crate::rng::RandomBits;
use crate::{Error, Result};
use num_bigint::BigUint;
use num_traits::{One, ToPrimitive, Zero};

/// A uniform integer in `0..n` (n > 0) from random bits, by rejection (exact).
pub(crate) fn uniform_below(n: &BigUint, rng: &mut impl RandomBits) -> BigUint {
    if let Some(small) = n.to_u64() {
        return BigUint::from(rng.next_below(small));
    }
    let bits = n.bits();
    let words = bits.div_ceil(32) as usize;
    let top_bits = bits - 32 * (words as u64 - 1);
    let mask: u32 = if top_bits == 32 {
        u32::MAX
    } else {
        (1u32 << top_bits) - 1
    };
    let mut digits = vec![0u32; words];
    loop {
        for d in digits.iter_mut() {
            *d = rng.next_u32();
        }
        if let Some(last) = digits.last_mut() {
            *last &= mask;
        }
        let x = BigUint::from_slice(&digits);
        if &x < n {
            return x;
        }
    }
}

/// Bernoulli(num/den) for 0 ≤ num ≤ den, den > 0 (exact).
fn bernoulli_ratio(num: &BigUint, den: &BigUint, rng: &mut impl RandomBits) -> bool {
    &uniform_below(den, rng) < num
}

/// Algorithm 1 of Canonne–Kamath–Steinke: Bernoulli(exp(−num/den)) for num ≥ 0, den > 0.
pub(crate) fn bernoulli_exp_big(num: &BigUint, den: &BigUint, rng: &mut impl RandomBits) -> bool {
    if num <= den {
        // γ ∈ [0, 1]: K ← 1; while Bernoulli(γ/K) { K ← K + 1 }; return K odd.
        let mut k: u64 = 1;
        loop {
            let kden = den * BigUint::from(k);
            if !bernoulli_ratio(num, &kden, rng) {
                break;
            }
            k += 1;
        }
        k % 2 == 1
    } else {
        // γ > 1: ⌊γ⌋ independent Bernoulli(exp(−1)) must all succeed, then Bernoulli(exp(−frac)).
        let one = BigUint::one();
        let whole = num / den;
        let mut i = BigUint::zero();
        while i < whole {
            if !bernoulli_exp_big(&one, &one, rng) {
                return false;
            }
            i += 1u32;
        }
        bernoulli_exp_big(&(num % den), den, rng)
    }
}

/// One exact draw from Bernoulli(exp(−γ)) for the rational γ = `gamma_num/gamma_den` ≥ 0
/// (Canonne, Kamath, Steinke 2020, Algorithm 1). Errors if `gamma_den` is 0.
pub fn sample_bernoulli_exp(
    gamma_num: u64,
    gamma_den: u64,
    rng: &mut impl RandomBits,
) -> Result<bool> {
    if gamma_den == 0 {
        return Err(Error::invalid("gamma_den", gamma_den, "> 0"));
    }
    Ok(bernoulli_exp_big(
        &BigUint::from(gamma_num),
        &BigUint::from(gamma_den),
        rng,
    ))
}

/// Algorithm 2 of Canonne–Kamath–Steinke: the discrete Laplace with scale t/s (t, s > 0), i.e.
/// Pr[Z = z] ∝ exp(−|z|·s/t) on the integers. Returns the sign and the magnitude.
pub(crate) fn discrete_laplace_big(
    t: &BigUint,
    s: &BigUint,
    rng: &mut impl RandomBits,
) -> (bool, BigUint) {
    let one = BigUint::one();
    loop {
        let u = uniform_below(t, rng);
        if !bernoulli_exp_big(&u, t, rng) {
            continue;
        }
        let mut v = BigUint::zero();
        while bernoulli_exp_big(&one, &one, rng) {
            v += 1u32;
        }
        let x = u + t * v;
        let y = x / s;
        let negative = rng.next_u32() & 1 == 1;
        if negative && y.is_zero() {
            continue;
        }
        return (negative, y);
    }
}

/// Converts a sign and magnitude to `i64`, saturating beyond ±(2⁶³ − 1) (the noise reaches that
/// only with probability below exp(−2⁶³/scale)).
pub(crate) fn to_i64(negative: bool, magnitude: &BigUint) -> i64 {
    let m = magnitude.to_i64().unwrap_or(i64::MAX);
    if negative {
        -m
    } else {
        m
    }
}

fn check_rational(
    name_num: &'static str,
    num: u64,
    name_den: &'static str,
    den: u64,
) -> Result<()> {
    if num == 0 {
        return Err(Error::invalid(name_num, num, "> 0"));
    }
    if den == 0 {
        return Err(Error::invalid(name_den, den, "> 0"));
    }
    Ok(())
}

/// One exact draw from the discrete Laplace distribution with scale b = `scale_num/scale_den`
/// (> 0): Pr[Z = z] = (1 − e^(−1/b))/(1 + e^(−1/b)) · e^(−|z|/b) for every integer z
/// (Canonne, Kamath, Steinke 2020, Algorithm 2).
pub fn sample_discrete_laplace(
    scale_num: u64,
    scale_den: u64,
    rng: &mut impl RandomBits,
) -> Result<i64> {
    check_rational("scale_num", scale_num, "scale_den", scale_den)?;
    let (neg, y) = discrete_laplace_big(&BigUint::from(scale_num), &BigUint::from(scale_den), rng);
    Ok(to_i64(neg, &y))
}

/// The discrete Laplace (two-sided geometric) mechanism for integer-valued queries: releases
/// `f(D) + Z`, Z ~ Lap_ℤ(b) with the rational scale b = `scale_num/scale_den`.
///
/// # Proof Definition
/// Ghosh, Roughgarden, Sundararajan, "Universally Utility-Maximizing Privacy Mechanisms" (STOC
/// 2009) — the geometric mechanism; for an integer query with sensitivity Δ, noise Lap_ℤ(b) gives
/// (Δ/b)-DP (the pmf ratio at integers z and z + Δ is at most e^(Δ/b)). Sampler: Canonne, Kamath,
/// Steinke, "The Discrete Gaussian for Differential Privacy" (NeurIPS 2020), Algorithms 1–2.
///
/// # Floating-point safety
/// **Safe** against floating-point attacks (Mironov 2012): sampling uses only exact integer
/// arithmetic on uniform random bits, and the output is the integer `f(D) + Z` (saturating at the
/// `i64` range, reached with probability below exp(−2⁶³/b)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscreteLaplace {
    scale_num: u64,
    scale_den: u64,
}

impl DiscreteLaplace {
    /// The mechanism with scale b = `scale_num/scale_den` (both > 0).
    pub fn new(scale_num: u64, scale_den: u64) -> Result<Self> {
        check_rational("scale_num", scale_num, "scale_den", scale_den)?;
        Ok(DiscreteLaplace {
            scale_num,
            scale_den,
        })
    }

    /// The ε-DP mechanism for an integer query with sensitivity Δ = `sensitivity` (> 0) at the
    /// rational ε = `eps_num/eps_den` (> 0): scale b = Δ/ε = Δ·eps_den/eps_num.
    pub fn for_epsilon(sensitivity: u64, eps_num: u64, eps_den: u64) -> Result<Self> {
        if sensitivity == 0 {
            return Err(Error::invalid("sensitivity", sensitivity, "> 0"));
        }
        check_rational("eps_num", eps_num, "eps_den", eps_den)?;
        let num = sensitivity.checked_mul(eps_den).ok_or_else(|| {
            Error::invalid(
                "eps_den",
                eps_den,
                "small enough that Δ·eps_den fits in u64",
            )
        })?;
        Self::new(num, eps_num)
    }

    /// The scale as (numerator, denominator).
    pub fn scale(&self) -> (u64, u64) {
        (self.scale_num, self.scale_den)
    }

    /// ε = Δ/b for an integer query with sensitivity Δ (as f64, for reporting).
    pub fn epsilon(&self, sensitivity: u64) -> f64 {
        sensitivity as f64 * self.scale_den as f64 / self.scale_num as f64
    }

    /// One noise draw Z ~ Lap_ℤ(b).
    pub fn sample(&self, rng: &mut impl RandomBits) -> i64 {
        let (neg, y) = discrete_laplace_big(
            &BigUint::from(self.scale_num),
            &BigUint::from(self.scale_den),
            rng,
        );
        to_i64(neg, &y)
    }

    /// Releases `value + Z` (saturating at the `i64` range).
    pub fn release(&self, value: i64, rng: &mut impl RandomBits) -> i64 {
        value.saturating_add(self.sample(rng))
    }

    /// Releases every coordinate with independent noise (for an L1 sensitivity over the vector).
    pub fn release_vec(&self, values: &[i64], rng: &mut impl RandomBits) -> Vec<i64> {
        values.iter().map(|&v| self.release(v, rng)).collect()
    }
}
