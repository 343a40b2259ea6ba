//! PATE aggregation (Private Aggregation of Teacher Ensembles): noisy arg-max over teacher vote
//! histograms, with its privacy analysis.
//!
//! - [`lnmax`]: Laplace noise of scale 1/γ on every vote count (Papernot, Abadi, Erlingsson,
//!   Goodfellow, Talwar, "Semi-supervised Knowledge Transfer for Deep Learning from Private
//!   Training Data", ICLR 2017). Data-independent bound: each answered query is (2γ, 0)-DP
//!   ([`lnmax_epsilon`]): changing one teacher's data moves one vote, changing two counts by 1 each
//!   (L1 sensitivity 2 of the histogram), and Laplace noise of scale 1/γ on an L1-sensitivity-2
//!   histogram is 2γ-DP, the arg-max being post-processing. T queries compose to 2γT.
//!   - Moments accountant (the 2017 paper's own analysis, Theorems 1–3):
//!     [`LnmaxMomentsAccountant`], data-dependent ([`lnmax_q`],
//!     [`lnmax_log_moment_data_dependent`]) and data-independent
//!     ([`lnmax_log_moment_data_independent`]).
//!   - Rényi DP (Theorem 6 of the 2018 paper applied to LNMax): [`LnmaxRdpAccountant`].
//! - [`gnmax`]: Gaussian noise N(0, σ²) on every count (Papernot, Song, Mironov, Raghunathan,
//!   Talwar, Erlingsson, "Scalable Private Learning with PATE", ICLR 2018).
//!   - Data-independent: (λ, λ/σ²)-RDP per query ([`gnmax_rdp_data_independent`]; the
//!     histogram has L2 sensitivity √2, and the Gaussian mechanism is (λ, λΔ²/(2σ²))-RDP).
//!   - Data-dependent: Theorem 6 of the 2018 paper with q̃ from Proposition 7
//!     ([`gnmax_log_q`], [`gnmax_rdp_data_dependent`]), composed over a run of answered queries by
//!     [`GnmaxAccountant`] and converted to (ε, δ). The data-dependent ε depends on the votes and
//!     is itself not differentially private; the paper releases it through smooth sensitivity
//!     (its Section 4 / Appendix B): [`super::pate_smooth`].
//! - [`confident_gnmax`]: Confident-GNMax (Algorithm 1 of the 2018 paper): a noisy threshold
//!   (σ₁) on the plurality count, then GNMax (σ₂) on the queries that pass.
//!   - Threshold step: data-independent λ/(2σ₁²) ([`threshold_rdp_data_independent`]),
//!     data-dependent by Theorem 6 ([`threshold_log_pr_answered`],
//!     [`threshold_rdp_data_dependent`]); composed with the GNMax step of the answered queries
//!     by [`ConfidentGnmaxAccountant`] (its data-independent ε counts every query as answered).
//!
//! # Floating-point safety
//! **Not safe** against floating-point attacks (Mironov 2012): the noise is drawn in IEEE doubles.
//! Only the arg-max index is released, which limits but does not remove the exposure.

use crate::error::check_positive;
use crate::mechanisms::check_delta;
use crate::rng::RandomBits;
use crate::{Error, Result};

pub(crate) fn check_votes(votes: &[u64]) -> Result<()> {
    if votes.is_empty() {
        return Err(Error::shape("pate", "the vote histogram has no classes"));
    }
    Ok(())
}

fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// The LNMax answer: arg-maxⱼ (nⱼ + Lap(1/γ)) over the vote counts nⱼ (ties, of probability 0,
/// go to the lowest class). `gamma` > 0; `votes` non-empty.
///
/// # Proof Definition
/// Papernot et al., "Semi-supervised Knowledge Transfer for Deep Learning from Private Training
/// Data" (ICLR 2017), Section 2.1 (the noisy aggregation) and Section 3 (each query is
/// (2γ, 0)-DP, see [`lnmax_epsilon`]); Dwork & Roth (2014), Theorem 3.6.
///
/// # Floating-point safety
/// **Not safe** against floating-point attacks (Mironov 2012): float Laplace noise.
pub fn lnmax(votes: &[u64], gamma: f64, rng: &mut impl RandomBits) -> Result<usize> {
    check_positive("gamma", gamma)?;
    check_votes(votes)?;
    let scale = 1.0 / gamma;
    check_positive("1/gamma", scale)?;
    let noisy: Vec<f64> = votes
        .iter()
        .map(|&n| n as f64 + scale * rng.next_laplace_f64())
        .collect();
    Ok(argmax(&noisy))
}

/// The data-independent ε of `queries` LNMax answers with parameter γ: 2γ per query, composed
/// additively (basic composition; Papernot et al. 2017).
pub fn lnmax_epsilon(gamma: f64, queries: u64) -> Result<f64> {
    check_positive("gamma", gamma)?;
    Ok(2.0 * gamma * queries as f64)
}

/// The GNMax answer: arg-maxⱼ (nⱼ + N(0, σ²)) over the vote counts nⱼ. `sigma` > 0.
///
/// # Proof Definition
/// Papernot et al., "Scalable Private Learning with PATE" (ICLR 2018), Section 4.1 (GNMax) and
/// Proposition 8 ((λ, λ/σ²)-RDP, data-independent); data-dependent: Theorem 6 with Proposition 7.
///
/// # Floating-point safety
/// **Not safe** against floating-point attacks (Mironov 2012): Box–Muller noise in doubles.
pub fn gnmax(votes: &[u64], sigma: f64, rng: &mut impl RandomBits) -> Result<usize> {
    check_positive("sigma", sigma)?;
    check_votes(votes)?;
    let noisy: Vec<f64> = votes
        .iter()
        .map(|&n| n as f64 + sigma * rng.next_normal_f64())
        .collect();
    Ok(argmax(&noisy))
}

pub(crate) fn check_order(order: f64) -> Result<()> {
    if order.is_finite() && order > 1.0 {
        Ok(())
    } else {
        Err(Error::invalid("order", order, "finite and > 1"))
    }
}

/// The data-independent RDP of one GNMax answer at order λ > 1: λ/σ² (Papernot et al. 2018,
/// Proposition 8).
pub fn gnmax_rdp_data_independent(sigma: f64, order: f64) -> Result<f64> {
    check_positive("sigma", sigma)?;
    check_order(order)?;
    Ok(order / (sigma * sigma))
}

/// ln q̃, an upper bound on ln Pr[GNMax ≠ plurality class i*] (Papernot et al. 2018,
/// Proposition 7): q̃ = Σ_{i≠i*} Pr[N(0, 2σ²) > n_{i*} − nᵢ] = ½ Σ_{i≠i*} erfc((n_{i*} − nᵢ)/(2σ)),
/// summed in log space, and capped at ln(1 − 1/k) for k classes (as in the authors' code — the
/// plurality is the likeliest answer, so Pr[answer ≠ i*] ≤ 1 − 1/k).
///
/// **Not itself a DP release:** the result depends on the (private) vote histograms, so
/// publishing it leaks about the teachers' data. Use it for internal analysis only; to publish
/// it, release it through the smooth-sensitivity mechanism of Papernot et al. 2018 (Section 4 /
/// Appendix B; [`super::pate_smooth`]) — or publish the data-independent bound instead.
pub fn gnmax_log_q(votes: &[u64], sigma: f64) -> Result<f64> {
    check_positive("sigma", sigma)?;
    check_votes(votes)?;
    let k = votes.len();
    if k == 1 {
        return Ok(f64::NEG_INFINITY);
    }
    let mut top = 0;
    for (i, &n) in votes.iter().enumerate() {
        if n > votes[top] {
            top = i;
        }
    }
    let terms: Vec<f64> = votes
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != top)
        .map(|(_, &n)| log_half_erfc((votes[top] - n) as f64 / (2.0 * sigma)))
        .collect();
    let lq = log_sum_exp(&terms);
    Ok(lq.min((1.0 - 1.0 / k as f64).ln()))
}

/// ln(erfc(x)/2) for x ≥ 0, accurate also where erfc underflows (asymptotic expansion).
pub(crate) fn log_half_erfc(x: f64) -> f64 {
    let e = libm::erfc(x);
    if e > 1e-300 {
        return (0.5 * e).ln();
    }
    // erfc(x) ≈ exp(−x²)/(x√π)·(1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶)) for large x.
    let x2 = x * x;
    let series = 1.0 - 1.0 / (2.0 * x2) + 3.0 / (4.0 * x2 * x2) - 15.0 / (8.0 * x2 * x2 * x2);
    -x2 - (x * std::f64::consts::PI.sqrt()).ln() + series.ln() - std::f64::consts::LN_2
}

fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// ln(1 − e^x) for x < 0.
pub(crate) fn log1mexp(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}

fn log_add_exp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// The data-dependent RDP of one GNMax answer at order λ > 1, given ln q̃ from [`gnmax_log_q`]
/// (Papernot et al. 2018, Theorem 6).
///
/// Theorem 6: if M is (μ₁, ε₁)- and (μ₂, ε₂)-RDP and q̃ ≥ Pr[M(D) ≠ i*] satisfies
/// q̃ ≤ e^((μ₂−1)ε₂) / (μ₁/(μ₁−1) · μ₂/(μ₂−1))^μ₂ (and q̃·e^ε₂ < 1), then for λ ≤ μ₁ and every
/// neighbour D′: D_λ(M(D)‖M(D′)) ≤ ln((1−q̃)·A^(λ−1) + q̃·B^(λ−1))/(λ−1) with
/// A = (1−q̃)/(1 − (q̃e^ε₂)^((μ₂−1)/μ₂)) and B = e^ε₁/q̃^(1/(μ₁−1)).
/// With εᵢ = μᵢ/σ² (GNMax's data-independent RDP) and μ₂ = σ√(ln(1/q̃)), μ₁ = μ₂ + 1 (the
/// choice of the authors' reference code, after their Proposition 10). Where the conditions fail
/// the data-independent λ/σ² is returned; the result is never above it.
///
/// **Not itself a DP release:** the result depends on the (private) vote histograms, so
/// publishing it leaks about the teachers' data. Use it for internal analysis only; to publish
/// it, release it through the smooth-sensitivity mechanism of Papernot et al. 2018 (Section 4 /
/// Appendix B; [`super::pate_smooth`]) — or publish the data-independent bound instead.
pub fn gnmax_rdp_data_dependent(log_q: f64, sigma: f64, order: f64) -> Result<f64> {
    check_positive("sigma", sigma)?;
    check_order(order)?;
    if log_q.is_nan() || log_q > 0.0 {
        return Err(Error::invalid("log_q", log_q, "<= 0 (a log-probability)"));
    }
    let var = sigma * sigma;
    let independent = order / var;
    let log_q = log_q.min(-1e-300);
    if log_q == f64::NEG_INFINITY {
        // Unanimity with a single class: the answer never changes.
        return Ok(0.0);
    }
    let mu2 = (var * -log_q).sqrt();
    let mu1 = mu2 + 1.0;
    if !(mu1 > order && mu2 > 1.0) {
        return Ok(independent);
    }
    match theorem6_rdp(log_q, order, mu1, mu1 / var, mu2, mu2 / var) {
        Some(dd) => Ok(dd.clamp(0.0, independent)),
        None => Ok(independent),
    }
}

/// Theorem 6 of Papernot et al. 2018 for one choice of (μ₁, ε₁), (μ₂, ε₂): the bound
/// ln((1−q̃)·A^(λ−1) + q̃·B^(λ−1))/(λ−1) where its conditions hold (λ ≤ μ₁, μ₁, μ₂ > 1,
/// ln q̃ ≤ (μ₂−1)ε₂ − μ₂(ln(μ₁/(μ₁−1)) + ln(μ₂/(μ₂−1))), q̃·e^ε₂ < 1), `None` where they fail
/// or the value is not a number. `log_q` must be finite and < 0.
pub(crate) fn theorem6_rdp(
    log_q: f64,
    order: f64,
    mu1: f64,
    eps1: f64,
    mu2: f64,
    eps2: f64,
) -> Option<f64> {
    if !(order <= mu1 && mu1 > 1.0 && mu2 > 1.0) {
        return None;
    }
    let log_a2 = (mu2 - 1.0) * eps2;
    let cond = log_q <= log_a2 - mu2 * ((1.0 / (mu1 - 1.0)).ln_1p() + (1.0 / (mu2 - 1.0)).ln_1p())
        && -log_q > eps2;
    if !cond {
        return None;
    }
    let log1q = log1mexp(log_q);
    let log_a = (order - 1.0) * (log1q - log1mexp((log_q + eps2) * (1.0 - 1.0 / mu2)));
    let log_b = (order - 1.0) * (eps1 - log_q / (mu1 - 1.0));
    let log_s = log_add_exp(log1q + log_a, log_q + log_b);
    let dd = log_s / (order - 1.0);
    if dd.is_nan() {
        None
    } else {
        Some(dd)
    }
}

/// (ε, δ) from RDP over a set of orders: ε = min over α of rdp(α) + ln(1/δ)/(α − 1) (Mironov,
/// "Rényi Differential Privacy", CSF 2017, Proposition 3 — the conversion of the PATE papers).
/// Returns (ε, the minimising order). `orders` and `rdp` must have the same non-zero length.
pub fn rdp_to_epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> Result<(f64, f64)> {
    check_delta(delta)?;
    if orders.is_empty() || orders.len() != rdp.len() {
        return Err(Error::shape(
            "rdp_to_epsilon",
            format!("{} orders but {} RDP values", orders.len(), rdp.len()),
        ));
    }
    let mut best = (f64::INFINITY, orders[0]);
    for (&a, &r) in orders.iter().zip(rdp) {
        check_order(a)?;
        if r.is_nan() || r < 0.0 {
            return Err(Error::invalid("rdp", r, ">= 0"));
        }
        let eps = r + (1.0 / delta).ln() / (a - 1.0);
        if eps < best.0 {
            best = (eps, a);
        }
    }
    Ok(best)
}

/// The orders of the PATE reference code: 2, 2.5, …, 100, then 100 log-spaced orders to 500.
pub fn default_orders() -> Vec<f64> {
    let mut v: Vec<f64> = (0..=196).map(|i| 2.0 + 0.5 * i as f64).collect();
    let (lo, hi) = (100f64.log10(), 500f64.log10());
    v.extend((0..100).map(|i| 10f64.powf(lo + (hi - lo) * i as f64 / 99.0)));
    v
}

/// Composes GNMax answers over a run: data-dependent RDP (Theorem 6 / Proposition 7 of
/// Papernot et al. 2018) and data-independent RDP (λ/σ² per query), summed per order, and
/// converted to (ε, δ) with [`rdp_to_epsilon`].
///
/// The data-dependent values ([`Self::rdp_data_dependent`], [`Self::epsilon_data_dependent`])
/// are **not themselves a DP release** (they depend on the votes; see there); the
/// data-independent ones depend only on σ and the number of answers.
#[derive(Clone, Debug, PartialEq)]
pub struct GnmaxAccountant {
    sigma: f64,
    orders: Vec<f64>,
    data_dependent: Vec<f64>,
    answered: u64,
}

impl GnmaxAccountant {
    /// An accountant for GNMax with noise σ over `orders` (each finite and > 1, non-empty).
    pub fn new(sigma: f64, orders: Vec<f64>) -> Result<Self> {
        check_positive("sigma", sigma)?;
        if orders.is_empty() {
            return Err(Error::shape("GnmaxAccountant", "no RDP orders"));
        }
        for &a in &orders {
            check_order(a)?;
        }
        let n = orders.len();
        Ok(GnmaxAccountant {
            sigma,
            orders,
            data_dependent: vec![0.0; n],
            answered: 0,
        })
    }

    /// Accounts for one answered query whose (noiseless) vote histogram was `votes`.
    pub fn record(&mut self, votes: &[u64]) -> Result<()> {
        let log_q = gnmax_log_q(votes, self.sigma)?;
        for (acc, &a) in self.data_dependent.iter_mut().zip(&self.orders) {
            *acc += gnmax_rdp_data_dependent(log_q, self.sigma, a)?;
        }
        self.answered += 1;
        Ok(())
    }

    /// How many answered queries have been recorded.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// The orders.
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The composed data-dependent RDP at each order.
    ///
    /// **Not itself a DP release:** the result depends on the (private) vote histograms, so
    /// publishing it leaks about the teachers' data. Use it for internal analysis only; to publish
    /// it, release it through the smooth-sensitivity mechanism of Papernot et al. 2018 (Section 4 /
    /// Appendix B; [`super::pate_smooth`]) — or publish the data-independent bound instead.
    pub fn rdp_data_dependent(&self) -> &[f64] {
        &self.data_dependent
    }

    /// The composed data-independent RDP at each order: answered·λ/σ².
    pub fn rdp_data_independent(&self) -> Vec<f64> {
        let var = self.sigma * self.sigma;
        self.orders
            .iter()
            .map(|a| self.answered as f64 * a / var)
            .collect()
    }

    /// The data-dependent (ε, minimising order) at δ.
    ///
    /// **Not itself a DP release:** the result depends on the (private) vote histograms, so
    /// publishing it leaks about the teachers' data. Use it for internal analysis only; to publish
    /// it, release it through the smooth-sensitivity mechanism of Papernot et al. 2018 (Section 4 /
    /// Appendix B; [`super::pate_smooth`]) — or publish the data-independent bound instead.
    pub fn epsilon_data_dependent(&self, delta: f64) -> Result<(f64, f64)> {
        rdp_to_epsilon(&self.orders, &self.data_dependent, delta)
    }

    /// The data-independent (ε, minimising order) at δ.
    pub fn epsilon_data_independent(&self, delta: f64) -> Result<(f64, f64)> {
        rdp_to_epsilon(&self.orders, &self.rdp_data_independent(), delta)
    }
}

// ---------------------------------------------------------------------------------------------
// LNMax: the moments accountant of Papernot et al. 2017, and Theorem 6 of 2018 applied to it.
// ---------------------------------------------------------------------------------------------

/// q, an upper bound on Pr[LNMax answer ≠ plurality class j*] (Papernot et al. 2017,
/// Theorem 3): q = Σ_{j≠j*} (2 + γ(n_{j*} − nⱼ)) / (4·exp(γ(n_{j*} − nⱼ))), capped at 1 − 1/k
/// for k classes. j* is the first class with the most votes.
///
/// Each term is exactly Pr[Xⱼ − X_{j*} ≥ n_{j*} − nⱼ] for two independent Lap(1/γ) noises (the
/// tail of their difference is (2 + γt)e^(−γt)/4 for t ≥ 0), so the sum is a union bound. The cap
/// holds because with i.i.d. noise on every count the plurality is the likeliest answer, so it wins
/// with probability ≥ 1/k.
///
/// **Not itself a DP release:** it depends on the (private) votes; see
/// [`LnmaxMomentsAccountant`].
pub fn lnmax_q(votes: &[u64], gamma: f64) -> Result<f64> {
    check_positive("gamma", gamma)?;
    check_votes(votes)?;
    let k = votes.len();
    if k == 1 {
        return Ok(0.0);
    }
    let mut top = 0;
    for (i, &n) in votes.iter().enumerate() {
        if n > votes[top] {
            top = i;
        }
    }
    let q: f64 = votes
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != top)
        .map(|(_, &n)| {
            let gap = gamma * (votes[top] - n) as f64;
            (2.0 + gap) * (-gap).exp() / 4.0
        })
        .sum();
    Ok(q.min(1.0 - 1.0 / k as f64))
}

fn check_moment(lambda: f64) -> Result<()> {
    if lambda.is_finite() && lambda > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid("moment", lambda, "finite and > 0"))
    }
}

/// The data-independent log-moment bound of one LNMax answer (a (2γ, 0)-DP mechanism) at moment
/// λ > 0: min(2γ²·λ(λ+1), 2γ·λ).
///
/// With ε = 2γ: a pure ε-DP mechanism is ε²/2-zCDP (Bun & Steinke, TCC 2016, Proposition 3.3),
/// i.e. its log-moment α(λ) = λ·D_{λ+1} is at most ε²λ(λ+1)/2 (the bound Papernot et al. 2017 use,
/// citing Dwork & Rothblum 2016); and its privacy loss never exceeds ε, so α(λ) ≤ ελ.
pub fn lnmax_log_moment_data_independent(gamma: f64, lambda: f64) -> Result<f64> {
    check_positive("gamma", gamma)?;
    check_moment(lambda)?;
    let eps = 2.0 * gamma;
    Ok((0.5 * eps * eps * lambda * (lambda + 1.0)).min(eps * lambda))
}

/// Whether Theorem 2 of Papernot et al. 2017 applies to q at noise γ: q < (e^{2γ} − 1)/(e^{4γ} − 1)
/// (= 1/(e^{2γ} + 1)).
pub fn lnmax_theorem2_applies(q: f64, gamma: f64) -> bool {
    let e = (2.0 * gamma).exp();
    q.is_finite() && q >= 0.0 && q < 1.0 / (e + 1.0)
}

/// The data-dependent log-moment bound of one LNMax answer at moment λ > 0, given q ≥
/// Pr[answer ≠ j*] (from [`lnmax_q`]): Theorem 2 of Papernot et al. 2017 with ε = 2γ,
/// ln((1−q)·((1−q)/(1 − e^{2γ}q))^λ + q·e^{2γλ}), where its condition holds
/// ([`lnmax_theorem2_applies`]), and never more than the data-independent bound
/// ([`lnmax_log_moment_data_independent`]), which is returned where the condition fails.
///
/// **Not itself a DP release:** see [`LnmaxMomentsAccountant`].
pub fn lnmax_log_moment_data_dependent(q: f64, gamma: f64, lambda: f64) -> Result<f64> {
    let independent = lnmax_log_moment_data_independent(gamma, lambda)?;
    if !(q.is_finite() && (0.0..=1.0).contains(&q)) {
        return Err(Error::invalid("q", q, "a probability in [0, 1]"));
    }
    if !lnmax_theorem2_applies(q, gamma) {
        return Ok(independent);
    }
    if q == 0.0 {
        return Ok(0.0);
    }
    let eps = 2.0 * gamma;
    let log1q = (-q).ln_1p();
    // 1 − e^ε q > 0 by the condition (q < 1/(e^ε + 1) < e^{−ε}).
    let log_denominator = (-(eps.exp() * q)).ln_1p();
    let t1 = log1q + lambda * (log1q - log_denominator);
    let t2 = q.ln() + eps * lambda;
    let bound = log_add_exp(t1, t2);
    if bound.is_nan() {
        return Ok(independent);
    }
    Ok(bound.clamp(0.0, independent))
}

/// (ε, δ) from log-moments: ε = min over λ of (α(λ) + ln(1/δ))/λ (the tail bound of the moments
/// accountant, Abadi et al. CCS 2016, Theorem 2.2; Papernot et al. 2017, Theorem 1). Returns
/// (ε, the minimising λ). `moments` and `log_moments` must have the same non-zero length.
pub fn log_moments_to_epsilon(
    moments: &[f64],
    log_moments: &[f64],
    delta: f64,
) -> Result<(f64, f64)> {
    check_delta(delta)?;
    if moments.is_empty() || moments.len() != log_moments.len() {
        return Err(Error::shape(
            "log_moments_to_epsilon",
            format!(
                "{} moments but {} log-moment values",
                moments.len(),
                log_moments.len()
            ),
        ));
    }
    let mut best = (f64::INFINITY, moments[0]);
    for (&l, &a) in moments.iter().zip(log_moments) {
        check_moment(l)?;
        if a.is_nan() || a < 0.0 {
            return Err(Error::invalid("log_moment", a, ">= 0"));
        }
        let eps = (a + (1.0 / delta).ln()) / l;
        if eps < best.0 {
            best = (eps, l);
        }
    }
    Ok(best)
}

/// The moments λ = 1, 2, …, `max` (the PATE 2017 reference analysis used 1…8).
pub fn moments_up_to(max: u32) -> Result<Vec<f64>> {
    if max == 0 {
        return Err(Error::invalid("max moment", max, ">= 1"));
    }
    Ok((1..=max).map(f64::from).collect())
}

/// The moments accountant of PATE's LNMax aggregator (Papernot, Abadi, Erlingsson, Goodfellow,
/// Talwar, "Semi-supervised Knowledge Transfer for Deep Learning from Private Training Data",
/// ICLR 2017, Section 3): data-dependent log-moments (Theorems 2 and 3) and data-independent
/// ones ([`lnmax_log_moment_data_independent`]), summed over the answered queries at each moment
/// λ, and converted to (ε, δ) with [`log_moments_to_epsilon`]. This is the analysis the course
/// used (through PySyft's copy of the authors' `analysis.py`); [`LnmaxRdpAccountant`] is the
/// Rényi-DP alternative.
///
/// # Proof Definition
/// - The mechanism: [`lnmax`] with parameter γ, i.e. arg-max of the vote counts plus i.i.d.
///   Lap(1/γ). One teacher's training data changes only that teacher's vote, which moves one
///   count down by 1 and another up by 1 (L1 sensitivity 2), so one answer is (2γ, 0)-DP
///   (Dwork & Roth 2014, Theorem 3.6; the arg-max is post-processing).
/// - Theorem 2 (2017): if M is (2γ, 0)-DP, q ≥ Pr[M(d) ≠ o*] for some outcome o*, λ ≥ 0 and
///   q < (e^{2γ} − 1)/(e^{4γ} − 1), then for every neighbour d′ the log-moment
///   α(λ; d, d′) ≤ ln((1−q)·((1−q)/(1 − e^{2γ}q))^λ + q·e^{2γλ}). [`record`](Self::record)
///   checks the condition for every query ([`lnmax_theorem2_applies`]) and uses the
///   data-independent bound where it fails.
/// - Theorem 3 (2017): for LNMax, Pr[M(d) ≠ j*] ≤ Σ_{j≠j*} (2 + γΔⱼ)/(4e^{γΔⱼ}), Δⱼ the vote gap
///   to the plurality j* ([`lnmax_q`]).
/// - Theorem 1 (2017; Abadi et al. 2016, Theorem 2.2): log-moments of adaptively composed
///   mechanisms add up, and the composition is (ε, δ)-DP for δ = min_λ exp(α(λ) − λε).
///
/// Where the code that runs departs from these assumptions: [`lnmax`]'s noise is drawn in IEEE
/// doubles (Mironov 2012: only the arg-max is released, which limits the exposure) and is cut
/// at |z| ≈ 81/γ (probability < 2⁻¹¹⁶ per draw, [`crate::rng::RandomBits::next_laplace_f64`]),
/// so the answer's distribution is within k·2⁻¹¹⁶ (k classes) in total variation of the ideal
/// one, and in exact terms each answer is (2γ, δ₀)-DP with δ₀ ≤ (1 + e^{2γ})·k·2⁻¹¹⁶ rather than
/// pure — negligible next to any δ used here, but not zero.
///
/// **The data-dependent values are not themselves a DP release:** they depend on the (private)
/// votes, so publishing them leaks about the teachers' data. The 2017 paper releases them through
/// smooth sensitivity (its Section 3.3 and the `smoothed_sens` of the authors' code), which is
/// not implemented for LNMax ([`super::pate_smooth`] covers GNMax and Confident-GNMax); publish the data-independent ε instead, or keep the data-dependent
/// one for internal analysis.
///
/// ```
/// use dpsgd::mechanisms::pate::{moments_up_to, LnmaxMomentsAccountant};
/// let mut acc = LnmaxMomentsAccountant::new(0.1, moments_up_to(8)?)?;
/// for _ in 0..100 {
///     acc.record(&[100, 0, 0, 0, 0, 0, 0, 0, 0, 0])?; // 100 unanimous teachers
/// }
/// let (eps_dd, _) = acc.epsilon_data_dependent(1e-5)?;
/// let (eps_di, _) = acc.epsilon_data_independent(1e-5)?;
/// assert!(eps_dd < 1.6 && (eps_di - 11.7565).abs() < 1e-3);
/// # Ok::<(), dpsgd::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LnmaxMomentsAccountant {
    gamma: f64,
    moments: Vec<f64>,
    data_dependent: Vec<f64>,
    answered: u64,
    theorem2_used: u64,
}

impl LnmaxMomentsAccountant {
    /// An accountant for LNMax with parameter γ (Laplace scale 1/γ, 2γ-DP per answer) over the
    /// moments λ in `moments` (each finite and > 0, non-empty; see [`moments_up_to`]).
    pub fn new(gamma: f64, moments: Vec<f64>) -> Result<Self> {
        check_positive("gamma", gamma)?;
        if moments.is_empty() {
            return Err(Error::shape("LnmaxMomentsAccountant", "no moments"));
        }
        for &l in &moments {
            check_moment(l)?;
        }
        let n = moments.len();
        Ok(LnmaxMomentsAccountant {
            gamma,
            moments,
            data_dependent: vec![0.0; n],
            answered: 0,
            theorem2_used: 0,
        })
    }

    /// Accounts for one answered query whose (noiseless) vote histogram was `votes`.
    pub fn record(&mut self, votes: &[u64]) -> Result<()> {
        let q = lnmax_q(votes, self.gamma)?;
        let mut step = Vec::with_capacity(self.moments.len());
        for &l in &self.moments {
            step.push(lnmax_log_moment_data_dependent(q, self.gamma, l)?);
        }
        for (acc, s) in self.data_dependent.iter_mut().zip(step) {
            *acc += s;
        }
        if lnmax_theorem2_applies(q, self.gamma) {
            self.theorem2_used += 1;
        }
        self.answered += 1;
        Ok(())
    }

    /// How many answered queries have been recorded.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// How many of them met Theorem 2's condition (the others were charged the data-independent
    /// log-moment).
    pub fn theorem2_used(&self) -> u64 {
        self.theorem2_used
    }

    /// The moments λ.
    pub fn moments(&self) -> &[f64] {
        &self.moments
    }

    /// The composed data-dependent log-moment at each λ. **Not itself a DP release** (see the
    /// type's documentation).
    pub fn log_moments_data_dependent(&self) -> &[f64] {
        &self.data_dependent
    }

    /// The composed data-independent log-moment at each λ: answered × min(2γ²λ(λ+1), 2γλ).
    pub fn log_moments_data_independent(&self) -> Vec<f64> {
        let eps = 2.0 * self.gamma;
        self.moments
            .iter()
            .map(|&l| self.answered as f64 * (0.5 * eps * eps * l * (l + 1.0)).min(eps * l))
            .collect()
    }

    /// The data-dependent (ε, minimising λ) at δ. **Not itself a DP release** (see the type's
    /// documentation). If the minimising λ is the largest one, more moments may give a smaller ε
    /// (the reference code warns likewise).
    pub fn epsilon_data_dependent(&self, delta: f64) -> Result<(f64, f64)> {
        log_moments_to_epsilon(&self.moments, &self.data_dependent, delta)
    }

    /// The data-independent (ε, minimising λ) at δ: a DP statement that depends only on γ, the
    /// number of answers and the moments tried.
    pub fn epsilon_data_independent(&self, delta: f64) -> Result<(f64, f64)> {
        log_moments_to_epsilon(&self.moments, &self.log_moments_data_independent(), delta)
    }
}

/// The data-independent RDP of one LNMax answer (a (2γ, 0)-DP mechanism) at order α > 1:
/// min(2γ, α·(2γ)²/2) (Bun & Steinke, TCC 2016, Proposition 3.3: ε-DP implies ε²/2-zCDP;
/// and D_α ≤ D_∞ ≤ ε).
pub fn lnmax_rdp_data_independent(gamma: f64, order: f64) -> Result<f64> {
    check_positive("gamma", gamma)?;
    check_order(order)?;
    let eps = 2.0 * gamma;
    Ok(eps.min(0.5 * order * eps * eps))
}

/// The candidate orders μ₁, μ₂ that [`lnmax_rdp_data_dependent`] tries in Theorem 6: 1.05·2ⁱ up
/// to ~1.1·10⁶. (For a pure-DP curve the bound improves as μ₁, μ₂ grow, towards the form of
/// Theorem 2 of 2017, so the grid reaches far.)
fn theorem6_mu_grid() -> impl Iterator<Item = f64> {
    (0..21).map(|i| 1.05 * 2f64.powi(i))
}

/// The data-dependent RDP of one LNMax answer at order λ > 1, given q ≥ Pr[answer ≠ j*]
/// (from [`lnmax_q`]): Theorem 6 of Papernot et al., "Scalable Private Learning with PATE"
/// (ICLR 2018), with LNMax's data-independent RDP curve εᵢ = min(2γ, μᵢ(2γ)²/2)
/// ([`lnmax_rdp_data_independent`]), minimised over a grid of (μ₁, μ₂) that meet the theorem's
/// conditions (λ ≤ μ₁; q ≤ e^((μ₂−1)ε₂)/(μ₁/(μ₁−1)·μ₂/(μ₂−1))^μ₂; q·e^ε₂ < 1 — each choice that
/// meets them is a valid bound, so their minimum is). Never above the data-independent value,
/// which is returned where no choice applies.
///
/// **Not itself a DP release:** it depends on the votes (see [`LnmaxMomentsAccountant`]).
pub fn lnmax_rdp_data_dependent(q: f64, gamma: f64, order: f64) -> Result<f64> {
    let independent = lnmax_rdp_data_independent(gamma, order)?;
    if !(q.is_finite() && (0.0..=1.0).contains(&q)) {
        return Err(Error::invalid("q", q, "a probability in [0, 1]"));
    }
    if q == 0.0 {
        return Ok(0.0);
    }
    let log_q = q.ln().min(-1e-300);
    let eps = 2.0 * gamma;
    let curve = |mu: f64| eps.min(0.5 * mu * eps * eps);
    let mut best = independent;
    for mu1 in theorem6_mu_grid().filter(|&m| m >= order) {
        for mu2 in theorem6_mu_grid() {
            if let Some(v) = theorem6_rdp(log_q, order, mu1, curve(mu1), mu2, curve(mu2)) {
                best = best.min(v.max(0.0));
            }
        }
    }
    Ok(best)
}

/// Rényi-DP accounting of LNMax answers, the alternative to [`LnmaxMomentsAccountant`]:
/// data-dependent RDP from Theorem 6 of Papernot et al. 2018 ([`lnmax_rdp_data_dependent`], with
/// q from Theorem 3 of 2017) and data-independent RDP ([`lnmax_rdp_data_independent`]), summed
/// per order (RDP composes additively, Mironov 2017, Proposition 1) and converted with
/// [`rdp_to_epsilon`].
///
/// # Proof Definition
/// The mechanism and its (2γ, 0)-DP guarantee are as for [`LnmaxMomentsAccountant`] (with the
/// same caveat on the sampler's cut); Theorem 6 needs M to be (μ₁, ε₁)- and (μ₂, ε₂)-RDP, which
/// the pure-DP bound gives at every order, and q ≥ Pr[M(D) ≠ j*], which Theorem 3 of 2017 gives.
///
/// **The data-dependent values are not themselves a DP release** (see
/// [`LnmaxMomentsAccountant`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LnmaxRdpAccountant {
    gamma: f64,
    orders: Vec<f64>,
    data_dependent: Vec<f64>,
    answered: u64,
    /// The last q and its per-order RDP (consecutive identical q, e.g. unanimous votes, are
    /// common and the grid search is not free).
    last: Option<(f64, Vec<f64>)>,
}

impl LnmaxRdpAccountant {
    /// An accountant for LNMax with parameter γ over RDP `orders` (each finite and > 1,
    /// non-empty; [`default_orders`] are those of the PATE reference code).
    pub fn new(gamma: f64, orders: Vec<f64>) -> Result<Self> {
        check_positive("gamma", gamma)?;
        if orders.is_empty() {
            return Err(Error::shape("LnmaxRdpAccountant", "no RDP orders"));
        }
        for &a in &orders {
            check_order(a)?;
        }
        let n = orders.len();
        Ok(LnmaxRdpAccountant {
            gamma,
            orders,
            data_dependent: vec![0.0; n],
            answered: 0,
            last: None,
        })
    }

    /// Accounts for one answered query whose (noiseless) vote histogram was `votes`.
    pub fn record(&mut self, votes: &[u64]) -> Result<()> {
        let q = lnmax_q(votes, self.gamma)?;
        let step = match self.last.take() {
            Some((last_q, step)) if last_q == q => step,
            _ => {
                let mut step = Vec::with_capacity(self.orders.len());
                for &a in &self.orders {
                    step.push(lnmax_rdp_data_dependent(q, self.gamma, a)?);
                }
                step
            }
        };
        for (acc, s) in self.data_dependent.iter_mut().zip(&step) {
            *acc += s;
        }
        self.last = Some((q, step));
        self.answered += 1;
        Ok(())
    }

    /// How many answered queries have been recorded.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// The orders.
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The composed data-dependent RDP at each order. **Not itself a DP release.**
    pub fn rdp_data_dependent(&self) -> &[f64] {
        &self.data_dependent
    }

    /// The composed data-independent RDP at each order.
    pub fn rdp_data_independent(&self) -> Vec<f64> {
        let eps = 2.0 * self.gamma;
        self.orders
            .iter()
            .map(|&a| self.answered as f64 * eps.min(0.5 * a * eps * eps))
            .collect()
    }

    /// The data-dependent (ε, minimising order) at δ. **Not itself a DP release.**
    pub fn epsilon_data_dependent(&self, delta: f64) -> Result<(f64, f64)> {
        rdp_to_epsilon(&self.orders, &self.data_dependent, delta)
    }

    /// The data-independent (ε, minimising order) at δ.
    pub fn epsilon_data_independent(&self, delta: f64) -> Result<(f64, f64)> {
        rdp_to_epsilon(&self.orders, &self.rdp_data_independent(), delta)
    }
}

// ---------------------------------------------------------------------------------------------
// Confident-GNMax: a noisy threshold on the plurality count before GNMax (Papernot et al. 2018).
// ---------------------------------------------------------------------------------------------

/// The Confident-GNMax answer (Papernot et al. 2018, Algorithm 1): if
/// maxⱼ nⱼ + N(0, σ₁²) ≥ T, the GNMax answer arg-maxⱼ (nⱼ + N(0, σ₂²)) (`Some`), else no
/// answer (`None`). `threshold` finite, `sigma1`, `sigma2` > 0.
///
/// # Proof Definition
/// Papernot, Song, Mironov, Raghunathan, Talwar, Erlingsson, "Scalable Private Learning with
/// PATE" (ICLR 2018), Section 4.2 (Algorithm 1). The threshold step releases one bit computed
/// from maxⱼ nⱼ, which moves by at most 1 when one teacher's data (hence one vote) changes: a
/// Gaussian mechanism of L2 sensitivity 1, (λ, λ/(2σ₁²))-RDP
/// ([`threshold_rdp_data_independent`]). The GNMax step is (λ, λ/σ₂²)-RDP (Proposition 8) and
/// runs only on answered queries; both draw fresh noise, so a query costs at most the sum of
/// the two (adaptive composition of RDP, Mironov 2017, Proposition 1) and an unanswered one
/// the threshold's cost alone.
///
/// # Floating-point safety
/// **Not safe** against floating-point attacks (Mironov 2012): Box–Muller noise in doubles.
pub fn confident_gnmax(
    votes: &[u64],
    threshold: f64,
    sigma1: f64,
    sigma2: f64,
    rng: &mut impl RandomBits,
) -> Result<Option<usize>> {
    check_threshold(threshold)?;
    check_positive("sigma1", sigma1)?;
    check_positive("sigma2", sigma2)?;
    check_votes(votes)?;
    let max = votes.iter().copied().max().unwrap_or(0) as f64;
    if max + sigma1 * rng.next_normal_f64() >= threshold {
        Ok(Some(gnmax(votes, sigma2, rng)?))
    } else {
        Ok(None)
    }
}

pub(crate) fn check_threshold(t: f64) -> Result<()> {
    if t.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid("threshold", t, "finite"))
    }
}

/// ln Pr[N(0, 1) > z] for any finite z (the standard normal's log survival function).
pub(crate) fn log_normal_sf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let upper = log_half_erfc(x); // ln Pr[N > |z|]
    if z >= 0.0 {
        upper
    } else {
        log1mexp(upper)
    }
}

/// ln Pr[the threshold step answers] = ln Pr[maxⱼ nⱼ + N(0, σ₁²) ≥ T] = ln Φ̄((T − maxⱼ nⱼ)/σ₁)
/// (Papernot et al. 2018, Section 4.2; as `compute_logpr_answered` of the authors'
/// `pate_2018/core.py`).
///
/// **Not itself a DP release:** the result depends on the (private) vote histogram; see
/// [`gnmax_log_q`].
pub fn threshold_log_pr_answered(votes: &[u64], threshold: f64, sigma1: f64) -> Result<f64> {
    check_threshold(threshold)?;
    check_positive("sigma1", sigma1)?;
    check_votes(votes)?;
    let max = votes.iter().copied().max().unwrap_or(0) as f64;
    Ok(log_normal_sf((threshold - max) / sigma1))
}

/// The data-independent RDP of the threshold step at order λ > 1: λ/(2σ₁²) (a Gaussian
/// mechanism on maxⱼ nⱼ, of sensitivity 1; Papernot et al. 2018, Section 4.2, and Mironov
/// 2017, Proposition 7).
pub fn threshold_rdp_data_independent(sigma1: f64, order: f64) -> Result<f64> {
    check_positive("sigma1", sigma1)?;
    check_order(order)?;
    Ok(order / (2.0 * sigma1 * sigma1))
}

/// The data-dependent RDP of the threshold step at order λ > 1, given
/// [`threshold_log_pr_answered`] (Papernot et al. 2018, Theorem 6 applied to the threshold
/// mechanism): with q̃ = min(Pr\[answer\], Pr\[no answer\]), the probability of the less likely of
/// the two outcomes, and the mechanism's data-independent RDP λ/(2σ₁²) — Theorem 6 with
/// σ = √2·σ₁, computed by [`gnmax_rdp_data_dependent`] (as the authors' reference code does).
/// Never above [`threshold_rdp_data_independent`].
///
/// **Not itself a DP release:** the result depends on the (private) vote histogram; see
/// [`gnmax_log_q`].
pub fn threshold_rdp_data_dependent(log_pr_answered: f64, sigma1: f64, order: f64) -> Result<f64> {
    check_positive("sigma1", sigma1)?;
    check_order(order)?;
    if log_pr_answered.is_nan() || log_pr_answered > 0.0 {
        return Err(Error::invalid(
            "log_pr_answered",
            log_pr_answered,
            "<= 0 (a log-probability)",
        ));
    }
    let log_q = log_pr_answered.min(log1mexp(log_pr_answered.min(-1e-300)));
    gnmax_rdp_data_dependent(log_q, std::f64::consts::SQRT_2 * sigma1, order)
}

/// Composes Confident-GNMax queries over a run (Papernot et al. 2018, Section 4.2 and
/// Theorem 6): every query pays the threshold step, answered queries also the GNMax step;
/// per-order RDP summed (Mironov 2017, Proposition 1) and converted to (ε, δ) with
/// [`rdp_to_epsilon`].
///
/// - [`Self::epsilon_data_independent`] is the **DP statement**: it assumes every one of the
///   queries asked was answered (Q·(λ/(2σ₁²) + λ/σ₂²)), because how many were answered depends
///   on the private votes.
/// - [`Self::epsilon_data_dependent`] (Theorem 6 per query) is smaller when the teachers agree,
///   but it is a function of the private votes and **not itself a DP release**: the paper
///   publishes it through smooth sensitivity (Section 4 / Appendix B):
///   [`super::pate_smooth::SmoothSensitivity`].
#[derive(Clone, Debug, PartialEq)]
pub struct ConfidentGnmaxAccountant {
    threshold: f64,
    sigma1: f64,
    sigma2: f64,
    orders: Vec<f64>,
    data_dependent: Vec<f64>,
    queries: u64,
    answered: u64,
}

impl ConfidentGnmaxAccountant {
    /// An accountant for Confident-GNMax with threshold T, σ₁ (threshold noise) and σ₂ (GNMax
    /// noise) over `orders` (each finite and > 1, non-empty).
    pub fn new(threshold: f64, sigma1: f64, sigma2: f64, orders: Vec<f64>) -> Result<Self> {
        check_threshold(threshold)?;
        check_positive("sigma1", sigma1)?;
        check_positive("sigma2", sigma2)?;
        if orders.is_empty() {
            return Err(Error::shape("ConfidentGnmaxAccountant", "no RDP orders"));
        }
        for &a in &orders {
            check_order(a)?;
        }
        let n = orders.len();
        Ok(ConfidentGnmaxAccountant {
            threshold,
            sigma1,
            sigma2,
            orders,
            data_dependent: vec![0.0; n],
            queries: 0,
            answered: 0,
        })
    }

    /// Accounts for one query whose (noiseless) vote histogram was `votes`; `answered`: whether
    /// the threshold step passed (then the GNMax step ran too).
    pub fn record(&mut self, votes: &[u64], answered: bool) -> Result<()> {
        let lp = threshold_log_pr_answered(votes, self.threshold, self.sigma1)?;
        let log_q = if answered {
            Some(gnmax_log_q(votes, self.sigma2)?)
        } else {
            None
        };
        for (acc, &a) in self.data_dependent.iter_mut().zip(&self.orders) {
            *acc += threshold_rdp_data_dependent(lp, self.sigma1, a)?;
            if let Some(lq) = log_q {
                *acc += gnmax_rdp_data_dependent(lq, self.sigma2, a)?;
            }
        }
        self.queries += 1;
        self.answered += answered as u64;
        Ok(())
    }

    /// Queries recorded (answered or not).
    pub fn queries(&self) -> u64 {
        self.queries
    }

    /// Queries recorded as answered. **Private** (it depends on the votes): not covered by the
    /// data-independent ε unless released through a mechanism; the paper reports it alongside
    /// the data-dependent ε.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// The orders.
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The composed data-dependent RDP at each order. **Not itself a DP release** (see the
    /// type's docs).
    pub fn rdp_data_dependent(&self) -> &[f64] {
        &self.data_dependent
    }

    /// The composed data-independent RDP at each order, every query counted as answered:
    /// Q·(λ/(2σ₁²) + λ/σ₂²).
    pub fn rdp_data_independent(&self) -> Vec<f64> {
        let per = 1.0 / (2.0 * self.sigma1 * self.sigma1) + 1.0 / (self.sigma2 * self.sigma2);
        self.orders
            .iter()
            .map(|a| self.queries as f64 * a * per)
            .collect()
    }

    /// The data-dependent (ε, minimising order) at δ. **Not itself a DP release** (see the
    /// type's docs).
    pub fn epsilon_data_dependent(&self, delta: f64) -> Result<(f64, f64)> {
        rdp_to_epsilon(&self.orders, &self.data_dependent, delta)
    }

    /// The data-independent (ε, minimising order) at δ: the DP statement of the run.
    pub fn epsilon_data_independent(&self, delta: f64) -> Result<(f64, f64)> {
        rdp_to_epsilon(&self.orders, &self.rdp_data_independent(), delta)
    }
}
