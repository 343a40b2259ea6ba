//! Philox4x32-10: Random123's known-answer vectors, the cuRAND stream layout, uniformity of the
//! bits (chi-square at p ≈ 1e-6), and GPU == CPU bit for bit.

mod common;

use common::{chi2_critical, gpu};
use dpsgd::cpu::philox::{block, philox4x32_10, Philox};
#[allow(unused_imports)]
use dpsgd::rng::RandomBits;
use dpsgd::{ops, Buffer, Device, NoiseKey};

/// Random123 `kat_vectors`, philox4x32 with 10 rounds.
#[test]
fn random123_known_answers() {
    assert_eq!(
        philox4x32_10([0, 0, 0, 0], [0, 0]),
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
    assert_eq!(
        philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    );
    assert_eq!(
        philox4x32_10(
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0]
        ),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

/// cuRAND's counter: (block lo, block hi, subsequence lo, subsequence hi), key = seed.
#[test]
fn curand_counter_layout() {
    let seed = 0x0123_4567_89ab_cdef_u64;
    let sub = 0x1111_2222_3333_4444_u64;
    let b = 0x5555_6666_7777_8888_u64;
    assert_eq!(
        block(seed, sub, b),
        philox4x32_10(
            [0x7777_8888, 0x5555_6666, 0x3333_4444, 0x1111_2222],
            [0x89ab_cdef, 0x0123_4567]
        )
    );
}

#[test]
fn stream_reads_blocks_in_order_and_seeks() {
    let mut r = Philox::new(7, 3);
    let mut want = Vec::new();
    for b in 0..5 {
        want.extend(block(7, 3, b));
    }
    let got: Vec<u32> = (0..20).map(|_| r.next_u32()).collect();
    assert_eq!(got, want);
    r.seek(9);
    assert_eq!(r.next_u32(), want[9]);
    assert_eq!(r.position(), 10);
    // The stream re-created at its position continues where it stopped.
    let mut back = Philox::new(7, 3);
    back.seek(r.position());
    assert_eq!(back.next_u32(), want[10]);
    // Debug never shows the seed.
    let dbg = format!("{:?}", Philox::new(0xdead_beef, 0));
    assert!(
        !dbg.contains("3735928559") && dbg.contains("redacted"),
        "{dbg}"
    );
}

#[test]
fn ops_philox_bits_is_the_stream() {
    let key = NoiseKey::for_step(42, 3, 1).unwrap();
    let mut out = Buffer::<u32>::zeros(&Device::Cpu, 1001).unwrap();
    ops::random_bits(&mut out, key).unwrap();
    let mut r = Philox::new(42, key.stream());
    let want: Vec<u32> = (0..1001).map(|_| r.next_u32()).collect();
    assert_eq!(out.to_vec().unwrap(), want);
}

/// Bytes of the stream are uniform: χ² over 256 bins for each byte lane, p ≈ 1e-6.
#[test]
fn bits_are_uniform_chi_square() {
    let n = 1 << 20;
    let mut out = vec![0u32; n];
    dpsgd::cpu::noise::random_bits(&mut out, NoiseKey::from_parts(12345, 6789)).unwrap();
    let crit = chi2_critical(255.0);
    for lane in 0..4 {
        let mut bins = [0u64; 256];
        for x in &out {
            bins[((x >> (8 * lane)) & 0xff) as usize] += 1;
        }
        let e = n as f64 / 256.0;
        let chi2: f64 = bins.iter().map(|&o| (o as f64 - e).powi(2) / e).sum();
        assert!(chi2 < crit, "byte lane {lane}: chi2 {chi2} >= {crit}");
    }
}

/// Distinct (step, tensor) keys give unrelated streams: no shared prefix.
#[test]
fn distinct_keys_do_not_share_bits() {
    let a = NoiseKey::for_step(1, 0, 0).unwrap();
    let b = NoiseKey::for_step(1, 0, 1).unwrap();
    let c = NoiseKey::for_step(1, 1, 0).unwrap();
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert_ne!(b, c);
    let blocks = |k: NoiseKey| block(1, k.stream(), 0);
    assert_ne!(blocks(a), blocks(b));
    assert_ne!(blocks(a), blocks(c));
    assert!(NoiseKey::for_step(1, 1 << 48, 0).is_err());
    assert!(NoiseKey::for_step(1, 0, 1 << 16).is_err());
}

#[test]
fn next_below_is_uniform() {
    let mut r = Philox::new(99, 0);
    let n = 7u64;
    let draws = 700_000;
    let mut bins = [0u64; 7];
    for _ in 0..draws {
        bins[r.next_below(n) as usize] += 1;
    }
    let e = draws as f64 / n as f64;
    let chi2: f64 = bins.iter().map(|&o| (o as f64 - e).powi(2) / e).sum();
    assert!(chi2 < chi2_critical(6.0), "chi2 {chi2}");
    assert_eq!(r.next_below(0), 0);
}

/// GPU: `curand()` after `curand_init(seed, subsequence, 0)` and our kernel's direct Philox
/// blocks both equal the CPU stream, bit for bit, for odd lengths and several keys.
#[test]
fn gpu_bits_equal_cpu_stream() {
    let Some(dev) = gpu("gpu_bits_equal_cpu_stream") else {
        return;
    };
    for (n, seed, sub) in [
        (1usize, 0u64, 0u64),
        (1023, 5, 77),
        (1 << 20, u64::MAX, 1 << 40),
    ] {
        let key = NoiseKey::from_parts(seed, sub);
        let mut want = vec![0u32; n];
        dpsgd::cpu::noise::random_bits(&mut want, key).unwrap();
        let mut out = Buffer::<u32>::zeros(&dev, n).unwrap();
        ops::random_bits(&mut out, key).unwrap();
        assert_eq!(out.to_vec().unwrap(), want, "n={n}");
        #[cfg(feature = "cuda")]
        {
            let Device::Cuda(d) = &dev else {
                unreachable!()
            };
            let mut b = Buffer::<u32>::zeros(&dev, n).unwrap();
            dpsgd::cuda::noise::philox_bits_curand(
                d.backend(),
                &mut b.cuda_view_mut().unwrap(),
                key,
            )
            .unwrap();
            assert_eq!(b.to_vec().unwrap(), want, "curand device API, n={n}");
        }
    }
}

/// `fill_u64` (eight blocks at a time) returns exactly what `next_u64` calls return, from
/// any start position (block-aligned or not) and for any length.
#[test]
fn fill_u64_equals_next_u64() {
    for (start, len) in [
        (0u64, 0usize),
        (0, 1),
        (0, 16),
        (0, 1000),
        (1, 33),
        (3, 17),
        (4, 64),
        (6, 100),
        (1 << 33, 50),
    ] {
        let mut a = Philox::new(0x1234_5678_9abc_def0, 77);
        let mut b = a.clone();
        a.seek(start);
        b.seek(start);
        let mut got = vec![0u64; len];
        a.fill_u64(&mut got);
        let want: Vec<u64> = (0..len).map(|_| b.next_u64()).collect();
        assert_eq!(got, want, "start {start}, len {len}");
        assert_eq!(a.position(), b.position());
        assert_eq!(a.next_u32(), b.next_u32(), "the streams continue together");
    }
}
