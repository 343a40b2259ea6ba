//! Where every random bit comes from: generators, per-purpose keys, and sequential readers.
//!
//! # Two modes
//! - **Secure mode** ([`RunKeys::secure`]): a 256-bit master key from the operating system's
//!   cryptographic source; every stream is **ChaCha20** ([`crate::cpu::chacha`], RFC 8439's
//!   block function, on the CPU and in the CUDA kernels, bit for bit). Nothing about the key is
//!   printed, formatted, serialised or saved; a resumed run draws a new master key.
//! - **Seeded mode** ([`RunKeys::seeded`]): a 64-bit seed, reproducible runs (tests,
//!   experiments); streams are **Philox4x32-10** (fast, statistically strong, not
//!   cryptographic). A seeded run's privacy guarantee assumes the seed is secret and the
//!   generator's output is indistinguishable from random: use secure mode for releases.
//!
//! # One key per purpose
//! Model initialisation, Poisson sampling, gradient noise, audits and anything else each get a
//! key of their own, derived from the master key by a keyed PRF with a distinct label
//! ([`Purpose`]): `key(purpose) = ChaCha20-block(master, counter 0, nonce = (label, "dpsg",
//! "kdf1"))[0..8]` — ChaCha20 used as a PRF keyed by the master key (RFC 8439 §2.3; the same
//! construction as RFC 8439 §2.6's Poly1305 key generation). Distinct labels give
//! independent-looking keys, so no two purposes can share a stream whatever stream ids they use
//! (the initial weights, which are released, say nothing about the noise). Within a purpose the
//! stream ids are allocated as documented on each user (noise: `step << 16 | tensor`; sampler:
//! stream 0 with a running position).

use crate::cpu::chacha::{self, ChaCha20};
use crate::cpu::philox::Philox;
use crate::cpu::stream::{Blocks, Reader};
use crate::{Error, Result};

/// Which generator a stream uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Generator {
    /// Philox4x32-10 (cuRAND's `curandStatePhilox4_32_10_t`): seeded, reproducible runs.
    Philox,
    /// ChaCha20 (RFC 8439 block function): secure mode.
    ChaCha20,
}

/// What a stream is for. Each purpose has its own derived key ([`RunKeys::key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Purpose {
    /// The model's initial weights (released with the model: must not reveal anything else).
    ModelInit = 1,
    /// Poisson sampling of the lots (which examples a step used: secret).
    Sampling = 2,
    /// The Gaussian noise of the noisy gradient (secret).
    GradientNoise = 3,
    /// Privacy audits: canary choice, inclusion bits, canary sampling.
    Audit = 4,
    /// Data augmentation.
    Augmentation = 5,
    /// Mechanisms run on behalf of the trainer (e.g. noisy statistics).
    Mechanism = 6,
    /// Training-data order or shuffles that are not privacy-relevant (non-private runs).
    Shuffle = 7,
    /// Synthetic data drawn by simulations and teaching examples (the "private" database of a
    /// toy run; never the mechanisms' noise, which uses [`Purpose::Mechanism`]).
    SyntheticData = 8,
    /// Dropout masks ([`crate::cpu::dropout`]; stream `step << 16 | layer`).
    Dropout = 9,
    /// The per-row Gaussian noise of GS-WGAN's sanitised generator gradient
    /// ([`crate::ops::sanitize_rows`]; stream `iteration << 16`; secret).
    GeneratorGradientNoise = 10,
    /// GS-WGAN's per-row discriminator draws (which partition each generated row's gradient
    /// came from; secret — the accountant's subsampling amplification needs it hidden).
    DiscriminatorChoice = 11,
    /// Latent vectors z fed to a generative model's generator (public randomness: a GAN's
    /// fake examples and its fixed sample grid; stream = the step, see
    /// `examples/dp_dcgan/dcgan.rs`).
    Latent = 12,
    /// The Gaussian noise of the private per-channel feature statistics
    /// ([`crate::mechanisms::feature_stats`]; stream 0: the channel means' sum, stream 1: the
    /// channel mean squares' sum; secret).
    FeatureStats = 13,
    /// The fixed augmented views of the scattering-feature cache
    /// ([`crate::data::scatter::ViewSpec`]; stream = the image's index). **Public**
    /// randomness: derived from a fixed view seed, not the run's key, so that one cache serves
    /// every run; it chooses only which views exist, not which examples are used.
    AugmentationViews = 14,
}

impl Purpose {
    /// Every purpose (tests check that their keys are pairwise distinct).
    pub const ALL: [Purpose; 14] = [
        Purpose::ModelInit,
        Purpose::Sampling,
        Purpose::GradientNoise,
        Purpose::Audit,
        Purpose::Augmentation,
        Purpose::Mechanism,
        Purpose::Shuffle,
        Purpose::SyntheticData,
        Purpose::Dropout,
        Purpose::GeneratorGradientNoise,
        Purpose::DiscriminatorChoice,
        Purpose::Latent,
        Purpose::FeatureStats,
        Purpose::AugmentationViews,
    ];
}

/// "dpsg", "kdf1": the fixed nonce words of the key derivation.
const KDF_NONCE: [u32; 2] = [0x6773_7064, 0x3166_646b];

/// The key of one purpose's streams: a generator and 256 key bits (Philox uses the first 64).
/// Secret: `Debug` redacts it; it is not serialisable.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StreamKey {
    generator: Generator,
    key: [u32; 8],
}

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamKey")
            .field("generator", &self.generator)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl StreamKey {
    /// A Philox key from a 64-bit seed (Philox's key is the seed, as cuRAND's).
    pub fn philox(seed: u64) -> Self {
        StreamKey {
            generator: Generator::Philox,
            key: [seed as u32, (seed >> 32) as u32, 0, 0, 0, 0, 0, 0],
        }
    }

    /// A ChaCha20 key.
    pub fn chacha20(key: [u32; 8]) -> Self {
        StreamKey {
            generator: Generator::ChaCha20,
            key,
        }
    }

    /// The generator.
    pub fn generator(&self) -> Generator {
        self.generator
    }

    /// The raw key words (crate-internal: for the kernels and tests of redaction).
    pub(crate) fn words(&self) -> &[u32; 8] {
        &self.key
    }

    /// Philox's 64-bit key (the first two words).
    pub(crate) fn philox_seed(&self) -> u64 {
        self.key[0] as u64 | (self.key[1] as u64) << 32
    }

    /// A sequential reader of stream `stream` under this key.
    pub fn rng(&self, stream: u64) -> Rng {
        match self.generator {
            Generator::Philox => Rng::Philox(Philox::new(self.philox_seed(), stream)),
            Generator::ChaCha20 => Rng::ChaCha20(ChaCha20::new(self.key, stream)),
        }
    }

    /// A 64-bit value derived from this key (for APIs that take a `u64` seed, such as model
    /// initialisation): the first 64 bits of stream `u64::MAX`, which no other user of a key
    /// reads.
    pub fn derive_u64(&self) -> u64 {
        self.rng(u64::MAX).next_u64()
    }
}

/// The master key of a run and the per-purpose keys derived from it. Secret: `Debug` redacts
/// it; it is not serialisable; a seeded run's seed is the only thing a checkpoint keeps.
///
/// ```
/// use dpsgd::rng::{Purpose, RandomBits, RunKeys};
/// let keys = RunKeys::seeded(42); // reproducible (Philox); RunKeys::secure()? for ChaCha20
/// let mut init = keys.key(Purpose::ModelInit).rng(0);
/// let mut noise = keys.key(Purpose::GradientNoise).rng(0);
/// assert_ne!(init.next_u64(), noise.next_u64()); // one key per purpose: never the same stream
/// assert!(!format!("{keys:?}").contains("42"));  // Debug redacts the key
/// ```
#[derive(Clone)]
pub struct RunKeys {
    generator: Generator,
    master: [u32; 8],
    seed: Option<u64>,
}

impl std::fmt::Debug for RunKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunKeys")
            .field("generator", &self.generator)
            .field("master", &"<redacted>")
            .finish()
    }
}

impl RunKeys {
    /// Secure mode: a 256-bit master key from the operating system; ChaCha20 streams.
    pub fn secure() -> Result<Self> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| Error::Entropy(e.to_string()))?;
        let master = std::array::from_fn(|i| {
            u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
        });
        Ok(RunKeys {
            generator: Generator::ChaCha20,
            master,
            seed: None,
        })
    }

    /// Seeded mode: reproducible Philox streams from a 64-bit seed.
    pub fn seeded(seed: u64) -> Self {
        RunKeys {
            generator: Generator::Philox,
            master: [seed as u32, (seed >> 32) as u32, 0, 0, 0, 0, 0, 0],
            seed: Some(seed),
        }
    }

    /// `seeded(s)` for `Some(s)`, [`RunKeys::secure`] for `None`.
    pub fn from_seed(seed: Option<u64>) -> Result<Self> {
        match seed {
            Some(s) => Ok(Self::seeded(s)),
            None => Self::secure(),
        }
    }

    /// Whether this is secure mode (OS key, ChaCha20).
    pub fn is_secure(&self) -> bool {
        self.generator == Generator::ChaCha20
    }

    /// The seed of a seeded run (`None` in secure mode).
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// The generator of every stream of this run.
    pub fn generator(&self) -> Generator {
        self.generator
    }

    /// The key of `purpose`'s streams: ChaCha20 as a PRF under the master key, with the
    /// purpose's label as the nonce (module docs).
    pub fn key(&self, purpose: Purpose) -> StreamKey {
        let w = chacha::rfc8439_block(
            &self.master,
            0,
            [purpose as u32, KDF_NONCE[0], KDF_NONCE[1]],
        );
        let key: [u32; 8] = std::array::from_fn(|i| w[i]);
        match self.generator {
            Generator::ChaCha20 => StreamKey::chacha20(key),
            Generator::Philox => StreamKey {
                generator: Generator::Philox,
                key: [key[0], key[1], 0, 0, 0, 0, 0, 0],
            },
        }
    }
}

/// A source of uniform random bits, and the samplers every mechanism builds on.
///
/// Implemented by the sequential readers ([`Philox`], [`ChaCha20`]: [`Reader`]) and [`Rng`].
pub trait RandomBits {
    /// The next 32 random bits.
    fn next_u32(&mut self) -> u32;

    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64;

    /// A uniform double in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform double in (0, 1): never 0, never 1 (safe for logarithms).
    fn next_f64_open(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `0..n` without modulo bias (rejection sampling); 0 when `n` is 0.
    fn next_below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let zone = u64::MAX - (u64::MAX - n + 1) % n;
        loop {
            let x = self.next_u64();
            if x <= zone {
                return x % n;
            }
        }
    }

    /// A standard normal double: Box–Muller on 128 random bits
    /// ([`crate::cpu::noise::box_muller64`]): the radius's uniform resolves 2⁻⁷⁶, so |z| is cut
    /// only beyond 10.26 (probability 2⁻⁷⁶ ≈ 1.3·10⁻²³ per pair; the second value of the pair
    /// is discarded here).
    fn next_normal_f64(&mut self) -> f64 {
        let w0 = self.next_u64();
        let w1 = self.next_u64();
        crate::cpu::noise::box_muller64(w0, w1).0
    }

    /// A standard Laplace double from 128 random bits ([`crate::cpu::noise::laplace64`]):
    /// |z| is cut only beyond 81 (probability < 2⁻¹¹⁶).
    fn next_laplace_f64(&mut self) -> f64 {
        let w0 = self.next_u64();
        let w1 = self.next_u64();
        crate::cpu::noise::laplace64(w0, w1)
    }
}

impl<B: Blocks> RandomBits for Reader<B> {
    fn next_u32(&mut self) -> u32 {
        Reader::next_u32(self)
    }
    fn next_u64(&mut self) -> u64 {
        Reader::next_u64(self)
    }
}

/// A sequential reader of one stream of either generator.
#[derive(Clone, Debug)]
pub enum Rng {
    /// A Philox stream (seeded mode).
    Philox(Philox),
    /// A ChaCha20 stream (secure mode).
    ChaCha20(ChaCha20),
}

impl Rng {
    /// The generator.
    pub fn generator(&self) -> Generator {
        match self {
            Rng::Philox(_) => Generator::Philox,
            Rng::ChaCha20(_) => Generator::ChaCha20,
        }
    }

    /// How many 32-bit words have been drawn.
    pub fn position(&self) -> u64 {
        match self {
            Rng::Philox(r) => r.position(),
            Rng::ChaCha20(r) => r.position(),
        }
    }

    /// The key's words (tests that no output holds them; Philox: the seed in words 0, 1).
    #[cfg(test)]
    pub(crate) fn key_words(&self) -> [u32; 8] {
        match self {
            Rng::Philox(r) => [r.seed() as u32, (r.seed() >> 32) as u32, 0, 0, 0, 0, 0, 0],
            Rng::ChaCha20(r) => *r.key(),
        }
    }

    /// Moves to an absolute position (in 32-bit words).
    pub fn seek(&mut self, position: u64) {
        match self {
            Rng::Philox(r) => r.seek(position),
            Rng::ChaCha20(r) => r.seek(position),
        }
    }

    /// Fills `out` with what as many `next_u64` calls return (in bulk).
    pub fn fill_u64(&mut self, out: &mut [u64]) {
        match self {
            Rng::Philox(r) => r.fill_u64(out),
            Rng::ChaCha20(r) => r.fill_u64(out),
        }
    }
}

impl RandomBits for Rng {
    fn next_u32(&mut self) -> u32 {
        match self {
            Rng::Philox(r) => r.next_u32(),
            Rng::ChaCha20(r) => r.next_u32(),
        }
    }
    fn next_u64(&mut self) -> u64 {
        match self {
            Rng::Philox(r) => r.next_u64(),
            Rng::ChaCha20(r) => r.next_u64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key-holding type formats without its key words (decimal or hex) in secure and
    /// seeded mode.
    #[test]
    fn debug_of_every_key_holder_is_redacted() {
        for keys in [
            RunKeys::secure().unwrap(),
            RunKeys::seeded(0x0123_4567_89ab_cdef),
        ] {
            let mut secrets: Vec<u32> = keys.master.to_vec();
            let mut shown = vec![format!("{keys:?}")];
            for p in Purpose::ALL {
                let k = keys.key(p);
                secrets.extend(k.words().iter().copied().filter(|&w| w != 0));
                shown.push(format!("{k:?}"));
                shown.push(format!("{:?}", k.rng(3)));
                shown.push(format!("{:?}", crate::NoiseKey::new(k, 3)));
            }
            if let Some(s) = keys.seed() {
                shown.push(format!("{:?}", crate::cpu::philox::Philox::new(s, 0)));
            }
            for text in &shown {
                for w in secrets.iter().filter(|&&w| w > 0xffff) {
                    assert!(!text.contains(&w.to_string()), "{text} shows {w}");
                    assert!(
                        !text.to_lowercase().contains(&format!("{w:08x}")),
                        "{text} shows {w:x}"
                    );
                }
                if let Some(s) = keys.seed() {
                    assert!(!text.contains(&s.to_string()), "{text}");
                }
            }
        }
    }
}
