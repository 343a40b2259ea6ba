//! Privacy-loss-distribution (PLD) accountant for the Poisson-subsampled Gaussian mechanism
//! ([`epsilon_pld`]) and the Poisson-subsampled Laplace mechanism ([`epsilon_pld_laplace`]; the
//! same discretisation, composition and error certificate, another single-step pair).
//!
//! The privacy loss of one step, `Y = ln(P(x)/Q(x))` with `x ~ P`, is discretised on a uniform
//! grid `{k·h}` with the *connect-the-dots* rule of Doroshenko et al. (2022): the probability
//! mass of `Y` in each grid interval `[k·h, (k+1)·h]` is split between the two end points so that
//! both its `P`-mass and its `Q`-mass (`E[e^{-Y}]`) are preserved. The discrete distribution is
//! then a *dominating pair* of the true one (its hockey-stick divergence is the chord of the
//! convex true curve), mass above the grid is moved to `+∞` and mass below it is moved up, so the
//! ε computed from it is an **upper bound**, never an under-estimate (Zhu, Dong, Wang 2022,
//! Theorem 10: composition preserves domination). The `T`-fold composition of every history
//! entry is one product of real FFTs (Koskela et al. 2020; Gopi, Lee, Wutschitz 2021), on a
//! circular window chosen with Chernoff bounds; the probability that the composed loss leaves the
//! window at the top (and would wrap around) is bounded and **added to δ**.
//!
//! Both neighbouring relations (remove one example, add one example) are accounted and the worse
//! is reported, as in Google's `dp_accounting` (`ADD_OR_REMOVE_ONE`).
//!
//! # Stated error
//! The returned [`PldEpsilon::epsilon`] is an upper bound on the true ε at δ. The same composed
//! distribution also gives a certified **lower** bound: connect-the-dots is a randomised rounding
//! `Ỹ` of `Y` with `E[Ỹ − Y | Y] ≤ h²/8` and conditional range `h`, so by Hoeffding
//! `P(ΣỸ − ΣY ≥ t) ≤ δ_h` with `t = T·h²/8 + h·√(T·ln(1/δ_h)/2)`; hence
//! `δ_true(ε) ≥ δ_disc(ε + t) − δ_h − (tail and window terms)`. The grid interval `h` is chosen
//! so that `t ≤ 0.9 · eps_error`; the certified gap `epsilon − epsilon_lower` is returned as
//! [`PldEpsilon::eps_error`]. Defaults follow Opacus's PRV accountant: `eps_error = 0.01`,
//! `delta_error = δ/1000` (this δ budget pays for the Hoeffding term, the tails and the window).
//!
//! # Proof Definition
//! - Upper bound: Doroshenko, Ghazi, Kamath, Kumar, Manurangsi, *Connect the Dots: Tighter
//!   Discrete Approximations of Privacy Loss Distributions*, PoPETs 2022 (Theorem 3.3, the
//!   connect-the-dots PLD dominates); Zhu, Dong, Wang, *Optimal Accounting of Differential
//!   Privacy via Characteristic Function*, AISTATS 2022 (dominating pairs compose).
//! - Error certificate: Gopi, Lee, Wutschitz, *Numerical Composition of Differential Privacy*,
//!   NeurIPS 2021 (coupling + Hoeffding, Theorem 5.5 style argument).
//! - Subsampled Gaussian PLD: Koskela, Jälkö, Honkela, *Computing Tight Differential Privacy
//!   Guarantees Using FFT*, AISTATS 2020.

use super::{validate_delta, HistoryEntry};
use crate::{Error, Result};
use realfft::num_complex::Complex;
use realfft::RealFftPlanner;
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, OnceLock};

/// Options of the PLD accountant.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PldOptions {
    /// Target for the certified gap between the returned ε and the true ε (default 0.01, as
    /// Opacus's PRV accountant). Must be finite and > 0.
    pub eps_error: f64,
    /// δ budget for the discretisation, as a fraction of δ (default 1e-3, i.e. Opacus's
    /// `delta_error = δ/1000`). Must be in (0, 0.5].
    pub delta_error_fraction: f64,
    /// Largest FFT size allowed (default 2²⁴); a history that would need more returns
    /// [`Error::InvalidParameter`] naming `eps_error` (raise it, or use the RDP accountant).
    pub max_fft_size: usize,
}

impl Default for PldOptions {
    fn default() -> Self {
        PldOptions {
            eps_error: 0.01,
            delta_error_fraction: 1e-3,
            max_fft_size: 1 << 24,
        }
    }
}

impl PldOptions {
    /// Checks the ranges documented on the fields.
    pub fn validate(&self) -> Result<()> {
        if !(self.eps_error.is_finite() && self.eps_error > 0.0) {
            return Err(Error::invalid(
                "eps_error",
                self.eps_error,
                "finite and > 0",
            ));
        }
        if !(self.delta_error_fraction > 0.0 && self.delta_error_fraction <= 0.5) {
            return Err(Error::invalid(
                "delta_error_fraction",
                self.delta_error_fraction,
                "in (0, 0.5]",
            ));
        }
        if self.max_fft_size < 1024 {
            return Err(Error::invalid("max_fft_size", self.max_fft_size, ">= 1024"));
        }
        Ok(())
    }
}

/// Result of [`epsilon_pld`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PldEpsilon {
    /// Upper bound on ε at the requested δ (what to report).
    pub epsilon: f64,
    /// Certified lower bound on the true ε at the requested δ.
    pub epsilon_lower: f64,
    /// `epsilon − epsilon_lower`: the certified error of `epsilon` (≈ the requested
    /// `eps_error` or less).
    pub eps_error: f64,
    /// The δ budget spent on discretisation (`delta_error_fraction · δ`).
    pub delta_error: f64,
    /// Grid interval `h` of the privacy loss.
    pub grid_interval: f64,
    /// Size of the FFT used for the composition.
    pub fft_size: usize,
}

/// `P(a < Z ≤ b)` for a standard normal from cached one-sided tails: `t = Φ(z)` for `z < 0`,
/// `t = 1 − Φ(z)` for `z ≥ 0` (each accurate in its own tail).
#[inline]
fn normal_mass(za: f64, ta: f64, zb: f64, tb: f64) -> f64 {
    let m = if za >= 0.0 {
        ta - tb
    } else if zb < 0.0 {
        tb - ta
    } else {
        1.0 - ta - tb
    };
    m.max(0.0)
}

/// One-sided normal tail at `z` (see [`normal_mass`]).
#[inline]
fn tail(z: f64) -> f64 {
    0.5 * libm::erfc(z.abs() * std::f64::consts::FRAC_1_SQRT_2)
}

/// The "remove" pair of the sampled Gaussian: `P = (1−q)N(0,σ²) + qN(1,σ²)`, `Q = N(0,σ²)`,
/// loss `L(x) = ln(1 − q + q·exp((2x−1)/(2σ²)))`, increasing in `x`.
#[derive(Clone, Copy)]
struct Sgm {
    q: f64,
    sigma: f64,
}

impl Sgm {
    /// `x` with `L(x) = l` (−∞ below the support).
    #[inline]
    fn x_of(&self, l: f64) -> f64 {
        let s2 = self.sigma * self.sigma;
        if self.q == 1.0 {
            return s2 * l + 0.5;
        }
        // e^l − (1 − q), accurate near l = 0.
        let v = l.exp_m1() + self.q;
        if v <= 0.0 {
            return f64::NEG_INFINITY;
        }
        s2 * (v.ln() - self.q.ln()) + 0.5
    }

    /// `(P(L > l), Q(L > l), P(L < l), Q(L < l))`, each accurate in its own tail.
    fn tails(&self, l: f64) -> (f64, f64, f64, f64) {
        let x = self.x_of(l);
        let s = self.sigma;
        // (upper, lower) tail of N(0,1) at z.
        let ul = |z: f64| -> (f64, f64) {
            if z == f64::NEG_INFINITY {
                (1.0, 0.0)
            } else if z == f64::INFINITY {
                (0.0, 1.0)
            } else {
                let t = tail(z);
                if z >= 0.0 {
                    (t, 1.0 - t)
                } else {
                    (1.0 - t, t)
                }
            }
        };
        let (u0, d0) = ul(x / s);
        let (u1, d1) = ul((x - 1.0) / s);
        (
            (1.0 - self.q) * u0 + self.q * u1,
            u0,
            (1.0 - self.q) * d0 + self.q * d1,
            d0,
        )
    }
}

/// Which neighbouring relation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Remove,
    Add,
}

/// Discretised single-step PLD on grid indices `k_lo .. k_lo + mass.len()`.
struct StepPmf {
    k_lo: i64,
    mass: Vec<f64>,
    inf_mass: f64,
    /// P-mass moved up from below the grid (a failure event of the error certificate).
    low_tail: f64,
}

/// `P`-tail above `l` in direction `dir` (the probability that the loss exceeds `l`).
fn upper_tail(g: Sgm, dir: Dir, l: f64) -> f64 {
    match dir {
        Dir::Remove => g.tails(l).0,
        // Add pair: P = Q_rem, loss = −L_rem. P(−L_rem > l) = Q_rem(L_rem < −l).
        Dir::Add => g.tails(-l).3,
    }
}

/// `P`-tail below `l` in direction `dir`.
fn lower_tail(g: Sgm, dir: Dir, l: f64) -> f64 {
    match dir {
        Dir::Remove => g.tails(l).2,
        Dir::Add => g.tails(-l).1,
    }
}

/// Smallest grid index `k` (searching upwards from `start`) with `f(k·h) ≤ tau`, `f` decreasing.
fn search_up(f: impl Fn(f64) -> f64, h: f64, start: i64, tau: f64) -> i64 {
    let mut step: i64 = 1;
    let mut lo = start;
    let mut hi = start;
    while f(hi as f64 * h) > tau {
        lo = hi;
        hi = start + step;
        step *= 2;
        if step > (1i64 << 40) {
            break;
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if f(mid as f64 * h) > tau {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

fn step_pmf(g: Sgm, dir: Dir, h: f64, tau: f64, max_n: usize) -> Result<StepPmf> {
    // Support bounds: the remove loss is > ln(1−q); the add loss is < −ln(1−q).
    let l1q = if g.q < 1.0 {
        (-g.q).ln_1p()
    } else {
        f64::NEG_INFINITY
    };
    let (k_lo, k_hi) = match dir {
        Dir::Remove => {
            let k_lo = if l1q.is_finite() {
                (l1q / h).floor() as i64
            } else {
                -search_up(|l| lower_tail(g, dir, -l), h, 0, tau)
            };
            (k_lo, search_up(|l| upper_tail(g, dir, l), h, 0, tau))
        }
        Dir::Add => {
            let k_hi = if l1q.is_finite() {
                (-l1q / h).ceil() as i64
            } else {
                search_up(|l| upper_tail(g, dir, l), h, 0, tau)
            };
            (-search_up(|l| lower_tail(g, dir, -l), h, 0, tau), k_hi)
        }
    };
    let k_hi = k_hi.max(k_lo + 1);
    if k_hi - k_lo >= max_n as i64 {
        return Err(Error::invalid(
            "eps_error",
            format!(
                "(a single step needs {} grid points > max_fft_size {max_n})",
                k_hi - k_lo + 1
            ),
            "larger, or use the RDP accountant for this history",
        ));
    }
    let n = (k_hi - k_lo + 1) as usize;
    let s = g.sigma;
    let q = g.q;
    // Edges in x-space of the remove pair. For the add direction, the interval [l_a, l_b] of
    // the add loss is [−l_b, −l_a] of the remove loss, with the roles of P and Q swapped.
    let xs: Vec<f64> = (0..n)
        .map(|i| {
            let l = (k_lo + i as i64) as f64 * h;
            match dir {
                Dir::Remove => g.x_of(l),
                Dir::Add => g.x_of(-l),
            }
        })
        .collect();
    let z0: Vec<(f64, f64)> = xs
        .iter()
        .map(|&x| {
            let z = x / s;
            (z, if z.is_finite() { tail(z) } else { 0.0 })
        })
        .collect();
    let z1: Vec<(f64, f64)> = xs
        .iter()
        .map(|&x| {
            let z = (x - 1.0) / s;
            (z, if z.is_finite() { tail(z) } else { 0.0 })
        })
        .collect();
    let masses = |i: usize, j: usize| -> (f64, f64) {
        // (P_rem, Q_rem) masses of x in (x_i, x_j] (or (x_j, x_i] when decreasing).
        let (a, b) = if xs[i] <= xs[j] { (i, j) } else { (j, i) };
        let m0 = normal_mass(z0[a].0, z0[a].1, z0[b].0, z0[b].1);
        let p = (1.0 - q) * m0 + q * normal_mass(z1[a].0, z1[a].1, z1[b].0, z1[b].1);
        (p, m0)
    };
    let mut mass = connect_dots(k_lo, n, h, |i| {
        let (pr, qr) = masses(i, i + 1);
        match dir {
            Dir::Remove => (pr, qr),
            Dir::Add => (qr, pr),
        }
    });
    let low_tail = lower_tail(g, dir, k_lo as f64 * h).max(0.0);
    mass[0] += low_tail;
    // Whatever P-mass is unaccounted for (the upper tail, rounding) goes to +∞: conservative.
    let total: f64 = mass.iter().sum();
    let inf_mass = upper_tail(g, dir, k_hi as f64 * h)
        .max(1.0 - total)
        .max(0.0);
    Ok(StepPmf {
        k_lo,
        mass,
        inf_mass,
        low_tail,
    })
}

/// The connect-the-dots split (Doroshenko et al. 2022): `masses(i)` is the `(P, Q)` mass of the
/// privacy loss in the grid interval `[l_i, l_{i+1}]` (`l_i = (k_lo + i)·h`); each interval's
/// P-mass is split between its two end points so that both its P-mass and its Q-mass are kept.
fn connect_dots(k_lo: i64, n: usize, h: f64, masses: impl Fn(usize) -> (f64, f64)) -> Vec<f64> {
    let mut mass = vec![0.0f64; n];
    let e_h = (-h).exp();
    let e_step = h.exp();
    let mut e_lk = (k_lo as f64 * h).exp();
    for i in 0..n - 1 {
        if i % 4096 == 0 {
            e_lk = ((k_lo + i as i64) as f64 * h).exp();
        } else {
            e_lk *= e_step;
        }
        let (p, qm) = masses(i);
        if p <= 0.0 {
            continue;
        }
        // Split p between k and k+1 preserving P-mass p and Q-mass qm:
        // left·e^{−l_k} + right·e^{−l_k−h} = qm, left + right = p.
        let qn = qm * e_lk; // Q-mass relative to e^{−l_k}
        let left = ((qn - e_h * p) / (1.0 - e_h)).clamp(0.0, p);
        mass[i] += left;
        mass[i + 1] += p - left;
    }
    mass
}

/// `(ln Σ_k m_k e^{λ k h}, ln Σ_k m_k e^{−λ k h})` for every λ in [`LAMBDAS`], in two passes
/// (the λ's are independent chains, so the loop vectorises).
fn log_mgfs(p: &StepPmf, h: f64) -> [(f64, f64); NL] {
    let n = p.mass.len();
    let k_top = (p.k_lo + n as i64 - 1) as f64 * h;
    let k_bot = p.k_lo as f64 * h;
    // Positive λ: weights e^{λ(k − k_top)h}, walking down from the top.
    let mut r = [0.0f64; NL];
    let mut w = [1.0f64; NL];
    let mut sum = [0.0f64; NL];
    for (j, &lam) in LAMBDAS.iter().enumerate() {
        r[j] = (-lam * h).exp();
    }
    for (i, &m) in p.mass.iter().rev().enumerate() {
        if i % 4096 == 0 {
            let d = i as f64 * h;
            for j in 0..NL {
                w[j] = (-LAMBDAS[j] * d).exp();
            }
        }
        for j in 0..NL {
            sum[j] += m * w[j];
            w[j] *= r[j];
        }
    }
    let up = sum;
    // Negative λ: weights e^{−λ(k − k_bot)h}, walking up from the bottom.
    let mut sum = [0.0f64; NL];
    for (i, &m) in p.mass.iter().enumerate() {
        if i % 4096 == 0 {
            let d = i as f64 * h;
            for j in 0..NL {
                w[j] = (-LAMBDAS[j] * d).exp();
            }
        }
        for j in 0..NL {
            sum[j] += m * w[j];
            w[j] *= r[j];
        }
    }
    let mut out = [(0.0, 0.0); NL];
    for j in 0..NL {
        // Relative safety margin for the multiplicative recurrence.
        out[j] = (
            (up[j] * (1.0 + 1e-9)).ln() + LAMBDAS[j] * k_top,
            (sum[j] * (1.0 + 1e-9)).ln() - LAMBDAS[j] * k_bot,
        );
    }
    out
}

/// The composed distribution in one direction.
struct Composed {
    /// Grid index of `p[0]`.
    a: i64,
    p: Vec<f64>,
    inf_mass: f64,
    /// Bound on the probability that the composed loss lies above the window (added to δ).
    alias_high: f64,
    /// Bound on the probability that it lies below (only inflates; used for the certificate).
    alias_low: f64,
    low_fail: f64,
}

const NL: usize = 8;
const LAMBDAS: [f64; NL] = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

fn fft_size(need: usize) -> usize {
    let mut best = usize::MAX;
    for f in [1usize, 3, 5, 9, 15] {
        let mut n = 2 * f;
        while n < need {
            n *= 2;
        }
        best = best.min(n);
    }
    best
}

fn compose(steps: &[(StepPmf, u64)], h: f64, tau_alias: f64, max_n: usize) -> Result<Composed> {
    // Window [a, b] from Chernoff bounds on the sum of grid indices (in units of h):
    // P(S ≥ b) ≤ E[e^{λS}] e^{−λb} and P(S < a) ≤ E[e^{−λS}] e^{λa}.
    let per_step: Vec<[(f64, f64); NL]> = steps.iter().map(|(p, _)| log_mgfs(p, h)).collect();
    let mgf: Vec<(f64, f64, f64)> = (0..NL)
        .map(|j| {
            let (mut up, mut dn) = (0.0, 0.0);
            for ((_, t), m) in steps.iter().zip(&per_step) {
                up += *t as f64 * m[j].0;
                dn += *t as f64 * m[j].1;
            }
            (LAMBDAS[j], up, dn)
        })
        .collect();
    let mut b = f64::INFINITY;
    let mut a = f64::NEG_INFINITY;
    for &(lam, up, dn) in &mgf {
        b = b.min((up - tau_alias.ln()) / lam);
        a = a.max((tau_alias.ln() - dn) / lam);
    }
    let ka = (a / h).floor() as i64;
    let kb = (b / h).ceil() as i64;
    let need = (kb - ka + 1).max(2) as usize;
    let n = fft_size(need);
    if n > max_n {
        return Err(Error::invalid(
            "eps_error",
            format!("(needs an FFT of {n} points > max_fft_size {max_n})"),
            "larger, or use the RDP accountant for this history",
        ));
    }
    // The bounds at the final window edges.
    let top = (ka + n as i64) as f64 * h;
    let bot = ka as f64 * h;
    let mut alias_high: f64 = 1.0;
    let mut alias_low: f64 = 1.0;
    for &(lam, up, dn) in &mgf {
        alias_high = alias_high.min((up - lam * top).exp());
        alias_low = alias_low.min((dn + lam * bot).exp());
    }

    let (fwd, inv) = {
        // Plans are cached across calls (calibration calls this many times).
        static PLANNER: OnceLock<Mutex<RealFftPlanner<f64>>> = OnceLock::new();
        let mut planner = PLANNER
            .get_or_init(|| Mutex::new(RealFftPlanner::new()))
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (planner.plan_fft_forward(n), planner.plan_fft_inverse(n))
    };
    let mut acc: Vec<Complex<f64>> = Vec::new();
    let mut buf = vec![0.0f64; n];
    let mut spec = fwd.make_output_vec();
    let mut inf_log = 0.0f64; // ln P(no step hit +∞)
    let mut low_fail = 0.0f64;
    for (p, t) in steps {
        buf.iter_mut().for_each(|x| *x = 0.0);
        for (i, &m) in p.mass.iter().enumerate() {
            let k = p.k_lo + i as i64;
            let idx = k.rem_euclid(n as i64) as usize;
            buf[idx] += m;
        }
        fwd.process(&mut buf, &mut spec)
            .map_err(|e| Error::invalid("fft", e.to_string(), "a valid FFT"))?;
        pow_in_place(&mut spec, *t);
        if acc.is_empty() {
            acc = std::mem::replace(&mut spec, fwd.make_output_vec());
        } else {
            for (x, y) in acc.iter_mut().zip(&spec) {
                *x *= *y;
            }
        }
        inf_log += *t as f64 * (-p.inf_mass).ln_1p();
        low_fail += *t as f64 * p.low_tail;
    }
    acc[0].im = 0.0;
    let last = acc.len() - 1;
    acc[last].im = 0.0;
    inv.process(&mut acc, &mut buf)
        .map_err(|e| Error::invalid("fft", e.to_string(), "a valid FFT"))?;
    // buf[r] holds P(S ≡ r mod n); the window value of residue r is the s ∈ [ka, ka+n).
    let scale = 1.0 / n as f64;
    let start = ka.rem_euclid(n as i64) as usize;
    buf.rotate_left(start);
    buf.iter_mut().for_each(|x| *x = (*x * scale).max(0.0));
    Ok(Composed {
        a: ka,
        p: buf,
        inf_mass: -inf_log.exp_m1(),
        alias_high,
        alias_low,
        low_fail,
    })
}

/// `z ↦ z^t` element-wise by binary exponentiation. Coefficients with `|z|^t < e^{−700}` are set
/// to zero without computing the power (for a smooth pmf most high frequencies are).
fn pow_in_place(v: &mut [Complex<f64>], t: u64) {
    if t == 1 {
        return;
    }
    // |z|² < e^{−1400/t}  ⇔  |z|^t < e^{−700}.
    let thr = (-1400.0 / t as f64).exp();
    for z in v.iter_mut() {
        if z.norm_sqr() < thr {
            *z = Complex::new(0.0, 0.0);
            continue;
        }
        let mut base = *z;
        let mut r = Complex::new(1.0, 0.0);
        let mut e = t;
        loop {
            if e & 1 == 1 {
                r *= base;
            }
            e >>= 1;
            if e == 0 {
                break;
            }
            base = base * base;
        }
        *z = r;
    }
}

/// Smallest `ε ≥ 0` with `inf + Σ p_s (1 − e^{ε − v_s})₊ ≤ target` (`v_s = (a+s)·h`).
fn solve_eps(c: &Composed, h: f64, target: f64) -> f64 {
    if target <= c.inf_mass {
        return f64::INFINITY;
    }
    let n = c.p.len();
    let mut a_sum = 0.0; // Σ_{s>j} p_s
    let mut b_sum = 0.0; // Σ_{s>j} p_s e^{−v_s}
    let e_h = h.exp();
    let e_mh = (-h).exp();
    let mut e_neg = 0.0; // e^{−v_{j+1}}
    let mut e_pos = 0.0; // e^{v_j}
    for j in (0..n).rev() {
        let vj = (c.a + j as i64) as f64 * h;
        if j + 1 < n {
            a_sum += c.p[j + 1];
            b_sum += c.p[j + 1] * e_neg;
        }
        // e^{∓v_j}, recomputed exactly every 64 steps: the running products drift by up to
        // ~1 ulp per step, and δ near the root is a difference of nearly equal sums, so the
        // drift must stay well below the `num_err` margin the caller subtracts (64 steps:
        // relative drift ≲ 3e-14; 4096 steps allowed ~1e-12, the size of that margin).
        if j % 64 == 0 || j + 1 == n {
            e_neg = (-vj).exp();
            e_pos = vj.exp();
        } else {
            e_neg *= e_h;
            e_pos *= e_mh;
        }
        if vj <= 0.0 {
            // The cell [v_j, v_j + h] contains ε = 0 (every v_s with s > j is > 0). Evaluate
            // δ(0) = inf + Σ_{s>j} p_s (1 − e^{−v_s}) with e^0 = 1 exactly rather than the
            // running product `e_pos` (whose rounding drift could put δ(0) on the wrong side of
            // `target`); if it exceeds the target, ε > 0 is the root in [0, v_j + h].
            let g0 = c.inf_mass + a_sum - b_sum;
            if g0 <= target {
                return 0.0;
            }
            let eps = ((c.inf_mass + a_sum - target) / b_sum).ln();
            let eps = eps.clamp(0.0, vj + h);
            return eps + eps.abs() * 1e-12;
        }
        let g = c.inf_mass + a_sum - b_sum * e_pos;
        if g > target {
            // Solution in [v_j, v_j + h]: inf + A − e^ε B = target.
            let eps = ((c.inf_mass + a_sum - target) / b_sum).ln();
            let eps = eps.clamp(vj, vj + h);
            return eps + eps.abs() * 1e-12;
        }
    }
    // Every grid value is > 0 and above the solution: solve below v_0 with all mass above.
    let a_all = a_sum + c.p[0];
    let v0 = c.a as f64 * h;
    let b_all = b_sum + c.p[0] * (-v0).exp();
    if c.inf_mass + a_all <= target {
        return 0.0;
    }
    let eps = ((c.inf_mass + a_all - target) / b_all).ln();
    let eps = eps.clamp(0.0, v0.max(0.0));
    eps + eps.abs() * 1e-12
}

fn validate_history(history: &[HistoryEntry]) -> Result<()> {
    history.iter().try_for_each(HistoryEntry::validate)
}

/// ε of a history of Poisson-subsampled Gaussian steps at `delta`, with the PLD accountant:
/// an upper bound with a certified error (see the module docs).
///
/// An empty history (or one with only `q = 0` entries) has ε = 0; a step with `σ = 0` and
/// `q > 0` gives ε = ∞.
///
/// # Proof Definition
/// Connect-the-dots discretisation (Doroshenko et al. 2022, Thm 3.3) + FFT composition of
/// dominating pairs (Zhu, Dong, Wang 2022, Thm 10); error certificate after Gopi, Lee,
/// Wutschitz 2021.
pub fn epsilon_pld(history: &[HistoryEntry], delta: f64, opts: &PldOptions) -> Result<PldEpsilon> {
    validate_delta(delta)?;
    opts.validate()?;
    validate_history(history)?;
    let delta_error = opts.delta_error_fraction * delta;
    let active: Vec<&HistoryEntry> = history.iter().filter(|e| e.sample_rate > 0.0).collect();
    let t_total: f64 = active.iter().map(|e| e.steps as f64).sum();
    if active.is_empty() {
        return Ok(PldEpsilon {
            epsilon: 0.0,
            epsilon_lower: 0.0,
            eps_error: 0.0,
            delta_error,
            grid_interval: 0.0,
            fft_size: 0,
        });
    }
    if active.iter().any(|e| e.noise_multiplier == 0.0) {
        return Ok(PldEpsilon {
            epsilon: f64::INFINITY,
            epsilon_lower: f64::INFINITY,
            eps_error: 0.0,
            delta_error,
            grid_interval: 0.0,
            fft_size: 0,
        });
    }
    let symmetric = active.iter().all(|e| e.sample_rate == 1.0);
    compose_and_solve(t_total, delta, opts, symmetric, |dir, hg, tau| {
        active
            .iter()
            .map(|e| {
                let g = Sgm {
                    q: e.sample_rate,
                    sigma: e.noise_multiplier,
                };
                Ok((step_pmf(g, dir, hg, tau, opts.max_fft_size)?, e.steps))
            })
            .collect()
    })
}

/// The part of the PLD accountant that does not depend on the mechanism: the grid interval
/// from the error target, the composition of every step's discretised PLD (`steps(dir, h,
/// τ)`: each entry's connect-the-dots PMF on grid interval `h` with tails below `τ`, and its
/// step count) in both directions, and the ε at δ with its certified lower bound (module docs).
/// `symmetric`: the two directions have the same PLD (no subsampling), the add one is skipped.
fn compose_and_solve(
    t_total: f64,
    delta: f64,
    opts: &PldOptions,
    symmetric: bool,
    steps: impl Fn(Dir, f64, f64) -> Result<Vec<(StepPmf, u64)>> + Sync,
) -> Result<PldEpsilon> {
    let delta_error = opts.delta_error_fraction * delta;
    // Budget: δ_h = δ_err/2 (Hoeffding), tails δ_err/8 per side, window δ_err/8 per side.
    let delta_h = delta_error / 2.0;
    let tau = delta_error / (8.0 * t_total);
    let tau_alias = delta_error / 8.0;
    // Grid: t(h) = T h²(1+h)/8 + h √(T ln(1/δ_h)/2) ≤ 0.9 eps_error.
    let c = 0.9 * opts.eps_error;
    let qa = t_total / 8.0 * 1.01;
    let qb = (t_total * (1.0 / delta_h).ln() / 2.0).sqrt();
    let mut h = (-qb + (qb * qb + 4.0 * qa * c).sqrt()) / (2.0 * qa);
    h = h.min(opts.eps_error / 4.0);
    let t_shift = t_total * h * h * (1.0 + h) / 8.0 + h * qb;

    // One direction on grid interval `hg`: (upper bound, certified lower bound, FFT size).
    // The lower bound is only valid (and only used) on the fine grid `h`.
    let run = |dir: Dir, hg: f64| -> Result<(f64, f64, usize)> {
        let steps = steps(dir, hg, tau)?;
        let comp = compose(&steps, hg, tau_alias, opts.max_fft_size)?;
        let num_err = comp.p.len() as f64 * f64::EPSILON * 4.0;
        let upper = solve_eps(&comp, hg, delta - comp.alias_high - num_err);
        let fail = delta_h + t_total * tau + comp.low_fail;
        let lower = solve_eps(&comp, hg, delta + comp.alias_low + num_err + fail) - t_shift;
        Ok((upper, lower.max(0.0), comp.p.len()))
    };
    // The remove direction on the fine grid. For q = 1 the two directions have the same PLD
    // (a Gaussian), so the add direction is skipped. Otherwise the add direction is first
    // bounded on a 4× coarser grid (still a rigorous upper bound, just less tight); only if
    // that bound exceeds the remove direction's ε is it recomputed on the fine grid.
    let (rem, add_coarse) = if symmetric {
        (run(Dir::Remove, h), Ok((0.0, 0.0, 0)))
    } else {
        rayon::join(|| run(Dir::Remove, h), || run(Dir::Add, 4.0 * h))
    };
    let (ur, lr, nr) = rem?;
    let (uc, _, nc) = add_coarse?;
    let (ua, la, na) = if uc <= ur {
        (uc, 0.0, nc)
    } else {
        run(Dir::Add, h)?
    };
    let epsilon = ur.max(ua);
    let epsilon_lower = lr.max(la).min(epsilon);
    Ok(PldEpsilon {
        epsilon,
        epsilon_lower,
        eps_error: epsilon - epsilon_lower,
        delta_error,
        grid_interval: h,
        fft_size: nr.max(na),
    })
}

/// One homogeneous stretch of the (Poisson-subsampled) Laplace mechanism: `steps` steps, each
/// releasing a sum of L1 sensitivity Δ plus independent Laplace(0, b) noise on every
/// coordinate, with `noise_multiplier = b/Δ`, each example in the step independently with
/// probability `sample_rate`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaplaceEntry {
    /// b/Δ: the Laplace scale over the L1 sensitivity (> 0; pure ε₀ = 1/b·Δ = 1/noise_multiplier
    /// per step without subsampling).
    pub noise_multiplier: f64,
    /// Poisson sampling rate q ∈ [0, 1].
    pub sample_rate: f64,
    /// Number of steps, ≥ 1.
    pub steps: u64,
}

impl LaplaceEntry {
    /// A validated entry.
    pub fn new(noise_multiplier: f64, sample_rate: f64, steps: u64) -> Result<Self> {
        let e = LaplaceEntry {
            noise_multiplier,
            sample_rate,
            steps,
        };
        e.validate()?;
        Ok(e)
    }

    /// Checks b/Δ finite and > 0, q ∈ [0, 1], steps ≥ 1.
    pub fn validate(&self) -> Result<()> {
        super::validate_q_sigma(self.sample_rate, self.noise_multiplier)?;
        if self.noise_multiplier <= 0.0 {
            return Err(Error::invalid(
                "noise_multiplier",
                self.noise_multiplier,
                "b/Δ > 0 (Laplace scale over L1 sensitivity)",
            ));
        }
        super::validate_steps(self.steps)
    }
}

/// The "remove" pair of the Poisson-subsampled Laplace mechanism (sensitivity 1, scale b):
/// `P = (1−q)·Lap(0, b) + q·Lap(1, b)`, `Q = Lap(0, b)`, loss
/// `L(x) = ln(1 − q + q·e^{u(x)})` with `u(x) = (|x| − |x − 1|)/b ∈ [−1/b, 1/b]`,
/// non-decreasing in x, constant (atoms of the loss) for x ≤ 0 and x ≥ 1.
#[derive(Clone, Copy)]
struct Slm {
    q: f64,
    b: f64,
}

impl Slm {
    /// Support of the remove loss: `[ln(1 + q(e^{−1/b} − 1)), ln(1 + q(e^{1/b} − 1))]`.
    fn support(&self) -> (f64, f64) {
        (
            (self.q * (-1.0 / self.b).exp_m1()).ln_1p(),
            (self.q * (1.0 / self.b).exp_m1()).ln_1p(),
        )
    }

    /// `X(l) = sup {x : L(x) ≤ l}` (−∞ below the support, +∞ at or above its top), so that
    /// `{l_a < L ≤ l_b} = {X(l_a) < x ≤ X(l_b)}`.
    fn x_of(&self, l: f64) -> f64 {
        let (lo, hi) = self.support();
        if l < lo {
            return f64::NEG_INFINITY;
        }
        if l >= hi {
            return f64::INFINITY;
        }
        // e^u = (e^l − 1 + q)/q  ⇒  u = ln(1 + (e^l − 1)/q); x = (b·u + 1)/2.
        let u = (l.exp_m1() / self.q).ln_1p();
        ((self.b * u + 1.0) / 2.0).clamp(0.0, 1.0)
    }
}

/// `P(a < X ≤ c)` for `X ~ Laplace(mu, b)`, each side from its own tail (accurate far out).
fn laplace_mass(mu: f64, b: f64, a: f64, c: f64) -> f64 {
    if c <= a {
        return 0.0;
    }
    // Lower tail F(x) = ½e^{(x−mu)/b} (x ≤ mu), upper tail S(x) = ½e^{−(x−mu)/b} (x ≥ mu).
    let lower = |x: f64| 0.5 * ((x - mu) / b).exp();
    let upper = |x: f64| 0.5 * (-(x - mu) / b).exp();
    let m = if a >= mu {
        upper(a) - upper(c)
    } else if c <= mu {
        lower(c) - lower(a)
    } else {
        1.0 - lower(a) - upper(c)
    };
    m.max(0.0)
}

/// The connect-the-dots PMF of one subsampled-Laplace step in direction `dir` on grid
/// interval `h`. The loss is bounded, so there are no tails: the grid covers the support with
/// one spare point on each side (so that the atoms at the ends fall inside grid intervals).
fn laplace_step_pmf(g: Slm, dir: Dir, h: f64, max_n: usize) -> Result<StepPmf> {
    let (lo, hi) = g.support();
    // The add loss is −(remove loss) with P and Q swapped.
    let (lo, hi) = match dir {
        Dir::Remove => (lo, hi),
        Dir::Add => (-hi, -lo),
    };
    let k_lo = (lo / h).floor() as i64 - 1;
    let k_hi = (hi / h).ceil() as i64 + 1;
    if k_hi - k_lo >= max_n as i64 {
        return Err(Error::invalid(
            "eps_error",
            format!(
                "(a single step needs {} grid points > max_fft_size {max_n})",
                k_hi - k_lo + 1
            ),
            "larger, or use fewer steps per history entry",
        ));
    }
    let n = (k_hi - k_lo + 1) as usize;
    let xs: Vec<f64> = (0..n)
        .map(|i| {
            let l = (k_lo + i as i64) as f64 * h;
            match dir {
                Dir::Remove => g.x_of(l),
                Dir::Add => g.x_of(-l),
            }
        })
        .collect();
    let mass = connect_dots(k_lo, n, h, |i| {
        // (P_rem, Q_rem) masses of x between the two edges.
        let (a, c) = if xs[i] <= xs[i + 1] {
            (xs[i], xs[i + 1])
        } else {
            (xs[i + 1], xs[i])
        };
        let m0 = laplace_mass(0.0, g.b, a, c);
        let p = (1.0 - g.q) * m0 + g.q * laplace_mass(1.0, g.b, a, c);
        match dir {
            Dir::Remove => (p, m0),
            Dir::Add => (m0, p),
        }
    });
    let total: f64 = mass.iter().sum();
    Ok(StepPmf {
        k_lo,
        mass,
        // Rounding only: whatever P-mass is unaccounted for goes to +∞ (conservative).
        inf_mass: (1.0 - total).max(0.0),
        low_tail: 0.0,
    })
}

/// ε of a history of Poisson-subsampled **Laplace** steps at `delta`, with the PLD accountant:
/// an upper bound with a certified error, as [`epsilon_pld`] (same discretisation, composition
/// and error certificate; see the module docs).
///
/// The mechanism: each step releases `Σ_{i∈batch} g_i + Z`, `Z` i.i.d. Laplace(0, b) on every
/// coordinate, the batch Poisson-sampled with rate q, and `‖g_i‖₁ ≤ Δ` for every example (L1
/// clipping at Δ = C: [`crate::ops::clip_l1_and_accumulate`]); `noise_multiplier = b/Δ`.
///
/// Neighbouring relation: **add/remove one example** (the sum's L1 sensitivity is then Δ;
/// under substitution it would be 2Δ). Both directions are accounted and the worse reported,
/// as Google's `dp_accounting` does for `LaplacePrivacyLoss` (the remove pair
/// `((1−q)Lap(0,b) + qLap(Δ,b), Lap(0,b))` and the add pair `(Lap(0,b), (1−q)Lap(0,b) +
/// qLap(Δ,b))`). An empty history (or one with only `q = 0` entries) has ε = 0.
///
/// # Proof Definition
/// - Laplace PLD and its subsampled pair: Koskela, Jälkö, Prediger, Honkela, *Tight
///   Differential Privacy for Discrete-Valued Mechanisms and for the Subsampled Gaussian
///   Mechanism Using FFT*, AISTATS 2021; Google's `dp_accounting` (`LaplacePrivacyLoss`,
///   "Privacy loss distributions" supplement); the dominating pair of Poisson subsampling for
///   add/remove: Zhu, Dong, Wang, *Optimal Accounting of Differential Privacy via
///   Characteristic Function*, AISTATS 2022 (Theorem 11), composed by their Theorem 10.
/// - Discretisation: connect-the-dots (Doroshenko et al., PoPETs 2022, Thm 3.3): the ε is an
///   upper bound (pessimistic), never under-reported.
///
/// # Assumption for vector-valued sums
/// The pair above is the one-dimensional one: the neighbouring sums differ by Δ in a single
/// coordinate. For a d-dimensional sum the difference `v` may spread over many coordinates
/// (`‖v‖₁ ≤ Δ`); by the composition theorem the product pair is then the composition of 1-D
/// Laplace steps with noise multipliers `b/|v_j|`. That this is dominated by the single
/// coordinate shift is **checked numerically** (tests/accounting.rs:
/// `laplace_single_coordinate_dominates_split_shifts`, ε of splits ≤ ε of the 1-D pair at
/// several b, δ and splits), not proven here; pure DP (δ = 0) holds for any split (ε₀ =
/// ‖v‖₁/b).
pub fn epsilon_pld_laplace(
    history: &[LaplaceEntry],
    delta: f64,
    opts: &PldOptions,
) -> Result<PldEpsilon> {
    validate_delta(delta)?;
    opts.validate()?;
    history.iter().try_for_each(LaplaceEntry::validate)?;
    let active: Vec<&LaplaceEntry> = history.iter().filter(|e| e.sample_rate > 0.0).collect();
    let t_total: f64 = active.iter().map(|e| e.steps as f64).sum();
    if active.is_empty() {
        return Ok(PldEpsilon {
            epsilon: 0.0,
            epsilon_lower: 0.0,
            eps_error: 0.0,
            delta_error: opts.delta_error_fraction * delta,
            grid_interval: 0.0,
            fft_size: 0,
        });
    }
    let symmetric = active.iter().all(|e| e.sample_rate == 1.0);
    compose_and_solve(t_total, delta, opts, symmetric, |dir, hg, _tau| {
        active
            .iter()
            .map(|e| {
                let g = Slm {
                    q: e.sample_rate,
                    b: e.noise_multiplier,
                };
                Ok((laplace_step_pmf(g, dir, hg, opts.max_fft_size)?, e.steps))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// δ of a composed PLD at `eps`, evaluated term by term (one `exp_m1` per grid point).
    fn delta_at(c: &Composed, h: f64, eps: f64) -> f64 {
        let mut d = c.inf_mass;
        for (s, &p) in c.p.iter().enumerate() {
            let v = (c.a + s as i64) as f64 * h;
            if v > eps {
                d += p * -(eps - v).exp_m1();
            }
        }
        d
    }

    /// δ(0) just above the target must give ε > 0 (the root in the cell that contains 0), not 0.
    /// The grid crosses 0 4094 cells below its top. The old `solve_eps` recomputed `e^{±v}`
    /// exactly only every 4096 grid points and otherwise multiplied by `e^{∓h}`; for this `h`
    /// the running products were off by ~2.7e-13 at v = 0, so it understated δ(0) by ~1e-13,
    /// found it ≤ the target at the last grid value ≥ 0 and returned ε = 0 at the first
    /// negative one although δ(0) > target.
    #[test]
    fn solve_eps_is_positive_when_delta_at_zero_exceeds_target() {
        let h = 0.0801;
        let n = 4096;
        let mut p = vec![0.0; n];
        p[0] = 0.5; // v = −h
        p[2] = 0.5; // v = +h
        let c = Composed {
            a: -1,
            p,
            inf_mass: 0.0,
            alias_high: 0.0,
            alias_low: 0.0,
            low_fail: 0.0,
        };
        let d0 = delta_at(&c, h, 0.0);
        let target = d0 - 1e-13;
        let eps = solve_eps(&c, h, target);
        assert!(eps > 0.0, "δ(0) = {d0} > target = {target} but ε = {eps}");
        assert!(eps <= h, "ε = {eps} should lie in the cell [0, h]");
        // Up to the rounding of the running exponentials (≲ 3e-14 relative over 64 steps, far
        // inside the `num_err` margin that `epsilon_pld` subtracts from the target).
        let d = delta_at(&c, h, eps);
        assert!(
            d <= target + 2e-14,
            "δ(ε = {eps}) = {d} > target = {target}"
        );
    }

    /// δ(0) at or below the target gives ε = 0; a grid that is all negative gives ε = 0.
    #[test]
    fn solve_eps_zero_cases() {
        let h = 0.05;
        let c = Composed {
            a: -3,
            p: vec![0.25, 0.25, 0.25, 0.125, 0.125],
            inf_mass: 0.0,
            alias_high: 0.0,
            alias_low: 0.0,
            low_fail: 0.0,
        };
        let d0 = delta_at(&c, h, 0.0);
        assert_eq!(solve_eps(&c, h, d0 * 1.01), 0.0);
        let eps = solve_eps(&c, h, d0 * 0.99);
        assert!(eps > 0.0 && eps <= h, "{eps}");
        assert!(delta_at(&c, h, eps) <= d0 * 0.99 * (1.0 + 1e-12));
        let neg = Composed {
            a: -10,
            p: vec![0.5, 0.5],
            inf_mass: 0.0,
            alias_high: 0.0,
            alias_low: 0.0,
            low_fail: 0.0,
        };
        assert_eq!(solve_eps(&neg, h, 1e-9), 0.0);
    }
}
