//! Helpers shared by the integration tests: the GPU gate, seeded test data, and the statistics
//! behind the distribution tests (KS and chi-square critical values at p ≈ 1e-6).
#![allow(dead_code)]

use dpsgd::cpu::philox::Philox;
#[allow(unused_imports)]
use dpsgd::rng::RandomBits;
use dpsgd::Device;

/// The GPU for a GPU-vs-CPU test, or `None` (after printing that the test skipped). With
/// `DPSGD_REQUIRE_GPU=1` a missing GPU fails the test instead.
pub fn gpu(test: &str) -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("DPSGD_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: DPSGD_REQUIRE_GPU=1 but no GPU is usable: {e}");
            }
            eprintln!("{test}: skipped, no GPU ({e})");
            None
        }
    }
}

/// `n` values uniform in [-scale, scale) from a fixed seed.
pub fn uniform(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut r = Philox::new(seed, 0);
    (0..n)
        .map(|_| ((r.next_f64() * 2.0 - 1.0) * scale as f64) as f32)
        .collect()
}

/// A seeded integer in [lo, hi].
pub fn int_in(r: &mut Philox, lo: usize, hi: usize) -> usize {
    lo + r.next_below((hi - lo + 1) as u64) as usize
}

/// Two-sided critical value of the one-sample KS statistic D_n at level α (asymptotic:
/// P(√n·D > x) ≈ 2·exp(−2x²)).
pub fn ks_critical(n: usize, alpha: f64) -> f64 {
    ((2.0 / alpha).ln() / (2.0 * n as f64)).sqrt()
}

/// The KS statistic of `xs` (sorted in place) against the continuous CDF `cdf`.
pub fn ks_statistic(xs: &mut [f64], cdf: impl Fn(f64) -> f64) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len() as f64;
    let mut d = 0f64;
    for (i, &x) in xs.iter().enumerate() {
        let f = cdf(x);
        d = d.max(f - i as f64 / n).max((i + 1) as f64 / n - f);
    }
    d
}

/// z such that P(Z > z) = 5e-7 (two-sided p = 1e-6).
pub const Z_1E6: f64 = 4.891_638_5;
/// z such that P(Z > z) = 1e-6 (one-sided).
pub const Z_1E6_ONE_SIDED: f64 = 4.753_424_3;

/// Upper critical value of χ²(df) at one-sided p = 1e-6 (Wilson–Hilferty).
pub fn chi2_critical(df: f64) -> f64 {
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + Z_1E6_ONE_SIDED * a.sqrt()).powi(3)
}

/// erfc(x) to ~1e-14 relative (continued fraction for large |x|, series for small).
pub fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.0 {
        // erf series: 2/√π Σ (−1)^n x^(2n+1) / (n! (2n+1))
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // Lentz continued fraction: erfc(x) = exp(−x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + …))))
        let mut f = x;
        let mut c = x;
        let mut d = 0.0;
        for k in 1..200 {
            let a = k as f64 / 2.0;
            d = x + a * d;
            d = 1.0 / d;
            c = x + a / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-x * x).exp() / (std::f64::consts::PI.sqrt() * f)
    }
}

/// Standard normal CDF.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Standard Laplace CDF.
pub fn laplace_cdf(x: f64) -> f64 {
    if x < 0.0 {
        0.5 * x.exp()
    } else {
        1.0 - 0.5 * (-x).exp()
    }
}

/// Writes a tiny MNIST-shaped dataset into `dir` (the four IDX files under MNIST's names):
/// `n_train` training and `n_test` test images of deterministic pixel patterns, example `i`
/// labelled `label(i)`. A clean clone has no MNIST, so the examples' end-to-end tests run on this.
pub fn write_synthetic_mnist(
    dir: &std::path::Path,
    n_train: usize,
    n_test: usize,
    label: fn(usize) -> u8,
) {
    use dpsgd::data::idx::write_idx;
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let px: Vec<u8> = (0..n * 784)
            .map(|i| ((i * 37 + i / 784 * 11) % 256) as u8)
            .collect();
        let labels: Vec<u8> = (0..n).map(label).collect();
        write_idx(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            &[n, 28, 28],
            &px,
        )
        .unwrap();
        write_idx(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            &[n],
            &labels,
        )
        .unwrap();
    }
}
