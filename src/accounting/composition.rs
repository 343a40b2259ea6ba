//! Composition of k answers of pure ε-DP mechanisms (the Laplace mechanism, randomized
//! response): how much privacy k repeated queries spend, by four accountants of decreasing
//! looseness.
//!
//! | function | what it bounds | reference |
//! |---|---|---|
//! | [`basic_composition`] | kε (any k ε-DP mechanisms) | Dwork & Roth 2014, Theorem 3.16 |
//! | [`advanced_composition`] | ε√(2k ln(1/δ)) + kε(e^ε − 1) at δ | Dwork, Rothblum, Vadhan 2010; Dwork & Roth, Theorem 3.20 |
//! | [`laplace_rdp`] + [`super::rdp::eps_from_rdp`] | k Laplace releases, through Rényi DP | Mironov 2017, Proposition 6 |
//! | [`optimal_composition_epsilon`] | the exact ε(δ) of k ε-DP mechanisms in the worst case | Kairouz, Oh, Viswanath 2015, Theorem 3.3 |
//!
//! The last one is the privacy-loss distribution (PLD) of the k-fold composition of binary
//! randomized response at ε, computed exactly: every ε-DP mechanism's pair of output
//! distributions is a post-processing of randomized response's (Kairouz et al. 2015), and
//! post-processing and composition preserve that dominance, so this ε is an upper bound for any
//! k ε-DP mechanisms — tight for randomized response, still loose for Laplace, whose own PLD is
//! tighter.

use crate::error::check_positive;
use crate::{Error, Result};

fn check_count(k: u64) -> Result<()> {
    if k == 0 {
        return Err(Error::invalid(
            "k",
            k,
            ">= 1 (the number of composed mechanisms)",
        ));
    }
    Ok(())
}

/// ε of k ε-DP mechanisms by basic composition: kε (Dwork & Roth 2014, Theorem 3.16; holds for
/// adaptive choices too).
pub fn basic_composition(epsilon: f64, k: u64) -> Result<f64> {
    check_positive("epsilon", epsilon)?;
    check_count(k)?;
    Ok(epsilon * k as f64)
}

/// ε of k (adaptive) ε-DP mechanisms at an extra δ by the advanced composition theorem:
/// ε√(2k ln(1/δ)) + kε(e^ε − 1) (Dwork, Rothblum, Vadhan, FOCS 2010; Dwork & Roth 2014, Theorem
/// 3.20). Below basic composition only for many small ε; the smaller of the two is returned
/// (both are valid).
pub fn advanced_composition(epsilon: f64, k: u64, delta: f64) -> Result<f64> {
    check_positive("epsilon", epsilon)?;
    check_count(k)?;
    super::validate_delta(delta)?;
    let kf = k as f64;
    let adv = epsilon * (2.0 * kf * (1.0 / delta).ln()).sqrt() + kf * epsilon * epsilon.exp_m1();
    Ok(adv.min(epsilon * kf))
}

fn log_add(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// The Rényi DP of one Laplace release at ε (noise scale b = Δ/ε for L1 sensitivity Δ), at order
/// α > 1: (1/(α−1))·ln(α/(2α−1)·e^{(α−1)ε} + (α−1)/(2α−1)·e^{−αε}) (Mironov, "Rényi Differential
/// Privacy", CSF 2017, Proposition 6 / Table II with λ = 1/ε). Never above ε; k releases compose
/// to k times this at every order (Mironov 2017, Proposition 1); convert the total with
/// [`super::rdp::eps_from_rdp`].
///
/// # Proof Definition
/// Proposition 6 is stated for the scalar Laplace mechanism with sensitivity 1 and scale λ;
/// scaling the query by 1/Δ maps sensitivity Δ and scale Δ/ε to sensitivity 1 and scale 1/ε
/// (RDP is invariant under this bijection of the output). It covers **scalar** releases such as
/// [`crate::mechanisms::Laplace::release`]; for a vector query use the pure-DP bound.
pub fn laplace_rdp(epsilon: f64, order: f64) -> Result<f64> {
    check_positive("epsilon", epsilon)?;
    if !(order.is_finite() && order > 1.0) {
        return Err(Error::invalid("order", order, "finite and > 1"));
    }
    let a = order;
    let t1 = (a / (2.0 * a - 1.0)).ln() + (a - 1.0) * epsilon;
    let t2 = ((a - 1.0) / (2.0 * a - 1.0)).ln() - a * epsilon;
    Ok((log_add(t1, t2) / (a - 1.0)).clamp(0.0, epsilon))
}

/// (ε, optimal order) of k Laplace releases at ε each, at δ: k·[`laplace_rdp`] summed over
/// `orders` and converted by Balle et al. 2020, Theorem 21 ([`super::rdp::eps_from_rdp`]).
/// Never reported above basic composition kε (which is also valid at every δ); the order is NaN
/// when kε is the smaller.
pub fn laplace_epsilon_rdp(epsilon: f64, k: u64, delta: f64, orders: &[f64]) -> Result<(f64, f64)> {
    check_positive("epsilon", epsilon)?;
    check_count(k)?;
    let mut rdp = Vec::with_capacity(orders.len());
    for &a in orders {
        rdp.push(k as f64 * laplace_rdp(epsilon, a)?);
    }
    let (e, a) = super::rdp::eps_from_rdp(orders, &rdp, delta)?;
    let basic = epsilon * k as f64;
    Ok(if e < basic { (e, a) } else { (basic, f64::NAN) })
}

fn ln_binomial(n: u64, i: u64) -> f64 {
    let (n, i) = (n as f64, i as f64);
    libm::lgamma(n + 1.0) - libm::lgamma(i + 1.0) - libm::lgamma(n - i + 1.0)
}

/// δ(ε′) of the k-fold composition of ε-DP randomized response — the largest δ at ε′ of any k
/// (adaptive) ε-DP mechanisms (Kairouz, Oh, Viswanath, "The Composition Theorem for Differential
/// Privacy", ICML 2015, Theorem 3.3):
/// δ(ε′) = Σ_{i: (k−2i)ε > ε′} C(k,i)·(p^{k−i}(1−p)^i − e^{ε′}p^i(1−p)^{k−i}), p = e^ε/(1+e^ε).
///
/// It is the hockey-stick divergence of the exact privacy-loss distribution: the privacy loss of
/// k randomized responses is (k − 2i)ε with probability C(k,i)p^{k−i}(1−p)^i. Cost O(k).
/// `eps_total` ≥ 0 (finite).
pub fn optimal_composition_delta(epsilon: f64, k: u64, eps_total: f64) -> Result<f64> {
    check_positive("epsilon", epsilon)?;
    check_count(k)?;
    if !(eps_total.is_finite() && eps_total >= 0.0) {
        return Err(Error::invalid("eps_total", eps_total, "finite and >= 0"));
    }
    // ln p and ln(1−p) without cancellation.
    let ln_p = -(-epsilon).exp().ln_1p();
    let ln_1p = -epsilon.exp().ln_1p();
    let mut delta = 0.0;
    for i in 0..=k {
        let loss = (k as f64 - 2.0 * i as f64) * epsilon;
        if loss <= eps_total {
            break; // the loss decreases with i
        }
        let ln_pi = ln_binomial(k, i) + (k - i) as f64 * ln_p + i as f64 * ln_1p;
        // P_i − e^{ε′}Q_i = P_i·(1 − e^{ε′ − loss}), with Q_i = P_i·e^{−loss}.
        delta += ln_pi.exp() * -(eps_total - loss).exp_m1();
    }
    Ok(delta.clamp(0.0, 1.0))
}

/// The smallest ε′ at which k ε-DP mechanisms are (ε′, δ)-DP in the worst case (Kairouz et al.
/// 2015, Theorem 3.3; see [`optimal_composition_delta`]), found by bisection to a relative
/// accuracy of ~1e-12 and rounded **up** (so it is never below the exact value by more than
/// that). Never above basic composition kε. Cost O(k) per bisection step.
pub fn optimal_composition_epsilon(epsilon: f64, k: u64, delta: f64) -> Result<f64> {
    check_positive("epsilon", epsilon)?;
    check_count(k)?;
    super::validate_delta(delta)?;
    if optimal_composition_delta(epsilon, k, 0.0)? <= delta {
        return Ok(0.0);
    }
    let (mut lo, mut hi) = (0.0, epsilon * k as f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if optimal_composition_delta(epsilon, k, mid)? <= delta {
            hi = mid;
        } else {
            lo = mid;
        }
        if hi - lo <= 1e-12 * hi {
            break;
        }
    }
    Ok(hi)
}
