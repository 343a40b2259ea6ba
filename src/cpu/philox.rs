//! Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3",
//! SC 2011), bit-for-bit the generator behind cuRAND's `curandStatePhilox4_32_10_t`.
//!
//! cuRAND's stream for `curand_init(seed, subsequence, offset)` is: key = (seed lo, seed hi);
//! the 128-bit counter (x, y, z, w) starts at (offset/4 lo, offset/4 hi, subsequence lo,
//! subsequence hi), and each counter value yields four 32-bit outputs
//! `philox4x32_10(counter, key)` in the order x, y, z, w. The CUDA kernels compute the same
//! blocks with cuRAND's `curand_Philox4x32_10`, so the CPU and GPU produce identical bits.

use super::stream::{Blocks, Reader};

/// Philox round constant added to key word 0 (cuRAND's `PHILOX_W32_0`).
pub const W32_0: u32 = 0x9E37_79B9;
/// Philox round constant added to key word 1 (cuRAND's `PHILOX_W32_1`).
pub const W32_1: u32 = 0xBB67_AE85;
/// Philox multiplier for counter word 0 (cuRAND's `PHILOX_M4x32_0`).
pub const M4X32_0: u32 = 0xD251_1F53;
/// Philox multiplier for counter word 2 (cuRAND's `PHILOX_M4x32_1`).
pub const M4X32_1: u32 = 0xCD9E_8D57;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = (a as u64) * (b as u64);
    ((p >> 32) as u32, p as u32)
}

#[inline(always)]
fn round(c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mulhilo(M4X32_0, c[0]);
    let (hi1, lo1) = mulhilo(M4X32_1, c[2]);
    [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
}

/// One Philox4x32-10 block: ten rounds of `counter` under `key`.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for _ in 0..9 {
        c = round(c, k);
        k[0] = k[0].wrapping_add(W32_0);
        k[1] = k[1].wrapping_add(W32_1);
    }
    round(c, k)
}

/// The Philox block at `block` (= offset / 4) of `subsequence` under `seed`, as cuRAND numbers it.
#[inline]
pub fn block(seed: u64, subsequence: u64, block: u64) -> [u32; 4] {
    philox4x32_10(
        [
            block as u32,
            (block >> 32) as u32,
            subsequence as u32,
            (subsequence >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// Blocks `first .. first + 8` of `subsequence` under `seed` ([`block`] eight times), computed
/// lane by lane so that the compiler vectorises the rounds.
#[allow(clippy::needless_range_loop)] // struct-of-arrays lanes, indexed on purpose
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
pub(crate) fn blocks8(seed: u64, subsequence: u64, first: u64) -> [[u32; 4]; 8] {
    let mut c = [[0u32; 8]; 4];
    for j in 0..8 {
        let b = first.wrapping_add(j as u64);
        c[0][j] = b as u32;
        c[1][j] = (b >> 32) as u32;
        c[2][j] = subsequence as u32;
        c[3][j] = (subsequence >> 32) as u32;
    }
    let (mut k0, mut k1) = (seed as u32, (seed >> 32) as u32);
    for r in 0..10 {
        for j in 0..8 {
            let p0 = M4X32_0 as u64 * c[0][j] as u64;
            let p1 = M4X32_1 as u64 * c[2][j] as u64;
            let n0 = (p1 >> 32) as u32 ^ c[1][j] ^ k0;
            let n2 = (p0 >> 32) as u32 ^ c[3][j] ^ k1;
            c[0][j] = n0;
            c[1][j] = p1 as u32;
            c[2][j] = n2;
            c[3][j] = p0 as u32;
        }
        if r < 9 {
            k0 = k0.wrapping_add(W32_0);
            k1 = k1.wrapping_add(W32_1);
        }
    }
    std::array::from_fn(|j| [c[0][j], c[1][j], c[2][j], c[3][j]])
}

/// One Philox stream's key material: the seed (cuRAND's key) and the subsequence. Its
/// `Debug` redacts the seed.
#[derive(Clone, PartialEq, Eq)]
pub struct PhiloxStream {
    seed: u64,
    subsequence: u64,
}

impl std::fmt::Debug for PhiloxStream {
    // The seed is secret in secure mode: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Philox")
            .field("seed", &"<redacted>")
            .field("subsequence", &self.subsequence)
            .finish()
    }
}

impl Blocks for PhiloxStream {
    const WORDS: usize = 4;

    fn block(&self, b: u64, out: &mut [u32]) {
        out[..4].copy_from_slice(&block(self.seed, self.subsequence, b));
    }

    fn fill(&self, first: u64, out: &mut [u32]) {
        for (k, c) in out.chunks_mut(32).enumerate() {
            let b = blocks8(self.seed, self.subsequence, first + 8 * k as u64);
            for (o, x) in c.chunks_mut(4).zip(b) {
                o.copy_from_slice(&x[..o.len()]);
            }
        }
    }
}

/// A sequential reader of one cuRAND Philox stream, for host-side sampling in seeded runs
/// (Poisson sampling, mechanisms; the samplers are [`crate::rng::RandomBits`]'s).
/// `Philox::new(seed, subsequence)` yields exactly what `curand(&state)` yields after
/// `curand_init(seed, subsequence, 0, &state)`.
///
/// Holds a key (the seed): `Debug` redacts it and it is not serialisable (checkpoint its
/// position and re-create it from the run's keys).
pub type Philox = Reader<PhiloxStream>;

impl Reader<PhiloxStream> {
    /// A stream positioned at the start of `subsequence` under `seed`.
    pub fn new(seed: u64, subsequence: u64) -> Self {
        Reader::from_blocks(PhiloxStream { seed, subsequence })
    }

    /// The stream's seed.
    pub fn seed(&self) -> u64 {
        self.src.seed
    }

    /// The stream's subsequence.
    pub fn subsequence(&self) -> u64 {
        self.src.subsequence
    }
}

/// 64 seed bits from the operating system's cryptographic random source (secure mode).
/// The seed is never logged.
pub fn os_seed() -> crate::Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| crate::Error::Entropy(e.to_string()))?;
    Ok(u64::from_le_bytes(b))
}
