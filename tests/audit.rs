//! One-run privacy auditing (Steinke, Nasr & Jagielski 2023): the ε lower bound against
//! hand-computed cases, the white-box audit on correct runs (never above the accountant) and on
//! deliberately broken ones (above the claim), and argument errors.

use dpsgd::accounting::{self, HistoryEntry, Method};
use dpsgd::audit::{self, AuditConfig, AuditKind, GuessRule};
use dpsgd::engine::{NoiseSpec, PrivacyConfig};
use dpsgd::train::{DataSource, LrSchedule, ModelKind, OptimizerKind, TrainConfig};
use dpsgd::{Clipping, Device, Error};

const DELTA: f64 = 1e-5;

/// The broken black-box run: N examples, m canaries, batch, epochs, clipping bound, lr.
const BB_N: usize = 200;
const BB_M: usize = 100;
const BB_BATCH: usize = 50;
const BB_EPOCHS: u64 = 200;
const BB_CLIP: f32 = 1.0;
const BB_LR: f32 = 2.0;

#[test]
fn all_correct_with_delta_zero_is_the_closed_form() {
    // δ = 0, r = v = 100: p(ε) = q^100 with q = 1/(1 + e^{−ε}); p < 0.05 ⇔ q < 0.05^{1/100}.
    let q: f64 = 0.05f64.powf(1.0 / 100.0);
    let expected = (q / (1.0 - q)).ln();
    let lb = audit::epsilon_lower_bound(100, 100, 100, 0.0, 0.95).unwrap();
    assert!((lb - expected).abs() < 1e-6, "{lb} vs {expected}");
    assert!((lb - 3.4929).abs() < 1e-3, "{lb}");
}

#[test]
fn delta_zero_is_a_binomial_tail() {
    // r = 10, v = 9: p(ε) = q^10 + 10 q^9 (1 − q), which is 0.05 at the bound.
    let lb = audit::epsilon_lower_bound(10, 10, 9, 0.0, 0.95).unwrap();
    let q: f64 = 1.0 / (1.0 + (-lb).exp());
    let tail = q.powi(10) + 10.0 * q.powi(9) * (1.0 - q);
    assert!((tail - 0.05).abs() < 1e-7, "tail {tail} at ε = {lb}");
    let p = audit::p_value(10, 10, 9, lb, 0.0).unwrap();
    assert!((p - tail).abs() < 1e-12);
    // With m > r the δ = 0 test does not depend on m.
    let lb2 = audit::epsilon_lower_bound(1000, 10, 9, 0.0, 0.95).unwrap();
    assert_eq!(lb, lb2);
}

#[test]
fn the_delta_term_is_the_papers() {
    // p = P[W' ≥ v] + 2mδ · max_i P[v − i ≤ W' < v]/i, computed directly for r = 4, v = 3.
    let (m, r, v, eps, delta) = (50usize, 4usize, 3usize, 0.7f64, 1e-3f64);
    let q = 1.0 / (1.0 + (-eps).exp());
    let pmf = |k: i32| {
        let c = [1.0, 4.0, 6.0, 4.0, 1.0][k as usize];
        c * q.powi(k) * (1.0 - q).powi(4 - k)
    };
    let beta = pmf(3) + pmf(4);
    let alpha = [
        pmf(2) / 1.0,
        (pmf(2) + pmf(1)) / 2.0,
        (pmf(2) + pmf(1) + pmf(0)) / 3.0,
    ]
    .into_iter()
    .fold(0.0, f64::max);
    let expected = beta + 2.0 * m as f64 * delta * alpha;
    let p = audit::p_value(m, r, v, eps, delta).unwrap();
    assert!((p - expected).abs() < 1e-12, "{p} vs {expected}");
}

#[test]
fn chance_level_gives_zero() {
    assert_eq!(
        audit::epsilon_lower_bound(1000, 1000, 500, DELTA, 0.95).unwrap(),
        0.0
    );
    assert_eq!(
        audit::epsilon_lower_bound(1000, 0, 0, DELTA, 0.95).unwrap(),
        0.0
    );
}

#[test]
fn the_bound_is_monotone() {
    let m = 1000;
    // More correct guesses: a larger bound.
    let mut last = -1.0;
    for v in (500..=1000).step_by(25) {
        let lb = audit::epsilon_lower_bound(m, 1000, v, DELTA, 0.95).unwrap();
        assert!(lb >= last, "v = {v}: {lb} < {last}");
        last = lb;
    }
    assert!(last > 5.0, "all 1000 correct: {last}");
    // More confidence: a smaller bound; a larger δ: a smaller bound.
    let b = |conf: f64, delta: f64| audit::epsilon_lower_bound(m, 200, 180, delta, conf).unwrap();
    assert!(b(0.99, DELTA) < b(0.95, DELTA));
    assert!(b(0.95, DELTA) < b(0.5, DELTA));
    assert!(b(0.95, 1e-3) < b(0.95, DELTA));
    assert!(b(0.95, DELTA) <= b(0.95, 0.0));
    assert!(b(0.95, DELTA) > 0.0);
}

#[test]
fn bad_arguments_of_the_bound_are_typed_errors() {
    let inv = |r: dpsgd::Result<f64>| matches!(r, Err(Error::InvalidParameter { .. }));
    assert!(inv(audit::epsilon_lower_bound(0, 0, 0, DELTA, 0.95)));
    assert!(inv(audit::epsilon_lower_bound(10, 11, 5, DELTA, 0.95)));
    assert!(inv(audit::epsilon_lower_bound(10, 10, 11, DELTA, 0.95)));
    for c in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        assert!(inv(audit::epsilon_lower_bound(10, 10, 5, DELTA, c)), "{c}");
    }
    for d in [1.0, -1e-5, f64::NAN] {
        assert!(inv(audit::epsilon_lower_bound(10, 10, 5, d, 0.95)), "{d}");
    }
    assert!(inv(audit::p_value(10, 10, 5, -1.0, DELTA)));
    let msg = audit::epsilon_lower_bound(10, 10, 5, DELTA, 1.0)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("0.95"), "{msg}");
}

/// A null-model run: q, T steps, the engine's σ and C.
fn privacy(noise: NoiseSpec, q: f64, steps: u64, c: f32) -> PrivacyConfig {
    PrivacyConfig {
        noise,
        delta: DELTA,
        clipping: Clipping::Flat(c),
        sample_rate: q,
        dataset_size: 1000,
        planned_steps: steps,
        accountant: Method::Rdp,
    }
}

fn claimed_sigma(eps: f64, q: f64, steps: u64) -> f64 {
    accounting::calibrate_noise_multiplier(Method::Rdp, eps, DELTA, q, steps, 1e-4).unwrap()
}

#[test]
fn correct_runs_never_exceed_the_accountant() {
    let (m, q, steps) = (1000usize, 0.1, 100u64);
    for (i, eps) in [1.0, 3.0, 8.0].into_iter().enumerate() {
        let cfg = AuditConfig::new(m, 100 + i as u64);
        let r = audit::white_box_null_model(
            m,
            privacy(NoiseSpec::TargetEpsilon(eps), q, steps, 1.0),
            1.0,
            &cfg,
            &Device::Cpu,
            7 + i as u64,
        )
        .unwrap();
        println!("{}", serde_json::to_string(&r).unwrap());
        assert_eq!(r.steps, steps);
        assert!(r.epsilon_rdp <= eps + 1e-9, "{r:?}");
        assert!(
            r.epsilon_lower_bound <= r.accountant_epsilon(),
            "lower bound {} above the accountant's ε {} / {:?} (σ = {})",
            r.epsilon_lower_bound,
            r.epsilon_rdp,
            r.epsilon_prv,
            r.noise_multiplier
        );
        assert!(r.correct <= r.guesses && r.guesses <= m);
    }
}

#[test]
fn a_tenth_of_the_noise_is_caught() {
    // Claimed: ε = 1 with σ for (q, T). Run: 0.1·σ.
    let (m, q, steps) = (1000usize, 0.1, 100u64);
    let sigma = claimed_sigma(1.0, q, steps);
    let h = [HistoryEntry::new(sigma, q, steps).unwrap()];
    let claimed = accounting::epsilon(Method::Rdp, &h, DELTA).unwrap();
    assert!(claimed <= 1.0 && claimed > 0.9, "{claimed}");
    let r = audit::white_box_null_model(
        m,
        privacy(NoiseSpec::NoiseMultiplier(0.1 * sigma), q, steps, 1.0),
        1.0,
        &AuditConfig::new(m, 11),
        &Device::Cpu,
        3,
    )
    .unwrap();
    println!("{}", serde_json::to_string(&r).unwrap());
    assert!(
        r.epsilon_lower_bound > claimed,
        "lower bound {} not above the claimed ε {claimed}",
        r.epsilon_lower_bound
    );
}

#[test]
fn clipping_ten_times_too_loose_is_caught() {
    // Claimed: ε = 1 with σ and clipping bound C = 1. Run: canaries of norm 10·C pass a
    // clipping bound of 10·C while the noise stays σ·C (the engine's σ is σ/10 of its C = 10):
    // clipping is effectively off. (An engine whose C is 10× with the noise following it,
    // σ·10C, would be a *correct* run: DP-SGD is scale-invariant.)
    let (m, q, steps) = (1000usize, 0.1, 100u64);
    let sigma = claimed_sigma(1.0, q, steps);
    let mut cfg = AuditConfig::new(m, 12);
    cfg.canary_norm = Some(10.0);
    let r = audit::white_box_null_model(
        m,
        privacy(NoiseSpec::NoiseMultiplier(sigma / 10.0), q, steps, 10.0),
        1.0,
        &cfg,
        &Device::Cpu,
        4,
    )
    .unwrap();
    println!("{}", serde_json::to_string(&r).unwrap());
    assert!(
        r.epsilon_lower_bound > 1.0,
        "lower bound {} not above the claimed ε = 1",
        r.epsilon_lower_bound
    );
}

fn train_cfg() -> TrainConfig {
    TrainConfig {
        data: DataSource::Synthetic {
            train: 512,
            test: 64,
        },
        model: ModelKind::TanhConvnet,
        noise: Some(NoiseSpec::NoiseMultiplier(1.0)),
        delta: DELTA,
        epochs: 1,
        batch_size: 64,
        physical_batch: 128,
        lr: 0.5,
        optimizer: OptimizerKind::Sgd { momentum: 0.0 },
        max_grad_norm: 0.1,
        accountant: Method::Rdp,
        seed: Some(1),
        validation: 0,
        lr_schedule: LrSchedule::Constant,
        ema_decay: None,
        augmult: 1,
        augmult_views: 0,
        input_norm: dpsgd::train::InputNorm::GroupNorm,
    }
}

#[test]
fn a_real_model_run_is_audited() {
    let cfg = train_cfg();
    let mut steps = 0;
    let r = audit::white_box(&cfg, &AuditConfig::new(200, 5), &Device::Cpu, |t, _| {
        steps = t
    })
    .unwrap();
    println!("{}", serde_json::to_string(&r).unwrap());
    assert_eq!(r.steps, 8);
    assert_eq!(steps, 8);
    assert!(r.epsilon_lower_bound <= r.accountant_epsilon());
}

#[test]
fn bad_audit_settings_are_typed_errors_before_anything_runs() {
    let inv = |r: dpsgd::Result<audit::AuditReport>| match r {
        Err(Error::InvalidParameter { .. }) => true,
        other => panic!("expected InvalidParameter, got {other:?}"),
    };
    let run = |p: usize, cfg: AuditConfig| {
        audit::white_box_null_model(
            p,
            privacy(NoiseSpec::NoiseMultiplier(1.0), 0.1, 10, 1.0),
            1.0,
            &cfg,
            &Device::Cpu,
            0,
        )
    };
    assert!(inv(run(100, AuditConfig::new(0, 0))));
    assert!(inv(run(100, AuditConfig::new(1, 0))));
    // More Dirac canaries than parameters.
    let e = run(100, AuditConfig::new(101, 0)).unwrap_err().to_string();
    assert!(e.contains("fewer canaries"), "{e}");
    for c in [0.0, 1.0, f64::NAN] {
        let mut cfg = AuditConfig::new(10, 0);
        cfg.confidence = c;
        assert!(inv(run(100, cfg)));
    }
    let mut cfg = AuditConfig::new(10, 0);
    cfg.canary_norm = Some(-1.0);
    assert!(inv(run(100, cfg)));
    for g in [
        GuessRule::Fixed(0),
        GuessRule::Fixed(6),
        GuessRule::Bonferroni(vec![]),
        GuessRule::Bonferroni(vec![1, 100]),
    ] {
        let mut cfg = AuditConfig::new(10, 0);
        cfg.guesses = g;
        assert!(inv(run(100, cfg)));
    }
    // A non-private run, or an optimizer whose update is not −lr·gradient.
    let mut t = train_cfg();
    t.noise = None;
    assert!(inv(audit::white_box(
        &t,
        &AuditConfig::new(10, 0),
        &Device::Cpu,
        |_, _| {}
    )));
    let mut t = train_cfg();
    t.optimizer = OptimizerKind::Sgd { momentum: 0.9 };
    assert!(inv(audit::white_box(
        &t,
        &AuditConfig::new(10, 0),
        &Device::Cpu,
        |_, _| {}
    )));
    let mut t = train_cfg();
    t.optimizer = OptimizerKind::Adam;
    assert!(inv(audit::white_box(
        &t,
        &AuditConfig::new(10, 0),
        &Device::Cpu,
        |_, _| {}
    )));
}

/// A small synthetic black-box run: N = `n` examples, plain SGD.
fn black_box_cfg(n: usize, noise: NoiseSpec, epochs: u64, batch: usize) -> TrainConfig {
    TrainConfig {
        data: DataSource::Synthetic { train: n, test: 16 },
        noise: Some(noise),
        epochs,
        batch_size: batch,
        ..train_cfg()
    }
}

#[test]
fn black_box_correct_runs_never_exceed_the_accountant() {
    for (i, sigma) in [1.0, 0.6].into_iter().enumerate() {
        let cfg = black_box_cfg(400, NoiseSpec::NoiseMultiplier(sigma), 2, 64);
        let mut steps = 0;
        let r = audit::black_box(
            &cfg,
            &AuditConfig::new(100, 20 + i as u64),
            &Device::Cpu,
            |t, _| steps = t,
        )
        .unwrap();
        println!("{}", serde_json::to_string(&r).unwrap());
        assert_eq!(r.kind, AuditKind::BlackBox);
        // The run samples from N' = N − m + #in, and q and the accountant are for N'.
        assert_eq!(r.dataset_size, 400 - 100 + r.included);
        assert!((r.sample_rate - 64.0 / r.dataset_size as f64).abs() < 1e-12);
        assert_eq!(steps, r.steps);
        assert!(r.steps >= 2 * 4, "{}", r.steps);
        assert!(
            r.epsilon_lower_bound <= r.accountant_epsilon(),
            "lower bound {} above the accountant's ε {} / {:?} (σ = {})",
            r.epsilon_lower_bound,
            r.epsilon_rdp,
            r.epsilon_prv,
            r.noise_multiplier
        );
        assert!(r.correct <= r.guesses && r.guesses <= 100);
    }
}

#[test]
fn black_box_catches_a_run_without_noise_claiming_epsilon_one() {
    // The run: σ = 0 (nothing hides a memorised mislabeled canary). The claim: ε = 1, the ε of
    // the σ calibrated for this run's q and steps.
    let mut cfg = black_box_cfg(BB_N, NoiseSpec::NoiseMultiplier(0.0), BB_EPOCHS, BB_BATCH);
    cfg.max_grad_norm = BB_CLIP;
    cfg.lr = BB_LR;
    let r = audit::black_box(&cfg, &AuditConfig::new(BB_M, 7), &Device::Cpu, |_, _| {}).unwrap();
    println!("{}", serde_json::to_string(&r).unwrap());
    let sigma = claimed_sigma(1.0, r.sample_rate, r.steps);
    let h = [HistoryEntry::new(sigma, r.sample_rate, r.steps).unwrap()];
    let claimed = accounting::epsilon(Method::Rdp, &h, DELTA).unwrap();
    assert!(claimed <= 1.0 && claimed > 0.9, "{claimed}");
    assert!(
        r.epsilon_lower_bound > claimed,
        "lower bound {} not above the claimed ε {claimed}",
        r.epsilon_lower_bound
    );
}

#[test]
fn bad_black_box_settings_are_typed_errors() {
    let inv = |r: dpsgd::Result<audit::AuditReport>| match r {
        Err(e @ Error::InvalidParameter { .. }) => e.to_string(),
        other => panic!("expected InvalidParameter, got {other:?}"),
    };
    let cfg = black_box_cfg(100, NoiseSpec::NoiseMultiplier(1.0), 1, 10);
    let run =
        |cfg: &TrainConfig, a: AuditConfig| audit::black_box(cfg, &a, &Device::Cpu, |_, _| {});
    // More canaries than training examples.
    let e = inv(run(&cfg, AuditConfig::new(101, 0)));
    assert!(e.contains("fewer canaries"), "{e}");
    // The training set without the canaries must hold a batch.
    let e = inv(run(&cfg, AuditConfig::new(95, 0)));
    assert!(e.contains("smaller batch"), "{e}");
    inv(run(&cfg, AuditConfig::new(1, 0)));
    let mut a = AuditConfig::new(10, 0);
    a.canary_norm = Some(1.0);
    let e = inv(run(&cfg, a));
    assert!(e.contains("white-box"), "{e}");
    let mut a = AuditConfig::new(10, 0);
    a.guesses = GuessRule::Fixed(6);
    inv(run(&cfg, a));
    let mut t = cfg.clone();
    t.noise = None;
    inv(run(&t, AuditConfig::new(10, 0)));
    let mut t = cfg.clone();
    t.optimizer = OptimizerKind::Adam;
    inv(run(&t, AuditConfig::new(10, 0)));
}

/// The `dpsgd` binary (only with the `cli` feature).
#[cfg(feature = "cli")]
fn dpsgd_cli(args: &[&str]) -> std::process::Output {
    let bin =
        std::env::var("DPSGD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dpsgd").to_string());
    std::process::Command::new(bin).args(args).output().unwrap()
}

#[cfg(feature = "cli")]
#[test]
fn the_cli_audits_a_null_model_and_rejects_bad_flags() {
    let o = dpsgd_cli(&[
        "audit",
        "--null-model",
        "500",
        "--canaries",
        "400",
        "--epochs",
        "2",
        "--batch-size",
        "600",
        "--dataset-size",
        "6000",
        "--epsilon",
        "2",
        "--seed",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in [
        "epsilon_lower_bound",
        "epsilon_rdp",
        "epsilon_prv",
        "guesses",
        "correct",
        "canaries",
        "candidates",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
    assert_eq!(v["steps"].as_u64().unwrap(), 20);
    assert_eq!(v["canaries"].as_u64().unwrap(), 400);
    assert!(v["epsilon_rdp"].as_f64().unwrap() <= 2.0);
    assert!(v["epsilon_lower_bound"].as_f64().unwrap() <= v["epsilon_rdp"].as_f64().unwrap());
    for bad in [
        &["audit", "--null-model", "100", "--canaries", "101"][..],
        &["audit", "--null-model", "100", "--canaries", "1"],
        &["audit", "--null-model", "100", "--confidence", "1"],
        &[
            "audit",
            "--null-model",
            "100",
            "--canaries",
            "10",
            "--guesses",
            "6",
        ],
    ] {
        let o = dpsgd_cli(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("must be"),
            "{bad:?}"
        );
    }
}

#[cfg(feature = "cli")]
#[test]
fn the_cli_runs_a_black_box_audit_and_rejects_it_without_data() {
    let o = dpsgd_cli(&[
        "audit",
        "--black-box",
        "--dataset",
        "synthetic",
        "--canaries",
        "100",
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--noise-multiplier",
        "1",
        "--seed",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"].as_str().unwrap(), "black-box");
    assert_eq!(v["canaries"].as_u64().unwrap(), 100);
    let n = v["dataset_size"].as_u64().unwrap();
    assert_eq!(n, 4000 - 100 + v["included"].as_u64().unwrap());
    assert!(v["epsilon_lower_bound"].as_f64().unwrap() <= v["epsilon_rdp"].as_f64().unwrap());
    for bad in [
        &["audit", "--black-box", "--null-model", "100"][..],
        &[
            "audit",
            "--black-box",
            "--dataset",
            "synthetic",
            "--canaries",
            "4001",
        ],
        &[
            "audit",
            "--black-box",
            "--dataset",
            "synthetic",
            "--canary-norm",
            "1",
        ],
    ] {
        let o = dpsgd_cli(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("must be"), "{bad:?}: {e}");
    }
    let o = dpsgd_cli(&["audit", "--black-box", "--null-model", "100"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--white-box"));
}
