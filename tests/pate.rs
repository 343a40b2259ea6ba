//! PATE end to end (`dpsgd::pate`) and Confident-GNMax's analysis
//! (`dpsgd::mechanisms::pate`). Reference values: the authors' `research/pate_2018/core.py`
//! (tensorflow/privacy, commit 3d038a4), evaluated with scipy 1.17.

use dpsgd::augment::RandomAffine;
use dpsgd::data::Dataset;
use dpsgd::mechanisms::pate::{
    confident_gnmax, default_orders, gnmax_log_q, gnmax_rdp_data_dependent, rdp_to_epsilon,
    threshold_log_pr_answered, threshold_rdp_data_dependent, threshold_rdp_data_independent,
    ConfidentGnmaxAccountant,
};
use dpsgd::pate::{
    accuracy, aggregate, ensemble_predict, fit, fit_fixmatch, load_teacher_predictions, new_model,
    partition, predict, save_teacher_predictions, softmax_outputs, student_stream, train_teachers,
    validation_split, vote_histograms, Aggregator, FitConfig, FixMatchConfig, MAX_STUDENTS,
    STUDENT_STREAM, VALIDATION_STREAM,
};
use dpsgd::rng::{Purpose, RunKeys};
use dpsgd::train::ModelKind;
use dpsgd::Error;

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

const ORDERS: [f64; 5] = [2.0, 5.0, 10.0, 20.0, 50.0];

/// (votes, T, σ₁, ln Pr[answered], threshold RDP at ORDERS) from core.py's
/// `compute_logpr_answered` and `compute_rdp_threshold`.
#[allow(clippy::type_complexity)]
const THRESHOLD_REF: [(&[u64], f64, f64, f64, [f64; 5]); 5] = [
    (
        &[2, 240, 3, 0, 5, 0, 0, 0, 0, 0],
        200.0,
        150.0,
        -0.502300252345562,
        [
            4.4444444444444447e-05,
            0.00011111111111111112,
            0.00022222222222222223,
            0.00044444444444444447,
            0.0011111111111111111,
        ],
    ),
    (
        &[30, 25, 20, 25, 20, 30, 40, 20, 20, 20],
        200.0,
        150.0,
        -1.944482822801679,
        [
            4.4444444444444447e-05,
            0.00011111111111111112,
            0.00022222222222222223,
            0.00044444444444444447,
            0.0011111111111111111,
        ],
    ),
    (
        &[0, 250, 0, 0, 0, 0, 0, 0, 0, 0],
        200.0,
        20.0,
        -0.00622902548586,
        [
            0.0021449911234190404,
            0.0024541139275592416,
            0.0032606137733903248,
            0.007156460376160062,
            0.05821463700123506,
        ],
    ),
    (
        &[50, 40, 40, 20, 20, 20, 20, 20, 10, 10],
        200.0,
        20.0,
        -31.075890902890006,
        [
            3.083496661534208e-14,
            4.61771741253137e-14,
            1.3634317973971638e-13,
            3.090507424284586e-12,
            1.693078930624738e-07,
        ],
    ),
    (
        &[2, 240, 3, 0, 5, 0, 0, 0, 0, 0],
        200.0,
        10.0,
        -3.1671743377489206e-05,
        [
            3.651657911131872e-05,
            5.99782173054527e-05,
            0.00023563339571245031,
            0.009548559552585023,
            0.24999999999999997,
        ],
    ),
];

#[test]
fn threshold_analysis_matches_the_reference_code() {
    for (votes, t, s1, lp_ref, rdp_ref) in THRESHOLD_REF {
        let lp = threshold_log_pr_answered(votes, t, s1).unwrap();
        assert!(rel(lp, lp_ref) < 1e-9, "{votes:?}: {lp} vs {lp_ref}");
        for (a, r_ref) in ORDERS.iter().zip(rdp_ref) {
            let r = threshold_rdp_data_dependent(lp, s1, *a).unwrap();
            // Relative 1e-6, or 1e-15 absolute where the RDP is ~1e-14 (rounding in ln(1 − q)).
            assert!(
                rel(r, r_ref) < 1e-6 || (r - r_ref).abs() < 1e-15,
                "{votes:?} T={t} σ₁={s1} λ={a}: {r} vs {r_ref}"
            );
            let di = threshold_rdp_data_independent(s1, *a).unwrap();
            assert!(r <= di * (1.0 + 1e-12));
        }
    }
    // The data-independent threshold cost: λ/(2σ₁²).
    assert!(
        rel(
            threshold_rdp_data_independent(150.0, 10.0).unwrap(),
            10.0 / 45000.0
        ) < 1e-15
    );
    assert!(matches!(
        threshold_rdp_data_dependent(0.1, 10.0, 2.0),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        threshold_log_pr_answered(&[1, 2], f64::NAN, 10.0),
        Err(Error::InvalidParameter { .. })
    ));
}

#[test]
fn confident_gnmax_composition_matches_the_reference_code() {
    // core.py: 640 threshold queries and 300 GNMax answers (σ₂ = 40) of these votes, T = 200,
    // σ₁ = 150, δ = 1e-5, over the reference orders: ε = 0.8911692774250635.
    let v = [2u64, 240, 3, 0, 5, 0, 0, 0, 0, 0];
    let mut acc = ConfidentGnmaxAccountant::new(200.0, 150.0, 40.0, default_orders()).unwrap();
    for i in 0..640 {
        acc.record(&v, i < 300).unwrap();
    }
    assert_eq!((acc.queries(), acc.answered()), (640, 300));
    let (dd, _) = acc.epsilon_data_dependent(1e-5).unwrap();
    assert!(rel(dd, 0.8911692774250635) < 1e-6, "{dd}");
    // Data-independent: every query counted as answered, 640·λ·(1/(2·150²) + 1/40²).
    let (di, _) = acc.epsilon_data_independent(1e-5).unwrap();
    let orders = default_orders();
    let per = 1.0 / (2.0 * 150.0 * 150.0) + 1.0 / 1600.0;
    let rdp: Vec<f64> = orders.iter().map(|a| 640.0 * a * per).collect();
    let (want, _) = rdp_to_epsilon(&orders, &rdp, 1e-5).unwrap();
    assert!(rel(di, want) < 1e-12 && dd < di, "{di} vs {want}, dd {dd}");
    // An unanswered query costs the threshold step only.
    let mut one = ConfidentGnmaxAccountant::new(200.0, 150.0, 40.0, vec![5.0]).unwrap();
    one.record(&v, false).unwrap();
    let lp = threshold_log_pr_answered(&v, 200.0, 150.0).unwrap();
    assert_eq!(
        one.rdp_data_dependent()[0],
        threshold_rdp_data_dependent(lp, 150.0, 5.0).unwrap()
    );
    one.record(&v, true).unwrap();
    let lq = gnmax_log_q(&v, 40.0).unwrap();
    let want = 2.0 * threshold_rdp_data_dependent(lp, 150.0, 5.0).unwrap()
        + gnmax_rdp_data_dependent(lq, 40.0, 5.0).unwrap();
    assert!(rel(one.rdp_data_dependent()[0], want) < 1e-12);
    assert!(matches!(
        ConfidentGnmaxAccountant::new(200.0, 0.0, 40.0, default_orders()),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        ConfidentGnmaxAccountant::new(200.0, 1.0, 40.0, vec![]),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn confident_gnmax_answers_confident_votes_only() {
    let mut rng = RunKeys::seeded(7).key(Purpose::Mechanism).rng(0);
    let sure = [0u64, 0, 250, 0];
    let unsure = [60u64, 70, 60, 60];
    let (mut yes, mut no) = (0, 0);
    for _ in 0..2000 {
        // 250 votes vs T = 200 with σ₁ = 10: z = 5 (answered w.p. 1 − 3e-7).
        match confident_gnmax(&sure, 200.0, 10.0, 5.0, &mut rng).unwrap() {
            Some(2) => yes += 1,
            other => panic!("confident votes: {other:?}"),
        }
        // 70 vs T = 200: z = −13, never answered.
        if confident_gnmax(&unsure, 200.0, 10.0, 5.0, &mut rng)
            .unwrap()
            .is_none()
        {
            no += 1;
        }
    }
    assert_eq!((yes, no), (2000, 2000));
    // Half-way: max = T answers with probability ½ (|z| < 4.89 at p ≈ 1e-6).
    let at = [0u64, 200, 50, 0];
    let n = 4000;
    let hits = (0..n)
        .filter(|_| {
            confident_gnmax(&at, 200.0, 30.0, 5.0, &mut rng)
                .unwrap()
                .is_some()
        })
        .count() as f64;
    let z = (hits - 0.5 * n as f64) / (0.25 * n as f64).sqrt();
    assert!(z.abs() < 4.89, "z = {z}");
    for (t, s1, s2) in [(1.0, 0.0, 1.0), (1.0, 1.0, -1.0), (f64::INFINITY, 1.0, 1.0)] {
        assert!(matches!(
            confident_gnmax(&at, t, s1, s2, &mut rng),
            Err(Error::InvalidParameter { .. })
        ));
    }
}

#[test]
fn partitions_are_disjoint_and_balanced() {
    let keys = RunKeys::seeded(3);
    let parts = partition(1003, 10, &keys).unwrap();
    assert_eq!(parts.len(), 10);
    let mut seen = vec![false; 1003];
    for p in &parts {
        assert!(p.len() == 100 || p.len() == 101, "{}", p.len());
        for &i in p {
            assert!(!seen[i], "example {i} in two partitions");
            seen[i] = true;
        }
    }
    assert!(seen.iter().all(|&s| s));
    // Shuffled: the first partition is not 0, 10, 20, …
    assert!(parts[0].iter().enumerate().any(|(j, &i)| i != 10 * j));
    assert_eq!(parts, partition(1003, 10, &RunKeys::seeded(3)).unwrap());
    assert!(matches!(
        partition(5, 6, &keys),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        partition(5, 0, &keys),
        Err(Error::InvalidParameter { .. })
    ));
}

#[test]
fn histograms_and_aggregators() {
    let preds = vec![vec![0u32, 1, 2], vec![0, 1, 1], vec![0, 2, 1]];
    let h = vote_histograms(&preds, 3).unwrap();
    assert_eq!(h, vec![vec![3, 0, 0], vec![0, 2, 1], vec![0, 2, 1]]);
    assert!(vote_histograms(&[vec![0, 5]], 3).is_err());
    assert!(vote_histograms(&[vec![0, 1], vec![0]], 3).is_err());
    let keys = RunKeys::seeded(11);
    // 250 teachers, near-unanimous: small noise answers the plurality every time.
    let votes: Vec<Vec<u64>> = (0..100)
        .map(|j| {
            let mut v = vec![1u64; 10];
            v[j % 10] = 241;
            v
        })
        .collect();
    for agg in [
        Aggregator::Lnmax { gamma: 0.5 },
        Aggregator::Gnmax { sigma: 10.0 },
        Aggregator::ConfidentGnmax {
            threshold: 150.0,
            sigma1: 10.0,
            sigma2: 10.0,
        },
    ] {
        let a = aggregate(&votes, agg, 1e-5, &keys).unwrap();
        assert_eq!(a.labels.len(), 100);
        for (j, l) in a.labels.iter().enumerate() {
            assert_eq!(*l, Some((j % 10) as u32), "{agg:?} query {j}");
        }
        let p = &a.privacy;
        assert_eq!((p.queries, p.answered), (100, 100));
        assert!(p.epsilon_data_dependent > 0.0);
        assert!(
            p.epsilon_data_dependent <= p.epsilon_data_independent,
            "{agg:?}: {p:?}"
        );
    }
    // LNMax γ = 0.05, 100 queries: basic composition 2γQ = 10 or better.
    let a = aggregate(&votes, Aggregator::Lnmax { gamma: 0.05 }, 1e-5, &keys).unwrap();
    assert!(a.privacy.epsilon_data_independent <= 10.0 + 1e-12);
    // Same key, same answers; the answers come from the Mechanism stream only.
    let b = aggregate(&votes, Aggregator::Lnmax { gamma: 0.05 }, 1e-5, &keys).unwrap();
    assert_eq!(a, b);
    for bad in [
        Aggregator::Lnmax { gamma: 0.0 },
        Aggregator::Gnmax { sigma: -1.0 },
        Aggregator::ConfidentGnmax {
            threshold: 1.0,
            sigma1: f64::NAN,
            sigma2: 1.0,
        },
    ] {
        assert!(matches!(
            aggregate(&votes, bad, 1e-5, &keys),
            Err(Error::InvalidParameter { .. })
        ));
    }
    assert!(aggregate(&votes, Aggregator::Gnmax { sigma: 1.0 }, 0.0, &keys).is_err());
}

#[test]
fn teachers_learn_synthetic_data() {
    let train = Dataset::synthetic(400, 1).unwrap();
    let query = Dataset::synthetic(200, 2).unwrap();
    let keys = RunKeys::seeded(5);
    let cfg = FitConfig {
        model: ModelKind::SampleConvnet,
        epochs: 6,
        batch_size: 16,
        lr: 2e-3,
        max_shift: 1,
        affine: None,
    };
    let parts = partition(train.len(), 4, &keys).unwrap();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let preds = train_teachers(&train, &parts, &query, &cfg, &keys, &|| {
        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(done.into_inner(), 4);
    assert_eq!(preds.len(), 4);
    for p in &preds {
        assert_eq!(p.len(), 200);
        let acc = accuracy(p, query.labels());
        assert!(
            acc > 0.8,
            "teacher accuracy {acc} on learnable synthetic data"
        );
    }
    // An untrained model is near chance; fit improves it (the same stream, reproducible).
    let mut m = new_model(ModelKind::SampleConvnet, &keys, 99).unwrap();
    let before: Vec<u32> = predict(&m, query.images())
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    fit(&mut m, &train, &cfg, &keys, 99).unwrap();
    let after: Vec<(u32, f32)> = predict(&m, query.images()).unwrap();
    assert!(after.iter().all(|(k, p)| *k < 10 && *p > 0.0 && *p <= 1.0));
    let after: Vec<u32> = after.into_iter().map(|(k, _)| k).collect();
    assert!(accuracy(&before, query.labels()) < 0.5);
    assert!(accuracy(&after, query.labels()) > 0.9);
    let bad = FitConfig { epochs: 0, ..cfg };
    assert!(matches!(
        fit(&mut m, &train, &bad, &keys, 1),
        Err(Error::InvalidParameter { .. })
    ));
}

#[test]
fn affine_teacher_augmentation_learns_and_is_checked() {
    let train = Dataset::synthetic(200, 1).unwrap();
    let query = Dataset::synthetic(200, 2).unwrap();
    let keys = RunKeys::seeded(6);
    let aff = RandomAffine {
        max_rotation_deg: 10.0,
        max_scale: 0.1,
        max_shift: 1.0,
        cutout: 0,
    };
    let cfg = FitConfig {
        model: ModelKind::SampleConvnet,
        epochs: 8,
        batch_size: 16,
        lr: 2e-3,
        max_shift: 1,
        affine: Some(aff),
    };
    let mut m = new_model(ModelKind::SampleConvnet, &keys, 3).unwrap();
    fit(&mut m, &train, &cfg, &keys, 3).unwrap();
    let p: Vec<u32> = predict(&m, query.images())
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let acc = accuracy(&p, query.labels());
    assert!(acc > 0.8, "affine-augmented teacher accuracy {acc}");
    // The augmentation draws from the teacher's stream: another stream trains another model,
    // the same stream the same one.
    let mut m2 = new_model(ModelKind::SampleConvnet, &keys, 3).unwrap();
    fit(&mut m2, &train, &cfg, &keys, 3).unwrap();
    assert_eq!(m.params().to_vec().unwrap(), m2.params().to_vec().unwrap());
    let no_aff = FitConfig {
        affine: None,
        ..cfg
    };
    let mut m3 = new_model(ModelKind::SampleConvnet, &keys, 3).unwrap();
    fit(&mut m3, &train, &no_aff, &keys, 3).unwrap();
    assert_ne!(m.params().to_vec().unwrap(), m3.params().to_vec().unwrap());
    // Refused: an affine map of scattering features, and out-of-range augmentation.
    let scatter = FitConfig {
        model: ModelKind::ScatterLinear,
        max_shift: 0,
        ..cfg
    };
    assert!(matches!(
        scatter.validate(),
        Err(Error::InvalidParameter { .. })
    ));
    let wild = FitConfig {
        affine: Some(RandomAffine {
            max_rotation_deg: 90.0,
            ..aff
        }),
        ..cfg
    };
    assert!(matches!(
        fit(&mut m, &train, &wild, &keys, 3),
        Err(Error::InvalidParameter { .. })
    ));
}

#[test]
fn validation_split_is_random_disjoint_and_seeded() {
    let keys = RunKeys::seeded(1);
    let (rest, val) = validation_split(9000, 1000, &keys).unwrap();
    assert_eq!((rest.len(), val.len()), (8000, 1000));
    assert!(rest.windows(2).all(|w| w[0] < w[1]) && val.windows(2).all(|w| w[0] < w[1]));
    let mut all: Vec<usize> = rest.iter().chain(&val).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..9000).collect::<Vec<_>>());
    // Spread over the public set, not the last block: each block of 1 000 holds about 111
    // (binomial-ish, sd ≈ 10; 60..=170 fails with probability far below 1e-6).
    for b in 0..9 {
        let n = val.iter().filter(|&&i| i / 1000 == b).count();
        assert!((60..=170).contains(&n), "block {b}: {n}");
    }
    // The same seed gives the same split, another seed another one; 0 keeps everything.
    assert_eq!(validation_split(9000, 1000, &keys).unwrap().1, val);
    assert_ne!(
        validation_split(9000, 1000, &RunKeys::seeded(2)).unwrap().1,
        val
    );
    let (rest0, val0) = validation_split(10, 0, &keys).unwrap();
    assert_eq!((rest0, val0.len()), ((0..10).collect::<Vec<_>>(), 0));
    let e = validation_split(10, 10, &keys).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidParameter {
                name: "validation",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn teacher_predictions_cache_round_trips_and_rejects_foreign_files() {
    let dir = std::env::temp_dir().join(format!("dpsgd-pate-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("t.preds");
    assert_eq!(load_teacher_predictions(&f, 3, 4).unwrap(), None);
    let preds = vec![vec![0, 1, 2, 9], vec![9, 9, 9, 9], vec![3, 4, 5, 6]];
    save_teacher_predictions(&f, &preds).unwrap();
    assert_eq!(load_teacher_predictions(&f, 3, 4).unwrap(), Some(preds));
    // Other dimensions, a truncated file, a foreign file: typed errors, not a wrong cache hit.
    assert!(matches!(
        load_teacher_predictions(&f, 2, 4).unwrap_err(),
        Error::InvalidParameter { .. }
    ));
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 1]).unwrap();
    assert!(load_teacher_predictions(&f, 3, 4).is_err());
    std::fs::write(&f, b"not a cache file at all, longer than 24 bytes").unwrap();
    assert!(load_teacher_predictions(&f, 3, 4).is_err());
    // Classes above 255 do not fit the one-byte format.
    assert!(save_teacher_predictions(&f, &[vec![256]]).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn fixmatch_cfg(steps: usize, lambda: f32) -> FixMatchConfig {
    FixMatchConfig {
        model: ModelKind::SampleConvnet,
        steps,
        batch_size: 8,
        mu: 3,
        threshold: 0.9,
        lambda,
        lr: 2e-3,
        weak_shift: 1,
        strong: RandomAffine::MNIST_STRONG,
        cosine_lr: false,
        ema_decay: None,
    }
}

#[test]
fn fixmatch_learns_from_few_labels_and_pseudo_labels_the_rest() {
    // 30 labelled synthetic images, 400 unlabelled ones, 300 test images.
    let labelled = Dataset::synthetic(30, 11).unwrap();
    let unlabelled = Dataset::synthetic(400, 12).unwrap();
    let test = Dataset::synthetic(300, 13).unwrap();
    let keys = RunKeys::seeded(8);
    let run = |cfg: &FixMatchConfig| {
        let mut m = new_model(ModelKind::SampleConvnet, &keys, 7).unwrap();
        let stats = fit_fixmatch(&mut m, &labelled, unlabelled.images(), cfg, &keys, 7).unwrap();
        let p: Vec<u32> = predict(&m, test.images())
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        (
            accuracy(&p, test.labels()),
            stats,
            m.params().to_vec().unwrap(),
        )
    };
    let (acc, stats, params) = run(&fixmatch_cfg(150, 1.0));
    assert!(acc > 0.9, "FixMatch accuracy {acc}");
    assert_eq!(stats.unlabelled_seen, 150 * 24);
    assert!(
        stats.pseudo_labelled > stats.unlabelled_seen / 4,
        "{stats:?}"
    );
    assert!(stats.pseudo_labelled <= stats.unlabelled_seen);
    assert!(
        stats.mask_rate_final > 0.5 && stats.mask_rate_final <= 1.0,
        "{stats:?}"
    );
    // Reproducible: the same keys and stream give the same weights.
    assert_eq!(run(&fixmatch_cfg(150, 1.0)).2, params);
    // λ = 0 ignores the unlabelled images' loss: other weights (the pseudo-labels did move
    // the model above), and the same counts are still reported.
    let (_, stats0, params0) = run(&fixmatch_cfg(150, 0.0));
    assert_ne!(params0, params);
    assert_eq!(stats0.unlabelled_seen, stats.unlabelled_seen);
    // Cosine decay and the weights' moving average: still learns, other weights.
    let (acc_e, _, params_e) = run(&FixMatchConfig {
        cosine_lr: true,
        ema_decay: Some(0.99),
        ..fixmatch_cfg(150, 1.0)
    });
    assert!(acc_e > 0.9, "FixMatch + EMA accuracy {acc_e}");
    assert_ne!(params_e, params);
    // Bad settings and inputs are typed errors before any training.
    let mut m = new_model(ModelKind::SampleConvnet, &keys, 7).unwrap();
    for bad in [
        FixMatchConfig {
            steps: 0,
            ..fixmatch_cfg(1, 1.0)
        },
        FixMatchConfig {
            threshold: 0.0,
            ..fixmatch_cfg(1, 1.0)
        },
        FixMatchConfig {
            lambda: -1.0,
            ..fixmatch_cfg(1, 1.0)
        },
        FixMatchConfig {
            mu: 0,
            ..fixmatch_cfg(1, 1.0)
        },
        FixMatchConfig {
            ema_decay: Some(1.0),
            ..fixmatch_cfg(1, 1.0)
        },
        FixMatchConfig {
            model: ModelKind::ScatterLinear,
            ..fixmatch_cfg(1, 1.0)
        },
    ] {
        let e = fit_fixmatch(&mut m, &labelled, unlabelled.images(), &bad, &keys, 7).unwrap_err();
        assert!(matches!(e, Error::InvalidParameter { .. }), "{e}");
    }
    let e = fit_fixmatch(
        &mut m,
        &labelled,
        &[0.0; 5],
        &fixmatch_cfg(1, 1.0),
        &keys,
        7,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

/// An ensemble of students averages their softmax outputs: an ensemble of one is its model's
/// own prediction bit for bit; of several, the arg-max of the mean probabilities, which can
/// beat every member; bad input is a typed error.
#[test]
fn student_ensembles_average_softmax_outputs() {
    let train = Dataset::synthetic(300, 21).unwrap();
    let test = Dataset::synthetic(400, 22).unwrap();
    let keys = RunKeys::seeded(9);
    let cfg = FitConfig {
        model: ModelKind::SampleConvnet,
        epochs: 1,
        batch_size: 32,
        lr: 2e-3,
        max_shift: 1,
        affine: None,
    };
    let models: Vec<_> = (0..3)
        .map(|j| {
            let stream = student_stream(j).unwrap();
            let mut m = new_model(ModelKind::SampleConvnet, &keys, stream).unwrap();
            fit(&mut m, &train, &cfg, &keys, stream).unwrap();
            m
        })
        .collect();
    // Softmax rows: probabilities summing to 1, their arg-max and top value those of predict.
    let probs: Vec<Vec<f32>> = models
        .iter()
        .map(|m| softmax_outputs(m, test.images()).unwrap())
        .collect();
    let single = predict(&models[0], test.images()).unwrap();
    for (row, &(k, p)) in probs[0].chunks(10).zip(&single) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(row.iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert!((row[k as usize] - p).abs() < 1e-6);
    }
    // One model: predict, bit for bit.
    assert_eq!(
        ensemble_predict(&models[..1], test.images()).unwrap(),
        single
    );
    // Three: the arg-max of the mean probabilities, and that mean.
    let ens = ensemble_predict(&models, test.images()).unwrap();
    assert_eq!(ens.len(), test.len());
    let mut changed = 0;
    for (i, &(k, p)) in ens.iter().enumerate() {
        let mean: Vec<f32> = (0..10)
            .map(|c| probs.iter().map(|q| q[i * 10 + c]).sum::<f32>() / 3.0)
            .collect();
        let best = mean.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert!((p - best).abs() < 1e-6, "{p} vs {best}");
        assert!((mean[k as usize] - best).abs() < 1e-6);
        changed += usize::from(k != single[i].0);
    }
    // The members differ (own streams), so the ensemble is not the first student.
    assert!(
        changed > 0,
        "the ensemble equals its first member everywhere"
    );
    let acc = |p: &[(u32, f32)]| {
        let c: Vec<u32> = p.iter().map(|(k, _)| *k).collect();
        accuracy(&c, test.labels())
    };
    let members: Vec<f64> = models
        .iter()
        .map(|m| acc(&predict(m, test.images()).unwrap()))
        .collect();
    let mean_member = members.iter().sum::<f64>() / 3.0;
    assert!(
        acc(&ens) >= mean_member - 0.02,
        "ensemble {} against members {members:?}",
        acc(&ens)
    );
    // Streams: student 0 is the single student's; the others distinct, below the validation
    // split's; too many students is an error.
    assert_eq!(student_stream(0).unwrap(), STUDENT_STREAM);
    let streams: Vec<u64> = (0..MAX_STUDENTS)
        .map(|j| student_stream(j).unwrap())
        .collect();
    for (j, &s) in streams.iter().enumerate() {
        assert!(s + 200 < VALIDATION_STREAM);
        if j > 0 {
            assert!(
                s >= streams[j - 1] + 200,
                "streams {j} and {} overlap",
                j - 1
            );
        }
    }
    assert!(matches!(
        student_stream(MAX_STUDENTS),
        Err(Error::InvalidParameter { .. })
    ));
    // No model; models of different shapes; images not a whole number of examples.
    assert!(matches!(
        ensemble_predict(&[], test.images()),
        Err(Error::InvalidParameter { .. })
    ));
    let other = new_model(ModelKind::ScatterLinear, &keys, 1).unwrap();
    let mixed = vec![
        new_model(ModelKind::SampleConvnet, &keys, 1).unwrap(),
        other,
    ];
    assert!(matches!(
        ensemble_predict(&mixed, test.images()),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        ensemble_predict(&models, &test.images()[..100]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        softmax_outputs(&models[0], &test.images()[..100]),
        Err(Error::Shape { .. })
    ));
}
