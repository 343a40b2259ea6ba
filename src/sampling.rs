//! Poisson sampling: each example joins a lot independently with probability q.
//!
//! This is the sampling the subsampled-Gaussian accountants assume (Mironov, Talwar, Zhang,
//! "Rényi Differential Privacy of the Sampled Gaussian Mechanism", 2019; Abadi et al. 2016 §3.1
//! "lots"): lot sizes vary (Binomial(N, q)) and a lot can be empty — an empty lot is still a
//! step, still noised, still accounted. Shuffling into fixed-size batches is *not* equivalent and
//! would make the reported ε wrong.
//!
//! An epoch is `round(1/q)` steps (so that each example is visited once in expectation; Opacus's
//! `int(1/q)` loses a step when 1/q is not an integer in floating point).
//!
//! Deterministic given a seed (the sampler's Philox stream is part of a checkpoint), or seeded
//! from the OS in secure mode ([`PoissonSampler::secure`]); the seed is never printed.

use crate::cpu::philox::Philox;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Subsequence of the sampler's Philox stream (distinct from every noise subsequence, which is
/// `step << 16 | tensor` with tensor < 2^16 - 1).
const SAMPLER_SUBSEQUENCE: u64 = u64::MAX;

/// A Poisson sampler over `n` examples with rate `q`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoissonSampler {
    n: usize,
    q: f64,
    threshold: u64,
    rng: Philox,
}

impl PoissonSampler {
    /// A sampler with a fixed seed (reproducible runs).
    pub fn new(n: usize, q: f64, seed: u64) -> Result<Self> {
        if n == 0 {
            return Err(Error::invalid("dataset_size", 0, ">= 1"));
        }
        if !(q > 0.0 && q <= 1.0) {
            return Err(Error::invalid("sample_rate", q, "in (0, 1]"));
        }
        // Include when a uniform 64-bit draw is below q·2^64 (q = 1 always includes).
        let threshold = if q >= 1.0 {
            u64::MAX
        } else {
            (q * 2f64.powi(64)) as u64
        };
        Ok(PoissonSampler {
            n,
            q,
            threshold,
            rng: Philox::new(seed, SAMPLER_SUBSEQUENCE),
        })
    }

    /// A sampler seeded from the operating system (secure mode).
    pub fn secure(n: usize, q: f64) -> Result<Self> {
        Self::new(n, q, crate::cpu::philox::os_seed()?)
    }

    /// The sampling rate q.
    pub fn sample_rate(&self) -> f64 {
        self.q
    }

    /// The dataset size N.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Always false (N ≥ 1).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Steps per epoch: `round(1/q)`.
    pub fn steps_per_epoch(&self) -> u64 {
        ((1.0 / self.q).round() as u64).max(1)
    }

    /// The next lot: the indices of the included examples, in increasing order, written to
    /// `out` (cleared first; no allocation once `out` has grown).
    pub fn sample_into(&mut self, out: &mut Vec<usize>) {
        out.clear();
        // One 64-bit draw per example, in order (drawn in bulk: the same stream).
        let mut u = [0u64; 512];
        for start in (0..self.n).step_by(u.len()) {
            let u = &mut u[..(self.n - start).min(512)];
            self.rng.fill_u64(u);
            for (j, &v) in u.iter().enumerate() {
                if v < self.threshold || self.threshold == u64::MAX {
                    out.push(start + j);
                }
            }
        }
    }
}
