//! Poisson sampling: inclusion is Bernoulli(q) per example, independent across examples and
//! steps (chi-square at p ≈ 1e-6), lots can be empty, epochs are round(1/q) steps, and the
//! stream is reproducible and resumable.

use dpsgd::sampling::PoissonSampler;

/// Upper χ²(df) critical value at p = 1e-6 (Wilson–Hilferty).
fn chi2_crit(df: f64) -> f64 {
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + 4.753_424_3 * a.sqrt()).powi(3)
}

#[test]
fn each_example_is_included_with_probability_q() {
    let (n, q, steps) = (50usize, 0.1, 20_000usize);
    let mut s = PoissonSampler::new(n, q, 42).unwrap();
    let mut counts = vec![0u64; n];
    let mut lot = Vec::new();
    let mut sizes = vec![0u64; n + 1];
    for _ in 0..steps {
        s.sample_into(&mut lot);
        assert!(
            lot.windows(2).all(|w| w[0] < w[1]),
            "indices sorted, no repeats"
        );
        for &i in &lot {
            counts[i] += 1;
        }
        sizes[lot.len()] += 1;
    }
    // Per-example inclusion counts ~ Binomial(steps, q): χ² over examples.
    let e = steps as f64 * q;
    let var = e * (1.0 - q);
    let chi2: f64 = counts.iter().map(|&c| (c as f64 - e).powi(2) / var).sum();
    assert!(chi2 < chi2_crit(n as f64), "inclusion χ² {chi2}");
    // Lot sizes ~ Binomial(n, q): χ² over sizes with expected count ≥ 5.
    let binom = |k: usize| -> f64 {
        let mut lc = 0.0;
        for i in 0..k {
            lc += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
        }
        (lc + k as f64 * q.ln() + (n - k) as f64 * (1.0 - q).ln()).exp()
    };
    let (mut chi2, mut df) = (0.0, 0.0);
    for (k, &o) in sizes.iter().enumerate() {
        let ek = steps as f64 * binom(k);
        if ek >= 5.0 {
            chi2 += (o as f64 - ek).powi(2) / ek;
            df += 1.0;
        }
    }
    assert!(chi2 < chi2_crit(df - 1.0), "lot-size χ² {chi2} (df {df})");
    assert!(sizes[0] > 0, "empty lots happen (P = 0.9^50 ≈ 0.5%)");
}

#[test]
fn epochs_are_round_one_over_q_and_streams_are_reproducible() {
    let s = PoissonSampler::new(60_000, 256.0 / 60_000.0, 1).unwrap();
    assert_eq!(s.steps_per_epoch(), 234);
    assert_eq!(
        PoissonSampler::new(10, 0.3, 1).unwrap().steps_per_epoch(),
        3
    );
    let (mut a, mut b) = (
        PoissonSampler::new(100, 0.2, 9).unwrap(),
        PoissonSampler::new(100, 0.2, 9).unwrap(),
    );
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        a.sample_into(&mut la);
    }
    // A sampler restored from its checkpointed position (same seed) continues the same stream.
    let mut c = PoissonSampler::new(100, 0.2, 9).unwrap();
    c.seek(a.position());
    for _ in 0..5 {
        b.sample_into(&mut lb);
    }
    let mut lc = Vec::new();
    a.sample_into(&mut la);
    b.sample_into(&mut lb);
    c.sample_into(&mut lc);
    assert_eq!(la, lb);
    assert_eq!(la, lc);
    let mut d = PoissonSampler::new(100, 0.2, 10).unwrap();
    let mut ld = Vec::new();
    d.sample_into(&mut ld);
    let mut fresh = PoissonSampler::new(100, 0.2, 9).unwrap();
    let mut lf = Vec::new();
    fresh.sample_into(&mut lf);
    assert_ne!(ld, lf, "another seed, another stream");
    // q = 1 takes everything.
    let mut all = PoissonSampler::new(7, 1.0, 0).unwrap();
    all.sample_into(&mut ld);
    assert_eq!(ld, (0..7).collect::<Vec<_>>());
}

#[test]
fn bad_parameters_are_errors() {
    for q in [0.0, -0.1, 1.5, f64::NAN] {
        assert!(PoissonSampler::new(10, q, 0).is_err(), "q = {q}");
    }
    assert!(PoissonSampler::new(0, 0.5, 0).is_err());
    assert!(PoissonSampler::secure(10, 0.5).is_ok());
}

/// Secure mode samples from ChaCha20 with a fresh OS key: two secure samplers differ, and the
/// sampler's `Debug` shows no key.
#[test]
fn secure_samplers_are_keyed_from_the_os() {
    let (mut a, mut b) = (
        PoissonSampler::secure(1000, 0.5).unwrap(),
        PoissonSampler::secure(1000, 0.5).unwrap(),
    );
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    a.sample_into(&mut la);
    b.sample_into(&mut lb);
    assert_ne!(la, lb);
    let s = format!("{a:?}");
    assert!(s.contains("ChaCha20") && s.contains("redacted"), "{s}");
}

/// The parallel sampler draws exactly the sequential definition: example i of a lot joins iff
/// the stream's 64-bit value i (from the lot's start) is below q·2⁶⁴ — for lots spanning several
/// chunks, consecutive lots, and both generators.
#[test]
fn parallel_lots_equal_the_sequential_definition() {
    use dpsgd::rng::{Purpose, RandomBits, RunKeys};
    let (n, q) = (20_001usize, 0.3);
    for keys in [RunKeys::seeded(77), RunKeys::secure().unwrap()] {
        let key = keys.key(Purpose::Sampling);
        let mut s = PoissonSampler::with_key(n, q, key).unwrap();
        let mut r = key.rng(0);
        let threshold = (q * 2f64.powi(64)) as u64;
        let mut lot = Vec::new();
        for _ in 0..3 {
            s.sample_into(&mut lot);
            let want: Vec<usize> = (0..n).filter(|_| r.next_u64() < threshold).collect();
            assert_eq!(lot, want);
        }
        assert_eq!(s.position(), 3 * 2 * n as u64);
    }
}
