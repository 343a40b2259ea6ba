//! TEMPORARY integer-order RDP accountant so the trainer can be built and tuned while the full
//! accounting module (issue 4) is finished on its branch; replaced by it at merge.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Accounting method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// RDP.
    Rdp,
    /// PRV.
    Prv,
}

/// One entry.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// σ.
    pub noise_multiplier: f64,
    /// q.
    pub sample_rate: f64,
    /// steps.
    pub steps: u64,
}

/// History.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    entries: Vec<HistoryEntry>,
}

impl History {
    /// Entries.
    pub fn entries(&self) -> &[HistoryEntry] {
        &self.entries
    }
    /// Total steps.
    pub fn total_steps(&self) -> u64 {
        self.entries.iter().map(|e| e.steps).sum()
    }
    fn push(&mut self, s: f64, q: f64, n: u64) {
        if let Some(l) = self.entries.last_mut() {
            if l.noise_multiplier == s && l.sample_rate == q {
                l.steps += n;
                return;
            }
        }
        self.entries.push(HistoryEntry {
            noise_multiplier: s,
            sample_rate: q,
            steps: n,
        });
    }
}

/// Trait.
pub trait PrivacyAccountant {
    /// Step.
    fn step(&mut self, noise_multiplier: f64, sample_rate: f64) -> Result<()>;
    /// ε.
    fn epsilon(&self, delta: f64) -> Result<f64>;
    /// History.
    fn history(&self) -> &History;
}

/// Accountant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accountant {
    /// Method.
    pub method: Method,
    history: History,
}

impl Accountant {
    /// New.
    pub fn new(method: Method) -> Self {
        Accountant {
            method,
            history: History::default(),
        }
    }
    /// Many steps.
    pub fn step_many(&mut self, s: f64, q: f64, n: u64) -> Result<()> {
        self.history.push(s, q, n);
        Ok(())
    }
}

impl PrivacyAccountant for Accountant {
    fn step(&mut self, s: f64, q: f64) -> Result<()> {
        self.step_many(s, q, 1)
    }
    fn epsilon(&self, delta: f64) -> Result<f64> {
        epsilon(self.method, self.history.entries(), delta)
    }
    fn history(&self) -> &History {
        &self.history
    }
}

fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        hi
    } else {
        hi + (lo - hi).exp().ln_1p()
    }
}

fn ln_binom(n: u64, k: u64) -> f64 {
    let mut s = 0.0;
    for i in 0..k {
        s += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    s
}

fn rdp_int(q: f64, s: f64, a: u64) -> f64 {
    if s == 0.0 {
        return f64::INFINITY;
    }
    if q >= 1.0 {
        return a as f64 / (2.0 * s * s);
    }
    let mut la = f64::NEG_INFINITY;
    for i in 0..=a {
        let t = ln_binom(a, i)
            + i as f64 * q.ln()
            + (a - i) as f64 * (1.0 - q).ln()
            + (i as f64 * i as f64 - i as f64) / (2.0 * s * s);
        la = log_add(la, t);
    }
    la / (a as f64 - 1.0)
}

/// ε of a history.
pub fn epsilon(_m: Method, h: &[HistoryEntry], delta: f64) -> Result<f64> {
    let mut best = f64::INFINITY;
    for a in 2..=64u64 {
        let rdp: f64 = h
            .iter()
            .map(|e| e.steps as f64 * rdp_int(e.sample_rate, e.noise_multiplier, a))
            .sum();
        let af = a as f64;
        let eps = rdp - (delta.ln() + af.ln()) / (af - 1.0) + ((af - 1.0) / af).ln();
        best = best.min(eps);
    }
    Ok(best.max(0.0))
}

/// Calibration.
pub fn calibrate_noise_multiplier(
    m: Method,
    target: f64,
    delta: f64,
    q: f64,
    steps: u64,
    tol: f64,
) -> Result<f64> {
    let e = |s: f64| {
        epsilon(
            m,
            &[HistoryEntry {
                noise_multiplier: s,
                sample_rate: q,
                steps,
            }],
            delta,
        )
        .unwrap_or(f64::INFINITY)
    };
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while e(hi) > target {
        hi *= 2.0;
        if hi > 1e6 {
            return Err(Error::invalid("epsilon", target, "reachable"));
        }
    }
    while hi - lo > tol {
        let mid = 0.5 * (lo + hi);
        if e(mid) > target {
            lo = mid
        } else {
            hi = mid
        }
    }
    Ok(hi)
}
