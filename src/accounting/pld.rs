//! The PRV accountant: numerical composition of privacy-loss random variables (Gopi, Lee,
//! Wutschitz 2021), the tightest ε for a DP-SGD history, returned as an upper bound.
//!
//! # Proof Definition
//! For one step of the Poisson-subsampled Gaussian mechanism with rate q and noise multiplier σ
//! (sensitivity 1), the dominating pair is P = (1−q)·N(0, σ²) + q·N(1, σ²), Q = N(0, σ²), and
//! the privacy-loss random variable is Y = ln(P(X)/Q(X)) = ln(1 − q + q·e^{(2X−1)/(2σ²)}),
//! X ~ P. Its CDF is, with z = ln((eᵗ − 1 + q)/q) and t > ln(1−q),
//!
//! ```text
//! F(t) = (1−q)·Φ(σz + 1/(2σ)) + q·Φ(σz − 1/(2σ)),      F(t) = 0 for t ≤ ln(1−q).
//! ```
//!
//! The mechanism composed T times is (ε, δ(ε))-DP with δ(ε) = E[(1 − e^{ε − ΣYᵢ})₊] (Gopi et
//! al., Theorem 2.3 / Proposition 2.4). We discretise each Y on a grid of spacing h over
//! [−L, L] (probability of each cell, mean-corrected as in their Algorithm 1), compose the
//! histories by FFT (cyclic convolution, exact on the grid), and solve δ(ε) = δ on the result.
//! Gopi et al., Theorem 5.5: with L from the RDP tail bound at δ_err/(8T) and
//! h = ε_err / √(T·ln(12/δ_err)/2), the true ε satisfies ε ≤ ε̂(δ − δ_err) + ε_err; we return that
//! upper bound (Opacus's `PRVAccountant.get_epsilon` does the same, with the same defaults
//! ε_err = 0.01, δ_err = δ/1000).
//!
//! # References
//! - S. Gopi, Y. T. Lee, L. Wutschitz. *Numerical Composition of Differential Privacy*, NeurIPS
//!   2021 (Algorithm 1, Theorem 5.5).
//! - Y. Zhu, J. Dong, Y.-X. Wang. *Optimal Accounting of Differential Privacy via
//!   Characteristic Function*, AISTATS 2022 (the dominating pair of the subsampled Gaussian).

use super::{rdp, validate_delta, HistoryEntry};
use crate::{Error, Result};
use rayon::prelude::*;
use realfft::RealFftPlanner;
use rustfft::num_complex::Complex64;
use serde::{Deserialize, Serialize};

/// Error budget of the PRV accountant (Opacus's defaults: ε error 0.01, δ error δ/1000).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PldOptions {
    /// The additive error allowed in ε (> 0).
    pub eps_error: f64,
    /// The δ error as a fraction of δ (in (0, 1)); δ_err = fraction · δ.
    pub delta_error_fraction: f64,
    /// Largest grid (points) before refusing (memory bound).
    pub max_grid: usize,
}

impl Default for PldOptions {
    fn default() -> Self {
        PldOptions {
            eps_error: 0.01,
            delta_error_fraction: 1e-3,
            max_grid: 1 << 24,
        }
    }
}

impl PldOptions {
    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        if !(self.eps_error.is_finite() && self.eps_error > 0.0) {
            return Err(Error::invalid(
                "eps_error",
                self.eps_error,
                "finite and > 0",
            ));
        }
        if !(self.delta_error_fraction > 0.0 && self.delta_error_fraction < 1.0) {
            return Err(Error::invalid(
                "delta_error_fraction",
                self.delta_error_fraction,
                "in (0, 1)",
            ));
        }
        if self.max_grid < 1024 {
            return Err(Error::invalid("max_grid", self.max_grid, ">= 1024"));
        }
        Ok(())
    }
}

/// The result of [`epsilon_pld`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PldEpsilon {
    /// The upper bound ε̂(δ − δ_err) + ε_err: the true ε is at most this.
    pub epsilon: f64,
    /// The estimate ε̂(δ) on the grid.
    pub estimate: f64,
    /// A lower bound ε̂(δ + δ_err) − ε_err.
    pub lower: f64,
    /// Grid points used.
    pub grid: usize,
}

fn phi(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

fn phi_c(x: f64) -> f64 {
    0.5 * libm::erfc(x / std::f64::consts::SQRT_2)
}

/// The privacy-loss random variable of one subsampled-Gaussian step.
struct Prv {
    q: f64,
    sigma: f64,
}

impl Prv {
    /// σz with z = ln((eᵗ − 1 + q)/q), for t > ln(1 − q).
    fn z(&self, t: f64) -> f64 {
        // ln(eᵗ − 1 + q) − ln q, stably: eᵗ − 1 = expm1(t).
        (t.exp_m1() + self.q).ln() - self.q.ln()
    }

    /// P(Y ≤ t).
    fn cdf(&self, t: f64) -> f64 {
        match self.args(t) {
            None => 0.0,
            Some((w, a, b)) => w * phi(a) + (1.0 - w) * phi(b),
        }
    }

    /// P(Y > t), accurate in the upper tail.
    fn sf(&self, t: f64) -> f64 {
        match self.args(t) {
            None => 1.0,
            Some((w, a, b)) => w * phi_c(a) + (1.0 - w) * phi_c(b),
        }
    }

    /// (weight of the first Gaussian, its argument, the second's) with F(t) = w·Φ(a) + (1−w)·Φ(b);
    /// `None` below the support.
    fn args(&self, t: f64) -> Option<(f64, f64, f64)> {
        if self.q >= 1.0 {
            let mu = 1.0 / self.sigma;
            let x = (t - mu * mu / 2.0) / mu;
            return Some((1.0, x, x));
        }
        if t <= (-self.q).ln_1p() {
            return None;
        }
        let z = self.z(t);
        Some((
            1.0 - self.q,
            self.sigma * z + 0.5 / self.sigma,
            self.sigma * z - 0.5 / self.sigma,
        ))
    }

    /// The t with F(t) = ½ (bisection).
    fn median(&self) -> f64 {
        let (mut lo, mut hi) = ((-self.q).ln_1p().max(-1e3), 1.0f64);
        while self.cdf(hi) < 0.5 {
            hi *= 2.0;
        }
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if self.cdf(mid) < 0.5 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }

    /// E[Y] = KL(P‖Q), by Simpson's rule over x.
    fn mean(&self) -> f64 {
        let (q, s) = (self.q, self.sigma);
        let loss = |x: f64| -> f64 {
            let e = (2.0 * x - 1.0) / (2.0 * s * s);
            if q >= 1.0 {
                return e;
            }
            // ln(1 − q + q·eᵉ), stable for large e.
            if e > 0.0 {
                e + (q + (1.0 - q) * (-e).exp()).ln()
            } else {
                (q * e.exp_m1()).ln_1p()
            }
        };
        let dens = |x: f64| -> f64 {
            let g = |m: f64| {
                (-(x - m) * (x - m) / (2.0 * s * s)).exp()
                    / (s * (2.0 * std::f64::consts::PI).sqrt())
            };
            (1.0 - q) * g(0.0) + q * g(1.0)
        };
        let (a, b) = (-14.0 * s, 1.0 + 14.0 * s);
        let n = 40_000usize;
        let h = (b - a) / n as f64;
        let mut acc = 0.0;
        for i in 0..=n {
            let x = a + i as f64 * h;
            let w = if i == 0 || i == n {
                1.0
            } else if i % 2 == 1 {
                4.0
            } else {
                2.0
            };
            acc += w * dens(x) * loss(x);
        }
        acc * h / 3.0
    }
}

/// An odd grid size ≥ n whose only prime factors are 3, 5 and 7 (fast FFTs).
fn smooth_odd(n: usize) -> usize {
    let mut m = n | 1;
    loop {
        let mut r = m;
        for p in [3, 5, 7] {
            while r % p == 0 {
                r /= p;
            }
        }
        if r == 1 {
            return m;
        }
        m += 2;
    }
}

/// ε for `delta` of a heterogeneous history, by the PRV accountant (see the module docs).
pub fn epsilon_pld(history: &[HistoryEntry], delta: f64, opts: &PldOptions) -> Result<PldEpsilon> {
    validate_delta(delta)?;
    opts.validate()?;
    for e in history {
        e.validate()?;
    }
    let live: Vec<&HistoryEntry> = history.iter().filter(|e| e.sample_rate > 0.0).collect();
    if live.is_empty() {
        return Ok(PldEpsilon {
            epsilon: 0.0,
            estimate: 0.0,
            lower: 0.0,
            grid: 0,
        });
    }
    if live.iter().any(|e| e.noise_multiplier == 0.0) {
        return Ok(PldEpsilon {
            epsilon: f64::INFINITY,
            estimate: f64::INFINITY,
            lower: f64::INFINITY,
            grid: 0,
        });
    }
    let delta_err = opts.delta_error_fraction * delta;
    let total: u64 = live.iter().map(|e| e.steps).sum();
    // Domain [−L, L] from the RDP tail bound of each entry's full composition.
    let tail_delta = delta_err / (8.0 * total as f64);
    let orders = rdp::default_orders();
    let mut l_max = 0.0f64;
    for e in &live {
        let (eps, _) = rdp::epsilon_rdp(&[**e], tail_delta, &orders)?;
        l_max = l_max.max(eps);
    }
    let l = 2.0 + l_max;
    let h = opts.eps_error / ((total as f64) * (12.0 / delta_err).ln() / 2.0).sqrt();
    let need = (2.0 * l / h).ceil() as usize + 1;
    if need > opts.max_grid {
        return Err(Error::invalid(
            "eps_error",
            opts.eps_error,
            format!("large enough that the PRV grid ({need} points) fits max_grid = {}; or use the RDP accountant", opts.max_grid),
        ));
    }
    let n = smooth_odd(need);
    let c = (n - 1) / 2;
    let mut planner = RealFftPlanner::<f64>::new();
    let fwd = planner.plan_fft_forward(n);
    let inv = planner.plan_fft_inverse(n);
    let mut spectrum = vec![Complex64::new(1.0, 0.0); n / 2 + 1];
    let mut shift = 0.0f64;
    let mut buf = vec![0.0f64; n];
    let mut spec = fwd.make_output_vec();
    for e in &live {
        let prv = Prv {
            q: e.sample_rate,
            sigma: e.noise_multiplier,
        };
        // Cell j covers [(j − c − ½)h, (j − c + ½)h). Its probability comes from the CDF below
        // the median and from the survival function above it (no cancellation in the upper
        // tail, which is what δ(ε) is made of).
        let t_med = prv.median();
        let edge = |k: usize| (k as f64 - c as f64 - 0.5) * h;
        // Tails: edges below k_lo have F < τ and edges above k_hi have 1 − F < τ. Their cells
        // are not evaluated; their mass is moved conservatively — the lower tail's up into
        // cell k_lo, the upper tail's into the top cell (more privacy loss, a larger δ(ε)).
        // τ·2 is far below the δ error budget (τ = 1e-6·δ_err / T).
        let tau = 1e-6 * delta_err / total as f64;
        let (k_lo, k_hi) = {
            // first edge with F ≥ τ, and first edge with 1 − F < τ (both monotone).
            let first = |pred: &dyn Fn(usize) -> bool| -> usize {
                let (mut lo, mut hi) = (0usize, n + 1);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if pred(mid) {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                lo
            };
            let lo = first(&|k| prv.cdf(edge(k)) >= tau).saturating_sub(1);
            let hi = first(&|k| prv.sf(edge(k)) < tau).clamp(lo + 1, n);
            (lo, hi)
        };
        // F below the median, 1 − F above it, at every needed edge (each evaluated once).
        let mut fe = vec![0.0f64; n + 1];
        fe[k_lo..=k_hi]
            .par_iter_mut()
            .enumerate()
            .with_min_len(4096)
            .for_each(|(i, f)| {
                let t = edge(k_lo + i);
                *f = if t <= t_med { prv.cdf(t) } else { prv.sf(t) };
            });
        let (cm, sm) = (prv.cdf(t_med), prv.sf(t_med));
        buf.par_iter_mut()
            .enumerate()
            .with_min_len(4096)
            .for_each(|(j, x)| {
                if j < k_lo || j >= k_hi {
                    *x = 0.0;
                    return;
                }
                let (a, b) = (edge(j), edge(j + 1));
                let p = if b <= t_med {
                    fe[j + 1] - fe[j]
                } else if a > t_med {
                    fe[j] - fe[j + 1]
                } else {
                    (cm - fe[j]) + (sm - fe[j + 1])
                };
                *x = p.max(0.0);
            });
        // The tails' mass, moved up.
        let low_mass = if edge(k_lo) <= t_med {
            prv.cdf(edge(k_lo))
        } else {
            0.0
        };
        buf[k_lo] += low_mass;
        let high_mass = if edge(k_hi) > t_med {
            prv.sf(edge(k_hi))
        } else {
            0.0
        };
        buf[n - 1] += high_mass;
        let mean_d: f64 = buf
            .par_iter()
            .enumerate()
            .with_min_len(4096)
            .map(|(j, p)| p * (j as f64 - c as f64) * h)
            .sum();
        let s = prv.mean() - mean_d;
        if s.abs() >= h / 2.0 {
            return Err(Error::invalid(
                "eps_error",
                opts.eps_error,
                format!(
                    "small enough to discretise σ = {}, q = {} (mean shift {s} ≥ h/2)",
                    e.noise_multiplier, e.sample_rate
                ),
            ));
        }
        shift += s * e.steps as f64;
        fwd.process(&mut buf, &mut spec)
            .map_err(|e| Error::invalid("fft", e, "a valid plan"))?;
        let k = e.steps as f64;
        spectrum
            .par_iter_mut()
            .zip(spec.par_iter())
            .with_min_len(4096)
            .for_each(|(acc, x)| {
                // x^k in polar form.
                let (r, th) = x.to_polar();
                *acc *= Complex64::from_polar(r.powf(k), th * k);
            });
    }
    // realfft's inverse wants purely real DC (and Nyquist) terms.
    spectrum[0].im = 0.0;
    inv.process(&mut spectrum, &mut buf)
        .map_err(|e| Error::invalid("fft", e, "a valid plan"))?;
    // The sum of `total` cells j_i sits at Σ(j_i − c)h: re-centre the cyclic result.
    let roll = ((total as u128 - 1) * c as u128 % n as u128) as usize;
    let pmf: Vec<f64> = (0..n)
        .map(|j| (buf[(j + roll) % n] / n as f64).max(0.0))
        .collect();
    let ts: Vec<f64> = (0..n).map(|j| (j as f64 - c as f64) * h + shift).collect();
    let tail = Tail::new(&ts, &pmf);
    let upper = tail.eps_for_delta(delta - delta_err)? + opts.eps_error;
    let estimate = tail.eps_for_delta(delta)?;
    let lower = (tail.eps_for_delta(delta + delta_err)? - opts.eps_error).max(0.0);
    Ok(PldEpsilon {
        epsilon: upper.max(0.0),
        estimate: estimate.max(0.0),
        lower,
        grid: n,
    })
}

/// Suffix sums of a discrete PRV, for solving δ(ε) = Σ_{t_j > ε} p_j (1 − e^{ε − t_j}) = δ
/// exactly per grid cell.
struct Tail<'a> {
    ts: &'a [f64],
    /// S0_k = Σ_{j ≥ k} p_j.
    s0: Vec<f64>,
    /// S1_k = Σ_{j ≥ k} p_j e^{−t_j}.
    s1: Vec<f64>,
}

impl<'a> Tail<'a> {
    fn new(ts: &'a [f64], p: &[f64]) -> Self {
        let n = ts.len();
        let mut s0 = vec![0.0; n + 1];
        let mut s1 = vec![0.0; n + 1];
        for j in (0..n).rev() {
            s0[j] = s0[j + 1] + p[j];
            s1[j] = s1[j + 1]
                + if p[j] > 0.0 {
                    p[j] * (-ts[j]).exp()
                } else {
                    0.0
                };
        }
        Tail { ts, s0, s1 }
    }

    fn eps_for_delta(&self, delta: f64) -> Result<f64> {
        let (ts, s0, s1) = (self.ts, &self.s0, &self.s1);
        let n = ts.len();
        // δ at ε = t_{k−1} (cells ≥ k above it); the first k where it is ≤ δ brackets ε in
        // (t_{k−2}, t_{k−1}], where δ(ε) = S0_{k−1} − e^ε S1_{k−1}.
        let d_at = |k: usize, eps: f64| s0[k] - eps.exp() * s1[k];
        // δ(ε) is decreasing: binary search for the first such k.
        let (mut lo, mut hi) = (1usize, n);
        if d_at(n, ts[n - 1]) > delta {
            return Err(Error::invalid(
                "delta",
                delta,
                "larger than the truncated tail mass of the PRV grid",
            ));
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if d_at(mid, ts[mid - 1]) <= delta {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let k = lo;
        let (a, b) = (s0[k - 1], s1[k - 1]);
        let eps = if b > 0.0 && a > delta {
            ((a - delta) / b).ln()
        } else {
            ts[k - 1]
        };
        Ok(eps.min(ts[k - 1]))
    }
}
