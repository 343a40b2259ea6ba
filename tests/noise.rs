//! Gaussian and Laplace noise: distribution tests with fixed seeds and p ≈ 1e-6 critical values
//! (KS, mean, variance), parameter validation before drawing, and GPU vs CPU.

mod common;

use approx::assert_relative_eq;
use common::{gpu, ks_critical, ks_statistic, laplace_cdf, normal_cdf, Z_1E6};
use dpsgd::cpu::noise;
use dpsgd::{ops, Buffer, Device, Error, NoiseKey};

const N: usize = 200_000;

fn draw_gaussian(std: f32, key: NoiseKey) -> Vec<f32> {
    let mut v = vec![0f32; N];
    noise::add_gaussian(&mut v, std, key).unwrap();
    v
}

fn draw_laplace(scale: f32, key: NoiseKey) -> Vec<f32> {
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
    for (seed, sub) in [(1u64, 0u64), (2024, 17), (u64::MAX, 1 << 33)] {
        let std = 2.5f32;
        let v = draw_gaussian(std, NoiseKey::from_parts(seed, sub));
        let mut xs: Vec<f64> = v.iter().map(|&x| x as f64 / std as f64).collect();
        let (zm, zv) = moment_z(&xs, 1.0, 3.0);
        assert!(zm.abs() < Z_1E6, "mean z = {zm}");
        assert!(zv.abs() < Z_1E6, "variance z = {zv}");
        let d = ks_statistic(&mut xs, normal_cdf);
        let crit = ks_critical(N, 1e-6);
        assert!(d < crit, "KS D = {d} >= {crit} (seed {seed})");
    }
}

#[test]
fn laplace_ks_and_moments() {
    for (seed, sub) in [(3u64, 0u64), (77, 5), (1 << 60, 99)] {
        let scale = 0.75f32;
        let v = draw_laplace(scale, NoiseKey::from_parts(seed, sub));
        let mut xs: Vec<f64> = v.iter().map(|&x| x as f64 / scale as f64).collect();
        // Laplace(0, 1): variance 2, fourth moment 24.
        let (zm, zv) = moment_z(&xs, 2.0, 24.0);
        assert!(zm.abs() < Z_1E6, "mean z = {zm}");
        assert!(zv.abs() < Z_1E6, "variance z = {zv}");
        let d = ks_statistic(&mut xs, laplace_cdf);
        let crit = ks_critical(N, 1e-6);
        assert!(d < crit, "KS D = {d} >= {crit} (seed {seed})");
    }
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
        assert_eq!(a[i], base[i] + z[i]);
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
    for bad in [-1.0f32, f32::NAN, f32::INFINITY] {
        let e = noise::add_gaussian(&mut v, bad, NoiseKey::from_parts(0, 0)).unwrap_err();
        assert!(matches!(e, Error::InvalidParameter { .. }), "{e}");
        let e = noise::add_laplace(&mut v, bad, NoiseKey::from_parts(0, 0)).unwrap_err();
        assert!(matches!(e, Error::InvalidParameter { .. }), "{e}");
    }
    assert_eq!(v, vec![1f32; 8], "nothing drawn on error");
    let mut b = Buffer::from_vec(vec![0f32; 4]);
    assert!(ops::add_gaussian(&mut b, -0.5, NoiseKey::from_parts(0, 0)).is_err());
}

/// GPU noise equals the CPU twin to float tolerance (the bits are identical; logf/sincosf on the
/// GPU differ from the CPU's by a few ulp): |Δ| ≤ 1e-5·(1 + |x|)·scale.
#[test]
fn gpu_noise_matches_cpu() {
    let Some(dev) = gpu("gpu_noise_matches_cpu") else {
        return;
    };
    for n in [1usize, 3, 4, 1000, 65_537, 1 << 20] {
        let key = NoiseKey::for_step(0xfeed, n as u64, 2).unwrap();
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
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()) * 2.0,
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
