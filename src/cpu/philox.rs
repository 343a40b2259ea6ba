//! Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3",
//! SC 2011), bit-for-bit the generator behind cuRAND's `curandStatePhilox4_32_10_t`.
//!
//! cuRAND's stream for `curand_init(seed, subsequence, offset)` is: key = (seed lo, seed hi);
//! the 128-bit counter (x, y, z, w) starts at (offset/4 lo, offset/4 hi, subsequence lo,
//! subsequence hi), and each counter value yields four 32-bit outputs
//! `philox4x32_10(counter, key)` in the order x, y, z, w. The CUDA kernels compute the same
//! blocks with cuRAND's `curand_Philox4x32_10`, so the CPU and GPU produce identical bits.

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

/// A sequential reader of one cuRAND Philox stream, for host-side sampling in seeded runs
/// (Poisson sampling, mechanisms; the samplers are [`crate::rng::RandomBits`]'s).
/// `Philox::new(seed, subsequence)` yields exactly what `curand(&state)` yields after
/// `curand_init(seed, subsequence, 0, &state)`.
///
/// Holds a key (the seed): `Debug` redacts it and it is not serialisable (checkpoint its
/// [`Philox::position`] and re-create it from the run's keys).
#[derive(Clone, PartialEq, Eq)]
pub struct Philox {
    seed: u64,
    subsequence: u64,
    /// Index of the next 32-bit output within the subsequence.
    position: u64,
    cache: Option<(u64, [u32; 4])>,
}

impl std::fmt::Debug for Philox {
    // The seed is secret in secure mode: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Philox")
            .field("seed", &"<redacted>")
            .field("subsequence", &self.subsequence)
            .field("position", &self.position)
            .finish()
    }
}

impl Philox {
    /// A stream positioned at the start of `subsequence` under `seed`.
    pub fn new(seed: u64, subsequence: u64) -> Self {
        Philox {
            seed,
            subsequence,
            position: 0,
            cache: None,
        }
    }

    /// The stream's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The stream's subsequence.
    pub fn subsequence(&self) -> u64 {
        self.subsequence
    }

    /// How many 32-bit outputs have been drawn.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Moves to an absolute position (in 32-bit outputs) within the subsequence.
    pub fn seek(&mut self, position: u64) {
        self.position = position;
    }

    /// The next 32 random bits.
    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        let b = self.position >> 2;
        let lane = (self.position & 3) as usize;
        let out = match self.cache {
            Some((cb, v)) if cb == b => v,
            _ => {
                let v = block(self.seed, self.subsequence, b);
                self.cache = Some((b, v));
                v
            }
        };
        self.position = self.position.wrapping_add(1);
        out[lane]
    }

    /// The next 64 random bits (two outputs, the first in the low half).
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let lo = self.next_u32() as u64;
        let hi = self.next_u32() as u64;
        lo | (hi << 32)
    }

    /// Fills `out` with what as many [`Philox::next_u64`] calls return, in order — eight
    /// blocks at a time, lane-parallel (they vectorise), once the stream is at a block
    /// boundary.
    pub fn fill_u64(&mut self, out: &mut [u64]) {
        let mut i = 0;
        while i < out.len() {
            if self.position & 3 == 0 && out.len() - i >= 16 {
                let b = blocks8(self.seed, self.subsequence, self.position >> 2);
                for (o, v) in out[i..i + 16].chunks_exact_mut(2).zip(b) {
                    o[0] = v[0] as u64 | (v[1] as u64) << 32;
                    o[1] = v[2] as u64 | (v[3] as u64) << 32;
                }
                self.position = self.position.wrapping_add(32);
                i += 16;
            } else {
                out[i] = self.next_u64();
                i += 1;
            }
        }
    }
}

/// 64 seed bits from the operating system's cryptographic random source (secure mode).
/// The seed is never logged.
pub fn os_seed() -> crate::Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| crate::Error::Entropy(e.to_string()))?;
    Ok(u64::from_le_bytes(b))
}
