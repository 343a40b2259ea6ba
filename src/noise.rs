//! Which random stream a noise draw uses, and how far the noise samplers are from ideal.
//!
//! A [`NoiseKey`] names one stream: a generator ([`Generator::Philox`] in seeded runs,
//! [`Generator::ChaCha20`] in secure mode), its key, and a 64-bit stream id. Every
//! (step, tensor) pair gets its own stream id ([`NoiseKey::for_step_with`]), under the key of
//! [`Purpose::GradientNoise`](crate::rng::Purpose) that no other purpose uses, so noise is never
//! reused: two draws with distinct (step, tensor) share no random bits, and nothing else (model
//! initialisation, sampling) reads the noise's streams.
//!
//! # The samplers (CPU [`crate::cpu::noise`], GPU `kernels/common.cuh`, bit-identical inputs)
//! - Gaussian, seeded mode: element pair (2k, 2k+1) takes Philox block k (128 bits) through
//!   [`box_muller64`](crate::cpu::noise::box_muller64) in f64, each value rounded once to f32.
//! - Gaussian, secure mode: element pair (2k, 2k+1) takes ChaCha20 block k (512 bits = four
//!   Box–Muller pairs) and outputs (z₁+z₂+z₃+z₄)/2 per element — the sum of four normals that
//!   Opacus uses in secure mode (Holohan & Braghin, "Secure Random Sampling in Differential
//!   Privacy", ESORICS 2021: a sum of independent floating-point normals no longer lies on the
//!   lattice that single Box–Muller outputs lie on, which defeats their and Mironov's
//!   floating-point attacks).
//! - Laplace: element k takes 128 bits (Philox block k, or words 4k' .. of ChaCha20 block k/4)
//!   through [`laplace64`](crate::cpu::noise::laplace64).
//!
//! # Truncation (what the accountant cannot see)
//! A Box–Muller pair's radius comes from a uniform resolved to 2⁻⁷⁶, so its radius is at most
//! √(2·76·ln 2) ≈ 10.26: the sampler never produces the ideal pair's values beyond that, an
//! event of probability exactly 2⁻⁷⁶ ≈ 1.32·10⁻²³ per pair under the ideal Gaussian. Coupling
//! the sampler with an ideal one, the run's output differs from the ideal run's with
//! probability at most η = Σ_steps (pairs per step)·2⁻⁷⁶ ([`gaussian_truncation_mass`]), and an
//! (ε, δ)-DP ideal run is then (ε, δ + (1 + e^ε)·η)-DP as run (for any event S,
//! P[M(D) ∈ S] ≤ P[M*(D) ∈ S] + η ≤ e^ε P[M*(D') ∈ S] + δ + η ≤ e^ε P[M(D') ∈ S] + δ +
//! (1 + e^ε)η). The engine charges that term: it reports ε at δ − (1 + e^ε)·η
//! ([`crate::engine::PrivacyEngine::epsilon`]). For the main job (P = 26 010, 9 360 steps)
//! η ≈ 1.6·10⁻¹⁵. Laplace's magnitude is cut only beyond 116·ln 2 ≈ 80 (probability < 2⁻¹¹⁶
//! per element), below 10⁻¹⁵ per step for any tensor that fits in memory.
//!
//! What no analysis here covers: the floating-point rounding of the noise itself (values lie
//! on f64 and then f32 grids, not on the reals). The fine resolution above and, in secure mode,
//! the sum of four normals are the mitigations the literature offers; OpenDP-style exact
//! discrete samplers are in [`crate::mechanisms`] for query releases. See `docs/privacy.md`.

use crate::rng::{Generator, StreamKey};
use crate::{Error, Result};

/// Bits of the stream id that number the tensor within a step.
pub const TENSOR_BITS: u32 = 16;
/// The largest step number [`NoiseKey::for_step`] accepts.
pub const MAX_STEP: u64 = (1u64 << (64 - TENSOR_BITS)) - 1;

/// Per Box–Muller pair, the probability under the ideal Gaussian of the radii the sampler
/// never produces: 2⁻⁷⁶.
pub const GAUSSIAN_PAIR_TAIL: f64 = 1.0 / (1u128 << 76) as f64;

/// One noise stream: generator, key and stream id. Holds a secret key: `Debug` redacts it, and
/// it is not serialisable.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NoiseKey {
    key: StreamKey,
    stream: u64,
}

impl std::fmt::Debug for NoiseKey {
    // The key is secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseKey")
            .field("generator", &self.key.generator())
            .field("key", &"<redacted>")
            .field("stream", &self.stream)
            .finish()
    }
}

fn step_stream(step: u64, tensor: u32) -> Result<u64> {
    if step > MAX_STEP {
        return Err(Error::invalid("step", step, format!("<= {MAX_STEP}")));
    }
    if tensor >= (1 << TENSOR_BITS) {
        return Err(Error::invalid(
            "tensor",
            tensor,
            format!("< {}", 1u32 << TENSOR_BITS),
        ));
    }
    Ok((step << TENSOR_BITS) | tensor as u64)
}

impl NoiseKey {
    /// The stream for tensor `tensor` (< 65 536) at training step `step` (< 2^48) under `key`
    /// (the run's [`Purpose::GradientNoise`](crate::rng::Purpose) key): stream id
    /// `step << 16 | tensor`.
    pub fn for_step_with(key: StreamKey, step: u64, tensor: u32) -> Result<Self> {
        Ok(NoiseKey {
            key,
            stream: step_stream(step, tensor)?,
        })
    }

    /// [`NoiseKey::for_step_with`] under the Philox key `seed` (seeded experiments and tests;
    /// a trainer uses its run's derived noise key).
    pub fn for_step(seed: u64, step: u64, tensor: u32) -> Result<Self> {
        Self::for_step_with(StreamKey::philox(seed), step, tensor)
    }

    /// The Philox stream `curand_init(seed, subsequence, ·)`. The caller guarantees it is
    /// never reused.
    pub fn from_parts(seed: u64, subsequence: u64) -> Self {
        NoiseKey {
            key: StreamKey::philox(seed),
            stream: subsequence,
        }
    }

    /// Stream `stream` under `key`. The caller guarantees it is never reused.
    pub fn new(key: StreamKey, stream: u64) -> Self {
        NoiseKey { key, stream }
    }

    /// The generator.
    pub fn generator(&self) -> Generator {
        self.key.generator()
    }

    /// The stream id (Philox: cuRAND's subsequence).
    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// The stream's key.
    pub fn stream_key(&self) -> StreamKey {
        self.key
    }

    /// The key words (Philox: words 0 and 1 are the seed).
    pub(crate) fn words(&self) -> &[u32; 8] {
        self.key.words()
    }

    /// Philox's seed (words 0 and 1).
    pub(crate) fn philox_seed(&self) -> u64 {
        self.key.philox_seed()
    }
}

/// Box–Muller pairs drawn for `n` Gaussian elements by `generator`'s sampler: ⌈n/2⌉ with
/// Philox, 4·⌈n/2⌉ with ChaCha20 (four normals summed per element).
pub fn gaussian_pairs(n: u64, generator: Generator) -> u64 {
    let pairs = n.div_ceil(2);
    match generator {
        Generator::Philox => pairs,
        Generator::ChaCha20 => 4 * pairs,
    }
}

/// The probability under the ideal Gaussian of the values a draw of `n` elements can never
/// produce (module docs): `gaussian_pairs(n)·2⁻⁷⁶`. A bound on the total-variation distance
/// between the sampler's and the ideal noise of one step.
pub fn gaussian_truncation_mass(n: u64, generator: Generator) -> f64 {
    gaussian_pairs(n, generator) as f64 * GAUSSIAN_PAIR_TAIL
}
