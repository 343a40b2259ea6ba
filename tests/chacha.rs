//! ChaCha20 (secure mode's generator): RFC 8439's test vectors, agreement with an independent
//! implementation (`rand_chacha`, Bernstein's 64-bit-counter layout), the vectorised eight-block
//! path, the sequential reader, and GPU vs CPU bit for bit.

mod common;

use dpsgd::cpu::chacha::{self, ChaCha20};
use dpsgd::rng::{Purpose, RunKeys, StreamKey};
use dpsgd::{ops, Buffer, NoiseKey};
use rand_chacha::rand_core::{RngCore, SeedableRng};

fn le_words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// RFC 8439 §2.3.2: key 00..1f, nonce 00:00:00:09:00:00:00:4a:00:00:00:00, counter 1.
#[test]
fn rfc8439_block_function_vector() {
    let key: [u32; 8] = le_words(&(0u8..32).collect::<Vec<_>>()).try_into().unwrap();
    let nonce = [0x0900_0000, 0x4a00_0000, 0];
    let out = chacha::rfc8439_block(&key, 1, nonce);
    let want = [
        0xe4e7_f110,
        0x1559_3bd1,
        0x1fdd_0f50,
        0xc471_20a3,
        0xc7f4_d1c7,
        0x0368_c033,
        0x9aaa_2204,
        0x4e6c_d4c3,
        0x4664_82d2,
        0x09aa_9f07,
        0x05d7_c214,
        0xa202_8bd9,
        0xd19c_12b5,
        0xb94e_16de,
        0xe883_d0cb,
        0x4e3c_50a2,
    ];
    assert_eq!(out, want);
}

/// RFC 8439 Appendix A.1, test vector #1: all-zero key, nonce and counter.
#[test]
fn rfc8439_appendix_a1_zero_key() {
    let out = chacha::rfc8439_block(&[0; 8], 0, [0; 3]);
    let want = le_words(&[
        0x76, 0xb8, 0xe0, 0xad, 0xa0, 0xf1, 0x3d, 0x90, 0x40, 0x5d, 0x6a, 0xe5, 0x53, 0x86, 0xbd,
        0x28, 0xbd, 0xd2, 0x19, 0xb8, 0xa0, 0x8d, 0xed, 0x1a, 0xa8, 0x36, 0xef, 0xcc, 0x8b, 0x77,
        0x0d, 0xc7,
    ]);
    assert_eq!(&out[..8], &want[..]);
}

/// Our (key, stream, block) layout is Bernstein's 64-bit counter + 64-bit stream, which is what
/// `rand_chacha` implements: the same words from any position of any stream.
#[test]
fn matches_rand_chacha() {
    let seed: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let key: [u32; 8] = le_words(&seed).try_into().unwrap();
    for (stream, block) in [
        (0u64, 0u64),
        (7, 3),
        (u64::MAX, (1 << 32) + 5),
        (1 << 40, 1 << 33),
    ] {
        let mut r = rand_chacha::ChaCha20Rng::from_seed(seed);
        r.set_stream(stream);
        r.set_word_pos(16 * block as u128);
        let want: Vec<u32> = (0..48).map(|_| r.next_u32()).collect();
        let got: Vec<u32> = (0..3)
            .flat_map(|i| chacha::block(&key, stream, block + i))
            .collect();
        assert_eq!(got, want, "stream {stream} block {block}");
        let b8 = chacha::blocks8(&key, stream, block);
        for (i, b) in b8.iter().enumerate() {
            assert_eq!(*b, chacha::block(&key, stream, block + i as u64));
        }
    }
}

/// The sequential reader: next_u32/next_u64/fill_u64 agree from any position, and seek works.
#[test]
fn reader_bulk_equals_scalar_from_any_position() {
    let key = [1, 2, 3, 4, 5, 6, 7, 8];
    for start in [0u64, 1, 15, 16, 33] {
        let mut a = ChaCha20::new(key, 9);
        a.seek(start);
        let mut b = a.clone();
        let mut bulk = vec![0u64; 300];
        a.fill_u64(&mut bulk);
        let one: Vec<u64> = (0..300).map(|_| b.next_u64()).collect();
        assert_eq!(bulk, one, "start {start}");
        assert_eq!(a.position(), b.position());
        let mut c = ChaCha20::new(key, 9);
        c.seek(start + 600);
        assert_eq!(c.next_u32(), b.next_u32());
    }
    let mut bits = vec![0u32; 100];
    ops::random_bits(
        &mut Buffer::from_vec(bits.clone()),
        NoiseKey::new(StreamKey::chacha20(key), 9),
    )
    .unwrap();
    dpsgd::cpu::noise::random_bits(&mut bits, NoiseKey::new(StreamKey::chacha20(key), 9)).unwrap();
    let mut r = ChaCha20::new(key, 9);
    let want: Vec<u32> = (0..100).map(|_| r.next_u32()).collect();
    assert_eq!(bits, want);
}

/// A key's `Debug` never shows its words.
#[test]
fn debug_redacts_keys() {
    let key = [0xdead_beef, 0xfeed_face, 3, 4, 5, 6, 7, 8];
    for s in [
        format!("{:?}", ChaCha20::new(key, 1)),
        format!("{:?}", StreamKey::chacha20(key)),
        format!("{:?}", NoiseKey::new(StreamKey::chacha20(key), 1)),
    ] {
        assert!(
            !s.contains("3735928559") && !s.to_lowercase().contains("deadbeef"),
            "{s}"
        );
        assert!(s.contains("redacted"), "{s}");
    }
    let rk = RunKeys::seeded(0xdead_beef_1234);
    let s = format!("{rk:?} {:?}", rk.key(Purpose::GradientNoise));
    assert!(!s.contains(&0xdead_beef_1234u64.to_string()), "{s}");
}

/// GPU: the kernel's ChaCha20 words equal the CPU's, bit for bit, for any length.
#[test]
fn gpu_chacha_bits_match_cpu() {
    let Some(dev) = common::gpu("gpu_chacha_bits_match_cpu") else {
        return;
    };
    let key = RunKeys::secure().unwrap().key(Purpose::GradientNoise);
    for n in [1usize, 15, 16, 17, 1000, 1 << 20] {
        let nk = NoiseKey::new(key, n as u64 * 7919);
        let mut want = vec![0u32; n];
        dpsgd::cpu::noise::random_bits(&mut want, nk).unwrap();
        let mut g = Buffer::<u32>::zeros(&dev, n).unwrap();
        ops::random_bits(&mut g, nk).unwrap();
        assert_eq!(g.to_vec().unwrap(), want, "n = {n}");
    }
}
