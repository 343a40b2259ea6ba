//! Which random stream a noise draw uses.
//!
//! Noise comes from counter-based Philox4x32-10, the generator of cuRAND's
//! `curandStatePhilox4_32_10_t`. A [`NoiseKey`] is a (seed, subsequence) pair; element j of a
//! tensor takes 32-bit output j of the stream `curand_init(seed, subsequence, 0)`. Every
//! (step, tensor) pair gets its own subsequence ([`NoiseKey::for_step`]), so noise is never
//! reused: two draws with distinct (step, tensor) share no random bits.

use crate::{Error, Result};

/// Bits of the subsequence that number the tensor within a step.
pub const TENSOR_BITS: u32 = 16;
/// The largest step number [`NoiseKey::for_step`] accepts.
pub const MAX_STEP: u64 = (1u64 << (64 - TENSOR_BITS)) - 1;

/// A (seed, subsequence) pair naming one Philox stream.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct NoiseKey {
    /// The Philox key (cuRAND's seed).
    pub seed: u64,
    /// cuRAND's subsequence: `step << 16 | tensor` for keys made by [`NoiseKey::for_step`].
    pub subsequence: u64,
}

impl std::fmt::Debug for NoiseKey {
    // The seed is secret in secure mode: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseKey")
            .field("seed", &"<redacted>")
            .field("subsequence", &self.subsequence)
            .finish()
    }
}

impl NoiseKey {
    /// The stream for tensor `tensor` (< 65 536) at training step `step` (< 2^48).
    pub fn for_step(seed: u64, step: u64, tensor: u32) -> Result<Self> {
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
        Ok(NoiseKey {
            seed,
            subsequence: (step << TENSOR_BITS) | tensor as u64,
        })
    }

    /// A key with an explicit subsequence. The caller guarantees it is never reused.
    pub fn from_parts(seed: u64, subsequence: u64) -> Self {
        NoiseKey { seed, subsequence }
    }
}
