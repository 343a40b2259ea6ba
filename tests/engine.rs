//! The private engine's noise and step bookkeeping: the noise actually added through the
//! engine has standard deviation σ·√ΣC²/(q·N) (KS and variance tests at p ≈ 1e-6 critical
//! values) for flat and per-layer clipping, `step_sgd`, `step_adam` and `noisy_gradient`,
//! physical batches, seeded and secure mode; validation before a step is recorded; no lot
//! released twice; the truncation term in ε; `Mean` losses refused by the clipped path.

mod common;

use common::{ks_critical, ks_statistic, normal_cdf, Z_1E6};
use dpsgd::accounting::{Method, PrivacyAccountant};
use dpsgd::cpu::loss::Reduction;
use dpsgd::engine::{NoiseSpec, PrivacyConfig, PrivacyEngine};
use dpsgd::nn::{models, Grads, Loss};
use dpsgd::ops::Clipping;
use dpsgd::{AdamConfig, Buffer, Device, Error, Layout, SgdConfig};

const P: usize = 120_000;

fn config(clipping: Clipping, sigma: f64) -> PrivacyConfig {
    PrivacyConfig {
        noise: NoiseSpec::NoiseMultiplier(sigma),
        delta: 1e-5,
        clipping,
        sample_rate: 0.01,
        dataset_size: 5_000,
        planned_steps: 100,
        accountant: Method::Rdp,
    }
}

/// Checks that `xs` (the released values with zero gradients) are N(0, want²): the sample
/// variance's z-statistic and the KS statistic against p ≈ 1e-6 critical values.
fn assert_normal(xs: &[f32], want: f64, what: &str) {
    let n = xs.len() as f64;
    let mut z: Vec<f64> = xs.iter().map(|&x| x as f64 / want).collect();
    let var = z.iter().map(|x| x * x).sum::<f64>() / n;
    let zv = (var - 1.0) / (2.0 / n).sqrt();
    assert!(zv.abs() < Z_1E6, "{what}: variance ratio {var}, z = {zv}");
    let d = ks_statistic(&mut z, normal_cdf);
    assert!(d < ks_critical(xs.len(), 1e-6), "{what}: KS D = {d}");
}

/// Accumulates two physical batches of zero gradients (so the release is pure noise).
fn zero_lot(e: &mut PrivacyEngine, p: usize) {
    let z = Buffer::from_vec(vec![0f32; 3 * p]);
    e.accumulate(&z, 3).unwrap();
    let z = Buffer::from_vec(vec![0f32; 2 * p]);
    e.accumulate(&z, 2).unwrap();
}

#[test]
fn released_noise_has_the_stated_std() {
    let layout = Layout::from_sizes(&[P / 2, P / 4, P / 4]).unwrap();
    let clippings = [Clipping::Flat(0.7), Clipping::PerLayer(vec![0.5, 1.0, 2.0])];
    let sigma = 1.3;
    for clipping in clippings {
        let c = clipping
            .bounds()
            .iter()
            .map(|&b| b as f64 * b as f64)
            .sum::<f64>()
            .sqrt();
        let want = sigma * c / (0.01 * 5_000.0);
        for seed in [Some(7u64), None] {
            let what = format!("{clipping:?} seed {seed:?}");
            let cfg = config(clipping.clone(), sigma);
            // noisy_gradient: the noised mean itself.
            let mut e =
                PrivacyEngine::new(cfg.clone(), layout.clone(), &Device::Cpu, seed).unwrap();
            zero_lot(&mut e, P);
            let mut out = Buffer::<f32>::zeros(&Device::Cpu, P).unwrap();
            e.noisy_gradient(&mut out).unwrap();
            assert_normal(
                &out.to_vec().unwrap(),
                want,
                &format!("noisy_gradient {what}"),
            );
            // step_sgd with lr 1 from zero parameters: p = −ĝ.
            let mut e =
                PrivacyEngine::new(cfg.clone(), layout.clone(), &Device::Cpu, seed).unwrap();
            zero_lot(&mut e, P);
            let mut params = Buffer::<f32>::zeros(&Device::Cpu, P).unwrap();
            e.step_sgd(&mut params, None, &SgdConfig::new(1.0)).unwrap();
            assert_normal(&params.to_vec().unwrap(), want, &format!("step_sgd {what}"));
            // step_adam: after the first step m = (1 − β₁)·ĝ.
            let mut e = PrivacyEngine::new(cfg, layout.clone(), &Device::Cpu, seed).unwrap();
            zero_lot(&mut e, P);
            let mut params = Buffer::<f32>::zeros(&Device::Cpu, P).unwrap();
            let (mut m, mut v) = (
                Buffer::<f32>::zeros(&Device::Cpu, P).unwrap(),
                Buffer::<f32>::zeros(&Device::Cpu, P).unwrap(),
            );
            let adam = AdamConfig::new(0.001);
            e.step_adam(&mut params, &mut m, &mut v, 1, &adam).unwrap();
            let g: Vec<f32> = m
                .to_vec()
                .unwrap()
                .iter()
                .map(|&x| x / (1.0 - adam.beta1))
                .collect();
            assert_normal(&g, want, &format!("step_adam {what}"));
        }
    }
}

/// The test has power: a noise scale 2% off is caught.
#[test]
fn a_wrong_noise_scale_is_caught() {
    let layout = Layout::flat(P);
    let mut e = PrivacyEngine::new(
        config(Clipping::Flat(1.0), 1.0),
        layout,
        &Device::Cpu,
        Some(3),
    )
    .unwrap();
    let mut out = Buffer::<f32>::zeros(&Device::Cpu, P).unwrap();
    e.noisy_gradient(&mut out).unwrap();
    let v = out.to_vec().unwrap();
    let want = 1.0 / 50.0;
    let r = std::panic::catch_unwind(|| assert_normal(&v, want * 1.02, "scaled"));
    assert!(
        r.is_err(),
        "a 2% error in the noise scale must fail the check"
    );
}

/// A step whose arguments are wrong (momentum > 0 without a buffer, a wrong length) fails
/// before it is recorded: no step, no ε, the lot kept; the next valid step releases that one
/// lot once. (The old engine recorded the step first and kept the lot, so the next step
/// released two lots under one noise draw.)
#[test]
fn a_failed_step_is_not_recorded_and_releases_nothing_twice() {
    let layout = Layout::flat(4);
    let mut e = PrivacyEngine::new(
        config(Clipping::Flat(10.0), 0.0),
        layout,
        &Device::Cpu,
        Some(1),
    )
    .unwrap();
    let g = Buffer::from_vec(vec![1.0f32, 2.0, 3.0, 4.0]);
    e.accumulate(&g, 1).unwrap();
    let mut params = Buffer::<f32>::zeros(&Device::Cpu, 4).unwrap();
    let err = e
        .step_sgd(&mut params, None, &SgdConfig::new(1.0).momentum(0.9))
        .unwrap_err();
    assert!(
        matches!(err, Error::Shape { .. } | Error::InvalidParameter { .. }),
        "{err}"
    );
    let mut short = Buffer::<f32>::zeros(&Device::Cpu, 3).unwrap();
    assert!(e.step_sgd(&mut short, None, &SgdConfig::new(1.0)).is_err());
    let mut out3 = Buffer::<f32>::zeros(&Device::Cpu, 3).unwrap();
    assert!(e.noisy_gradient(&mut out3).is_err());
    assert_eq!(e.steps(), 0, "nothing recorded");
    assert_eq!(e.epsilon().unwrap(), 0.0);
    assert_eq!(e.lot_size(), 1, "the lot is kept for a corrected retry");
    e.step_sgd(&mut params, None, &SgdConfig::new(1.0)).unwrap();
    assert_eq!(e.steps(), 1);
    // σ = 0: p = −(Σ clip g)/(qN) = −g/50, the one lot once.
    let p = params.to_vec().unwrap();
    for (j, x) in p.iter().enumerate() {
        assert!((x + (j as f32 + 1.0) / 50.0).abs() < 1e-6, "{j}: {x}");
    }
    assert_eq!(e.lot_size(), 0);
    e.step_sgd(&mut params, None, &SgdConfig::new(1.0)).unwrap();
    let q = params.to_vec().unwrap();
    assert_eq!(p, q, "an empty lot with σ = 0 changes nothing");
}

/// ε is charged for the samplers' truncation: the engine reports ε at δ − (1 + e^ε)·η, a hair
/// above the accountant's ε at δ, and η is 2⁻⁷⁶ per Box–Muller pair per step.
#[test]
fn epsilon_includes_the_truncation_term() {
    let p = 1 << 20;
    let layout = Layout::flat(p);
    for seed in [Some(1u64), None] {
        let mut e = PrivacyEngine::new(
            config(Clipping::Flat(1.0), 1.0),
            layout.clone(),
            &Device::Cpu,
            seed,
        )
        .unwrap();
        let mut out = Buffer::<f32>::zeros(&Device::Cpu, p).unwrap();
        for _ in 0..3 {
            e.noisy_gradient(&mut out).unwrap();
        }
        let pairs = if seed.is_some() { p / 2 } else { 2 * p };
        assert_eq!(e.truncation_mass(), 3.0 * pairs as f64 * 2f64.powi(-76));
        let plain = e.accountant().epsilon(1e-5).unwrap();
        let eps = e.epsilon().unwrap();
        assert!(eps >= plain, "{eps} < {plain}");
        assert!(eps - plain < 1e-6, "{eps} vs {plain}");
    }
}

/// A `Mean` loss before the clipped path is refused: the per-sample gradients would depend on
/// the realised batch size (sensitivity 2C).
#[test]
fn mean_reduction_is_refused_by_the_clipped_path() {
    let dev = Device::Cpu;
    let model = models::sample_conv_net(&dev, 1).unwrap();
    let mut ws = model.workspace(4).unwrap();
    let x = vec![0.1f32; 4 * 28 * 28];
    let y = [1u32, 2, 3, 4];
    let mut e = PrivacyEngine::new(
        config(Clipping::Flat(1.0), 1.0),
        model.layout().clone(),
        &dev,
        Some(1),
    )
    .unwrap();
    model.forward_slice(&mut ws, &x).unwrap();
    model
        .loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Mean)
        .unwrap();
    let err = e.accumulate_model(&model, &mut ws).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidParameter {
                name: "reduction",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(e.lot_size(), 0);
    // The model's own clipped backward refuses it too.
    let layout = model.layout().clone();
    let mut sum = Buffer::<f32>::zeros(&dev, model.num_params()).unwrap();
    let clipping = Clipping::Flat(1.0);
    let r = model.backward(
        &mut ws,
        Grads::ClippedSum {
            layout: &layout,
            clipping: &clipping,
            sum: &mut sum,
        },
        false,
    );
    assert!(r.is_err());
    let r = model.forward_backward(
        &mut ws,
        &x,
        Loss::CrossEntropy(&y),
        Reduction::Mean,
        Grads::ClippedSum {
            layout: &layout,
            clipping: &clipping,
            sum: &mut sum,
        },
        false,
    );
    assert!(r.is_err());
    // Sum is accepted.
    model.forward_slice(&mut ws, &x).unwrap();
    model
        .loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)
        .unwrap();
    e.accumulate_model(&model, &mut ws).unwrap();
    assert_eq!(e.lot_size(), 4);
}

/// `Debug` of a seeded engine does not show its seed; a secure one says so and shows no key.
#[test]
fn engine_debug_shows_no_seed() {
    let seed = 0x1234_5678_9abc_def0u64;
    let e = PrivacyEngine::new(
        config(Clipping::Flat(1.0), 1.0),
        Layout::flat(8),
        &Device::Cpu,
        Some(seed),
    )
    .unwrap();
    let s = format!("{e:?}");
    assert!(
        !s.contains(&seed.to_string()) && !s.contains("123456789abcdef0"),
        "{s}"
    );
    assert!(s.contains("redacted"), "{s}");
}

/// On a GPU the engine adds noise of the same standard deviation (seeded and secure), and the
/// values equal the CPU engine's to an f32 ulp for the same seed.
#[test]
fn gpu_engine_noise_has_the_stated_std_and_matches_cpu() {
    let Some(dev) = common::gpu("gpu_engine_noise_has_the_stated_std_and_matches_cpu") else {
        return;
    };
    let layout = Layout::from_sizes(&[P / 2, P / 2]).unwrap();
    let clipping = Clipping::PerLayer(vec![0.5, 2.0]);
    let want = 1.3 * (0.25f64 + 4.0).sqrt() / 50.0;
    for seed in [Some(11u64), None] {
        let mut e =
            PrivacyEngine::new(config(clipping.clone(), 1.3), layout.clone(), &dev, seed).unwrap();
        let z = Buffer::from_slice(&dev, &vec![0f32; 2 * P]).unwrap();
        e.accumulate(&z, 2).unwrap();
        let mut out = Buffer::<f32>::zeros(&dev, P).unwrap();
        e.noisy_gradient(&mut out).unwrap();
        let got = out.to_vec().unwrap();
        assert_normal(&got, want, &format!("gpu {seed:?}"));
        if seed.is_some() {
            let mut c = PrivacyEngine::new(
                config(clipping.clone(), 1.3),
                layout.clone(),
                &Device::Cpu,
                seed,
            )
            .unwrap();
            let mut o = Buffer::<f32>::zeros(&Device::Cpu, P).unwrap();
            c.noisy_gradient(&mut o).unwrap();
            for (a, b) in got.iter().zip(o.to_vec().unwrap()) {
                assert!((a - b).abs() <= 2.4e-7 * (1.0 + b.abs()), "gpu {a} cpu {b}");
            }
        }
    }
}

/// `lot_sum` is the clipped sum of the lot so far (flat and per-layer clipping), `layout` the
/// engine's; a failed accumulate adds nothing to it, and a step or `clear_lot` zeroes it.
#[test]
fn lot_sum_and_layout_are_readable() {
    let layout = Layout::from_sizes(&[3, 1]).unwrap();
    // Row 0 has norm 0.5 (kept), row 1 norm 5 (clipped to 1: scaled by ~1/5).
    let rows = [0.3f32, 0.4, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0];
    let dev = Device::Cpu;
    let mut e = PrivacyEngine::new(
        config(Clipping::Flat(1.0), 1.0),
        layout.clone(),
        &dev,
        Some(1),
    )
    .unwrap();
    assert_eq!(e.layout(), &layout);
    assert_eq!(e.lot_sum().len(), 4);
    assert_eq!(e.lot_sum().to_vec().unwrap(), vec![0.0; 4]);
    e.accumulate(&Buffer::from_slice(&dev, &rows).unwrap(), 2)
        .unwrap();
    let f = 1.0 / (5.0 + 1e-6);
    let want = [0.3 + 3.0 * f, 0.4 + 4.0 * f, 0.0, 0.0];
    let got = e.lot_sum().to_vec().unwrap();
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "lot sum {got:?}, expected {want:?}");
    }
    // A NaN row is refused and nothing of its batch is added.
    let bad = [1.0f32, f32::NAN, 0.0, 0.0];
    assert!(matches!(
        e.accumulate(&Buffer::from_slice(&dev, &bad).unwrap(), 1),
        Err(Error::NonFinite { .. })
    ));
    assert_eq!(e.lot_sum().to_vec().unwrap(), got);
    // A step releases the lot and empties it.
    let mut out = Buffer::<f32>::zeros(&dev, 4).unwrap();
    e.noisy_gradient(&mut out).unwrap();
    assert_eq!(e.lot_sum().to_vec().unwrap(), vec![0.0; 4]);
    e.accumulate(&Buffer::from_slice(&dev, &rows).unwrap(), 2)
        .unwrap();
    e.clear_lot().unwrap();
    assert_eq!(e.lot_sum().to_vec().unwrap(), vec![0.0; 4]);

    // Per-layer: each segment clipped to its own bound (weight 1.0, bias 0.5).
    let mut e = PrivacyEngine::new(
        config(Clipping::PerLayer(vec![1.0, 0.5]), 1.0),
        layout.clone(),
        &dev,
        Some(1),
    )
    .unwrap();
    assert_eq!(e.layout().num_segments(), 2);
    e.accumulate(
        &Buffer::from_slice(&dev, &[0.0f32, 0.0, 2.0, 2.0]).unwrap(),
        1,
    )
    .unwrap();
    let got = e.lot_sum().to_vec().unwrap();
    assert!(
        (got[2] - 1.0).abs() < 1e-5 && (got[3] - 0.5).abs() < 1e-5,
        "{got:?}"
    );
}

/// On request the fused path keeps each example's clipping norm: after `accumulate_batch`
/// (forward, loss, backward and clipping in one pass) the workspace holds the norms that
/// `ops::per_sample_norms` gives for the same batch's per-sample rows; nothing is kept when
/// not asked, or after a backward that does not clip.
#[test]
fn accumulate_batch_records_per_sample_norms_on_request() {
    use dpsgd::ops::per_sample_norms;
    let dev = Device::Cpu;
    let model = models::sample_conv_net(&dev, 3).unwrap();
    let batch = 6;
    let x: Vec<f32> = (0..batch * 784)
        .map(|i| ((i * 37 % 101) as f32 / 101.0) - 0.3)
        .collect();
    let y: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
    let mut ws = model.workspace(batch).unwrap();
    let mut e = PrivacyEngine::new(
        config(Clipping::Flat(1.0), 1.0),
        model.layout().clone(),
        &dev,
        Some(5),
    )
    .unwrap();
    e.accumulate_batch(&model, &mut ws, &x, Loss::CrossEntropy(&y))
        .unwrap();
    assert!(ws.clip_norms().is_none(), "not recorded unless asked");
    ws.set_record_norms(true);
    e.accumulate_batch(&model, &mut ws, &x, Loss::CrossEntropy(&y))
        .unwrap();
    let got = ws.clip_norms().expect("recorded").to_vec();
    // The reference: per-sample rows of the same batch, then their norms.
    let p = model.num_params();
    let mut rows = Buffer::<f32>::zeros(&dev, batch * p).unwrap();
    model.forward_slice(&mut ws, &x).unwrap();
    model
        .loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)
        .unwrap();
    model
        .backward(&mut ws, Grads::PerSample(&mut rows), false)
        .unwrap();
    assert!(
        ws.clip_norms().is_none(),
        "a backward without clipping keeps none"
    );
    let s = model.layout().num_segments();
    let mut norms = Buffer::<f32>::zeros(&dev, batch).unwrap();
    let mut seg = Buffer::<f32>::zeros(&dev, batch * s).unwrap();
    per_sample_norms(&rows, batch, model.layout(), &mut norms, &mut seg).unwrap();
    let want = norms.to_vec().unwrap();
    assert_eq!(got.len(), batch);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * w + 1e-7, "example {i}: {g} vs {w}");
    }
    assert!(want.iter().all(|&n| n > 0.0), "non-trivial norms: {want:?}");
}
