//! Privacy accounting for GS-WGAN (Chen, Orekondy, Fritz 2020): a generator trained only
//! through clipped and noised gradients of generated images, each image's gradient coming
//! from one of `K` discriminators that each see a disjoint `1/K` of the private data.
//!
//! # The mechanism this accountant covers ([`DiscriminatorSampling::IndependentPerRow`])
//! The private data set of public size `n` is split into `K` disjoint partitions by a public
//! map from positions to partitions. Discriminator `k` is trained (warm start and critic
//! steps) only on partition `k`, on the released generators and on randomness whose law does
//! not depend on the data; in particular **which discriminator is trained when is drawn
//! independently of the draws below**. Each generator iteration produces `B` images; for each
//! image (row) `i`, independently:
//! 1. a discriminator `k_i` is drawn uniformly from `{1, …, K}` (never released);
//! 2. `g_i = ∂ L_G / ∂ x_i` is computed through `D_{k_i}` and clipped to L2 norm `≤ C`;
//! 3. `g̃_i = clip(g_i) + N(0, s² I)` with `s = 2 C σ` ([`noise_std`]), fresh noise per row.
//!
//! Only the `g̃_i` (and functions of them: the generator, its samples) leave the run.
//!
//! # Why it is `(ε, δ)`-DP, and with which ε
//! *Adjacency.* Two data sets are neighbours when they differ in the record at one position
//! (substitution, the adjacency of Wang, Balle, Kasiviswanathan 2019, which the GS-WGAN paper
//! uses). Then exactly one partition `k*` differs, so only discriminator `k*`'s state can
//! differ — and it can differ arbitrarily, since its whole training history changes.
//! (Add/remove adjacency is also covered when each record's partition is a function of the
//! record alone, so that adding one changes no other record's partition; with contiguous
//! chunks of an index list, as the authors' code splits the data, adding a record moves
//! others and only substitution is covered.)
//!
//! *Conditioning on the data-independent randomness.* Fix the randomness ω that is not the
//! row draws `k_i` or the noise: the critic schedule, the minibatches, the latent codes, the
//! gradient-penalty interpolation weights. Given ω and the released history `y_<t`, every
//! discriminator's state is a deterministic function of its own partition. The output of row
//! `i` is then `P = (1 − γ) R + γ N(a, s²I)` under one data set and
//! `P' = (1 − γ) R + γ N(a', s²I)` under its neighbour, with `γ = 1/K`, `R` the mixture over
//! `k ≠ k*` (identical under both), and `‖a‖, ‖a'‖ ≤ C`, so `‖a − a'‖ ≤ 2C`: **the per-row
//! sensitivity is 2C, not C**, and `s = 2Cσ` makes the base Gaussian mechanism
//! `(α, α/(2σ²))`-RDP. Viewing the `K` partitions as `K` meta-records, row `i` is a Gaussian
//! mechanism run on a subsample of one of `K` meta-records drawn without replacement, with a
//! substitution of one meta-record between the two data sets: Theorem 9 of Wang, Balle,
//! Kasiviswanathan (2019) bounds its RDP at integer `α ≥ 2` by ([`rdp_row`])
//!
//! ```text
//! ε'(α) ≤ 1/(α−1) · log(1 + γ² C(α,2) min{4(e^{ε(2)} − 1), 2 e^{ε(2)}}
//!                       + Σ_{j=3..α} 2 γ^j C(α,j) e^{(j−1) ε(j)}),     ε(j) = j / (2σ²)
//! ```
//!
//! (the `min{2, (e^{ε(∞)} − 1)^j}` factors of the theorem are 2 for the Gaussian, whose
//! `ε(∞) = ∞`), and by `ε(α)` itself (quasi-convexity of the Rényi divergence; van Erven and
//! Harremoës 2014, Theorem 13), whichever is smaller. The rows of an iteration use independent
//! draws and independent noise, and the iterations are adaptive in `y_<t`: RDP composes over
//! the `B·T` rows (Mironov 2017, Proposition 1), giving `B·T·ε'(α)` for fixed ω. The law of ω
//! does not depend on the data, so the mixture over ω keeps the bound (joint quasi-convexity
//! again), and Balle et al. (2020), Theorem 21, converts it to `(ε, δ)`
//! ([`super::rdp::eps_from_rdp`]).
//!
//! # What this does **not** cover ([`DiscriminatorSampling::SharedPerIteration`])
//! The GS-WGAN paper composes `B·T` such row mechanisms (its `privacy_analysis.py` calls
//! autodp's `compose_subsampled_mechanism` — the same Theorem 9 — with `coeff = B·T`), but
//! the authors' `main.py` draws **one** discriminator per iteration and uses it for all `B`
//! rows, and trains exactly that discriminator. With one shared draw, a single private record
//! moves all `B` rows of an iteration at once (joint sensitivity `2C√B`, an effective noise
//! multiplier `σ/√B` per iteration), and since the critic schedule equals the hidden draws,
//! the states of the discriminators are no longer functions of their partitions given the
//! released history, which the argument above needs. This accountant refuses that scheme
//! ([`GsWganAccountant::new`] returns an error) rather than report an ε it cannot prove.
//! [`paper_epsilon`] reproduces the paper's figure for comparison only, labelled as such.
//!
//! # References
//! - D. Chen, T. Orekondy, M. Fritz. *GS-WGAN: A Gradient-Sanitized Approach for Learning
//!   Differentially Private Generators*, NeurIPS 2020 (the mechanism; its Theorems 1–2).
//! - Y.-X. Wang, B. Balle, S. Kasiviswanathan. *Subsampled Rényi Differential Privacy and
//!   Analytical Moments Accountant*, AISTATS 2019, Theorem 9 (subsampling without replacement,
//!   substitution adjacency).
//! - I. Mironov. *Rényi Differential Privacy*, CSF 2017 (Proposition 1, composition;
//!   Proposition 3, the conversion the paper's script uses).
//! - I. Mironov, K. Talwar, L. Zhang. *Rényi Differential Privacy of the Sampled Gaussian
//!   Mechanism*, 2019 (the Poisson/add-remove analysis [`super::rdp`] implements; it does not
//!   apply here because neither mixture component is the common part `R`).
//! - T. van Erven, P. Harremoës. *Rényi Divergence and Kullback-Leibler Divergence*, IEEE
//!   Trans. Inf. Theory 2014 (Theorem 13, joint quasi-convexity).
//! - B. Balle, G. Barthe, M. Gaboardi, J. Hsu, T. Sato. *Hypothesis Testing Interpretations and
//!   Rényi Differential Privacy*, AISTATS 2020 (Theorem 21).

use super::rdp::eps_from_rdp;
use super::validate_delta;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// How the generated rows of one generator iteration pick their discriminators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscriminatorSampling {
    /// Every row draws its discriminator independently and uniformly, and the critic schedule
    /// (which discriminator is trained when) is drawn independently of these draws. The
    /// mechanism the module documentation analyses.
    IndependentPerRow,
    /// One discriminator per iteration for all rows, and the trained one is the one drawn (the
    /// authors' `main.py`). Not covered: [`GsWganAccountant::new`] refuses it.
    SharedPerIteration,
}

/// The noise standard deviation per coordinate of a row clipped to `clip`: `2 · clip · σ`
/// (the per-row sensitivity is `2 · clip`, see the module documentation).
pub fn noise_std(clip: f64, noise_multiplier: f64) -> f64 {
    2.0 * clip * noise_multiplier
}

/// `ln C(n, k)` for integers `0 ≤ k ≤ n`.
fn ln_binom(n: u64, k: u64) -> f64 {
    let (n, k) = (n as f64, k as f64);
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// `log Σ exp(x_i)`, stable.
fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m.is_infinite() {
        return m;
    }
    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

fn validate_row(discriminators: u64, noise_multiplier: f64) -> Result<()> {
    if discriminators == 0 {
        return Err(Error::invalid(
            "discriminators",
            discriminators,
            ">= 1 (the number of disjoint partitions of the data)",
        ));
    }
    if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
        return Err(Error::invalid(
            "noise_multiplier",
            noise_multiplier,
            "finite and > 0 (noise std / (2 · clip)); a run without noise is not private",
        ));
    }
    Ok(())
}

/// RDP at integer order `alpha ≥ 2` of **one** generated row: the Gaussian mechanism with
/// noise multiplier `σ` (relative to the row sensitivity `2C`) on one of `K` partitions drawn
/// uniformly — Wang, Balle, Kasiviswanathan (2019), Theorem 9, capped by the unamplified
/// `α/(2σ²)` (module documentation).
pub fn rdp_row(discriminators: u64, noise_multiplier: f64, alpha: u64) -> Result<f64> {
    validate_row(discriminators, noise_multiplier)?;
    if alpha < 2 {
        return Err(Error::invalid(
            "alpha",
            alpha,
            "an integer RDP order >= 2 (Theorem 9 of Wang et al. 2019 is stated for integers)",
        ));
    }
    Ok(rdp_row_unchecked(discriminators, noise_multiplier, alpha))
}

fn rdp_row_unchecked(k: u64, sigma: f64, alpha: u64) -> f64 {
    let eps = |j: f64| j / (2.0 * sigma * sigma);
    let ln_g = -(k as f64).ln();
    let a = alpha as f64;
    let e2 = eps(2.0);
    // ln min{4(e^{ε(2)} − 1), 2e^{ε(2)}}, with ln(e^x − 1) = x + ln(1 − e^{−x}).
    let ln_min2 = (4f64.ln() + e2 + (-(-e2).exp_m1()).ln()).min(2f64.ln() + e2);
    let mut terms = Vec::with_capacity(alpha as usize);
    terms.push(0.0);
    terms.push(2.0 * ln_g + ln_binom(alpha, 2) + ln_min2);
    for j in 3..=alpha {
        let jf = j as f64;
        terms.push(2f64.ln() + (jf - 1.0) * eps(jf) + jf * ln_g + ln_binom(alpha, j));
    }
    let amplified = log_sum_exp(&terms);
    let trivial = (a - 1.0) * eps(a);
    amplified.min(trivial) / (a - 1.0)
}

/// The RDP orders this accountant evaluates: the integers `2..=256`.
pub fn orders() -> Vec<u64> {
    (2..=256).collect()
}

/// ε of a GS-WGAN run, with the order that attains it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GsWganEpsilon {
    /// ε at the requested δ (an upper bound).
    pub epsilon: f64,
    /// The RDP order that gave it.
    pub order: f64,
}

/// The privacy parameters of a GS-WGAN run, validated: the accountant of
/// [`DiscriminatorSampling::IndependentPerRow`] (see the module documentation).
///
/// ```
/// use dpsgd::accounting::gs_wgan::{DiscriminatorSampling, GsWganAccountant};
/// // The paper's setting: K = 1000, σ = 1.07, B = 32, 20 000 iterations.
/// let acc = GsWganAccountant::new(1000, 1.07, 32, DiscriminatorSampling::IndependentPerRow)?;
/// let e = acc.epsilon(20_000, 1e-5)?;
/// assert!(e.epsilon > 5.0 && e.epsilon < 10.0);
/// // The authors' shared draw is refused.
/// assert!(GsWganAccountant::new(1000, 1.07, 32, DiscriminatorSampling::SharedPerIteration).is_err());
/// # Ok::<(), dpsgd::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GsWganAccountant {
    discriminators: u64,
    noise_multiplier: f64,
    batch_size: u64,
    sampling: DiscriminatorSampling,
}

impl GsWganAccountant {
    /// `discriminators` = K ≥ 1, `noise_multiplier` = σ > 0 (noise std = `2 · clip · σ`, see
    /// [`noise_std`]), `batch_size` = B ≥ 1 generated rows per iteration. Refuses
    /// [`DiscriminatorSampling::SharedPerIteration`].
    pub fn new(
        discriminators: u64,
        noise_multiplier: f64,
        batch_size: u64,
        sampling: DiscriminatorSampling,
    ) -> Result<Self> {
        validate_row(discriminators, noise_multiplier)?;
        if batch_size == 0 {
            return Err(Error::invalid("batch_size", batch_size, ">= 1"));
        }
        if sampling == DiscriminatorSampling::SharedPerIteration {
            return Err(Error::invalid(
                "sampling",
                "shared-per-iteration",
                "independent-per-row: with one discriminator shared by all rows of an \
                 iteration (and trained because it was drawn) one record moves every row at \
                 once, and the per-row analysis of GS-WGAN does not hold; draw each row's \
                 discriminator independently and the critic schedule independently of those \
                 draws",
            ));
        }
        Ok(GsWganAccountant {
            discriminators,
            noise_multiplier,
            batch_size,
            sampling,
        })
    }

    /// K.
    pub fn discriminators(&self) -> u64 {
        self.discriminators
    }

    /// σ (noise std / (2 · clip)).
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// B.
    pub fn batch_size(&self) -> u64 {
        self.batch_size
    }

    /// Total RDP after `iterations` generator iterations (`B · iterations` rows) at each of
    /// `orders` (integers ≥ 2).
    pub fn rdp(&self, iterations: u64, orders: &[u64]) -> Result<Vec<f64>> {
        let rows = self
            .batch_size
            .checked_mul(iterations)
            .ok_or_else(|| Error::invalid("iterations", iterations, "B · iterations < 2^64"))?
            as f64;
        orders
            .iter()
            .map(|&a| Ok(rows * rdp_row(self.discriminators, self.noise_multiplier, a)?))
            .collect()
    }

    /// `(ε, δ)` after `iterations` generator iterations (Balle et al. 2020, Theorem 21, over
    /// [`orders`]). Zero iterations give ε = 0.
    pub fn epsilon(&self, iterations: u64, delta: f64) -> Result<GsWganEpsilon> {
        validate_delta(delta)?;
        if iterations == 0 {
            return Ok(GsWganEpsilon {
                epsilon: 0.0,
                order: f64::NAN,
            });
        }
        let ords = orders();
        let rdp = self.rdp(iterations, &ords)?;
        let f: Vec<f64> = ords.iter().map(|&a| a as f64).collect();
        let (epsilon, order) = eps_from_rdp(&f, &rdp, delta)?;
        Ok(GsWganEpsilon { epsilon, order })
    }
}

impl GsWganAccountant {
    /// ε after `iterations` with the noise sampler's truncation charged to δ (as the engine
    /// does, [`crate::noise`]): `η = iterations · truncation_mass(B · row_len)`, and ε is
    /// reported at `δ' = δ − (1 + e^{ε₀})·η` with `ε₀ = ε(δ/2) ≥ ε(δ')` (so the charge is an
    /// upper bound). Reports `ε = ∞` if `δ'` would fall below `δ/2` (only for huge ε).
    pub fn epsilon_charged(
        &self,
        iterations: u64,
        delta: f64,
        row_len: u64,
        generator: crate::rng::Generator,
    ) -> Result<GsWganEpsilon> {
        validate_delta(delta)?;
        let per = crate::noise::gaussian_truncation_mass(
            self.batch_size.saturating_mul(row_len),
            generator,
        );
        let eta = per * iterations as f64;
        let e0 = self.epsilon(iterations, delta / 2.0)?.epsilon;
        let charge = (1.0 + e0.exp()) * eta;
        if charge.is_nan() || charge > delta / 2.0 {
            // ε is so large that the charge cannot be paid from δ: no finite claim is made.
            return Ok(GsWganEpsilon {
                epsilon: f64::INFINITY,
                order: f64::NAN,
            });
        }
        self.epsilon(iterations, delta - charge)
    }
}

/// **For comparison only**: the figure the GS-WGAN paper's `privacy_analysis.py` reports —
/// the same per-row bound composed `B · iterations` times, converted with Mironov (2017),
/// Proposition 3 (`ε = rdp(α) + ln(1/δ)/(α − 1)`) over integer orders (autodp also
/// interpolates between them, so it can print a slightly smaller number). It is a valid ε
/// only for [`DiscriminatorSampling::IndependentPerRow`], **not** for the authors' code,
/// which shares one discriminator per iteration. Label it wherever it is shown.
pub fn paper_epsilon(
    discriminators: u64,
    noise_multiplier: f64,
    batch_size: u64,
    iterations: u64,
    delta: f64,
) -> Result<f64> {
    validate_row(discriminators, noise_multiplier)?;
    validate_delta(delta)?;
    let rows = batch_size.saturating_mul(iterations) as f64;
    Ok(orders()
        .into_iter()
        .map(|a| {
            rows * rdp_row_unchecked(discriminators, noise_multiplier, a)
                + (1.0 / delta).ln() / (a as f64 - 1.0)
        })
        .fold(f64::INFINITY, f64::min))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::E;

    #[test]
    fn row_rdp_by_hand() {
        // K = 2, σ = 1: ε(j) = j/2. α = 2: ln(1 + ¼·1·min(4(e−1), 2e)) = ln(1 + 2e/4).
        let r2 = rdp_row(2, 1.0, 2).unwrap();
        assert!((r2 - (1.0 + 0.25 * 2.0 * E).ln()).abs() < 1e-13, "{r2}");
        // α = 3: ½ ln(1 + ¼·3·2e + 2·⅛·e^{2·3/2}).
        let r3 = rdp_row(2, 1.0, 3).unwrap();
        let want = 0.5 * (1.0 + 0.75 * 2.0 * E + 0.25 * E.powi(3)).ln();
        assert!((r3 - want).abs() < 1e-13, "{r3} vs {want}");
        // K = 1: no amplification, the cap α/(2σ²) applies.
        assert_eq!(rdp_row(1, 1.0, 2).unwrap(), 1.0);
    }

    #[test]
    fn refuses_bad_parameters() {
        assert!(rdp_row(0, 1.0, 2).is_err());
        assert!(rdp_row(10, 0.0, 2).is_err());
        assert!(rdp_row(10, f64::NAN, 2).is_err());
        assert!(rdp_row(10, 1.0, 1).is_err());
        let ind = DiscriminatorSampling::IndependentPerRow;
        assert!(GsWganAccountant::new(10, 1.0, 0, ind).is_err());
        assert!(GsWganAccountant::new(10, -1.0, 1, ind).is_err());
        let acc = GsWganAccountant::new(10, 1.0, 4, ind).unwrap();
        assert!(acc.epsilon(10, 0.0).is_err());
        assert!(acc.epsilon(u64::MAX, 1e-5).is_err());
    }
}
