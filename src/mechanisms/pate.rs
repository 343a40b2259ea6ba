//! PATE aggregation (Private Aggregation of Teacher Ensembles): noisy arg-max over teacher vote
//! histograms, with its privacy analysis.
//!
//! - [`lnmax`]: Laplace noise of scale 1/γ on every vote count (Papernot, Abadi, Erlingsson,
//!   Goodfellow, Talwar, "Semi-supervised Knowledge Transfer for Deep Learning from Private
//!   Training Data", ICLR 2017). Data-independent bound: each answered query is (2γ, 0)-DP
//!   ([`lnmax_epsilon`]): changing one teacher's data moves one vote, changing two counts by 1 each
//!   (L1 sensitivity 2 of the histogram), and Laplace noise of scale 1/γ on an L1-sensitivity-2
//!   histogram is 2γ-DP, the arg-max being post-processing. T queries compose to 2γT.
//! - [`gnmax`]: Gaussian noise N(0, σ²) on every count (Papernot, Song, Mironov, Raghunathan,
//!   Talwar, Erlingsson, "Scalable Private Learning with PATE", ICLR 2018).
//!   - Data-independent: (λ, λ/σ²)-RDP per query ([`gnmax_rdp_data_independent`]; the
//!     histogram has L2 sensitivity √2, and the Gaussian mechanism is (λ, λΔ²/(2σ²))-RDP).
//!   - Data-dependent: Theorem 6 of the 2018 paper with q̃ from Proposition 7
//!     ([`gnmax_log_q`], [`gnmax_rdp_data_dependent`]), composed over a run of answered queries by
//!     [`GnmaxAccountant`] and converted to (ε, δ). The data-dependent ε depends on the votes and
//!     is itself not differentially private; the paper releases it through smooth sensitivity
//!     (its Section 4 / Appendix), which this module does not implement.
//!
//! # Floating-point safety
//! **Not safe** against floating-point attacks (Mironov 2012): the noise is drawn in IEEE doubles.
//! Only the arg-max index is released, which limits but does not remove the exposure.

use crate::error::check_positive;
use crate::mechanisms::check_delta;
use crate::rng::RandomBits;
use crate::{Error, Result};

fn check_votes(votes: &[u64]) -> Result<()> {
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

fn check_order(order: f64) -> Result<()> {
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
/// it, release it through the smooth-sensitivity mechanism of Papernot et al. 2018 (Section 4 / Appendix),
/// which this module does not implement — or publish the data-independent bound instead.
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
fn log_half_erfc(x: f64) -> f64 {
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
fn log1mexp(x: f64) -> f64 {
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
/// it, release it through the smooth-sensitivity mechanism of Papernot et al. 2018 (Section 4 / Appendix),
/// which this module does not implement — or publish the data-independent bound instead.
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
    let eps1 = mu1 / var;
    let eps2 = mu2 / var;
    let log_a2 = (mu2 - 1.0) * eps2;
    let cond = log_q <= log_a2 - mu2 * ((1.0 / (mu1 - 1.0)).ln_1p() + (1.0 / (mu2 - 1.0)).ln_1p())
        && -log_q > eps2;
    if !cond {
        return Ok(independent);
    }
    let log1q = log1mexp(log_q);
    let log_a = (order - 1.0) * (log1q - log1mexp((log_q + eps2) * (1.0 - 1.0 / mu2)));
    let log_b = (order - 1.0) * (eps1 - log_q / (mu1 - 1.0));
    let log_s = log_add_exp(log1q + log_a, log_q + log_b);
    let dd = log_s / (order - 1.0);
    if dd.is_nan() {
        return Ok(independent);
    }
    Ok(dd.clamp(0.0, independent))
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
    /// it, release it through the smooth-sensitivity mechanism of Papernot et al. 2018 (Section 4 / Appendix),
    /// which this module does not implement — or publish the data-independent bound instead.
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
    /// it, release it through the smooth-sensitivity mechanism of Papernot et al. 2018 (Section 4 / Appendix),
    /// which this module does not implement — or publish the data-independent bound instead.
    pub fn epsilon_data_dependent(&self, delta: f64) -> Result<(f64, f64)> {
        rdp_to_epsilon(&self.orders, &self.data_dependent, delta)
    }

    /// The data-independent (ε, minimising order) at δ.
    pub fn epsilon_data_independent(&self, delta: f64) -> Result<(f64, f64)> {
        rdp_to_epsilon(&self.orders, &self.rdp_data_independent(), delta)
    }
}
