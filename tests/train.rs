//! The private training engine and the trainer: external per-sample gradients, the budget,
//! empty lots, learning on generated data, checkpoints that resume bit for bit (also after
//! SIGKILL), and typed errors.

use approx::assert_relative_eq;
use dpsgd::accounting::{Method, PrivacyAccountant};
use dpsgd::engine::{NoiseSpec, PrivacyConfig, PrivacyEngine};
use dpsgd::ops::Clipping;
#[allow(unused_imports)]
use dpsgd::rng::RandomBits;
use dpsgd::train::{DataSource, ModelKind, OptimizerKind, TrainConfig, Trainer};
use dpsgd::{Buffer, Device, Error, Layout, SgdConfig};
use std::path::PathBuf;

fn privacy(noise: NoiseSpec, steps: u64) -> PrivacyConfig {
    PrivacyConfig {
        noise,
        delta: 1e-5,
        clipping: Clipping::Flat(1.0),
        sample_rate: 0.01,
        dataset_size: 1000,
        planned_steps: steps,
        accountant: Method::Rdp,
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dpsgd-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Another trainer's own per-sample gradients in, the noised mean gradient and ε out; with
/// σ = 0 the result is exactly Σ clip(g_i) / (qN).
#[test]
fn engine_with_external_gradients() {
    let layout = Layout::from_sizes(&[3, 2]).unwrap();
    let dev = Device::Cpu;
    let mut e = PrivacyEngine::new(
        privacy(NoiseSpec::NoiseMultiplier(0.0), 10),
        layout,
        &dev,
        Some(1),
    )
    .unwrap();
    // Two examples: norms 5 (clipped to 1) and 0.5 (kept).
    let g =
        Buffer::from_slice(&dev, &[3.0f32, 4.0, 0.0, 0.0, 0.0, 0.3, 0.4, 0.0, 0.0, 0.0]).unwrap();
    e.accumulate(&g, 2).unwrap();
    assert_eq!(e.lot_size(), 2);
    let mut out = Buffer::<f32>::zeros(&dev, 5).unwrap();
    let eps = e.noisy_gradient(&mut out).unwrap();
    assert!(
        eps.is_infinite() || eps > 100.0,
        "σ = 0 gives no privacy: ε = {eps}"
    );
    let v = out.to_vec().unwrap();
    let f0 = 1.0 / (5.0 + 1e-6);
    assert_relative_eq!(v[0], (3.0 * f0 + 0.3) / 10.0, max_relative = 1e-5);
    assert_relative_eq!(v[1], (4.0 * f0 + 0.4) / 10.0, max_relative = 1e-5);
    assert_eq!(e.steps(), 1);
    assert_eq!(e.lot_size(), 0, "the lot is consumed by the step");
}

/// `accumulate_model` (the clipping fused into the model's backward) and `accumulate_batch`
/// (forward, loss, backward and clipping in one pass) give the engine the same lot as the
/// model's per-sample rows through `accumulate`: same lot size, and the same noised mean
/// gradient with σ = 0 up to f32 summation order (flat and per-layer clipping).
#[test]
fn accumulate_model_equals_accumulate_of_rows() {
    use dpsgd::cpu::loss::Reduction;
    use dpsgd::nn::{models, Grads, Loss};
    let dev = Device::Cpu;
    let model = models::sample_conv_net_tanh(&dev, 2).unwrap();
    let p = model.num_params();
    let batch = 37;
    let mut ws = model.workspace(batch).unwrap();
    let mut rng = dpsgd::cpu::philox::Philox::new(5, 0);
    let x: Vec<f32> = (0..batch * 784).map(|_| rng.next_f64() as f32).collect();
    let y: Vec<u32> = (0..batch).map(|_| rng.next_below(10) as u32).collect();
    let segs = model.layout().num_segments();
    for clipping in [
        Clipping::Flat(0.05),
        Clipping::PerLayer((0..segs).map(|k| 0.01 + 0.01 * k as f32).collect()),
    ] {
        let mut cfg = privacy(NoiseSpec::NoiseMultiplier(0.0), 10);
        cfg.clipping = clipping;
        let mut fused =
            PrivacyEngine::new(cfg.clone(), model.layout().clone(), &dev, Some(1)).unwrap();
        let mut plain =
            PrivacyEngine::new(cfg.clone(), model.layout().clone(), &dev, Some(1)).unwrap();
        let mut one_pass = PrivacyEngine::new(cfg, model.layout().clone(), &dev, Some(1)).unwrap();
        for _ in 0..2 {
            let l = one_pass
                .accumulate_batch(&model, &mut ws, &x, Loss::CrossEntropy(&y))
                .unwrap();
            assert!(l.is_finite() && l > 0.0);
            model.forward_slice(&mut ws, &x).unwrap();
            model
                .loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)
                .unwrap();
            fused.accumulate_model(&model, &mut ws).unwrap();
            model.forward_slice(&mut ws, &x).unwrap();
            model
                .loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)
                .unwrap();
            let mut rows = Buffer::zeros(&dev, batch * p).unwrap();
            model
                .backward(&mut ws, Grads::PerSample(&mut rows), false)
                .unwrap();
            plain.accumulate(&rows, batch).unwrap();
        }
        assert_eq!(fused.lot_size(), 2 * batch);
        assert_eq!(plain.lot_size(), 2 * batch);
        assert_eq!(one_pass.lot_size(), 2 * batch);
        let mut a = Buffer::<f32>::zeros(&dev, p).unwrap();
        let mut b = Buffer::<f32>::zeros(&dev, p).unwrap();
        let mut c = Buffer::<f32>::zeros(&dev, p).unwrap();
        fused.noisy_gradient(&mut a).unwrap();
        plain.noisy_gradient(&mut b).unwrap();
        one_pass.noisy_gradient(&mut c).unwrap();
        let (a, b, c) = (
            a.to_vec().unwrap(),
            b.to_vec().unwrap(),
            c.to_vec().unwrap(),
        );
        let big = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(big > 0.0);
        for (j, ((u, w), v)) in a.iter().zip(&c).zip(&b).enumerate() {
            assert!((u - v).abs() <= 1e-5 * big, "[{j}] {u} vs {v}");
            assert!((w - v).abs() <= 1e-5 * big, "[{j}] one pass {w} vs {v}");
        }
    }
}

/// An empty lot is a step: noise is added and the accountant records it.
#[test]
fn empty_lots_are_noised_and_accounted() {
    let dev = Device::Cpu;
    let mut e = PrivacyEngine::new(
        privacy(NoiseSpec::NoiseMultiplier(1.0), 10),
        Layout::flat(100),
        &dev,
        Some(2),
    )
    .unwrap();
    let mut p = Buffer::<f32>::zeros(&dev, 100).unwrap();
    e.step_sgd(&mut p, None, &SgdConfig::new(1.0)).unwrap();
    assert_eq!(e.steps(), 1);
    assert!(e.epsilon().unwrap() > 0.0);
    assert!(
        p.to_vec().unwrap().iter().any(|&x| x != 0.0),
        "noise was added"
    );
    assert_eq!(e.accountant().history().total_steps(), 1);
}

/// With a target ε, σ is calibrated for the planned steps, those steps are allowed, and the
/// next one is refused before any noise is drawn.
#[test]
fn budget_refuses_the_step_past_the_target() {
    let dev = Device::Cpu;
    let steps = 50;
    let mut e = PrivacyEngine::new(
        privacy(NoiseSpec::TargetEpsilon(1.0), steps),
        Layout::flat(8),
        &dev,
        Some(3),
    )
    .unwrap();
    let sigma = e.noise_multiplier();
    assert!(sigma > 0.3 && sigma < 10.0, "σ = {sigma}");
    let mut p = Buffer::<f32>::zeros(&dev, 8).unwrap();
    for _ in 0..steps {
        e.step_sgd(&mut p, None, &SgdConfig::new(0.1)).unwrap();
    }
    let eps = e.epsilon().unwrap();
    assert!(eps <= 1.0 && eps > 0.9, "ε after the planned steps = {eps}");
    let mut extra = 0;
    let err = loop {
        let before = p.to_vec().unwrap();
        match e.step_sgd(&mut p, None, &SgdConfig::new(0.1)) {
            Ok(()) => extra += 1,
            Err(err) => {
                assert_eq!(
                    p.to_vec().unwrap(),
                    before,
                    "no noise drawn for a refused step"
                );
                break err;
            }
        }
        assert!(extra < 10_000);
    };
    assert!(matches!(err, Error::BudgetExhausted(_)), "{err}");
    assert!(e.epsilon().unwrap() <= 1.0, "ε never passes the target");
}

#[test]
fn invalid_privacy_parameters_are_typed_errors() {
    let dev = Device::Cpu;
    let bad = [
        privacy(NoiseSpec::TargetEpsilon(0.0), 10),
        privacy(NoiseSpec::TargetEpsilon(-1.0), 10),
        privacy(NoiseSpec::NoiseMultiplier(-0.5), 10),
        privacy(NoiseSpec::NoiseMultiplier(f64::NAN), 10),
        PrivacyConfig {
            delta: 0.0,
            ..privacy(NoiseSpec::NoiseMultiplier(1.0), 10)
        },
        PrivacyConfig {
            delta: 1.0,
            ..privacy(NoiseSpec::NoiseMultiplier(1.0), 10)
        },
        PrivacyConfig {
            sample_rate: 0.0,
            ..privacy(NoiseSpec::NoiseMultiplier(1.0), 10)
        },
        PrivacyConfig {
            clipping: Clipping::Flat(0.0),
            ..privacy(NoiseSpec::NoiseMultiplier(1.0), 10)
        },
    ];
    for c in bad {
        let r = PrivacyEngine::new(c.clone(), Layout::flat(4), &dev, Some(0));
        assert!(
            matches!(r, Err(Error::InvalidParameter { .. })),
            "{c:?}: {r:?}"
        );
    }
}

fn small_config(seed: u64, epochs: u64) -> TrainConfig {
    TrainConfig {
        data: DataSource::Synthetic {
            train: 1200,
            test: 300,
        },
        model: ModelKind::TanhConvnet,
        noise: Some(NoiseSpec::NoiseMultiplier(1.0)),
        delta: 1e-5,
        epochs,
        batch_size: 120,
        physical_batch: 50,
        lr: 2.0,
        optimizer: OptimizerKind::Sgd { momentum: 0.0 },
        max_grad_norm: 1.0,
        accountant: Method::Rdp,
        seed: Some(seed),
        validation: 0,
        lr_schedule: dpsgd::train::LrSchedule::Cosine,
        ema_decay: None,
        augmult: 1,
        augmult_views: 0,
        input_norm: dpsgd::train::InputNorm::GroupNorm,
    }
}

/// The parameters' moving average is post-processing: the iterates and ε are those of the
/// same run without it; evaluation and the saved model use the average and leave the
/// iterate untouched; a resumed run ends with the same average, bit for bit; a decay outside
/// (0, 1) is refused.
#[test]
fn ema_is_post_processing_and_resumes() {
    let dev = Device::Cpu;
    let ema_cfg = |seed| TrainConfig {
        ema_decay: Some(0.9),
        ..small_config(seed, 2)
    };
    let mut plain = Trainer::new(small_config(13, 2), &dev).unwrap();
    let mut full = Trainer::new(ema_cfg(13), &dev).unwrap();
    for _ in 0..2 {
        plain.train_epoch(|_, _| {}).unwrap();
        full.train_epoch(|_, _| {}).unwrap();
    }
    let iterate = full.model().params().to_vec().unwrap();
    assert_eq!(plain.model().params().to_vec().unwrap(), iterate);
    assert_eq!(
        plain.engine().unwrap().epsilon().unwrap(),
        full.engine().unwrap().epsilon().unwrap()
    );
    let (loss_ema, _) = full.evaluate().unwrap();
    let (loss_plain, _) = plain.evaluate().unwrap();
    assert_ne!(loss_ema, loss_plain, "evaluation must use the average");
    assert_eq!(full.model().params().to_vec().unwrap(), iterate);
    let dir = tmpdir("ema");
    full.save_model(dir.join("ema.safetensors")).unwrap();
    full.model()
        .save_safetensors(dir.join("iterate.safetensors"))
        .unwrap();
    let saved = std::fs::read(dir.join("ema.safetensors")).unwrap();
    assert_ne!(
        saved,
        std::fs::read(dir.join("iterate.safetensors")).unwrap()
    );
    assert_eq!(full.model().params().to_vec().unwrap(), iterate);
    // Stop after epoch 1, resume: the same average at the end.
    let mut a = Trainer::new(ema_cfg(13), &dev).unwrap();
    a.train_epoch(|_, _| {}).unwrap();
    a.save_checkpoint(&dir).unwrap();
    let mut b = Trainer::new(ema_cfg(13), &dev).unwrap();
    b.load_checkpoint(&dir).unwrap();
    b.train_epoch(|_, _| {}).unwrap();
    b.save_model(dir.join("resumed.safetensors")).unwrap();
    assert_eq!(
        saved,
        std::fs::read(dir.join("resumed.safetensors")).unwrap()
    );
    for bad in [0.0, 1.0, f32::NAN] {
        let cfg = TrainConfig {
            ema_decay: Some(bad),
            ..small_config(1, 1)
        };
        assert!(matches!(
            Trainer::new(cfg, &dev),
            Err(Error::InvalidParameter { .. })
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// DP-SGD learns the generated data (lots split into physical batches of 50).
#[test]
fn private_training_learns() {
    let mut t = Trainer::new(small_config(7, 3), &Device::Cpu).unwrap();
    let (_, acc0) = t.evaluate().unwrap();
    let mut last = None;
    for _ in 0..3 {
        last = Some(t.train_epoch(|_, _| {}).unwrap());
    }
    let m = last.unwrap();
    assert!(
        m.eval_accuracy > 0.8 && m.eval_accuracy > acc0 + 0.3,
        "accuracy {acc0} → {}",
        m.eval_accuracy
    );
    let (r, p) = (m.epsilon_rdp.unwrap(), m.epsilon_prv.unwrap());
    assert!(r > 0.0 && p > 0.0 && p <= r * 1.05, "ε RDP {r}, PRV {p}");
    assert_eq!(m.steps, 30);
}

/// A private run never computes the training loss (private data with unbounded sensitivity,
/// outside the accountant): the trainer's metrics have none, in memory and serialised, and so
/// has a checkpoint's record; a non-private run keeps it. Test-set figures are public.
#[test]
fn private_metrics_hold_no_training_loss() {
    let dev = Device::Cpu;
    let mut t = Trainer::new(small_config(17, 1), &dev).unwrap();
    let m = t.train_epoch(|_, _| {}).unwrap();
    assert_eq!(m.train_loss, None);
    assert!(!m.eval_private_data, "the test set is public data");
    let json = serde_json::to_string(&m).unwrap();
    assert!(!json.contains("train_loss"), "{json}");
    assert!(t.metrics().iter().all(|m| m.train_loss.is_none()));
    let dir = tmpdir("private-metrics");
    t.save_checkpoint(&dir).unwrap();
    let mut r = Trainer::new(small_config(17, 1), &dev).unwrap();
    r.load_checkpoint(&dir).unwrap();
    assert_eq!(r.metrics(), t.metrics());
    let _ = std::fs::remove_dir_all(&dir);

    let non_private = TrainConfig {
        noise: None,
        ..small_config(17, 1)
    };
    let mut t = Trainer::new(non_private, &dev).unwrap();
    let m = t.train_epoch(|_, _| {}).unwrap();
    let l = m
        .train_loss
        .expect("a non-private run reports its training loss");
    assert!(l.is_finite() && l > 0.0, "{l}");
    assert!(serde_json::to_string(&m).unwrap().contains("train_loss"));

    let validation = TrainConfig {
        validation: 200,
        ..small_config(17, 1)
    };
    let mut t = Trainer::new(validation, &dev).unwrap();
    let m = t.train_epoch(|_, _| {}).unwrap();
    assert_eq!(m.eval_split, "validation");
    assert!(m.eval_private_data, "validation figures are private data");
}

/// A run stopped after epoch 1 and resumed from its checkpoint ends with the same parameter
/// bits and the same ε as an uninterrupted run.
#[test]
fn resume_is_bit_exact() {
    let dev = Device::Cpu;
    let mut full = Trainer::new(small_config(11, 2), &dev).unwrap();
    full.train_epoch(|_, _| {}).unwrap();
    full.train_epoch(|_, _| {}).unwrap();
    let dir = tmpdir("resume");
    let mut a = Trainer::new(small_config(11, 2), &dev).unwrap();
    a.train_epoch(|_, _| {}).unwrap();
    a.save_checkpoint(&dir).unwrap();
    drop(a);
    let mut b = Trainer::new(small_config(11, 2), &dev).unwrap();
    b.load_checkpoint(&dir).unwrap();
    assert_eq!(b.epochs_done(), 1);
    b.train_epoch(|_, _| {}).unwrap();
    let (pf, pb) = (
        full.model().params().to_vec().unwrap(),
        b.model().params().to_vec().unwrap(),
    );
    assert!(
        pf.iter().zip(&pb).all(|(x, y)| x.to_bits() == y.to_bits()),
        "parameters differ after resume"
    );
    assert_eq!(
        full.engine().unwrap().epsilon().unwrap(),
        b.engine().unwrap().epsilon().unwrap()
    );
    // A checkpoint of another configuration is refused.
    let mut other = Trainer::new(small_config(12, 2), &dev).unwrap();
    assert!(matches!(
        other.load_checkpoint(&dir),
        Err(Error::Format { .. })
    ));
    // A corrupt checkpoint is a Format error.
    std::fs::write(dir.join("checkpoint.safetensors"), b"garbage").unwrap();
    assert!(matches!(b.load_checkpoint(&dir), Err(Error::Format { .. })));
}

// The tests below run the `dpsgd` binary, which exists only with the `cli` feature.

/// The `dpsgd` binary: `DPSGD_BIN` when set (binaries staged to another machine), else cargo's.
#[cfg(feature = "cli")]
fn bin() -> String {
    std::env::var("DPSGD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dpsgd").to_string())
}

#[cfg(feature = "cli")]
fn train_cmd(out: &std::path::Path, resume: bool) -> std::process::Command {
    let mut c = std::process::Command::new(bin());
    c.args([
        "train",
        "--dataset",
        "synthetic",
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--physical-batch",
        "16",
        "--noise-multiplier",
        "1.0",
        "--lr",
        "0.5",
        "--seed",
        "5",
        "--out",
    ])
    .arg(out)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    if resume {
        c.arg("--resume");
    }
    c
}

/// `dpsgd train` killed with SIGKILL mid-run and resumed with `--resume` writes the same model
/// bytes as an uninterrupted run.
#[cfg(feature = "cli")]
#[test]
fn sigkill_then_resume_matches_uninterrupted_run() {
    let whole = tmpdir("whole");
    assert!(train_cmd(&whole, false).status().unwrap().success());
    let killed = tmpdir("killed");
    let mut child = train_cmd(&killed, false).spawn().unwrap();
    let ckpt = killed.join("checkpoint.safetensors");
    let t0 = std::time::Instant::now();
    while !ckpt.exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(30));
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    assert!(ckpt.exists(), "no checkpoint was written before the kill");
    assert!(
        !killed.join("model.safetensors").exists(),
        "the run finished before it was killed"
    );
    assert!(train_cmd(&killed, true).status().unwrap().success());
    let a = std::fs::read(whole.join("model.safetensors")).unwrap();
    let b = std::fs::read(killed.join("model.safetensors")).unwrap();
    assert!(a == b, "resumed model differs from the uninterrupted one");
    let ma = std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap();
    let mb = std::fs::read_to_string(killed.join("metrics.jsonl")).unwrap();
    let eps = |s: &str| -> Vec<f64> {
        s.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["epsilon_rdp"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(eps(&ma), eps(&mb));
    // Without --resume an existing checkpoint is not overwritten: exit code 2.
    let st = train_cmd(&killed, false).status().unwrap();
    assert_eq!(st.code(), Some(2));
}
