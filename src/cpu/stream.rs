//! A sequential reader of a counter-based generator: the one implementation behind
//! [`Philox`](super::philox::Philox) (4-word blocks) and [`ChaCha20`](super::chacha::ChaCha20)
//! (16-word blocks), for host-side sampling (Poisson sampling, mechanisms, initialisation).
//!
//! Word `i` of a stream is word `i mod W` of block `⌊i/W⌋`; the reader keeps a position (in
//! 32-bit words) and the last block it computed, and draws long runs through the generator's
//! bulk path. 64-bit values take two consecutive words, the first in the low half.

/// A counter-based generator's blocks: the stream's key material and its block function.
pub trait Blocks: Clone {
    /// 32-bit words per block (4 or 16).
    const WORDS: usize;

    /// Block `b`, written to `out[..WORDS]`.
    fn block(&self, b: u64, out: &mut [u32]);

    /// Blocks `first ..` written to `out` (`out.len()` a multiple of 128 words); the same words
    /// as [`Blocks::block`], in bulk.
    fn fill(&self, first: u64, out: &mut [u32]);
}

/// The sequential reader of one stream of `B` (see the module docs).
#[derive(Clone)]
pub struct Reader<B: Blocks> {
    pub(crate) src: B,
    /// Index of the next 32-bit word within the stream.
    position: u64,
    /// The block in `cache` (u64::MAX: none).
    cached: u64,
    cache: [u32; 16],
}

impl<B: Blocks> Reader<B> {
    /// The stream of `src`, at its start.
    pub(crate) fn from_blocks(src: B) -> Self {
        Reader {
            src,
            position: 0,
            cached: u64::MAX,
            cache: [0; 16],
        }
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
        let w = B::WORDS as u64;
        let b = self.position / w;
        if self.cached != b {
            self.src.block(b, &mut self.cache[..B::WORDS]);
            self.cached = b;
        }
        let out = self.cache[(self.position % w) as usize];
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

    /// Fills `out` with what as many [`Reader::next_u64`] calls return, in order — through the
    /// generator's bulk path whenever the stream is at a block boundary.
    pub fn fill_u64(&mut self, out: &mut [u64]) {
        const BULK: usize = 1024;
        let w = B::WORDS as u64;
        let mut buf = [0u32; BULK];
        let mut i = 0;
        while i < out.len() {
            let words = (2 * (out.len() - i)).min(BULK) / 128 * 128;
            if self.position % w == 0 && words > 0 {
                self.src.fill(self.position / w, &mut buf[..words]);
                for (o, p) in out[i..i + words / 2].iter_mut().zip(buf.chunks_exact(2)) {
                    *o = p[0] as u64 | (p[1] as u64) << 32;
                }
                self.position = self.position.wrapping_add(words as u64);
                i += words / 2;
            } else {
                out[i] = self.next_u64();
                i += 1;
            }
        }
    }
}

impl<B: Blocks + std::fmt::Debug> std::fmt::Debug for Reader<B> {
    // `B`'s Debug redacts its key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("stream", &self.src)
            .field("position", &self.position)
            .finish()
    }
}
