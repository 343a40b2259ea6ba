//! Statistical and analytic tests of `dpsgd::mechanisms`. Every statistical test uses a fixed
//! seed and a critical value at p ≈ 1e-6 (|z| < 4.89 two-sided; chi-square and KS quantiles at
//! 1e-6), so a correct sampler fails with probability ~1e-6 per test, and these seeds pass.

use dpsgd::cpu::philox::Philox;
use dpsgd::mechanisms::discrete_gaussian::sample_discrete_gaussian;
use dpsgd::mechanisms::discrete_laplace::{sample_bernoulli_exp, sample_discrete_laplace};
use dpsgd::mechanisms::gaussian::{analytic_sigma, classic_sigma, exact_delta, normal_cdf};
use dpsgd::mechanisms::laplace::sample_laplace;
use dpsgd::mechanisms::pate::{
    default_orders, gnmax, gnmax_log_q, gnmax_rdp_data_dependent, gnmax_rdp_data_independent,
    lnmax, lnmax_epsilon, lnmax_log_moment_data_dependent, lnmax_log_moment_data_independent,
    lnmax_q, lnmax_rdp_data_dependent, lnmax_rdp_data_independent, lnmax_theorem2_applies,
    log_moments_to_epsilon, moments_up_to, rdp_to_epsilon, GnmaxAccountant, LnmaxMomentsAccountant,
    LnmaxRdpAccountant,
};
use dpsgd::mechanisms::sensitivity::{
    global_sensitivity, global_sensitivity_vec, local_sensitivity, Norm,
};
use dpsgd::mechanisms::snapping::uniform_ulp;
use dpsgd::mechanisms::{
    DiscreteGaussian, DiscreteLaplace, Gaussian, Laplace, RandomizedResponse, Snapping,
    TwoCoinResponse,
};
#[allow(unused_imports)]
use dpsgd::rng::RandomBits;
use dpsgd::Error;

/// Two-sided normal critical value at p = 1e-6.
const Z_CRIT: f64 = 4.89;

/// Upper 1e-6 quantile of chi-square with `df` degrees of freedom (Wilson–Hilferty; z = 4.753
/// is the one-sided 1e-6 normal quantile).
fn chi2_crit(df: usize) -> f64 {
    let k = df as f64;
    let z = 4.753;
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// Chi-square of integer samples against a pmf, with all mass outside [lo, hi] pooled into two
/// tail bins (bins with expectation < 5 are pooled into the tails too).
fn chi2_integer(samples: &[i64], pmf: impl Fn(i64) -> f64, lo: i64, hi: i64) -> (f64, usize) {
    let n = samples.len() as f64;
    let mut counts = vec![0u64; (hi - lo + 1) as usize];
    let (mut below, mut above) = (0u64, 0u64);
    for &s in samples {
        if s < lo {
            below += 1;
        } else if s > hi {
            above += 1;
        } else {
            counts[(s - lo) as usize] += 1;
        }
    }
    let probs: Vec<f64> = (lo..=hi).map(&pmf).collect();
    let inside: f64 = probs.iter().sum();
    // Tail masses by symmetry-free difference: compute directly over a wide range.
    let p_below: f64 = (lo - 10_000..lo).map(&pmf).sum();
    let p_above = (1.0 - inside - p_below).max(0.0);
    let mut obs = vec![below as f64];
    let mut exp = vec![p_below * n];
    for (c, p) in counts.iter().zip(&probs) {
        obs.push(*c as f64);
        exp.push(p * n);
    }
    obs.push(above as f64);
    exp.push(p_above * n);
    // Pool small bins into a single "rest" bin.
    let (mut stat, mut bins) = (0.0, 0usize);
    let (mut rest_o, mut rest_e) = (0.0, 0.0);
    for (o, e) in obs.iter().zip(&exp) {
        if *e < 5.0 {
            rest_o += o;
            rest_e += e;
        } else {
            stat += (o - e) * (o - e) / e;
            bins += 1;
        }
    }
    if rest_e >= 5.0 {
        stat += (rest_o - rest_e) * (rest_o - rest_e) / rest_e;
        bins += 1;
    } else {
        assert!(
            rest_o <= 10.0,
            "{rest_o} samples where {rest_e} were expected"
        );
    }
    (stat, bins - 1)
}

fn mean_var(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, v)
}

/// Kolmogorov–Smirnov statistic of `xs` against `cdf`, and its 1e-6 critical value.
fn ks(xs: &mut [f64], cdf: impl Fn(f64) -> f64) -> (f64, f64) {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = xs.len() as f64;
    let mut d: f64 = 0.0;
    for (i, &x) in xs.iter().enumerate() {
        let f = cdf(x);
        d = d
            .max((f - i as f64 / n).abs())
            .max(((i + 1) as f64 / n - f).abs());
    }
    (d, ((2.0f64 / 1e-6).ln() / (2.0 * n)).sqrt())
}

fn is_invalid<T: std::fmt::Debug>(r: dpsgd::Result<T>, name: &str) -> bool {
    matches!(r, Err(Error::InvalidParameter { name: n, .. }) if n == name)
}

// ---------------------------------------------------------------- Laplace

#[test]
fn laplace_ks_and_moments() {
    let mut rng = Philox::new(11, 0);
    let b = 2.5;
    let mut xs: Vec<f64> = (0..200_000)
        .map(|_| sample_laplace(b, &mut rng).unwrap())
        .collect();
    let (m, v) = mean_var(&xs);
    let n = xs.len() as f64;
    assert!((m / (2.0 * b * b / n).sqrt()).abs() < Z_CRIT, "mean {m}");
    // Var of the sample variance of Laplace: (μ4 − σ⁴)/n with μ4 = 24b⁴, σ² = 2b².
    let sd_v = ((24.0 - 4.0) * b.powi(4) / n).sqrt();
    assert!(((v - 2.0 * b * b) / sd_v).abs() < Z_CRIT, "var {v}");
    let cdf = |x: f64| {
        if x < 0.0 {
            0.5 * (x / b).exp()
        } else {
            1.0 - 0.5 * (-x / b).exp()
        }
    };
    let (d, crit) = ks(&mut xs, cdf);
    assert!(d < crit, "KS {d} >= {crit}");
}

#[test]
fn laplace_mechanism_scale_and_errors() {
    let m = Laplace::new(2.0, 0.5).unwrap();
    assert_eq!(m.scale(), 4.0);
    let mut rng = Philox::new(1, 0);
    let xs: Vec<f64> = (0..100_000)
        .map(|_| m.release(10.0, &mut rng).unwrap())
        .collect();
    let (mean, _) = mean_var(&xs);
    assert!(((mean - 10.0) / (2.0 * 16.0 / 1e5f64).sqrt()).abs() < Z_CRIT);
    assert!(is_invalid(Laplace::new(0.0, 1.0), "sensitivity"));
    assert!(is_invalid(Laplace::new(1.0, -1.0), "epsilon"));
    assert!(is_invalid(Laplace::new(1.0, f64::NAN), "epsilon"));
    assert!(is_invalid(Laplace::new(f64::INFINITY, 1.0), "sensitivity"));
    assert!(matches!(
        m.release(f64::NAN, &mut rng),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(
        m.release_vec(&[1.0, f64::INFINITY], &mut rng),
        Err(Error::NonFinite { .. })
    ));
    assert!(is_invalid(sample_laplace(0.0, &mut rng), "scale"));
}

// ---------------------------------------------------------------- Gaussian

#[test]
fn analytic_gaussian_matches_reference_values() {
    // References: bisection on Balle & Wang's exact condition in Python with math.erfc
    // (double precision), and the classic formula.
    let cases = [
        (1.0, 1e-5, 3.730631634815938),
        (0.5, 1e-5, 7.031826675582501),
        (2.0, 1e-6, 2.23047627118642),
        (0.1, 1e-3, 17.404396203031222),
        (5.0, 1e-10, 1.2807779778932216),
    ];
    for (eps, delta, want) in cases {
        let s = analytic_sigma(eps, delta, 1.0).unwrap();
        assert!((s - want).abs() < 1e-9 * want, "eps {eps}: {s} vs {want}");
        // Never above the target δ, and scaling by Δ scales σ.
        assert!(exact_delta(s, eps, 1.0).unwrap() <= delta);
        let s3 = analytic_sigma(eps, delta, 3.0).unwrap();
        assert!((s3 - 3.0 * s).abs() < 1e-9 * s3);
    }
    let classic = classic_sigma(0.5, 1e-5, 1.0).unwrap();
    assert!((classic - 9.689610525210778).abs() < 1e-12);
    // ε = 1, δ = 1e-5: analytic ≈ 3.73 against the classic formula's 4.84 (out of its range).
    assert!((analytic_sigma(1.0, 1e-5, 1.0).unwrap() - 3.73).abs() < 0.01);
    assert!(
        ((2.0 * (1.25f64 / 1e-5).ln()).sqrt() - 4.84).abs() < 0.01,
        "classic value for ε=1"
    );
    assert!(is_invalid(classic_sigma(1.0, 1e-5, 1.0), "epsilon"));
    assert!(is_invalid(classic_sigma(0.5, 0.0, 1.0), "delta"));
    assert!(is_invalid(analytic_sigma(1.0, 1.0, 1.0), "delta"));
    assert!(is_invalid(analytic_sigma(0.0, 1e-5, 1.0), "epsilon"));
    assert!(is_invalid(analytic_sigma(1.0, 1e-5, -1.0), "sensitivity"));
    assert!(is_invalid(Gaussian::classic(1.5, 1e-5, 1.0), "epsilon"));
    // Analytic is never worse than classic where classic applies.
    for eps in [0.05, 0.2, 0.5, 0.9] {
        for delta in [1e-3, 1e-6, 1e-9] {
            assert!(
                analytic_sigma(eps, delta, 1.0).unwrap() < classic_sigma(eps, delta, 1.0).unwrap()
            );
        }
    }
    assert!((normal_cdf(0.0) - 0.5).abs() < 1e-16);
    assert!((normal_cdf(-10.0) - 7.619853024160527e-24).abs() < 1e-36);
}

#[test]
fn gaussian_mechanism_ks() {
    let g = Gaussian::analytic(1.0, 1e-5, 1.0).unwrap();
    let mut rng = Philox::new(5, 3);
    let s = g.sigma();
    let mut xs: Vec<f64> = (0..200_000)
        .map(|_| g.release(1.0, &mut rng).unwrap() - 1.0)
        .collect();
    let (m, v) = mean_var(&xs);
    let n = xs.len() as f64;
    assert!((m / (s * s / n).sqrt()).abs() < Z_CRIT);
    assert!(((v - s * s) / (s * s * (2.0 / n).sqrt())).abs() < Z_CRIT);
    let (d, crit) = ks(&mut xs, |x| normal_cdf(x / s));
    assert!(d < crit, "KS {d} >= {crit}");
    assert!(matches!(
        g.release(f64::NEG_INFINITY, &mut rng),
        Err(Error::NonFinite { .. })
    ));
}

// ---------------------------------------------------------------- randomized response

#[test]
fn randomized_response_estimator_is_unbiased() {
    let rr = RandomizedResponse::new(0.8).unwrap();
    assert!((rr.epsilon() - 4f64.ln()).abs() < 1e-12);
    let from_eps = RandomizedResponse::from_epsilon(4f64.ln()).unwrap();
    assert!((from_eps.p() - 0.8).abs() < 1e-12);
    assert!((RandomizedResponse::coin_flip().epsilon() - 3f64.ln()).abs() < 1e-12);
    let mut rng = Philox::new(21, 0);
    let n = 100_000;
    let truth_frac = 0.3;
    // Repeated surveys: the estimates average to the truth, and their spread matches the SE.
    let mut ests = Vec::new();
    let mut ses = Vec::new();
    for _ in 0..40 {
        let reports: Vec<bool> = (0..n)
            .map(|i| rr.respond((i as f64) < truth_frac * n as f64, &mut rng))
            .collect();
        let e = rr.estimate(&reports).unwrap();
        ests.push(e.proportion);
        ses.push(e.std_error);
    }
    let (m, v) = mean_var(&ests);
    let se = ses.iter().sum::<f64>() / ses.len() as f64;
    assert!(((m - truth_frac) / (se / (ests.len() as f64).sqrt())).abs() < Z_CRIT);
    // The sample variance of 40 estimates lies within a loose factor of the SE².
    assert!(
        v / (se * se) > 0.3 && v / (se * se) < 2.5,
        "var ratio {}",
        v / (se * se)
    );
    // Exact counts: all-true population answered truthfully always would give λ = p.
    let e = rr.estimate_from_counts(80, 100).unwrap();
    assert!((e.proportion - 1.0).abs() < 1e-12);
    assert!(is_invalid(RandomizedResponse::new(0.5), "p"));
    assert!(is_invalid(RandomizedResponse::new(1.0), "p"));
    assert!(is_invalid(RandomizedResponse::new(f64::NAN), "p"));
    assert!(is_invalid(RandomizedResponse::from_epsilon(0.0), "epsilon"));
    assert!(is_invalid(rr.estimate(&[]), "n"));
    assert!(is_invalid(rr.estimate_from_counts(5, 4), "yes"));
}

/// `from_epsilon` rounds p down: the ε of the returned p never exceeds the request, checked
/// with `epsilon()` and with an independent evaluation `ln p − ln(1−p)` plus its rounding
/// bound. (Rounding p = 1/(1+e^{−ε}) to nearest, as before, exceeded the request for about
/// half of these ε, the first at ε = 0.003.) The returned p is also the largest such p, up to
/// the conservative 4-ulp margin on ε.
#[test]
fn randomized_response_from_epsilon_never_exceeds_request() {
    let n = 10_000;
    let check = |e: f64| {
        let rr = RandomizedResponse::from_epsilon(e).unwrap();
        let p = rr.p();
        let got = rr.epsilon();
        assert!(got <= e, "ε = {e:e}: p = {p:e} has ε = {got:e}");
        let (lp, lq) = (p.ln(), (-p).ln_1p());
        let bound = 4.0 * f64::EPSILON * (lp.abs() + lq.abs());
        assert!(
            lp - lq <= e + bound,
            "ε = {e:e}: ln p − ln(1−p) = {:e}",
            lp - lq
        );
        // One ulp up is above the request, up to the 4-ulp margin (or is not a valid p).
        let up = f64::from_bits(p.to_bits() + 1);
        if let Ok(rr_up) = RandomizedResponse::new(up) {
            let e_up = rr_up.epsilon() * (1.0 + 4.0 * f64::EPSILON);
            assert!(e_up > e, "ε = {e:e}: p = {p:e} is not the largest");
        }
    };
    for i in 1..=n {
        check(30.0 * i as f64 / n as f64);
    }
    for e in [4.5e-16, 1e-15, 1e-10, 1e-6, 0.5, 35.0, 36.0, 36.5] {
        check(e);
    }
    // Outside the representable range: typed errors.
    for e in [1e-16, 40.0, f64::INFINITY, f64::NAN, -1.0] {
        assert!(
            is_invalid(RandomizedResponse::from_epsilon(e), "epsilon"),
            "{e}"
        );
    }
}

/// `epsilon()` is accurate to a few ulps relative for every p, against closed forms: p = 3/4
/// (ln 3), p = 1 − 2⁻ᵏ (k ln 2 + ln(1 − 2⁻ᵏ)) and p = 1/2 + t (ln(1+2t) − ln(1−2t), where
/// `ln(p/(1−p))` loses the relative accuracy: ~1e-4 at t = 2⁻⁴⁰).
#[test]
fn randomized_response_epsilon_is_accurate() {
    let rel = |got: f64, want: f64| ((got - want) / want).abs();
    let tol = 4.0 * f64::EPSILON;
    let e = RandomizedResponse::new(0.75).unwrap().epsilon();
    assert!(rel(e, 3f64.ln()) < tol, "{e}");
    for k in 2..=52 {
        let t = 2f64.powi(-k);
        let e = RandomizedResponse::new(1.0 - t).unwrap().epsilon();
        let want = k as f64 * std::f64::consts::LN_2 + (-t).ln_1p();
        assert!(rel(e, want) < tol, "p = 1 − 2^-{k}: {e:e} vs {want:e}");
    }
    for k in 2..=53 {
        let t = 2f64.powi(-k);
        let e = RandomizedResponse::new(0.5 + t).unwrap().epsilon();
        let want = (2.0 * t).ln_1p() - (-2.0 * t).ln_1p();
        assert!(rel(e, want) < tol, "p = 1/2 + 2^-{k}: {e:e} vs {want:e}");
    }
}

// ---------------------------------------------------------------- sensitivity

#[test]
fn sensitivity_of_count_sum_mean() {
    let universe = [0.0, 0.25, 1.0];
    let count = |d: &[f64]| d.len() as f64;
    let sum = |d: &[f64]| d.iter().sum::<f64>();
    let mean = |d: &[f64]| {
        if d.is_empty() {
            0.0
        } else {
            d.iter().sum::<f64>() / d.len() as f64
        }
    };
    assert_eq!(global_sensitivity(&universe, 4, count).unwrap(), 1.0);
    assert_eq!(global_sensitivity(&universe, 4, sum).unwrap(), 1.0);
    // Mean over [0, 1]: the worst case is {1} → {} (with mean(∅) := 0), change 1; over
    // databases with ≥ 2 rows it is 1/2 ({0, 1} → {0}).
    assert_eq!(global_sensitivity(&universe, 4, mean).unwrap(), 1.0);
    assert_eq!(local_sensitivity(&[0.0, 1.0], mean).unwrap(), 0.5);
    assert_eq!(
        local_sensitivity(&[1.0, 1.0, 0.0, 0.0], mean).unwrap(),
        0.5 - 1.0 / 3.0
    );
    assert_eq!(local_sensitivity::<f64, _>(&[], sum).unwrap(), 0.0);
    // A histogram changes by one in one bin: L1 = L2 = 1.
    let hist = |d: &[usize]| {
        let mut h = vec![0.0; 3];
        for &x in d {
            h[x] += 1.0;
        }
        h
    };
    assert_eq!(
        global_sensitivity_vec(&[0, 1, 2], 3, hist, Norm::L2).unwrap(),
        1.0
    );
    // Errors: undefined query, empty universe, too large an enumeration, changing shape.
    let bad_mean = |d: &[f64]| d.iter().sum::<f64>() / d.len() as f64;
    assert!(matches!(
        global_sensitivity(&universe, 2, bad_mean),
        Err(Error::NonFinite { .. })
    ));
    assert!(is_invalid(
        global_sensitivity::<f64, _>(&[], 2, sum),
        "universe"
    ));
    assert!(is_invalid(
        global_sensitivity(&universe, 40, sum),
        "max_rows"
    ));
    let ragged = |d: &[f64]| vec![0.0; d.len()];
    assert!(matches!(
        global_sensitivity_vec(&universe, 2, ragged, Norm::L1),
        Err(Error::Shape { .. })
    ));
}

// ---------------------------------------------------------------- exact discrete samplers

#[test]
fn bernoulli_exp_frequencies() {
    let mut rng = Philox::new(7, 1);
    let n = 200_000u64;
    for (num, den) in [(0u64, 1u64), (1, 3), (1, 1), (7, 4), (5, 2), (10, 3)] {
        let p = (-(num as f64) / den as f64).exp();
        let hits = (0..n)
            .filter(|_| sample_bernoulli_exp(num, den, &mut rng).unwrap())
            .count() as f64;
        if num == 0 {
            assert_eq!(hits, n as f64);
            continue;
        }
        let z = (hits - n as f64 * p) / (n as f64 * p * (1.0 - p)).sqrt();
        assert!(z.abs() < Z_CRIT, "γ={num}/{den}: z = {z}");
    }
    assert!(is_invalid(
        sample_bernoulli_exp(1, 0, &mut rng),
        "gamma_den"
    ));
}

fn discrete_laplace_pmf(b: f64) -> impl Fn(i64) -> f64 {
    let r = (-1.0 / b).exp();
    move |z: i64| (1.0 - r) / (1.0 + r) * (-(z.abs() as f64) / b).exp()
}

#[test]
fn discrete_laplace_chi_square() {
    for (seed, num, den) in [(1u64, 3u64, 1u64), (2, 1, 2), (3, 15, 4), (4, 40, 1)] {
        let mut rng = Philox::new(seed, 9);
        let b = num as f64 / den as f64;
        let xs: Vec<i64> = (0..100_000)
            .map(|_| sample_discrete_laplace(num, den, &mut rng).unwrap())
            .collect();
        let half = (b * 8.0).ceil() as i64 + 1;
        let (stat, df) = chi2_integer(&xs, discrete_laplace_pmf(b), -half, half);
        assert!(stat < chi2_crit(df), "b={b}: chi2 {stat} with df {df}");
        // Mean 0, variance 2r/(1−r)².
        let f: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
        let (m, v) = mean_var(&f);
        let r = (-1.0 / b).exp();
        let var = 2.0 * r / ((1.0 - r) * (1.0 - r));
        assert!((m / (var / 1e5).sqrt()).abs() < Z_CRIT, "b={b}: mean {m}");
        assert!((v - var).abs() < 0.05 * var, "b={b}: var {v} vs {var}");
    }
}

fn discrete_gaussian_pmf(s2: f64) -> impl Fn(i64) -> f64 {
    let norm: f64 = (-2000..=2000)
        .map(|z: i64| (-((z * z) as f64) / (2.0 * s2)).exp())
        .sum();
    move |z: i64| (-((z * z) as f64) / (2.0 * s2)).exp() / norm
}

#[test]
fn discrete_gaussian_chi_square() {
    for (seed, num, den) in [
        (1u64, 1u64, 4u64),
        (2, 1, 1),
        (3, 9, 2),
        (4, 100, 1),
        (5, 1000, 3),
    ] {
        let mut rng = Philox::new(seed, 17);
        let s2 = num as f64 / den as f64;
        let xs: Vec<i64> = (0..100_000)
            .map(|_| sample_discrete_gaussian(num, den, &mut rng).unwrap())
            .collect();
        let half = (s2.sqrt() * 6.0).ceil() as i64 + 1;
        let pmf = discrete_gaussian_pmf(s2);
        let (stat, df) = chi2_integer(&xs, &pmf, -half, half);
        assert!(stat < chi2_crit(df), "σ²={s2}: chi2 {stat} with df {df}");
        let var: f64 = (-2000..=2000i64).map(|z| (z * z) as f64 * pmf(z)).sum();
        let f: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
        let (m, v) = mean_var(&f);
        assert!((m / (var / 1e5).sqrt()).abs() < Z_CRIT, "σ²={s2}: mean {m}");
        assert!((v - var).abs() < 0.05 * var, "σ²={s2}: var {v} vs {var}");
    }
}

#[test]
fn discrete_mechanisms_and_errors() {
    let mut rng = Philox::new(3, 3);
    let dl = DiscreteLaplace::for_epsilon(2, 1, 2).unwrap(); // Δ = 2, ε = 1/2 → b = 4
    assert_eq!(dl.scale(), (4, 1));
    assert!((dl.epsilon(2) - 0.5).abs() < 1e-15);
    let xs: Vec<f64> = (0..50_000)
        .map(|_| (dl.release(100, &mut rng) - 100) as f64)
        .collect();
    let r = (-0.25f64).exp();
    let var = 2.0 * r / ((1.0 - r) * (1.0 - r));
    assert!((mean_var(&xs).0 / (var / 5e4).sqrt()).abs() < Z_CRIT);
    // Saturates instead of overflowing.
    assert!(dl.release(i64::MAX, &mut rng) > i64::MAX - 1000);
    assert!(dl.release(i64::MIN, &mut rng) < i64::MIN + 1000);
    let dg = DiscreteGaussian::new(9, 1).unwrap();
    assert!((dg.zcdp_rho(3).unwrap() - 0.5).abs() < 1e-15);
    assert_eq!(dg.release_vec(&[1, 2, 3], &mut rng).len(), 3);
    assert!(is_invalid(DiscreteLaplace::new(0, 1), "scale_num"));
    assert!(is_invalid(DiscreteLaplace::new(1, 0), "scale_den"));
    assert!(is_invalid(
        DiscreteLaplace::for_epsilon(0, 1, 1),
        "sensitivity"
    ));
    assert!(is_invalid(DiscreteLaplace::for_epsilon(1, 0, 1), "eps_num"));
    assert!(is_invalid(
        DiscreteLaplace::for_epsilon(u64::MAX, 1, 2),
        "eps_den"
    ));
    assert!(is_invalid(DiscreteGaussian::new(0, 1), "sigma2_num"));
    assert!(is_invalid(
        sample_discrete_gaussian(1, 0, &mut rng),
        "sigma2_den"
    ));
    assert!(is_invalid(
        sample_discrete_laplace(0, 1, &mut rng),
        "scale_num"
    ));
    assert!(is_invalid(dg.zcdp_rho(0), "sensitivity"));
}

// ---------------------------------------------------------------- snapping

#[test]
fn uniform_ulp_is_uniform() {
    let mut rng = Philox::new(99, 0);
    let mut xs: Vec<f64> = (0..200_000).map(|_| uniform_ulp(&mut rng)).collect();
    assert!(xs.iter().all(|&x| x > 0.0 && x < 1.0));
    let (d, crit) = ks(&mut xs, |x| x);
    assert!(d < crit, "KS {d} >= {crit}");
}

#[test]
fn snapping_outputs_grid_and_distribution() {
    let m = Snapping::new(1.0, 0.5, 1000.0).unwrap(); // λ = 2, Λ = 2
    assert_eq!(m.grid(), 2.0);
    assert_eq!(Snapping::new(3.0, 1.0, 100.0).unwrap().grid(), 4.0);
    let eps_prime = m.effective_epsilon();
    assert!(eps_prime > 0.5 && eps_prime < 0.5 * (1.0 + 1e-11));
    assert_eq!(eps_prime, 0.5 * (1.0 + 1000.0 / 2f64.powi(49)));
    let mut rng = Philox::new(8, 8);
    let n = 200_000;
    let xs: Vec<f64> = (0..n).map(|_| m.release(10.3, &mut rng).unwrap()).collect();
    assert!(xs
        .iter()
        .all(|x| (x / 2.0).fract() == 0.0 && x.abs() <= 1000.0));
    // Pr[output = 2k] = Pr[2k − 1 ≤ 10.3 + L < 2k + 1] for L ~ Lap(2): chi-square over the grid.
    let lap_cdf = |x: f64| {
        if x < 0.0 {
            0.5 * (x / 2.0).exp()
        } else {
            1.0 - 0.5 * (-x / 2.0).exp()
        }
    };
    let ks_int: Vec<i64> = xs.iter().map(|x| (x / 2.0) as i64).collect();
    let pmf = |k: i64| {
        let c = 2.0 * k as f64 - 10.3;
        lap_cdf(c + 1.0) - lap_cdf(c - 1.0)
    };
    let (stat, df) = chi2_integer(&ks_int, pmf, -5, 15);
    assert!(stat < chi2_crit(df), "chi2 {stat} df {df}");
    // Clamping: far outside the bound the output sits at ±B.
    let c = Snapping::new(1.0, 1.0, 4.0).unwrap();
    let outs: Vec<f64> = (0..1000)
        .map(|_| c.release(1e9, &mut rng).unwrap())
        .collect();
    assert!(outs.iter().all(|x| (-4.0..=4.0).contains(x)));
    assert!(outs.iter().filter(|&&x| x == 4.0).count() > 300);
    assert!(is_invalid(Snapping::new(1.0, 1.0, 0.5), "bound"));
    assert!(is_invalid(Snapping::new(1.0, 1.0, 1e30), "bound"));
    assert!(is_invalid(Snapping::new(0.0, 1.0, 10.0), "sensitivity"));
    assert!(is_invalid(Snapping::new(1.0, 0.0, 10.0), "epsilon"));
    assert!(matches!(
        m.release(f64::NAN, &mut rng),
        Err(Error::NonFinite { .. })
    ));
}

// ---------------------------------------------------------------- PATE

#[test]
fn pate_noiseless_consensus_gives_plurality() {
    let mut rng = Philox::new(4, 4);
    let votes = [3u64, 240, 7, 0, 0];
    for _ in 0..1000 {
        assert_eq!(lnmax(&votes, 1.0, &mut rng).unwrap(), 1);
        assert_eq!(gnmax(&votes, 20.0, &mut rng).unwrap(), 1);
    }
    // Vanishing noise returns the exact plurality even with a margin of one vote.
    let close = [10u64, 11, 9];
    for _ in 0..1000 {
        assert_eq!(gnmax(&close, 1e-6, &mut rng).unwrap(), 1);
        assert_eq!(lnmax(&close, 1e6, &mut rng).unwrap(), 1);
    }
    assert_eq!(lnmax_epsilon(0.05, 100).unwrap(), 10.0);
    assert!(matches!(
        gnmax(&[], 1.0, &mut rng),
        Err(Error::Shape { .. })
    ));
    assert!(is_invalid(gnmax(&votes, 0.0, &mut rng), "sigma"));
    assert!(is_invalid(lnmax(&votes, -1.0, &mut rng), "gamma"));
    assert!(is_invalid(lnmax_epsilon(f64::NAN, 1), "gamma"));
}

#[test]
fn gnmax_frequencies_match_a_two_class_normal() {
    // Two classes: Pr[answer = 0] = Pr[N(0, 2σ²) > n1 − n0] = Φ((n0 − n1)/(σ√2)).
    let mut rng = Philox::new(12, 0);
    let (sigma, votes) = (5.0, [48u64, 52]);
    let p = normal_cdf(-4.0 / (sigma * 2f64.sqrt()));
    let n = 200_000;
    let hits = (0..n)
        .filter(|_| gnmax(&votes, sigma, &mut rng).unwrap() == 0)
        .count() as f64;
    let z = (hits - n as f64 * p) / (n as f64 * p * (1.0 - p)).sqrt();
    assert!(z.abs() < Z_CRIT, "z = {z}");
}

#[test]
fn gnmax_data_dependent_analysis() {
    let sigma = 40.0;
    let orders = default_orders();
    assert!(orders.first() == Some(&2.0) && (orders.last().unwrap() - 500.0).abs() < 1e-9);
    // Concentrated votes: 250 teachers, nearly unanimous.
    let concentrated = [2u64, 240, 3, 0, 5, 0, 0, 0, 0, 0];
    let log_q = gnmax_log_q(&concentrated, sigma).unwrap();
    let expect: f64 = [238.0f64, 237.0, 240.0, 235.0]
        .iter()
        .map(|g| 0.5 * libm::erfc(g / (2.0 * sigma)))
        .sum::<f64>()
        + 5.0 * 0.5 * libm::erfc(240.0 / (2.0 * sigma));
    assert!(
        (log_q - expect.ln()).abs() < 1e-12,
        "{log_q} vs {}",
        expect.ln()
    );
    let mut acc = GnmaxAccountant::new(sigma, orders.clone()).unwrap();
    for _ in 0..1000 {
        acc.record(&concentrated).unwrap();
    }
    assert_eq!(acc.answered(), 1000);
    let (dd, _) = acc.epsilon_data_dependent(1e-5).unwrap();
    let (di, _) = acc.epsilon_data_independent(1e-5).unwrap();
    assert!(dd < di, "data-dependent {dd} vs data-independent {di}");
    assert!(
        dd < 0.5 * di,
        "concentrated votes should be much cheaper: {dd} vs {di}"
    );
    // Per order the data-dependent RDP never exceeds the data-independent λ/σ².
    for (a, r) in acc.orders().iter().zip(acc.rdp_data_dependent()) {
        assert!(*r <= 1000.0 * a / (sigma * sigma) * (1.0 + 1e-9));
    }
    // A split vote gets no data-dependent saving.
    let split = [125u64, 125];
    let lq = gnmax_log_q(&split, sigma).unwrap();
    for a in [2.0, 10.0, 50.0] {
        let r = gnmax_rdp_data_dependent(lq, sigma, a).unwrap();
        assert_eq!(r, gnmax_rdp_data_independent(sigma, a).unwrap());
    }
    // Data-independent ε of T queries: min over α of Tα/σ² + ln(1/δ)/(α−1).
    let (e, a) = rdp_to_epsilon(&[2.0, 3.0], &[0.5, 0.75], 0.01).unwrap();
    assert!((e - (0.75 + 100f64.ln() / 2.0)).abs() < 1e-12 && a == 3.0);
    assert!(is_invalid(
        GnmaxAccountant::new(0.0, orders.clone()),
        "sigma"
    ));
    assert!(is_invalid(GnmaxAccountant::new(1.0, vec![1.0]), "order"));
    assert!(matches!(
        GnmaxAccountant::new(1.0, vec![]),
        Err(Error::Shape { .. })
    ));
    assert!(is_invalid(acc.epsilon_data_dependent(0.0), "delta"));
    assert!(is_invalid(gnmax_rdp_data_dependent(0.5, 1.0, 2.0), "log_q"));
    assert!(matches!(
        rdp_to_epsilon(&[2.0], &[1.0, 2.0], 1e-5),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn edge_parameters_stay_finite() {
    for (eps, delta) in [(50.0, 1e-5), (1.0, 1e-100), (1e-4, 0.5), (0.01, 1e-12)] {
        let s = analytic_sigma(eps, delta, 1.0).unwrap();
        assert!(s.is_finite() && s > 0.0, "ε={eps} δ={delta}: σ={s}");
        assert!(exact_delta(s, eps, 1.0).unwrap() <= delta);
        assert!(
            exact_delta(s * 0.999, eps, 1.0).unwrap() > delta,
            "ε={eps} δ={delta}: not tight"
        );
    }
    let mut rng = Philox::new(0, 0);
    // Huge and tiny rational variances and scales sample without overflow.
    let big: Vec<i64> = (0..200)
        .map(|_| sample_discrete_gaussian(1 << 60, 3, &mut rng).unwrap())
        .collect();
    assert!(big.iter().any(|&x| x.unsigned_abs() > 1 << 20));
    assert!((0..200).all(|_| sample_discrete_gaussian(1, 1_000_000, &mut rng).unwrap() == 0));
    assert!((0..200).all(|_| sample_discrete_laplace(1, u64::MAX, &mut rng).unwrap() == 0));
    let _ = sample_discrete_laplace(u64::MAX, 1, &mut rng).unwrap();
}

// ---------------------------------------------------------------- two-coin randomized response

#[test]
fn two_coin_response_frequencies_and_deskewing() {
    let mut rng = Philox::new(21, 0);
    for p in [0.1, 0.5, 0.9] {
        let rr = TwoCoinResponse::new(p).unwrap();
        // Pr[report = truth] = (1+p)/2 for either truth.
        let n = 100_000;
        for truth in [false, true] {
            let same = (0..n)
                .filter(|_| rr.respond(truth, &mut rng) == truth)
                .count() as f64;
            let q = rr.truthful_probability();
            let z = (same - n as f64 * q) / (n as f64 * q * (1.0 - q)).sqrt();
            assert!(z.abs() < Z_CRIT, "p={p} truth={truth}: z = {z}");
        }
        // The de-skewed estimate of a database with 30% ones is unbiased: its error is within
        // Z·√((1−p²)/(4n))/p (the exact standard deviation given the database).
        let db: Vec<bool> = (0..n).map(|i| i % 10 < 3).collect();
        let reports: Vec<bool> = db.iter().map(|&x| rr.respond(x, &mut rng)).collect();
        let est = rr.estimate(&reports).unwrap();
        let sd = ((1.0 - p * p) / (4.0 * n as f64)).sqrt() / p;
        assert!((est.proportion - 0.3).abs() < Z_CRIT * sd, "p={p}: {est:?}");
        let lam = reports.iter().filter(|&&r| r).count() as f64 / n as f64;
        let plug_in = (lam * (1.0 - lam) / n as f64).sqrt() / p;
        assert!((est.std_error - plug_in).abs() < 1e-15, "p={p}: {est:?}");
        assert!((rr.deskew(lam).unwrap() - est.proportion).abs() < 1e-15);
        // ε = ln((1+p)/(1−p)), the same as the equivalent one-coin mechanism.
        let eps = ((1.0 + p) / (1.0 - p)).ln();
        assert!((rr.epsilon() - eps).abs() < 1e-14 * eps.max(1.0));
        let one = rr.as_randomized_response().unwrap();
        assert!((one.p() - (1.0 + p) / 2.0).abs() < 1e-16);
        assert!((one.epsilon() - rr.epsilon()).abs() < 1e-12);
    }
    // Two fair coins: ε = ln 3, de-skewing 2λ − ½.
    let fair = TwoCoinResponse::fair();
    assert!((fair.epsilon() - 3f64.ln()).abs() < 1e-15);
    assert_eq!(fair.deskew(0.6).unwrap(), 2.0 * 0.6 - 0.5);
    assert_eq!(TwoCoinResponse::new(0.5).unwrap(), fair);
    for bad in [0.0, 1.0, -0.5, f64::NAN] {
        assert!(is_invalid(TwoCoinResponse::new(bad), "p"));
    }
    assert!(is_invalid(fair.deskew(1.5), "observed"));
    assert!(is_invalid(fair.estimate(&[]), "n"));
    assert!(is_invalid(fair.estimate_from_counts(3, 2), "yes"));
}

// ---------------------------------------------------------------- PATE: LNMax analyses

/// The log-moments the course printed (PySyft's copy of the 2017 authors' `analysis.py`, run on
/// 100 queries of 100 unanimous teachers at noise ε = γ = 0.1, δ = 1e-5): data-independent
/// 11.756462732485115; data-dependent 1.52655213289881 with moments 1…8 and 0.9029013677789843
/// with 1…20.
#[test]
fn lnmax_moments_accountant_reproduces_the_course() {
    let unanimous = [100u64, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for (max, want) in [(8, 1.52655213289881), (20, 0.9029013677789843)] {
        let mut acc = LnmaxMomentsAccountant::new(0.1, moments_up_to(max).unwrap()).unwrap();
        for _ in 0..100 {
            acc.record(&unanimous).unwrap();
        }
        let (dd, l) = acc.epsilon_data_dependent(1e-5).unwrap();
        assert!(
            (dd - want).abs() < 1e-12 * want,
            "λ ≤ {max}: {dd} vs {want}"
        );
        // The course's warning "may not have used enough values of l" fires at 1…8, not 1…20.
        assert_eq!(l, if max == 8 { 8.0 } else { 18.0 });
        let (di, l) = acc.epsilon_data_independent(1e-5).unwrap();
        assert!((di - 11.756462732485115).abs() < 1e-12 * di, "{di}");
        assert_eq!(l, 2.0);
        assert_eq!(acc.theorem2_used(), 100);
        assert_eq!(acc.answered(), 100);
    }
    // 10 unanimous queries and 90 split ones: the split ones pay the data-independent moment
    // min(0.02λ(λ+1), 0.2λ), the unanimous ones Theorem 2's (computed here from the formula).
    let split = [12u64, 11, 10, 10, 10, 10, 10, 9, 9, 9];
    assert!(!lnmax_theorem2_applies(lnmax_q(&split, 0.1).unwrap(), 0.1));
    let mut acc = LnmaxMomentsAccountant::new(0.1, moments_up_to(8).unwrap()).unwrap();
    for i in 0..100 {
        acc.record(if i < 10 { &unanimous } else { &split })
            .unwrap();
    }
    let q: f64 = 9.0 * (2.0 + 10.0) / (4.0 * 10f64.exp());
    let want = (1..=8)
        .map(|l| {
            let l = l as f64;
            let t2 = ((1.0 - q) * ((1.0 - q) / (1.0 - 0.2f64.exp() * q)).powf(l)
                + q * (0.2 * l).exp())
            .ln();
            let di = (0.02 * l * (l + 1.0)).min(0.2 * l);
            (10.0 * t2.min(di) + 90.0 * di + 1e5f64.ln()) / l
        })
        .fold(f64::INFINITY, f64::min);
    let (dd, _) = acc.epsilon_data_dependent(1e-5).unwrap();
    assert!((dd - want).abs() < 1e-12 * want, "{dd} vs {want}");
    assert_eq!(acc.theorem2_used(), 10);
    assert!(dd < acc.epsilon_data_independent(1e-5).unwrap().0);
}

/// The Laplace tail of the difference of two Lap(1/γ): Pr[X₁ − X₀ > t·/γ] for t = γ·gap.
fn lap_diff_tail(t: f64) -> f64 {
    if t >= 0.0 {
        (2.0 + t) * (-t).exp() / 4.0
    } else {
        1.0 - (2.0 - t) * t.exp() / 4.0
    }
}

#[test]
fn lnmax_q_is_theorem3_and_bounds_what_lnmax_does() {
    let gamma = 0.1;
    let votes = [40u64, 25, 20, 5, 0];
    let want: f64 = [15.0, 20.0, 35.0, 40.0]
        .iter()
        .map(|g: &f64| lap_diff_tail(gamma * g))
        .sum();
    assert!((lnmax_q(&votes, gamma).unwrap() - want).abs() < 1e-15);
    // Two classes: Theorem 3 is exact, and lnmax's frequency matches it.
    let mut rng = Philox::new(33, 0);
    let n = 200_000;
    for two in [[40u64, 33], [40, 40], [50, 10]] {
        let p = lnmax_q(&two, gamma).unwrap();
        assert!((p - lap_diff_tail(gamma * (two[0] - two[1]) as f64)).abs() < 1e-15);
        let hits = (0..n)
            .filter(|_| lnmax(&two, gamma, &mut rng).unwrap() != 0)
            .count() as f64;
        let z = (hits - n as f64 * p) / (n as f64 * p * (1.0 - p)).sqrt();
        assert!(z.abs() < Z_CRIT, "{two:?}: z = {z}");
    }
    // Five classes: the union bound is an upper bound on the observed rate.
    let misses = (0..n)
        .filter(|_| lnmax(&votes, gamma, &mut rng).unwrap() != 0)
        .count() as f64;
    let sd = (n as f64 * want * (1.0 - want)).sqrt();
    assert!(
        misses < n as f64 * want + Z_CRIT * sd,
        "{misses} vs {}",
        n as f64 * want
    );
    // The cap at 1 − 1/k.
    assert_eq!(lnmax_q(&[5, 5, 5, 5], 0.01).unwrap(), 0.75);
    assert_eq!(lnmax_q(&[7], 0.1).unwrap(), 0.0);
    assert!(is_invalid(lnmax_q(&votes, 0.0), "gamma"));
    assert!(matches!(lnmax_q(&[], 0.1), Err(Error::Shape { .. })));
}

/// Output distribution of two-class LNMax at vote gap `gap` = n₀ − n₁.
fn two_class(gamma: f64, gap: i64) -> [f64; 2] {
    let p1 = lap_diff_tail(gamma * gap as f64);
    [1.0 - p1, p1]
}

fn log_sum_exp2(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// Theorem 2 (moments) and Theorem 6 (RDP) against the exact log-moment and Rényi divergence of
/// two-class LNMax, whose output distribution is known in closed form, for every neighbour (one
/// vote moved either way, gap ± 2).
#[test]
fn lnmax_bounds_hold_for_the_exact_two_class_mechanism() {
    for gamma in [0.05, 0.1, 0.5] {
        for gap in [0i64, 1, 2, 5, 10, 30, 60, 100] {
            let p = two_class(gamma, gap);
            let q = lnmax_q(&[100 + gap as u64, 100], gamma).unwrap();
            for nb in [gap - 2, gap + 2] {
                let p2 = two_class(gamma, nb);
                for l in 1..=20 {
                    let lf = l as f64;
                    // α(λ) = ln Σ P^(λ+1) P′^(−λ), in log space.
                    let exact =
                        log_sum_exp2((0..2).map(|o| (lf + 1.0) * p[o].ln() - lf * p2[o].ln()));
                    let bound = lnmax_log_moment_data_dependent(q, gamma, lf).unwrap();
                    assert!(
                        exact <= bound * (1.0 + 1e-9) + 1e-12,
                        "γ={gamma} gap={gap}→{nb} λ={l}: exact {exact} > bound {bound}"
                    );
                    assert!(bound <= lnmax_log_moment_data_independent(gamma, lf).unwrap());
                }
                for a in [1.5, 2.0, 5.0, 20.0, 100.0] {
                    // D_α = ln Σ P^α P′^(1−α) / (α − 1).
                    let exact =
                        log_sum_exp2((0..2).map(|o| a * p[o].ln() + (1.0 - a) * p2[o].ln()))
                            / (a - 1.0);
                    let bound = lnmax_rdp_data_dependent(q, gamma, a).unwrap();
                    assert!(
                        exact <= bound * (1.0 + 1e-9) + 1e-12,
                        "γ={gamma} gap={gap}→{nb} α={a}: exact {exact} > bound {bound}"
                    );
                    assert!(bound <= lnmax_rdp_data_independent(gamma, a).unwrap());
                }
            }
        }
    }
}

#[test]
fn lnmax_rdp_accountant_and_errors() {
    let gamma = 0.1;
    let unanimous = [250u64, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let split = [30u64, 28, 27, 25, 25, 25, 24, 22, 22, 22];
    let mut acc = LnmaxRdpAccountant::new(gamma, default_orders()).unwrap();
    for i in 0..100 {
        acc.record(if i % 2 == 0 { &unanimous } else { &split })
            .unwrap();
    }
    assert_eq!(acc.answered(), 100);
    let di = acc.rdp_data_independent();
    let per_split: Vec<f64> = acc
        .orders()
        .iter()
        .map(|&a| lnmax_rdp_data_independent(gamma, a).unwrap())
        .collect();
    for (((dd, di), split), a) in acc
        .rdp_data_dependent()
        .iter()
        .zip(&di)
        .zip(&per_split)
        .zip(acc.orders())
    {
        // The split half pays the data-independent price; the unanimous half (q ≈ 8e-10)
        // almost nothing at small orders (at large ones the q·e^{2γ(α−1)} term grows).
        assert!(*dd <= *di + 1e-12);
        assert!(*dd >= 50.0 * split - 1e-9, "α={a}: {dd} {split}");
        if *a <= 20.0 {
            assert!(*dd < 50.0 * split + 50.0 * 1e-8, "α={a}: {dd} {split}");
        }
    }
    let (e_dd, _) = acc.epsilon_data_dependent(1e-5).unwrap();
    let (e_di, _) = acc.epsilon_data_independent(1e-5).unwrap();
    assert!(e_dd < e_di);
    // The data-independent RDP at α is min(2γ, 2γ²α), and gives fewer ε than basic composition.
    assert!((lnmax_rdp_data_independent(0.1, 2.0).unwrap() - 0.04).abs() < 1e-15);
    assert_eq!(lnmax_rdp_data_independent(0.1, 50.0).unwrap(), 0.2);
    assert!(e_di < lnmax_epsilon(gamma, 100).unwrap());
    assert_eq!(lnmax_rdp_data_dependent(0.0, gamma, 3.0).unwrap(), 0.0);
    // log-moments → ε.
    let (e, l) = log_moments_to_epsilon(&[1.0, 2.0], &[0.5, 0.6], 0.01).unwrap();
    assert!((e - (0.6 + 100f64.ln()) / 2.0).abs() < 1e-12 && l == 2.0);
    assert!(matches!(
        log_moments_to_epsilon(&[1.0], &[], 0.01),
        Err(Error::Shape { .. })
    ));
    assert!(is_invalid(
        log_moments_to_epsilon(&[1.0], &[0.1], 1.0),
        "delta"
    ));
    assert!(is_invalid(
        log_moments_to_epsilon(&[0.0], &[0.1], 0.1),
        "moment"
    ));
    assert!(is_invalid(moments_up_to(0), "max moment"));
    assert!(is_invalid(
        LnmaxMomentsAccountant::new(0.0, vec![1.0]),
        "gamma"
    ));
    assert!(is_invalid(
        LnmaxMomentsAccountant::new(0.1, vec![-1.0]),
        "moment"
    ));
    assert!(matches!(
        LnmaxMomentsAccountant::new(0.1, vec![]),
        Err(Error::Shape { .. })
    ));
    assert!(is_invalid(LnmaxRdpAccountant::new(0.1, vec![1.0]), "order"));
    assert!(is_invalid(
        lnmax_log_moment_data_dependent(1.5, 0.1, 1.0),
        "q"
    ));
    assert!(is_invalid(
        lnmax_rdp_data_dependent(f64::NAN, 0.1, 2.0),
        "q"
    ));
    assert!(is_invalid(
        lnmax_log_moment_data_independent(0.1, 0.0),
        "moment"
    ));
    // Theorem 2's condition: q < 1/(e^{2γ} + 1).
    let edge = 1.0 / (0.2f64.exp() + 1.0);
    assert!(lnmax_theorem2_applies(edge * 0.999, 0.1) && !lnmax_theorem2_applies(edge, 0.1));
}
