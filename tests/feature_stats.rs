//! Private per-channel feature statistics (`dpsgd::mechanisms::feature_stats`) and the trainer's
//! `InputNorm::Private`: sensitivity and clipping, accuracy at small noise, the ε of the
//! composition against hand-computed RDP and the exact Gaussian δ, calibration to the total
//! target, bad input, and the released model saved and loaded with its statistics.

use dpsgd::accounting::rdp::{eps_from_rdp, rdp_sgm};
use dpsgd::accounting::{default_orders, epsilon, HistoryEntry, Method};
use dpsgd::engine::{NoiseSpec, PrivacyConfig, PrivacyEngine};
use dpsgd::mechanisms::feature_stats::{
    clipped_channel_sums, private_channel_stats, ChannelStats, FeatureStatsConfig,
};
use dpsgd::rng::{Purpose, RunKeys};
use dpsgd::train::{
    input_norm_path, load_saved_model, DataSource, InputNorm, LrSchedule, ModelKind, OptimizerKind,
    TrainConfig, Trainer,
};
use dpsgd::{Clipping, Device, Error, Layout};

const K: usize = 5;
const S: usize = 4;

fn cfg(sigma: f64, ca: f64, cb: f64) -> FeatureStatsConfig {
    FeatureStatsConfig {
        noise_multiplier: sigma,
        mean_clip: ca,
        sq_clip: cb,
    }
}

/// `n` examples of K × S features, channel k around 0.1·(k + 1) with spread 0.05·(k + 1).
fn data(n: usize, seed: u64) -> Vec<f32> {
    // SplitMix64: a uniform in [0, 1) per value (test data, no crate needed).
    let mut state = seed;
    let mut uniform = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f32 / (1u64 << 53) as f32
    };
    (0..n * K * S)
        .map(|j| {
            let k = (j / S) % K;
            0.1 * (k + 1) as f32 + 0.05 * (k + 1) as f32 * (uniform() * 2.0 - 1.0)
        })
        .collect()
}

/// Exact per-channel mean and variance over examples and positions, in f64.
fn exact(x: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut m = [0f64; K];
    let mut q = [0f64; K];
    for (j, &v) in x.iter().enumerate() {
        let k = (j / S) % K;
        m[k] += v as f64;
        q[k] += (v as f64) * (v as f64);
    }
    let c = (n * S) as f64;
    let mean: Vec<f64> = m.iter().map(|v| v / c).collect();
    let var = q.iter().zip(&mean).map(|(v, mu)| v / c - mu * mu).collect();
    (mean, var)
}

/// Removing one example moves the clipped sums by a vector whose parts, scaled by their bounds,
/// have norm ≤ 1 each (√2 jointly), however large the example; an example inside the bounds
/// moves them by exactly its own channel means / mean squares.
#[test]
fn sensitivity_is_bounded_by_the_clip_bounds() {
    let n = 50;
    let c = cfg(1.0, 0.2, 0.1);
    let mut x = data(n, 1);
    // Example 0: huge values (norms far above the bounds).
    for v in &mut x[..K * S] {
        *v = 1e3;
    }
    let (a1, b1) = clipped_channel_sums(&x, n, K, S, &c).unwrap();
    let (a0, b0) = clipped_channel_sums(&x[K * S..], n - 1, K, S, &c).unwrap();
    let da: f64 = a1
        .iter()
        .zip(&a0)
        .map(|(p, q)| (p - q).powi(2))
        .sum::<f64>()
        .sqrt();
    let db: f64 = b1
        .iter()
        .zip(&b0)
        .map(|(p, q)| (p - q).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        (da - 0.2).abs() < 1e-9,
        "mean part moved by {da}, want the bound 0.2"
    );
    assert!(
        (db - 0.1).abs() < 1e-9,
        "square part moved by {db}, want the bound 0.1"
    );
    assert!(((da / 0.2).powi(2) + (db / 0.1).powi(2)).sqrt() <= 2f64.sqrt() + 1e-9);
    // A small example (within both bounds) is not clipped: its contribution is exact.
    let small = vec![0.01f32; K * S];
    let mut y = small.clone();
    y.extend_from_slice(&x[K * S..]);
    let (a2, b2) = clipped_channel_sums(&y, n, K, S, &c).unwrap();
    for k in 0..K {
        assert!((a2[k] - a0[k] - 0.01).abs() < 1e-7);
        assert!((b2[k] - b0[k] - 1e-4).abs() < 1e-9);
    }
}

/// At small noise and bounds above every example's norms, the release is the exact statistic.
#[test]
fn statistics_match_the_exact_ones_at_small_noise() {
    let n = 2000;
    let x = data(n, 2);
    let (mean, var) = exact(&x, n);
    let key = RunKeys::seeded(7).key(Purpose::FeatureStats);
    let s = private_channel_stats(&x, n, K, S, &cfg(1e-3, 10.0, 10.0), key).unwrap();
    for k in 0..K {
        assert!((s.mean[k] as f64 - mean[k]).abs() < 1e-4, "mean {k}");
        assert!((s.var[k] as f64 - var[k]).abs() < 1e-4, "var {k}");
    }
    // At σ = 8 with the same bounds, the noise on the mean is σ·C/n = 0.04 per channel: the
    // release differs, and a second key gives a different release.
    let noisy = private_channel_stats(&x, n, K, S, &cfg(8.0, 10.0, 10.0), key).unwrap();
    assert_ne!(noisy, s);
    let other = RunKeys::seeded(8).key(Purpose::FeatureStats);
    assert_ne!(
        private_channel_stats(&x, n, K, S, &cfg(8.0, 10.0, 10.0), other).unwrap(),
        noisy
    );
    // Standardising with the exact statistics gives mean 0 and variance ≈ 1 per channel.
    let exact_stats = ChannelStats {
        mean: mean.iter().map(|&v| v as f32).collect(),
        var: var.iter().map(|&v| v as f32).collect(),
    };
    let mut z = x.clone();
    exact_stats.standardize(&mut z, S).unwrap();
    let (zm, zv) = exact(&z, n);
    for k in 0..K {
        assert!(zm[k].abs() < 1e-4, "standardised mean {}", zm[k]);
        let want = var[k] / (var[k] + 1e-5);
        assert!((zv[k] - want).abs() < 1e-3, "standardised var {}", zv[k]);
    }
}

/// The engine's ε after the statistics and T DP-SGD steps is the RDP conversion of
/// T·RDP_SGM(α) + α/σ_n² (the statistics' two Gaussian releases), at every order; before the
/// first step it is the statistics' alone, and its PRV bound matches the exact δ of the Gaussian
/// mechanism with sensitivity √2 (Balle & Wang 2018).
#[test]
fn epsilon_composes_with_dp_sgd_as_hand_computed_rdp() {
    let fs = cfg(8.0, 0.3, 0.15);
    assert_eq!(fs.rdp(4.0).unwrap(), 4.0 / 64.0);
    let (q, sigma, steps) = (0.05, 1.2, 300u64);
    let pc = PrivacyConfig {
        noise: NoiseSpec::NoiseMultiplier(sigma),
        delta: 1e-5,
        clipping: Clipping::Flat(1.0),
        sample_rate: q,
        dataset_size: 1000,
        planned_steps: steps,
        accountant: Method::Rdp,
    };
    let layout = Layout::from_sizes(&[4]).unwrap();
    let keys = RunKeys::seeded(3);
    let prior = fs.history().unwrap();
    let mut e =
        PrivacyEngine::with_keys_after(pc, layout.clone(), &Device::Cpu, &keys, &prior, 0.0)
            .unwrap();
    let orders = default_orders();
    let alone: Vec<f64> = orders.iter().map(|&a| a / 64.0).collect();
    let (e0, _) = eps_from_rdp(&orders, &alone, 1e-5).unwrap();
    assert!((e.epsilon_with(Method::Rdp).unwrap() - e0).abs() < 1e-12);
    assert!(e0 > 0.5, "σ_n = 8 alone costs ε = {e0}");
    // PRV of the statistics alone: the exact δ of the Gaussian mechanism at its ε upper bound
    // is at most δ, and not far below (the bound is tight to the accountant's 0.01).
    let ep = e.epsilon_with(Method::Prv).unwrap();
    let d = dpsgd::mechanisms::gaussian::exact_delta(8.0, ep, 2f64.sqrt()).unwrap();
    assert!(d <= 1e-5 * 1.001, "δ({ep}) = {d}");
    let d_lo = dpsgd::mechanisms::gaussian::exact_delta(8.0, ep - 0.02, 2f64.sqrt()).unwrap();
    assert!(d_lo > 1e-5, "ε {ep} is loose: δ({}) = {d_lo}", ep - 0.02);
    // After `steps` DP-SGD steps.
    let mut params = dpsgd::Buffer::from_slice(&Device::Cpu, &[0.0f32; 4]).unwrap();
    for _ in 0..steps {
        e.step_sgd(&mut params, None, &dpsgd::SgdConfig::new(0.1))
            .unwrap();
    }
    let rdp: Vec<f64> = orders
        .iter()
        .map(|&a| steps as f64 * rdp_sgm(q, sigma, a).unwrap() + a / 64.0)
        .collect();
    let (want, _) = eps_from_rdp(&orders, &rdp, 1e-5).unwrap();
    let got = e.epsilon_with(Method::Rdp).unwrap();
    // The engine charges the samplers' truncation (≈ 1e-20 here): equal to 1e-9.
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    let sgd_only = epsilon(
        Method::Rdp,
        &[HistoryEntry::new(sigma, q, steps).unwrap()],
        1e-5,
    )
    .unwrap();
    assert!(got > sgd_only + 0.05, "{got} vs DP-SGD alone {sgd_only}");
    // PRV composes the same history and stays below RDP.
    let prv = e.epsilon_with(Method::Prv).unwrap();
    assert!(prv > 0.0 && prv < got);
}

/// With a target ε the engine calibrates σ to the composition: larger than without the
/// statistics, and the planned run ends at or below the target, statistics included. A target
/// below the statistics' own ε is an error before anything is drawn.
#[test]
fn calibration_takes_the_statistics_out_of_the_target() {
    let fs = cfg(8.0, 0.3, 0.15);
    let (q, steps) = (4096.0 / 60000.0, 40 * 15);
    for method in [Method::Rdp, Method::Prv] {
        let pc = PrivacyConfig {
            noise: NoiseSpec::TargetEpsilon(3.0),
            delta: 1e-5,
            clipping: Clipping::Flat(0.1),
            sample_rate: q,
            dataset_size: 60000,
            planned_steps: steps,
            accountant: method,
        };
        let layout = Layout::from_sizes(&[10]).unwrap();
        let keys = RunKeys::seeded(1);
        let plain = PrivacyEngine::with_keys(pc.clone(), layout.clone(), &Device::Cpu, &keys)
            .unwrap()
            .noise_multiplier();
        let prior = fs.history().unwrap();
        let e = PrivacyEngine::with_keys_after(
            pc.clone(),
            layout.clone(),
            &Device::Cpu,
            &keys,
            &prior,
            0.0,
        )
        .unwrap();
        let s = e.noise_multiplier();
        assert!(
            s > plain,
            "{method:?}: σ {s} vs {plain} without the statistics"
        );
        let mut h = prior.clone();
        h.push(HistoryEntry::new(s, q, steps).unwrap());
        let total = epsilon(method, &h, 1e-5).unwrap();
        assert!(total <= 3.0 && total > 2.9, "{method:?}: ε {total}");
        // σ_n = 1 alone costs more than ε = 3.
        let loud = cfg(1.0, 0.3, 0.15).history().unwrap();
        let err = PrivacyEngine::with_keys_after(pc, layout, &Device::Cpu, &keys, &loud, 0.0)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidParameter { .. }), "{err}");
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let x = data(10, 3);
    let key = RunKeys::seeded(1).key(Purpose::FeatureStats);
    for bad in [
        cfg(0.0, 1.0, 1.0),
        cfg(-1.0, 1.0, 1.0),
        cfg(f64::NAN, 1.0, 1.0),
        cfg(1.0, 0.0, 1.0),
        cfg(1.0, 1.0, f64::INFINITY),
    ] {
        let e = private_channel_stats(&x, 10, K, S, &bad, key).unwrap_err();
        assert!(matches!(e, Error::InvalidParameter { .. }), "{bad:?}: {e}");
        assert!(bad.history().is_err());
    }
    let good = cfg(1.0, 1.0, 1.0);
    assert!(matches!(
        private_channel_stats(&x, 11, K, S, &good, key),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        private_channel_stats(&x, 0, K, S, &good, key),
        Err(Error::Shape { .. })
    ));
    let mut y = x.clone();
    y[3] = f32::NAN;
    assert!(matches!(
        private_channel_stats(&y, 10, K, S, &good, key),
        Err(Error::NonFinite { .. })
    ));
    let s = ChannelStats {
        mean: vec![0.0; 2],
        var: vec![1.0; 3],
    };
    assert!(s.standardize(&mut [0.0; 6], 1).is_err());
    let s = ChannelStats {
        mean: vec![0.0; 2],
        var: vec![1.0, -1.0],
    };
    assert!(s.standardize(&mut [0.0; 2], 1).is_err());
    // Private statistics for a pixel model: refused by the configuration.
    let mut c = config(InputNorm::Private(good));
    c.model = ModelKind::TanhConvnet;
    assert!(matches!(
        Trainer::new(c, &Device::Cpu),
        Err(Error::InvalidParameter { .. })
    ));
    let c = config(InputNorm::Private(cfg(0.0, 1.0, 1.0)));
    assert!(matches!(
        Trainer::new(c, &Device::Cpu),
        Err(Error::InvalidParameter { .. })
    ));
}

fn config(norm: InputNorm) -> TrainConfig {
    TrainConfig {
        data: DataSource::Synthetic {
            train: 600,
            test: 200,
        },
        model: ModelKind::ScatterLinear,
        noise: Some(NoiseSpec::NoiseMultiplier(1.0)),
        delta: 1e-5,
        epochs: 2,
        batch_size: 100,
        physical_batch: 64,
        lr: 2.0,
        optimizer: OptimizerKind::Sgd { momentum: 0.5 },
        max_grad_norm: 0.5,
        accountant: Method::Rdp,
        seed: Some(5),
        validation: 0,
        lr_schedule: LrSchedule::Constant,
        ema_decay: None,
        augmult: 1,
        augmult_views: 0,
        input_norm: norm,
    }
}

/// A scatter-linear run with private statistics: no GroupNorm layer, ε above the same run's
/// GroupNorm ε by the statistics' cost (RDP and PRV), the statistics saved beside the model
/// and in the checkpoint, and the saved model + statistics reproduce the trainer's accuracy.
#[test]
fn trainer_with_private_statistics_accounts_saves_and_reloads() {
    let fs = cfg(8.0, 0.3, 0.15);
    let mut t = Trainer::new(config(InputNorm::Private(fs)), &Device::Cpu).unwrap();
    let mut g = Trainer::new(config(InputNorm::GroupNorm), &Device::Cpu).unwrap();
    assert_eq!(t.model().num_params(), 81 * 49 * 10 + 10);
    assert_eq!(t.model().num_params() + 2 * 81, g.model().num_params());
    let stats = t.input_norm_stats().unwrap().clone();
    assert_eq!(stats.channels(), 81);
    // Before any step: the statistics' ε alone.
    let e0 = t.engine().unwrap().epsilon_with(Method::Rdp).unwrap();
    assert!(e0 > 0.5 && e0 < 0.7, "{e0}");
    t.train_epoch(|_, _| {}).unwrap();
    g.train_epoch(|_, _| {}).unwrap();
    let (mt, mg) = (t.metrics()[0].clone(), g.metrics()[0].clone());
    for (a, b) in [
        (mt.epsilon_rdp.unwrap(), mg.epsilon_rdp.unwrap()),
        (mt.epsilon_prv.unwrap(), mg.epsilon_prv.unwrap()),
    ] {
        assert!(a > b + 0.01, "with statistics {a}, without {b}");
    }
    let dir = std::env::temp_dir().join(format!("dpsgd-fstats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    t.save_model(&path).unwrap();
    let (loaded, lcfg) = ChannelStats::load(input_norm_path(&path)).unwrap();
    assert_eq!(loaded, stats);
    assert_eq!(lcfg, fs);
    // Reload the released model and evaluate it on the test features by hand.
    let norm = InputNorm::Private(fs);
    let (model, st) =
        load_saved_model(&path, ModelKind::ScatterLinear, &norm, &Device::Cpu).unwrap();
    let st = st.unwrap();
    let (_, test) = dpsgd::train::load_data(&config(norm).data, ModelKind::ScatterLinear).unwrap();
    let mut x = test.images().to_vec();
    st.standardize(&mut x, 49).unwrap();
    let mut ws = model.workspace(test.len()).unwrap();
    model.forward_slice(&mut ws, &x).unwrap();
    let out = ws.output_vec().unwrap();
    let correct = out
        .chunks(10)
        .zip(test.labels())
        .filter(|(row, &y)| {
            let am = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            am as u32 == y
        })
        .count();
    let acc = correct as f64 / test.len() as f64;
    assert!(
        (acc - mt.eval_accuracy).abs() < 1e-9,
        "{acc} vs {}",
        mt.eval_accuracy
    );
    assert!(acc > 0.3, "learned something: {acc}");
    // The checkpoint carries the statistics; a resumed run continues with them.
    t.save_checkpoint(&dir).unwrap();
    let mut r = Trainer::new(config(InputNorm::Private(fs)), &Device::Cpu).unwrap();
    r.load_checkpoint(&dir).unwrap();
    assert_eq!(r.input_norm_stats().unwrap(), &stats);
    assert_eq!(
        r.engine().unwrap().epsilon_with(Method::Rdp).unwrap(),
        t.engine().unwrap().epsilon_with(Method::Rdp).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The noise on the released means has the documented scale σ_n·C_mean per channel sum: over 200
/// keys × K channels, z = (n·μ̂ − Σ clipped means)/(σ_n·C_mean) is N(0, 1), so Σz² is χ²(1000);
/// both tails are checked at p ≈ 1e-6 (Wilson–Hilferty), so a noise √2 too large or too small
/// (e.g. the joint sensitivity applied twice, or the clip bound left out) fails.
#[test]
fn mean_noise_has_the_documented_scale() {
    let n = 10;
    let x = data(n, 5);
    let c = cfg(2.0, 0.3, 0.15);
    let (sa, _) = clipped_channel_sums(&x, n, K, S, &c).unwrap();
    let std = c.noise_multiplier * c.mean_clip;
    let mut sum_z2 = 0f64;
    let mut df = 0f64;
    for seed in 0..200u64 {
        let key = RunKeys::seeded(1000 + seed).key(Purpose::FeatureStats);
        let s = private_channel_stats(&x, n, K, S, &c, key).unwrap();
        for (&m, &sum) in s.mean.iter().zip(&sa) {
            let z = (m as f64 * n as f64 - sum) / std;
            sum_z2 += z * z;
            df += 1.0;
        }
    }
    // χ²(df) quantiles at one-sided p = 1e-6 each way: z = 4.7534243.
    let a = 2.0 / (9.0 * df);
    let upper = df * (1.0 - a + 4.753_424_3 * a.sqrt()).powi(3);
    let lower = df * (1.0 - a - 4.753_424_3 * a.sqrt()).powi(3);
    assert!(
        (lower..=upper).contains(&sum_z2),
        "Σz² = {sum_z2:.1} outside [{lower:.1}, {upper:.1}] for df = {df}"
    );
}
