//! ChaCha20 (Bernstein 2008; the block function of RFC 8439 §2.3), the generator of secure mode:
//! a counter-based cryptographically secure pseudorandom generator — the reference twin of
//! `kernels/common.cuh`'s `chacha20_block`.
//!
//! A stream is named by a 256-bit key and a 64-bit stream id. Block `b` of stream `s` is the RFC
//! 8439 block function with
//!
//! ```text
//! key = the 256-bit key,   counter = b mod 2³²,   nonce = (b >> 32, s mod 2³², s >> 32)
//! ```
//!
//! i.e. state words 12..16 = (b lo, b hi, s lo, s hi): the 64-bit block counter and 64-bit
//! stream id of Bernstein's original layout (and of `rand_chacha`'s `set_word_pos`/`set_stream`),
//! written as an RFC 8439 counter + nonce. Each block yields sixteen 32-bit words, read in order;
//! 64-bit values take two consecutive words, the first in the low half.
//!
//! Security: with a uniformly random 256-bit key, the keystream is indistinguishable from
//! uniform bits to any efficient observer who does not hold the key (the standard PRF
//! assumption on ChaCha20; RFC 8439 §1). Philox4x32-10 ([`super::philox`]) has no such claim.

/// "expand 32-byte k": the constant words of the ChaCha state (RFC 8439 §2.3).
pub const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

#[inline(always)]
fn quarter(s: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    s[a] = s[a].wrapping_add(s[b]);
    s[d] = (s[d] ^ s[a]).rotate_left(16);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_left(12);
    s[a] = s[a].wrapping_add(s[b]);
    s[d] = (s[d] ^ s[a]).rotate_left(8);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_left(7);
}

/// The RFC 8439 ChaCha20 block function: 20 rounds over (constants, key, counter, nonce), plus
/// the input state. Checked against the RFC's test vectors.
pub fn rfc8439_block(key: &[u32; 8], counter: u32, nonce: [u32; 3]) -> [u32; 16] {
    let mut init = [0u32; 16];
    init[..4].copy_from_slice(&SIGMA);
    init[4..12].copy_from_slice(key);
    init[12] = counter;
    init[13..].copy_from_slice(&nonce);
    let mut s = init;
    for _ in 0..10 {
        quarter(&mut s, 0, 4, 8, 12);
        quarter(&mut s, 1, 5, 9, 13);
        quarter(&mut s, 2, 6, 10, 14);
        quarter(&mut s, 3, 7, 11, 15);
        quarter(&mut s, 0, 5, 10, 15);
        quarter(&mut s, 1, 6, 11, 12);
        quarter(&mut s, 2, 7, 8, 13);
        quarter(&mut s, 3, 4, 9, 14);
    }
    for (o, i) in s.iter_mut().zip(init) {
        *o = o.wrapping_add(i);
    }
    s
}

/// Block `block` of stream `stream` under `key` (see the module docs for the layout).
#[inline]
pub fn block(key: &[u32; 8], stream: u64, block: u64) -> [u32; 16] {
    rfc8439_block(
        key,
        block as u32,
        [(block >> 32) as u32, stream as u32, (stream >> 32) as u32],
    )
}

/// Blocks `first .. first + 8` of `stream` ([`block`] eight times), computed lane by lane
/// (struct of arrays) so that the rounds vectorise.
#[allow(clippy::needless_range_loop)] // lanes indexed on purpose
pub fn blocks8(key: &[u32; 8], stream: u64, first: u64) -> [[u32; 16]; 8] {
    let mut x = [[0u32; 8]; 16];
    for j in 0..8 {
        let b = first.wrapping_add(j as u64);
        for w in 0..4 {
            x[w][j] = SIGMA[w];
        }
        for w in 0..8 {
            x[4 + w][j] = key[w];
        }
        x[12][j] = b as u32;
        x[13][j] = (b >> 32) as u32;
        x[14][j] = stream as u32;
        x[15][j] = (stream >> 32) as u32;
    }
    let init = x;
    macro_rules! qr {
        ($a:expr, $b:expr, $c:expr, $d:expr) => {
            for j in 0..8 {
                x[$a][j] = x[$a][j].wrapping_add(x[$b][j]);
                x[$d][j] = (x[$d][j] ^ x[$a][j]).rotate_left(16);
                x[$c][j] = x[$c][j].wrapping_add(x[$d][j]);
                x[$b][j] = (x[$b][j] ^ x[$c][j]).rotate_left(12);
                x[$a][j] = x[$a][j].wrapping_add(x[$b][j]);
                x[$d][j] = (x[$d][j] ^ x[$a][j]).rotate_left(8);
                x[$c][j] = x[$c][j].wrapping_add(x[$d][j]);
                x[$b][j] = (x[$b][j] ^ x[$c][j]).rotate_left(7);
            }
        };
    }
    for _ in 0..10 {
        qr!(0, 4, 8, 12);
        qr!(1, 5, 9, 13);
        qr!(2, 6, 10, 14);
        qr!(3, 7, 11, 15);
        qr!(0, 5, 10, 15);
        qr!(1, 6, 11, 12);
        qr!(2, 7, 8, 13);
        qr!(3, 4, 9, 14);
    }
    std::array::from_fn(|j| std::array::from_fn(|w| x[w][j].wrapping_add(init[w][j])))
}

/// A sequential reader of one ChaCha20 stream (secure-mode Poisson sampling and mechanisms).
/// Holds a secret key: `Debug` redacts it, and it is neither serialised nor cloned implicitly
/// into outputs.
#[derive(Clone)]
pub struct ChaCha20 {
    key: [u32; 8],
    stream: u64,
    /// Index of the next 32-bit word within the stream.
    position: u64,
    cache: Option<(u64, [u32; 16])>,
}

impl std::fmt::Debug for ChaCha20 {
    // The key is secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaCha20")
            .field("key", &"<redacted>")
            .field("stream", &self.stream)
            .field("position", &self.position)
            .finish()
    }
}

impl ChaCha20 {
    /// The stream `stream` under `key`, at its start.
    pub fn new(key: [u32; 8], stream: u64) -> Self {
        ChaCha20 {
            key,
            stream,
            position: 0,
            cache: None,
        }
    }

    /// The key (crate-internal: tests that no output holds it).
    #[cfg(test)]
    pub(crate) fn key(&self) -> &[u32; 8] {
        &self.key
    }

    /// How many 32-bit words have been drawn.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Moves to an absolute position (in 32-bit words) within the stream.
    pub fn seek(&mut self, position: u64) {
        self.position = position;
    }

    /// The next 32 random bits.
    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        let b = self.position >> 4;
        let lane = (self.position & 15) as usize;
        let out = match &self.cache {
            Some((cb, v)) if *cb == b => v[lane],
            _ => {
                let v = block(&self.key, self.stream, b);
                let o = v[lane];
                self.cache = Some((b, v));
                o
            }
        };
        self.position = self.position.wrapping_add(1);
        out
    }

    /// The next 64 random bits (two words, the first in the low half).
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let lo = self.next_u32() as u64;
        let hi = self.next_u32() as u64;
        lo | (hi << 32)
    }

    /// Fills `out` with what as many [`ChaCha20::next_u64`] calls return, eight blocks at a
    /// time once the stream is at a block boundary.
    pub fn fill_u64(&mut self, out: &mut [u64]) {
        let mut i = 0;
        while i < out.len() {
            if self.position & 15 == 0 && out.len() - i >= 64 {
                let bs = blocks8(&self.key, self.stream, self.position >> 4);
                for (o, v) in out[i..i + 64].chunks_exact_mut(8).zip(bs) {
                    for (k, ok) in o.iter_mut().enumerate() {
                        *ok = v[2 * k] as u64 | (v[2 * k + 1] as u64) << 32;
                    }
                }
                self.position = self.position.wrapping_add(128);
                i += 64;
            } else {
                out[i] = self.next_u64();
                i += 1;
            }
        }
    }
}
