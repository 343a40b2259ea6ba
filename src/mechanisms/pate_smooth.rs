//! Publishing PATE's data-dependent privacy cost: its smooth sensitivity and the Gaussian
//! noise-with-smooth-sensitivity (GNSS) release (Papernot, Song, Mironov, Raghunathan, Talwar,
//! Erlingsson, "Scalable Private Learning with PATE", ICLR 2018, Section 4.4 and Appendix B;
//! full version arXiv:1802.08908).
//!
//! The data-dependent RDP of a PATE run ([`super::pate::ConfidentGnmaxAccountant`]) is a function
//! of the private vote histograms: publishing it as is leaks about the teachers' data. The
//! paper publishes it the way Nissim, Raskhodnikova & Smith (STOC 2007) publish any function
//! of the data: add noise scaled to a *β-smooth upper bound on its local sensitivity*.
//!
//! # What is computed, at one Rényi order λ fixed in advance
//! - **The released function** f(votes) = Σ_queries threshold-step RDP (Theorem 6, from the
//!   plurality count) + Σ_answered GNMax RDP β(q̃) (Theorem 6 with Proposition 7's q̃), where β is
//!   the authors' piecewise form: Theorem 6 below ln q₀ and the data-independent λ/σ² above it
//!   ([`gnmax_log_q0`]). β is never below the value [`super::pate::gnmax_rdp_data_dependent`]
//!   reports, so the released bound is never smaller than the accountant's.
//! - **Local sensitivity at distance d** (the most f can change by changing one teacher's vote,
//!   anywhere within d teachers of the actual votes): for the threshold step exactly, from its
//!   RDP at every plurality count 0…K ([`threshold_local_sensitivity`]); for GNMax the bound of
//!   the paper's Algorithm 3 (Proposition 13: one changed vote moves q̃ within
//!   [bl(q̃), bu(q̃)]) along the path of Algorithms 4–5 that approaches the plateau
//!   [ln q₁, ln q₀] fastest ([`gnmax_local_sensitivity`]). A sum of functions has local
//!   sensitivity at most the sum of theirs, distance by distance.
//! - **Smooth sensitivity** S(votes) = max_d e^(−βd)·A⁽ᵈ⁾(votes) (Nissim et al. 2007,
//!   Definition 2.2 and Lemma 2.3): a β-smooth upper bound on the local sensitivity, because
//!   A⁽ᵈ⁾(x) ≤ A⁽ᵈ⁺¹⁾(y) for neighbours x, y.
//! - **The release** f(votes) + S(votes)·σ_ss·N(0, 1) (GNSS) is (λ, λe^(2β)/σ_ss² +
//!   (βλ − ½ln(1 − 2λβ))/(λ − 1))-RDP for 1 < λ < 1/(2β) (the paper's Theorem 23,
//!   [`gnss_rdp`]).
//!
//! # Assumptions checked where the code runs
//! - Algorithm 3's bound is valid only if β(q) is non-decreasing on (0, q₀) and
//!   β(bu(q)) − β(q) is non-decreasing on (0, bl(q₀)) (conditions C5 and C6 of Appendix B.4.2).
//!   The authors verify them with a symbolic derivative and a bounded scalar minimiser;
//!   [`SmoothSensitivity::new`] verifies them numerically on 4 000 values of ln q from below the
//!   smallest q̃ any histogram of its teachers can have (and at least from −2 000) up to ln q₀,
//!   geometric in −ln q, and refuses the analysis when they fail. (A grid check, not a proof:
//!   between grid points the functions are smooth, and a decrease of less than 10⁻¹² is
//!   tolerated as rounding and added back to every local-sensitivity bound.)
//! - λ, β and σ_ss must be chosen **without looking at the votes** (they are inputs here, not
//!   tuned from the data: the authors' analysis scripts pick β and σ_ss by minimising a cost
//!   that contains S, which makes the noise scale data-dependent and is not covered by
//!   Theorem 23).
//! - The value of S itself, and the noise's standard deviation S·σ_ss, are functions of the
//!   votes and are not released (Theorem 23 covers only the noisy value).
//!
//! # What the released number is, and is not
//! The noisy value may be published: the release is covered by its own RDP cost, which this
//! module also adds to the run's data-independent guarantee ([`gnss_rdp`] at every order
//! below 1/(2β)). It is an estimate of the run's data-dependent ε, not a worst-case
//! guarantee: the DP statement of the run remains the data-independent ε (answers + release).
//! (Turning the data-dependent bound into a DP guarantee needs a propose-test-release step,
//! e.g. Redberg, Zhu & Wang, "Generalized PTR", AISTATS 2023 — not implemented.)

use super::pate::{
    check_order, check_threshold, check_votes, gnmax_log_q, log_half_erfc, log_normal_sf,
    rdp_to_epsilon, theorem6_rdp, threshold_rdp_data_dependent,
};
use crate::error::check_positive;
use crate::mechanisms::check_delta;
use crate::rng::RandomBits;
use crate::{Error, Result};

/// ln erfc(t) for any finite t (accurate where erfc underflows, t large).
fn log_erfc(t: f64) -> f64 {
    if t >= 0.0 {
        log_half_erfc(t) + std::f64::consts::LN_2
    } else {
        libm::erfc(t).ln()
    }
}

/// The x ≥ 0 with ln erfc(x) = `ly` (≤ 0), by bisection (ln erfc is decreasing; erfc(0) = 1 and
/// ln erfc(x) < −x² bracket it), to the last bit.
fn inv_log_erfc(ly: f64) -> f64 {
    if ly >= 0.0 {
        return 0.0;
    }
    let (mut lo, mut hi) = (0.0f64, (-ly).sqrt() + 1.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if log_erfc(mid) > ly {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// ln bl(q̃) and ln bu(q̃) of the paper's Proposition 13 for `classes` ≥ 2: when one teacher's
/// vote changes, q̃ moves within [bl, bu], bl = (m−1)/2·erfc(erfc⁻¹(2q̃/(m−1)) + 1/σ),
/// bu = min(1, (m−1)/2·erfc(erfc⁻¹(2q̃/(m−1)) − 1/σ)).
fn log_bl_bu(log_q: f64, sigma: f64, classes: usize) -> (f64, f64) {
    let half_m1 = ((classes - 1) as f64 / 2.0).ln();
    let x = inv_log_erfc(log_q - half_m1);
    let bl = half_m1 + log_erfc(x + 1.0 / sigma);
    let bu = (half_m1 + log_erfc(x - 1.0 / sigma)).min(0.0);
    (bl, bu)
}

/// Theorem 6 with the authors' (μ₁, μ₂) for GNMax, without the fallback: `None` where its
/// conditions fail.
fn gnmax_theorem6(log_q: f64, sigma: f64, order: f64) -> Option<f64> {
    if !(log_q.is_finite() && log_q < 0.0) {
        return None;
    }
    let var = sigma * sigma;
    let mu2 = sigma * (-log_q).sqrt();
    let mu1 = mu2 + 1.0;
    theorem6_rdp(log_q, order, mu1, mu1 / var, mu2, mu2 / var)
}

/// ln q₀ of the paper's Appendix B for GNMax with noise σ at order λ: below it Theorem 6's
/// bound is smaller than the data-independent λ/σ², above it the data-independent bound is
/// used. Found as the authors do: the upper bound
/// min(−(1 + 1/σ)², −((λ − 0.99)/σ)², −1/σ²) (where Theorem 6's conditions hold), a lower
/// bound by repeated widening, then the crossing by bisection; the result is a point where
/// Theorem 6 holds and is ≤ λ/σ².
///
/// Errors: σ ≤ 0, λ ≤ 1, or no crossing above ln q = −10 000 (far outside any vote histogram).
pub fn gnmax_log_q0(sigma: f64, order: f64) -> Result<f64> {
    check_positive("sigma", sigma)?;
    check_order(order)?;
    let indep = order / (sigma * sigma);
    // f(ln q) > 0: the data-independent bound is the better one (or Theorem 6 does not apply).
    let worse = |lq: f64| gnmax_theorem6(lq, sigma, order).is_none_or(|dd| dd > indep);
    let ub = [
        -(1.0 + 1.0 / sigma).powi(2),
        -((order - 0.99) / sigma).powi(2),
        -1.0 / (sigma * sigma),
    ]
    .into_iter()
    .fold(f64::INFINITY, f64::min);
    if !worse(ub) {
        return Ok(ub);
    }
    let mut lb = 2.0 * ub;
    while worse(lb) {
        lb *= 1.5;
        if lb < -10_000.0 {
            return Err(Error::invalid(
                "sigma",
                sigma,
                format!("a noise level for which Theorem 6 of Papernot et al. 2018 beats the data-independent bound somewhere above ln q = -10000 at order {order}"),
            ));
        }
    }
    let (mut lo, mut hi) = (lb, ub);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if worse(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(lo)
}

/// Absolute slack for floating-point error in evaluating β: added to every local-sensitivity
/// bound, and allowed as a decrease when conditions C5/C6 are checked.
const ROUNDING: f64 = 1e-12;

/// GNMax's per-query data-dependent RDP as the smooth-sensitivity analysis defines it, with its
/// cached switch points (σ, λ, classes fixed).
#[derive(Clone, Debug)]
struct GnmaxBeta {
    sigma: f64,
    order: f64,
    classes: usize,
    log_q0: f64,
    log_q1: f64,
}

impl GnmaxBeta {
    fn new(sigma: f64, order: f64, classes: usize) -> Result<Self> {
        let log_q0 = gnmax_log_q0(sigma, order)?;
        let log_q1 = if classes >= 2 {
            log_bl_bu(log_q0, sigma, classes).0
        } else {
            f64::NEG_INFINITY
        };
        Ok(GnmaxBeta {
            sigma,
            order,
            classes,
            log_q0,
            log_q1,
        })
    }

    fn independent(&self) -> f64 {
        self.order / (self.sigma * self.sigma)
    }

    /// β(q̃): Theorem 6 below ln q₀, λ/σ² from ln q₀ on.
    fn beta(&self, log_q: f64) -> f64 {
        if log_q == f64::NEG_INFINITY {
            return 0.0;
        }
        if log_q < self.log_q0 {
            gnmax_theorem6(log_q, self.sigma, self.order)
                .unwrap_or(self.independent())
                .max(0.0)
        } else {
            self.independent()
        }
    }

    /// Algorithm 3: an upper bound on the local sensitivity of β at a histogram with ln q̃.
    fn local(&self, log_q: f64) -> f64 {
        if self.classes < 2 {
            return 0.0;
        }
        let lq = if self.log_q1 <= log_q && log_q <= self.log_q0 {
            self.log_q1
        } else {
            log_q
        };
        let (bl, bu) = log_bl_bu(lq, self.sigma, self.classes);
        let b = self.beta(lq);
        // ROUNDING covers the evaluation's floating-point error (see `check_conditions`).
        (self.beta(bu) - b).max(b - self.beta(bl)).max(0.0) + ROUNDING
    }

    /// Conditions C5 and C6 of the paper's Appendix B.4.2, checked numerically: `Err` naming
    /// the first one that fails.
    fn check_conditions(&self, teachers: usize) -> Result<()> {
        if self.classes < 2 {
            return Ok(());
        }
        const POINTS: usize = 4000;
        // Every histogram of `teachers` votes has ln q̃ ≥ ln(½erfc(teachers/(2σ))) >
        // −(teachers/(2σ) + 1)²; bl shifts erfc's argument by 1/σ more. The grid reaches below
        // both (and at least to −2000), so it covers every q̃ the analysis can meet.
        let reach = teachers as f64 / (2.0 * self.sigma) + 2.0 / self.sigma + 3.0;
        let (a, b) = ((-self.log_q0).ln(), (reach * reach).max(2000.0).ln());
        // ln q from the lowest reachable value up to ln q₀, increasing.
        let grid: Vec<f64> = (0..POINTS)
            .map(|i| -(b + (a - b) * i as f64 / (POINTS - 1) as f64).exp())
            .collect();
        // Rounding noise of the bound's evaluation (RDP values of interest are ≥ 1e-6).
        let tol = |v: f64| 1e-9 * v.abs() + ROUNDING;
        let fail = |which: &str, lq: f64| {
            Err(Error::invalid(
                "order",
                self.order,
                format!("an order at which the smooth-sensitivity analysis holds for GNMax with sigma = {}: condition {which} of Papernot et al. 2018, Appendix B.4.2, fails near ln q = {lq:.3}; try another order or sigma", self.sigma),
            ))
        };
        let mut prev = f64::NEG_INFINITY;
        for &lq in &grid {
            let v = self.beta(lq);
            if v < prev - tol(prev) {
                return fail("C5 (beta non-decreasing in q below q0)", lq);
            }
            prev = v;
        }
        let mut prev = f64::NEG_INFINITY;
        for &lq in grid.iter().filter(|&&lq| lq < self.log_q1) {
            let d = self.beta(log_bl_bu(lq, self.sigma, self.classes).1) - self.beta(lq);
            if d < prev - tol(prev) {
                return fail("C6 (beta(bu(q)) - beta(q) non-decreasing below bl(q0))", lq);
            }
            prev = d;
        }
        Ok(())
    }

    /// Algorithms 4–5 (the authors' O(teachers·classes) form): `out[d]` bounds the local
    /// sensitivity of β at every histogram within `d` changed teachers of `votes`, d < teachers.
    fn by_distance(&self, votes: &[u64], teachers: usize, out: &mut [f64]) -> Result<()> {
        let plateau = self.local(self.log_q1);
        out.iter_mut().for_each(|o| *o = plateau);
        let mut log_q = gnmax_log_q(votes, self.sigma)?;
        if self.classes < 2 || (self.log_q1 <= log_q && log_q <= self.log_q0) {
            return Ok(());
        }
        let mut v: Vec<u64> = votes.to_vec();
        v.sort_unstable_by(|a, b| b.cmp(a));
        out[0] = self.local(log_q);
        let go_left = log_q > self.log_q0;
        let mut d = 0;
        loop {
            let more = if go_left {
                log_q > self.log_q0 && v[1] > 0
            } else {
                log_q < self.log_q1 && v[0] > v[1]
            };
            if !more || d + 1 >= teachers {
                break;
            }
            d += 1;
            if go_left {
                // Widen the gap: move a vote from the runner-up to the plurality.
                v[0] += 1;
                v[1] -= 1;
                let mut i = 1;
                while i + 1 < v.len() && v[i] < v[i + 1] {
                    v.swap(i, i + 1);
                    i += 1;
                }
            } else {
                // Narrow it: move a vote from the plurality to the runner-up.
                v[0] -= 1;
                v[1] += 1;
            }
            log_q = gnmax_log_q(&v, self.sigma)?;
            out[d] = self.local(log_q);
        }
        Ok(())
    }
}

fn check_histogram(votes: &[u64], teachers: usize) -> Result<()> {
    check_votes(votes)?;
    let total: u64 = votes.iter().sum();
    if total != teachers as u64 || teachers == 0 {
        return Err(Error::shape(
            "pate smooth sensitivity",
            format!("a vote histogram sums to {total}, but there are {teachers} teachers (each teacher votes once)"),
        ));
    }
    Ok(())
}

/// Local sensitivity by distance of one GNMax answer's data-dependent RDP at order λ (the
/// paper's Algorithms 3–5): `out[d]`, d = 0…teachers−1, bounds how much β(q̃) can change when
/// one teacher's vote changes, at any histogram within d changed teachers of `votes`.
/// `votes` sums to `teachers`. See the [module docs](self) for the conditions this relies on
/// ([`SmoothSensitivity::new`] checks them).
pub fn gnmax_local_sensitivity(
    votes: &[u64],
    teachers: usize,
    sigma: f64,
    order: f64,
) -> Result<Vec<f64>> {
    check_histogram(votes, teachers)?;
    let g = GnmaxBeta::new(sigma, order, votes.len())?;
    let mut out = vec![0.0; teachers];
    g.by_distance(votes, teachers, &mut out)?;
    Ok(out)
}

/// The threshold step's data-dependent RDP at plurality count v = 0…teachers
/// ([`threshold_rdp_data_dependent`]).
fn threshold_rdp_table(
    teachers: usize,
    threshold: f64,
    sigma1: f64,
    order: f64,
) -> Result<Vec<f64>> {
    (0..=teachers)
        .map(|v| {
            let lp = log_normal_sf((threshold - v as f64) / sigma1);
            threshold_rdp_data_dependent(lp.min(0.0), sigma1, order)
        })
        .collect()
}

fn threshold_by_distance(table: &[f64], votes: &[u64], out: &mut [f64]) {
    let teachers = table.len() - 1;
    // The plurality count of any histogram is at least ⌈teachers / classes⌉.
    let floor = teachers.div_ceil(votes.len());
    let ls = |v: usize| -> f64 {
        let down = if v > floor {
            (table[v - 1] - table[v]).abs()
        } else {
            0.0
        };
        let up = if v < teachers {
            (table[v + 1] - table[v]).abs()
        } else {
            0.0
        };
        down.max(up)
    };
    let cur = votes.iter().copied().max().unwrap_or(0) as usize;
    for (d, o) in out.iter_mut().enumerate() {
        // Every plurality count within d of the actual one (it moves by ≤ 1 per teacher).
        let mut m: f64 = 0.0;
        if cur + d <= teachers {
            m = m.max(ls(cur + d));
        }
        if cur >= floor + d {
            m = m.max(ls(cur - d));
        }
        *o = m;
    }
    // Counts nearer than d were maxima at smaller d: A⁽ᵈ⁾ is non-decreasing in d.
    for d in 1..out.len() {
        out[d] = out[d].max(out[d - 1]);
    }
}

/// Local sensitivity by distance of the Confident-GNMax threshold step's data-dependent RDP at
/// order λ: exact, from the step's RDP at every plurality count (one changed teacher moves the
/// plurality count by at most 1). `out[d]`, d = 0…teachers−1.
pub fn threshold_local_sensitivity(
    votes: &[u64],
    teachers: usize,
    threshold: f64,
    sigma1: f64,
    order: f64,
) -> Result<Vec<f64>> {
    check_histogram(votes, teachers)?;
    check_threshold(threshold)?;
    check_positive("sigma1", sigma1)?;
    check_order(order)?;
    let table = threshold_rdp_table(teachers, threshold, sigma1, order)?;
    let mut out = vec![0.0; teachers];
    threshold_by_distance(&table, votes, &mut out);
    Ok(out)
}

/// max_d e^(−βd)·ls\[d\]: the smooth sensitivity from local sensitivities by distance (Nissim,
/// Raskhodnikova & Smith 2007, Lemma 2.3). `beta` ≥ 0; 0 for an empty slice.
pub fn discounted_max(beta: f64, ls: &[f64]) -> f64 {
    ls.iter()
        .enumerate()
        .map(|(d, &v)| v * (-beta * d as f64).exp())
        .fold(0.0, f64::max)
}

/// The RDP at order λ of the GNSS mechanism f(x) + S(x)·σ·N(0, 1) with S a β-smooth upper
/// bound on f's local sensitivity (Papernot et al. 2018, full version, Theorem 23):
/// λe^(2β)/σ² + (βλ − ½·ln(1 − 2λβ))/(λ − 1), for 1 < λ < 1/(2β).
///
/// # Proof Definition
/// Theorem 23 of arXiv:1802.08908 (Papernot et al., "Scalable Private Learning with PATE"),
/// building on Nissim, Raskhodnikova & Smith, "Smooth Sensitivity and Sampling in Private Data
/// Analysis" (STOC 2007). Errors: β < 0, σ ≤ 0, λ ≤ 1 or λ ≥ 1/(2β).
pub fn gnss_rdp(beta: f64, sigma: f64, order: f64) -> Result<f64> {
    check_positive("sigma_ss", sigma)?;
    check_order(order)?;
    if !(beta.is_finite() && beta >= 0.0) {
        return Err(Error::invalid("beta", beta, "finite and >= 0"));
    }
    if beta > 0.0 && 2.0 * order * beta >= 1.0 {
        return Err(Error::invalid(
            "order",
            order,
            format!("below 1/(2*beta) = {} (Theorem 23's range)", 0.5 / beta),
        ));
    }
    Ok(order * (2.0 * beta).exp() / (sigma * sigma)
        + (beta * order - 0.5 * (-2.0 * order * beta).ln_1p()) / (order - 1.0))
}

/// The smooth-sensitivity analysis of one PATE run at a Rényi order λ fixed in advance:
/// record each query's (noiseless) vote histogram, then [`Self::release`] the data-dependent
/// ε through the GNSS mechanism. See the [module docs](self) for the proof and what the
/// released number means.
///
/// Holds private state (the sum of the queries' data-dependent RDPs and local sensitivities):
/// its `Debug` prints only the public parameters.
#[derive(Clone)]
pub struct SmoothSensitivity {
    teachers: usize,
    classes: usize,
    order: f64,
    beta: f64,
    gnmax: GnmaxBeta,
    threshold: Option<Vec<f64>>,
    ls_total: Vec<f64>,
    rdp: f64,
    scratch: Vec<f64>,
}

impl std::fmt::Debug for SmoothSensitivity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmoothSensitivity")
            .field("teachers", &self.teachers)
            .field("classes", &self.classes)
            .field("order", &self.order)
            .field("beta", &self.beta)
            .field("sigma", &self.gnmax.sigma)
            .finish_non_exhaustive()
    }
}

/// A published estimate of a PATE run's data-dependent ε ([`SmoothSensitivity::release`]).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SmoothRelease {
    /// The order λ of the analysis.
    pub order: f64,
    /// β of the smooth upper bound.
    pub beta: f64,
    /// σ_ss: the noise, in units of the smooth sensitivity.
    pub sigma_ss: f64,
    /// The data-dependent RDP at λ plus GNSS noise (may be negative by chance).
    pub noisy_rdp: f64,
    /// The release's own RDP cost at λ ([`gnss_rdp`]).
    pub release_rdp: f64,
    /// δ.
    pub delta: f64,
    /// The published ε: noisy RDP + release cost + ln(1/δ)/(λ − 1).
    pub epsilon: f64,
}

impl SmoothSensitivity {
    /// An analysis of `teachers` teachers voting over `classes` classes, with GNMax noise
    /// `sigma` (σ₂ of Confident-GNMax), at order `order` with smoothness `beta`
    /// (0 < β < 1/(2λ); the authors use 0.49/λ). `threshold`: `Some((T, σ₁))` for
    /// Confident-GNMax, `None` for plain GNMax (every query answered).
    ///
    /// Checks conditions C5/C6 of the paper (numerically, see the module docs) and refuses
    /// the analysis when they fail.
    pub fn new(
        teachers: usize,
        classes: usize,
        sigma: f64,
        threshold: Option<(f64, f64)>,
        order: f64,
        beta: f64,
    ) -> Result<Self> {
        if teachers == 0 || classes == 0 {
            return Err(Error::shape(
                "SmoothSensitivity",
                format!(
                    "needs teachers and classes, got {teachers} teachers and {classes} classes"
                ),
            ));
        }
        check_order(order)?;
        if !(beta.is_finite() && beta > 0.0 && 2.0 * order * beta < 1.0) {
            return Err(Error::invalid(
                "beta",
                beta,
                format!(
                    "in (0, 1/(2*order)) = (0, {}); e.g. 0.49/order",
                    0.5 / order
                ),
            ));
        }
        let gnmax = GnmaxBeta::new(sigma, order, classes)?;
        gnmax.check_conditions(teachers)?;
        let threshold = match threshold {
            Some((t, s1)) => {
                check_threshold(t)?;
                check_positive("sigma1", s1)?;
                Some(threshold_rdp_table(teachers, t, s1, order)?)
            }
            None => None,
        };
        Ok(SmoothSensitivity {
            teachers,
            classes,
            order,
            beta,
            gnmax,
            threshold,
            ls_total: vec![0.0; teachers],
            rdp: 0.0,
            scratch: vec![0.0; teachers],
        })
    }

    /// The order λ.
    pub fn order(&self) -> f64 {
        self.order
    }

    /// Accounts for one query with (noiseless) histogram `votes` (summing to the number of
    /// teachers); `answered`: whether the GNMax step ran (always `true` for plain GNMax).
    pub fn record(&mut self, votes: &[u64], answered: bool) -> Result<()> {
        check_histogram(votes, self.teachers)?;
        if votes.len() != self.classes {
            return Err(Error::shape(
                "SmoothSensitivity::record",
                format!(
                    "{} classes in the histogram, {} expected",
                    votes.len(),
                    self.classes
                ),
            ));
        }
        if let Some(table) = &self.threshold {
            let max = votes.iter().copied().max().unwrap_or(0) as usize;
            self.rdp += table[max];
            threshold_by_distance(table, votes, &mut self.scratch);
            for (a, s) in self.ls_total.iter_mut().zip(&self.scratch) {
                *a += s;
            }
        } else if !answered {
            return Err(Error::invalid(
                "answered",
                answered,
                "true: plain GNMax answers every query (pass a threshold for Confident-GNMax)",
            ));
        }
        if answered {
            self.rdp += self.gnmax.beta(gnmax_log_q(votes, self.gnmax.sigma)?);
            self.gnmax
                .by_distance(votes, self.teachers, &mut self.scratch)?;
            for (a, s) in self.ls_total.iter_mut().zip(&self.scratch) {
                *a += s;
            }
        }
        Ok(())
    }

    /// The data-dependent RDP at λ of the recorded queries, as released (**private**: not for
    /// publication; [`Self::release`] publishes it with noise).
    pub fn rdp_private(&self) -> f64 {
        self.rdp
    }

    /// The smooth sensitivity of [`Self::rdp_private`] (**private**: a function of the votes).
    pub fn smooth_sensitivity_private(&self) -> f64 {
        discounted_max(self.beta, &self.ls_total)
    }

    /// Publishes the run's data-dependent ε: the RDP at λ plus S·σ_ss·N(0, 1) drawn from `rng`
    /// (a stream used for nothing else), plus the release's own RDP cost and ln(1/δ)/(λ − 1).
    /// `sigma_ss` > 0 must be chosen without looking at the votes. The release's cost must
    /// also be composed into the run's DP statement: [`gnss_rdp`] at each order.
    pub fn release(
        &self,
        sigma_ss: f64,
        delta: f64,
        rng: &mut impl RandomBits,
    ) -> Result<SmoothRelease> {
        check_positive("sigma_ss", sigma_ss)?;
        check_delta(delta)?;
        let release_rdp = gnss_rdp(self.beta, sigma_ss, self.order)?;
        let noisy_rdp =
            self.rdp + self.smooth_sensitivity_private() * sigma_ss * rng.next_normal_f64();
        let (epsilon, _) = rdp_to_epsilon(&[self.order], &[0.0], delta)?;
        Ok(SmoothRelease {
            order: self.order,
            beta: self.beta,
            sigma_ss,
            noisy_rdp,
            release_rdp,
            delta,
            epsilon: noisy_rdp + release_rdp + epsilon,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_log_erfc_round_trips() {
        for &x in &[0.0, 0.3, 1.0, 2.5, 7.0, 30.0, 100.0] {
            let ly = log_erfc(x);
            let back = inv_log_erfc(ly);
            assert!(
                (back - x).abs() <= 1e-9 * x.max(1.0),
                "{x} -> {ly} -> {back}"
            );
        }
    }

    #[test]
    fn bl_and_bu_bracket_q() {
        for &lq in &[-0.5, -3.0, -20.0, -300.0, -900.0] {
            let (bl, bu) = log_bl_bu(lq, 40.0, 10);
            assert!(bl < lq && lq < bu, "{bl} {lq} {bu}");
        }
    }
}
