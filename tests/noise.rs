//! Gaussian and Laplace noise: distribution tests with fixed seeds and p ≈ 1e-6 critical values
//! (KS, mean, variance) for both generators (Philox, and ChaCha20 with the sum-of-four-normals
//! hardening), the untruncated f64 samplers' range and resolution, key separation, parameter
//! validation before drawing, and GPU vs CPU.

mod common;

use approx::assert_relative_eq;
use common::{gpu, ks_critical, ks_statistic, laplace_cdf, normal_cdf, Z_1E6};
use dpsgd::cpu::noise;
#[allow(unused_imports)]
use dpsgd::rng::RandomBits;
use dpsgd::rng::{Purpose, RunKeys, StreamKey};
use dpsgd::{ops, Buffer, Device, Error, NoiseKey};

const N: usize = 200_000;

fn draw_gaussian(std: f64, key: NoiseKey) -> Vec<f32> {
    let mut v = vec![0f32; N];
    noise::add_gaussian(&mut v, std, key).unwrap();
    v
}

fn draw_laplace(scale: f64, key: NoiseKey) -> Vec<f32> {
    let mut v = vec![0f32; N];
    noise::add_laplace(&mut v, scale, key).unwrap();
    v
}

/// z-statistics of the sample mean and variance against the true (mean 0, var, 4th moment).
fn moment_z(xs: &[f64], var: f64, m4: f64) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let s2 = xs.iter().map(|x| x * x).sum::<f64>() / n;
    let z_mean = mean / (var / n).sqrt();
    let z_var = (s2 - var) / ((m4 - var * var) / n).sqrt();
    (z_mean, z_var)
}

#[test]
fn erfc_reference_values() {
    assert_relative_eq!(
        common::erfc(1.0),
        0.157_299_207_050_285_13,
        max_relative = 1e-12
    );
    assert_relative_eq!(
        common::erfc(3.0),
        2.209_049_699_858_544e-5,
        max_relative = 1e-10
    );
    assert_relative_eq!(
        common::erfc(-0.5),
        1.520_499_877_813_046_5,
        max_relative = 1e-12
    );
}

#[test]
fn gaussian_ks_and_moments() {
    for key in keys() {
        let std = 2.5;
        let v = draw_gaussian(std, key);
        let mut xs: Vec<f64> = v.iter().map(|&x| x as f64 / std).collect();
        let (zm, zv) = moment_z(&xs, 1.0, 3.0);
        assert!(zm.abs() < Z_1E6, "mean z = {zm}");
        assert!(zv.abs() < Z_1E6, "variance z = {zv}");
        let d = ks_statistic(&mut xs, normal_cdf);
        let crit = ks_critical(N, 1e-6);
        assert!(d < crit, "KS D = {d} >= {crit} ({key:?})");
    }
}

/// Philox keys (seeded runs) and ChaCha20 keys (secure mode), fixed.
fn keys() -> Vec<NoiseKey> {
    let chacha = StreamKey::chacha20(std::array::from_fn(|i| {
        0x9e37_79b9u32.wrapping_mul(i as u32 + 1)
    }));
    vec![
        NoiseKey::from_parts(1, 0),
        NoiseKey::from_parts(2024, 17),
        NoiseKey::from_parts(u64::MAX, 1 << 33),
        NoiseKey::new(chacha, 0),
        NoiseKey::new(chacha, 5 << 16),
        NoiseKey::new(RunKeys::seeded(3).key(Purpose::GradientNoise), 1),
    ]
}

#[test]
fn laplace_ks_and_moments() {
    for key in keys() {
        let scale = 0.75;
        let v = draw_laplace(scale, key);
        let mut xs: Vec<f64> = v.iter().map(|&x| x as f64 / scale).collect();
        // Laplace(0, 1): variance 2, fourth moment 24.
        let (zm, zv) = moment_z(&xs, 2.0, 24.0);
        assert!(zm.abs() < Z_1E6, "mean z = {zm}");
        assert!(zv.abs() < Z_1E6, "variance z = {zv}");
        let d = ks_statistic(&mut xs, laplace_cdf);
        let crit = ks_critical(N, 1e-6);
        assert!(d < crit, "KS D = {d} >= {crit} ({key:?})");
    }
}

/// The old f32 Box–Muller on 32-bit uniforms never went beyond |z| ≈ 6.77 and its Laplace beyond
/// 22.2: an uncovered event. The f64 samplers reach 10.26 and 81 (probabilities 2⁻⁷⁶, 2⁻¹¹⁷
/// beyond), and resolve the uniform's low bits (the old one ignored all but 32).
#[test]
fn samplers_reach_the_far_tails_and_resolve_every_bit() {
    let (z0, _) = noise::box_muller64(0, 0);
    assert!(z0 > 10.2 && z0 < 10.3, "{z0}");
    assert_relative_eq!(
        z0,
        (152.0 * std::f64::consts::LN_2).sqrt(),
        max_relative = 1e-12
    );
    let l = noise::laplace64(0, 0);
    assert!(l > 80.0 && l < 81.2, "{l}");
    assert!(
        noise::laplace64(0, 1 << 63) < -80.0,
        "the top bit is the sign"
    );
    // The radius's uniform uses all 64 bits of w0 and 11 of w1 (the latter matter in the far
    // tail, where w0 is small); the angle the other 53 bits of w1.
    let base = noise::box_muller64(1 << 40, 7 << 11);
    assert_ne!(base, noise::box_muller64((1 << 40) + 1, 7 << 11));
    assert_ne!(base, noise::box_muller64(1 << 40, 8 << 11));
    assert_ne!(noise::box_muller64(3, 0), noise::box_muller64(3, 1));
    // u = 1 gives radius 0, never NaN.
    assert_eq!(noise::box_muller64(u64::MAX, u64::MAX).0.abs(), 0.0);
    assert_eq!(dpsgd::noise::GAUSSIAN_PAIR_TAIL, 2f64.powi(-76));
}

/// The truncation mass the engine charges to δ: ⌈n/2⌉ pairs (Philox), four times that
/// (ChaCha20's sum of four normals), times 2⁻⁷⁶.
#[test]
fn truncation_mass_counts_pairs() {
    use dpsgd::noise::gaussian_truncation_mass as mass;
    use dpsgd::rng::Generator;
    let t = 2f64.powi(-76);
    assert_eq!(mass(26_010, Generator::Philox), 13_005.0 * t);
    assert_eq!(mass(26_011, Generator::Philox), 13_006.0 * t);
    assert_eq!(mass(26_010, Generator::ChaCha20), 4.0 * 13_005.0 * t);
    assert!(mass(100_000_000, Generator::Philox) < 1e-15);
}

/// Every purpose has its own key, in both modes, and the streams they start are distinct; the
/// seeded noise key is not the raw seed (the old trainer initialised the model from
/// `Philox(seed, 0)`, which was also step 0's noise stream).
#[test]
fn purposes_never_share_a_stream() {
    let secure = RunKeys::secure().unwrap();
    for keys in [RunKeys::seeded(1), RunKeys::seeded(0), secure] {
        let words: Vec<Vec<u32>> = Purpose::ALL
            .iter()
            .map(|&p| {
                let mut v = vec![0u32; 64];
                noise::random_bits(&mut v, NoiseKey::new(keys.key(p), 0)).unwrap();
                v
            })
            .collect();
        for i in 0..words.len() {
            for j in 0..i {
                assert_ne!(
                    words[i],
                    words[j],
                    "{:?} vs {:?}",
                    Purpose::ALL[i],
                    Purpose::ALL[j]
                );
            }
        }
    }
    let mut raw = vec![0u32; 16];
    noise::random_bits(&mut raw, NoiseKey::from_parts(1, 0)).unwrap();
    let mut noise0 = vec![0u32; 16];
    noise::random_bits(
        &mut noise0,
        NoiseKey::for_step_with(RunKeys::seeded(1).key(Purpose::GradientNoise), 0, 0).unwrap(),
    )
    .unwrap();
    assert_ne!(raw, noise0);
    // Same seed, same keys (reproducible); another seed, other keys.
    assert_eq!(
        RunKeys::seeded(5).key(Purpose::Sampling),
        RunKeys::seeded(5).key(Purpose::Sampling)
    );
    assert_ne!(
        RunKeys::seeded(5).key(Purpose::Sampling),
        RunKeys::seeded(6).key(Purpose::Sampling)
    );
}

/// The KS test has power: a Gaussian scaled by 1.02 fails it. (So the tests above can fail.)
#[test]
fn ks_detects_a_wrong_scale() {
    let v = draw_gaussian(1.02, NoiseKey::from_parts(1, 0));
    let mut xs: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    assert!(ks_statistic(&mut xs, normal_cdf) > ks_critical(N, 1e-6) * 0.5);
    let v = draw_laplace(1.0, NoiseKey::from_parts(1, 0));
    let mut xs: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    assert!(ks_statistic(&mut xs, normal_cdf) > ks_critical(N, 1e-6));
}

/// Noise is added, never overwritten; std 0 adds nothing; the same key gives the same noise and
/// different keys different noise.
#[test]
fn adds_into_existing_values_and_is_keyed() {
    let key = NoiseKey::for_step(9, 1, 0).unwrap();
    let base: Vec<f32> = (0..1003).map(|i| i as f32).collect();
    let mut a = base.clone();
    noise::add_gaussian(&mut a, 1.0, key).unwrap();
    let mut z = vec![0f32; 1003];
    noise::add_gaussian(&mut z, 1.0, key).unwrap();
    for i in 0..1003 {
        // base + std·ξ is rounded once (in f64 first): within an f32 ulp of base + round(std·ξ).
        let tol = f32::EPSILON * a[i].abs().max(1.0);
        assert!(
            (a[i] - (base[i] + z[i])).abs() <= tol,
            "{i}: {} vs {}",
            a[i],
            base[i] + z[i]
        );
    }
    let mut same = base.clone();
    noise::add_gaussian(&mut same, 0.0, key).unwrap();
    assert_eq!(same, base);
    let mut other = vec![0f32; 1003];
    noise::add_gaussian(&mut other, 1.0, NoiseKey::for_step(9, 2, 0).unwrap()).unwrap();
    assert!(other.iter().zip(&z).filter(|(x, y)| x == y).count() < 3);
}

#[test]
fn bad_scales_are_rejected_before_drawing() {
    let mut v = vec![1f32; 8];
    for bad in [-1.0f64, f64::NAN, f64::INFINITY] {
        let e = noise::add_gaussian(&mut v, bad, NoiseKey::from_parts(0, 0)).unwrap_err();
        assert!(matches!(e, Error::InvalidParameter { .. }), "{e}");
        let e = noise::add_laplace(&mut v, bad, NoiseKey::from_parts(0, 0)).unwrap_err();
        assert!(matches!(e, Error::InvalidParameter { .. }), "{e}");
    }
    assert_eq!(v, vec![1f32; 8], "nothing drawn on error");
    let mut b = Buffer::from_vec(vec![0f32; 4]);
    assert!(ops::add_gaussian(&mut b, -0.5, NoiseKey::from_parts(0, 0)).is_err());
}

/// GPU noise equals the CPU twin to float tolerance (the random words are identical; log/sincos
/// in f64 on the GPU differ from glibc's by a few f64 ulp, so the f32 results agree to an ulp):
/// |Δ| ≤ 2⁻²²·(1 + |x|), for Philox and ChaCha20 keys.
#[test]
fn gpu_noise_matches_cpu() {
    let Some(dev) = gpu("gpu_noise_matches_cpu") else {
        return;
    };
    let chacha = RunKeys::secure().unwrap().key(Purpose::GradientNoise);
    for (n, key) in [1usize, 3, 4, 1000, 65_537, 1 << 20]
        .into_iter()
        .flat_map(|n| {
            [
                (n, NoiseKey::for_step(0xfeed, n as u64, 2).unwrap()),
                (n, NoiseKey::for_step_with(chacha, n as u64, 2).unwrap()),
            ]
        })
    {
        let base = common::uniform(n, 1.0, n as u64);
        for laplace in [false, true] {
            let mut want = base.clone();
            let mut g = Buffer::from_slice(&dev, &base).unwrap();
            if laplace {
                noise::add_laplace(&mut want, 0.3, key).unwrap();
                ops::add_laplace(&mut g, 0.3, key).unwrap();
            } else {
                noise::add_gaussian(&mut want, 1.7, key).unwrap();
                ops::add_gaussian(&mut g, 1.7, key).unwrap();
            }
            let got = g.to_vec().unwrap();
            for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 2.4e-7 * (1.0 + b.abs()),
                    "n={n} laplace={laplace} j={j}: gpu {a} cpu {b}"
                );
            }
        }
    }
    // A buffer on the GPU and one on the CPU cannot be mixed.
    let g = Buffer::<f32>::zeros(&dev, 4).unwrap();
    let mut c = Buffer::<f32>::zeros(&Device::Cpu, 4).unwrap();
    let e = ops::noisy_sgd_step(
        &mut c,
        &g,
        None,
        &dpsgd::SgdConfig::new(0.1),
        &dpsgd::NoisyStep::new(1.0, 1.0, 4.0, NoiseKey::from_parts(0, 0)).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::DeviceMismatch { .. }), "{e}");
}
