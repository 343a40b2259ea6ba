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
//! The inclusion bits are secret (which examples a step used). In secure mode they come from
//! ChaCha20 under the run's [`Purpose::Sampling`] key (OS-seeded, never printed or saved; a
//! resumed secure run draws a fresh key); in seeded runs from Philox, reproducibly. Either way
//! the sampler reads stream 0 of a key that no other purpose uses ([`crate::rng`]), so its bits
//! are never reused as noise or initial weights. Only the stream position is checkpointed
//! ([`PoissonSampler::position`]); the key is re-derived (seeded) or fresh (secure).

use crate::rng::{Purpose, Rng, RunKeys, StreamKey};
use crate::{Error, Result};

/// A Poisson sampler over `n` examples with rate `q`. Holds a secret key: its `Debug` shows
/// no key, and it is not serialisable (checkpoint [`PoissonSampler::position`] instead).
///
/// ```
/// use dpsgd::rng::{Purpose, RunKeys};
/// use dpsgd::sampling::PoissonSampler;
/// let keys = RunKeys::seeded(1); // RunKeys::secure()? for a private run
/// let mut sampler = PoissonSampler::with_key(60_000, 256.0 / 60_000.0, keys.key(Purpose::Sampling))?;
/// let mut lot = Vec::new();
/// sampler.sample_into(&mut lot); // each example in with probability q, independently
/// assert!(lot.len() > 150 && lot.len() < 370 && lot.iter().all(|&i| i < 60_000));
/// # Ok::<(), dpsgd::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct PoissonSampler {
    n: usize,
    q: f64,
    threshold: u64,
    rng: Rng,
}

impl PoissonSampler {
    /// A sampler reading stream 0 of `key` (a run's [`Purpose::Sampling`] key).
    pub fn with_key(n: usize, q: f64, key: StreamKey) -> Result<Self> {
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
            rng: key.rng(0),
        })
    }

    /// A sampler with a fixed seed (reproducible runs): the [`Purpose::Sampling`] key of
    /// [`RunKeys::seeded`]`(seed)`.
    pub fn new(n: usize, q: f64, seed: u64) -> Result<Self> {
        Self::with_key(n, q, RunKeys::seeded(seed).key(Purpose::Sampling))
    }

    /// A sampler keyed from the operating system (secure mode: ChaCha20).
    pub fn secure(n: usize, q: f64) -> Result<Self> {
        Self::with_key(n, q, RunKeys::secure()?.key(Purpose::Sampling))
    }

    /// The key's words (tests that no output holds them).
    #[cfg(test)]
    pub(crate) fn key_words(&self) -> [u32; 8] {
        self.rng.key_words()
    }

    /// The stream position (32-bit words drawn): what a checkpoint keeps.
    pub fn position(&self) -> u64 {
        self.rng.position()
    }

    /// Continues at a checkpointed position (of the same key's stream).
    pub fn seek(&mut self, position: u64) {
        self.rng.seek(position);
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
    /// `out` (cleared first).
    pub fn sample_into(&mut self, out: &mut Vec<usize>) {
        use rayon::prelude::*;
        out.clear();
        // One 64-bit draw per example, in order: example i takes the stream's 64-bit value
        // i (words 2i, 2i + 1 from the lot's start). Chunks of examples are drawn in parallel,
        // each from its own position of the same stream, so the result does not depend on the
        // thread count.
        const CHUNK: usize = 8192;
        let start_pos = self.rng.position();
        let (threshold, rng) = (self.threshold, &self.rng);
        let parts: Vec<Vec<usize>> = (0..self.n.div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| {
                let start = c * CHUNK;
                let len = (self.n - start).min(CHUNK);
                let mut r = rng.clone();
                r.seek(start_pos.wrapping_add(2 * start as u64));
                let mut u = vec![0u64; len];
                r.fill_u64(&mut u);
                u.iter()
                    .enumerate()
                    .filter(|&(_, &v)| v < threshold || threshold == u64::MAX)
                    .map(|(j, _)| start + j)
                    .collect()
            })
            .collect();
        for p in parts {
            out.extend(p);
        }
        self.rng.seek(start_pos.wrapping_add(2 * self.n as u64));
    }
}
