//! Checks every number of the toy-database lessons (`examples/toy_database.rs`, issue 13).
//!
//! The lessons' computations live in `examples/lessons/toy_database.rs` (public API only),
//! shared with the example. Deterministic results are checked exactly or against closed forms;
//! random ones with fixed seeds and tail bounds at p ≈ 1e-6 (Hoeffding and Chernoff bounds, which
//! hold without normal approximations, and a chi-square quantile), so a correct implementation
//! fails a check with probability ≲ 1e-6 — and these seeds pass.

#[allow(dead_code)]
#[path = "../examples/lessons/toy_database.rs"]
mod lessons;

use lessons::*;

/// Tail probability at which a random check fails.
const P_FAIL: f64 = 1e-6;

/// Seeds every test runs: the example's default and two others.
const SEEDS: [u64; 3] = [DEFAULT_SEED, 1, 2026];

/// Upper 1e-6 quantile of chi-square with `df` degrees of freedom (Wilson–Hilferty).
fn chi2_crit(df: usize) -> f64 {
    let k = df as f64;
    let z = 4.753;
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

#[test]
fn lesson1_database_and_parallel_databases() {
    for seed in SEEDS {
        let d = run(seed).unwrap().database;
        assert_eq!(d.rows, N_ROWS);
        assert_eq!(d.parallel_databases, N_ROWS);
        assert_eq!(d.parallel_rows, N_ROWS - 1);
        // Removing a 1 lowers the sum, removing a 0 keeps it: as many of each as there are 1s
        // and 0s.
        assert_eq!(d.parallel_with_sum_minus_1 as f64, d.sum);
        assert_eq!(d.parallel_with_same_sum as f64, N_ROWS as f64 - d.sum);
        // sum ~ Binomial(N, ½): Hoeffding, |sum − N/2| < √(N ln(2/p)/2).
        let t = (N_ROWS as f64 * (2.0 / P_FAIL).ln() / 2.0).sqrt();
        assert!(
            (d.sum - N_ROWS as f64 / 2.0).abs() < t,
            "seed {seed}: {}",
            d.sum
        );
        assert_eq!(d.first_rows.len(), 20);
    }
    let db = [true, false, true];
    assert_eq!(parallel_database(&db, 1), Some(vec![true, true]));
    assert_eq!(parallel_database(&db, 3), None);
}

#[test]
fn lesson2_sensitivities_match_their_closed_forms() {
    let mut threshold_ones = 0;
    for seed in SEEDS {
        let s = run(seed).unwrap().sensitivity;
        assert_eq!(s.draws.len(), 10);
        for d in &s.draws {
            assert_eq!(d.rows.len(), 10);
            let sum: u32 = d.rows.iter().map(|&b| b as u32).sum();
            assert_eq!(d.sum, sum as f64);
            // sum: 1 unless every row is 0.
            assert_eq!(d.sum_sensitivity, if sum > 0 { 1.0 } else { 0.0 });
            // mean: removing a row x changes s/10 to (s − x)/9.
            let s10 = sum as f64 / 10.0;
            let want = d
                .rows
                .iter()
                .map(|&x| (s10 - (sum as f64 - x as f64) / 9.0).abs())
                .fold(0.0, f64::max);
            assert!((d.mean_sensitivity - want).abs() < 1e-15);
            assert!(d.mean_sensitivity <= 1.0 / 9.0 + 1e-15);
            // threshold(5): 1 exactly when removing a 1 crosses it, i.e. sum = 6.
            assert_eq!(d.threshold_sensitivity, if sum == 6 { 1.0 } else { 0.0 });
            threshold_ones += (sum == 6) as u32;
        }
        // The ten databases are not all the same draw.
        assert!(s.draws.iter().any(|d| d.rows != s.draws[0].rows));
    }
    // The default seed shows the "sometimes 1" of the lesson.
    let s = run(DEFAULT_SEED).unwrap().sensitivity;
    assert!(s.draws.iter().any(|d| d.threshold_sensitivity == 1.0));
    assert!(threshold_ones > 0);
}

#[test]
fn lesson3_differencing_attack_recovers_every_row() {
    for seed in SEEDS {
        let a = run(seed).unwrap().differencing;
        assert_eq!(a.row, 10);
        assert_eq!(a.recovered, a.true_value as f64);
        assert_eq!(a.rows_recovered, a.rows);
    }
    assert!(lesson3(&[true, false], 2).is_err());
}

/// Hoeffding: the mean of n independent reports is within √(ln(2/p)/(2n)) of its expectation
/// but with probability p; the de-skewed estimate divides that by p_heads.
#[test]
fn lesson4_randomized_response_estimates() {
    for seed in SEEDS {
        let r = run(seed).unwrap().randomized_response;
        let ns: Vec<usize> = r.fair.iter().map(|x| x.n).collect();
        assert_eq!(ns, [10, 100, 1000, 10_000]);
        for run in r.fair.iter().chain(&r.biased) {
            let p = run.p;
            let eps = ((1.0 + p) / (1.0 - p)).ln();
            assert!((run.epsilon - eps).abs() < 1e-14 * eps.max(1.0));
            // The estimate is the de-skewed mean of the answers.
            let de = (run.skewed_mean - (1.0 - p) / 2.0) / p;
            assert!((run.estimate - de).abs() < 1e-12);
            let t = ((2.0 / P_FAIL).ln() / (2.0 * run.n as f64)).sqrt() / p;
            assert!(
                run.error < t,
                "seed {seed} N={} p={p}: error {}",
                run.n,
                run.error
            );
            assert!((run.error - (run.estimate - run.true_mean).abs()).abs() < 1e-15);
            let sd = ((1.0 - p * p) / (4.0 * run.n as f64)).sqrt() / p;
            assert!((run.std_dev - sd).abs() < 1e-15);
        }
        // Two fair coins: ε = ln 3.
        assert!(r.fair.iter().all(|x| (x.epsilon - 3f64.ln()).abs() < 1e-15));
        // A smaller p gives a smaller ε and a larger standard deviation.
        for w in r.biased.windows(2) {
            assert!(w[0].p < w[1].p && w[0].epsilon < w[1].epsilon && w[0].std_dev > w[1].std_dev);
        }
    }
}

/// Chernoff bounds for the mean of n Exp(b) (the |error| of Laplace releases):
/// P(mean ≥ b(1+x)) and P(mean ≤ b(1−x)) are at most exp(−n(±x − ln(1±x))).
fn exp_mean_tail(n: usize, ratio: f64) -> f64 {
    let x = ratio - 1.0;
    (-(n as f64) * (x - x.ln_1p())).exp()
}

#[test]
fn lesson5_laplace_errors_match_the_scale() {
    for seed in SEEDS {
        let l = run(seed).unwrap().laplace;
        assert_eq!(l.runs.len(), 2 * LESSON5_EPSILONS.len());
        for r in &l.runs {
            let delta = if r.query == "sum" {
                1.0
            } else {
                1.0 / l.rows as f64
            };
            assert_eq!(r.sensitivity, delta);
            assert!((r.scale - delta / r.epsilon).abs() < 1e-15 * r.scale.max(1.0));
            assert!((r.error - (r.released - r.true_value).abs()).abs() < 1e-12);
            // One release: P(|Lap(b)| > t) = e^(−t/b).
            assert!(r.error < r.scale * (1.0 / P_FAIL).ln());
            // The mean |error| of the repeats estimates b.
            let ratio = r.mean_abs_error / r.scale;
            assert!(
                2.0 * exp_mean_tail(r.repeats, ratio) > P_FAIL,
                "seed {seed} {} ε={}: mean |error| {} vs b {}",
                r.query,
                r.epsilon,
                r.mean_abs_error,
                r.scale
            );
        }
    }
}

/// Chernoff for a sum S of k Lap(b): P(|S| ≥ s) ≤ 2·min_t e^(−ts)(1 − b²t²)^(−k).
fn laplace_sum_tail(s: f64, k: u64, b: f64) -> f64 {
    (1..1000)
        .map(|i| {
            let t = i as f64 / 1000.0 / b;
            2.0 * (-t * s - k as f64 * (1.0 - b * b * t * t).ln()).exp()
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn lesson6_composition() {
    for seed in SEEDS {
        let c = run(seed).unwrap().composition;
        assert_eq!((c.epsilon, c.delta), (0.1, 1e-5));
        let ks: Vec<u64> = c.rows.iter().map(|r| r.k).collect();
        assert_eq!(ks, LESSON6_KS);
        for r in &c.rows {
            assert!((r.basic - 0.1 * r.k as f64).abs() < 1e-12);
            // Every other accountant is at most basic composition; the optimal composition of
            // ε-DP is at most advanced composition.
            assert!(r.advanced <= r.basic && r.rdp <= r.basic && r.optimal_pld <= r.basic);
            assert!(r.optimal_pld <= r.advanced + 1e-12);
            if r.k >= 100 {
                // Many small ε: all three grow like √k, far below kε.
                assert!(r.advanced < 0.6 * r.basic, "{r:?}");
                assert!(
                    r.rdp < 0.5 * r.basic && r.optimal_pld < 0.5 * r.basic,
                    "{r:?}"
                );
            }
            // The average of k answers: its error is what a sum of k Laplace noises allows.
            let s = r.averaged_error * r.k as f64;
            assert!(
                laplace_sum_tail(s, r.k, 10.0) > P_FAIL,
                "seed {seed} k={}: error {}",
                r.k,
                r.averaged_error
            );
            let sd = std::f64::consts::SQRT_2 * 10.0 / (r.k as f64).sqrt();
            assert!((r.averaged_std_dev - sd).abs() < 1e-12);
        }
        // The deterministic columns do not depend on the seed: the k = 1000 row against
        // dp_accounting's RDP value (tests/reference/composition.json).
        let last = c.rows.last().unwrap();
        assert!((last.rdp - 18.575675469781455).abs() < 1e-9);
        assert!(last.optimal_pld < 17.846192963441577 && last.optimal_pld > 17.7);
    }
}

#[test]
fn lesson7_pate_mini_answers_are_uniform() {
    for seed in SEEDS {
        let m = run(seed).unwrap().pate.mini;
        assert_eq!((m.teachers, m.examples, m.classes), (10, 10_000, 10));
        assert_eq!(m.answer_counts.iter().sum::<u64>(), 10_000);
        // Votes and noise are exchangeable across classes, so every class is the answer with
        // probability 1/10, independently across examples: chi-square with 9 degrees of freedom.
        let e = 1000.0;
        let chi2: f64 = m
            .answer_counts
            .iter()
            .map(|&c| (c as f64 - e).powi(2) / e)
            .sum();
        assert!(chi2 < chi2_crit(9), "seed {seed}: chi2 = {chi2}");
        // Noise of scale 10 swamps ten random votes: the answer is a plurality class for only
        // about a fifth of the examples (≈ 2 000 observed; a plurality class is the likeliest
        // answer, so at least 1/10 in expectation) — loose bounds, many standard deviations wide.
        assert!(m.agrees_with_plurality > 1000 && m.agrees_with_plurality < 5000);
        assert_eq!(m.epsilon_basic, 2.0 * 0.1 * 10_000.0);
        assert_eq!(m.first_answers.len(), 10);
    }
}

#[test]
fn lesson7_pate_analyses() {
    for seed in SEEDS {
        let p = run(seed).unwrap().pate;
        assert_eq!(p.delta, 1e-5);
        assert_eq!(p.analyses.len(), 6);
        for a in &p.analyses {
            // Data-independent: only the number of answers counts (100 at 2γ = 0.2 each).
            assert!((a.moments_data_independent.0 - 11.756462732485115).abs() < 1e-12);
            assert!(a.moments_data_dependent.0 <= a.moments_data_independent.0);
            assert!(a.rdp_data_dependent.0 <= a.rdp_data_independent.0);
            assert!(a.rdp_data_independent.0 < 20.0);
            // Theorem 2 applies to the unanimous queries only (random votes of 100 teachers over
            // 10 classes are far from unanimous).
            assert_eq!(a.theorem2_queries, a.unanimous as u64);
        }
        let dd = |u: usize, m: u32| {
            p.analyses
                .iter()
                .find(|a| a.unanimous == u && a.max_moment == m)
                .unwrap()
                .clone()
        };
        // More unanimous queries, less data-dependent ε, in both analyses.
        for m in [8, 20] {
            assert!(dd(50, m).moments_data_dependent.0 < dd(10, m).moments_data_dependent.0);
            assert!(dd(100, m).moments_data_dependent.0 < dd(50, m).moments_data_dependent.0);
            assert!(dd(50, m).rdp_data_dependent.0 < dd(10, m).rdp_data_dependent.0);
        }
        // The course's printed values (100 unanimous queries, moments 1…8 and 1…20).
        assert!((dd(100, 8).moments_data_dependent.0 - 1.52655213289881).abs() < 1e-12);
        assert!((dd(100, 20).moments_data_dependent.0 - 0.9029013677789843).abs() < 1e-12);
    }
}

#[test]
fn lessons_are_reproducible_and_serialise() {
    let a = serde_json::to_value(run(DEFAULT_SEED).unwrap()).unwrap();
    let b = serde_json::to_value(run(DEFAULT_SEED).unwrap()).unwrap();
    assert_eq!(a, b);
    let c = serde_json::to_value(run(DEFAULT_SEED + 1).unwrap()).unwrap();
    assert_ne!(a["database"], c["database"]);
    for key in [
        "seed",
        "database",
        "sensitivity",
        "differencing",
        "randomized_response",
        "laplace",
        "composition",
        "pate",
    ] {
        assert!(a.get(key).is_some(), "{key}");
    }
    assert_eq!(a["seed"], DEFAULT_SEED);
}
