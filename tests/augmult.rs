//! Augmentation multiplicity (De et al. 2022, §3.1; `dpsgd::augment`,
//! `PrivacyEngine::accumulate_augmented`, `TrainConfig::augmult`): each example's K copies are
//! averaged *before* clipping, so one example adds one vector of norm ≤ C and counts once; K = 1
//! is the plain path bit for bit; bad K, a scattering model with K > 1 and malformed batches are
//! typed errors; a trainer with K > 1 spends exactly the ε of K = 1 and resumes bit for bit.

use dpsgd::accounting::Method;
use dpsgd::augment::{Augmentation, MAX_AUGMULT};
use dpsgd::cpu::loss::Reduction;
use dpsgd::data::DatasetKind;
use dpsgd::engine::{NoiseSpec, PrivacyConfig, PrivacyEngine};
use dpsgd::nn::{models, Grads, Loss};
use dpsgd::ops::Clipping;
use dpsgd::rng::{Purpose, RunKeys};
use dpsgd::train::{DataSource, ModelKind, OptimizerKind, TrainConfig, Trainer};
use dpsgd::{Buffer, Device, Error, SgdConfig};

fn config(c: f32) -> PrivacyConfig {
    PrivacyConfig {
        noise: NoiseSpec::NoiseMultiplier(1.0),
        delta: 1e-5,
        clipping: Clipping::Flat(c),
        sample_rate: 0.01,
        dataset_size: 5_000,
        planned_steps: 100,
        accountant: Method::Rdp,
    }
}

/// `b` MNIST-sized images (background -0.4, a pattern per example) and labels.
fn images(b: usize) -> (Vec<f32>, Vec<u32>) {
    let mut x = vec![-0.4f32; b * 784];
    for i in 0..b {
        for y in 6..22 {
            for c in 8..20 {
                if (y * 3 + c * 7 + i * 11) % 5 < 2 {
                    x[i * 784 + y * 28 + c] = 2.5;
                }
            }
        }
    }
    (x, (0..b as u32).map(|i| (i * 3) % 10).collect())
}

fn l2(v: &[f32]) -> f64 {
    v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt()
}

/// One example with K = 4 shifted copies, each copy's gradient far above C: the lot's sum
/// has norm C (one clipped vector — clipping the copies separately and summing them would give
/// up to 4·C, ≈ 3.9·C for these nearly aligned copies), the lot counts one example, and the
/// sum is exactly the clipped *mean* of the copies' per-sample gradients.
#[test]
fn k_copies_are_averaged_then_clipped_once() {
    let dev = Device::Cpu;
    let model = models::sample_conv_net(&dev, 7).unwrap();
    let p = model.num_params();
    let k = 4;
    let c = 1e-3f32;
    let (x, y) = images(2);
    let aug = Augmentation::for_dataset(DatasetKind::Mnist);
    let mut rng = RunKeys::seeded(5).key(Purpose::Augmentation).rng(0);
    let mut xa = vec![0f32; 2 * k * 784];
    let mut ya = vec![0u32; 2 * k];
    aug.fill_copies(&x, &y, k, (1, 28, 28), &mut rng, &mut xa, &mut ya)
        .unwrap();
    assert_ne!(xa[..784], xa[784..2 * 784], "the copies differ");

    // Example 0 alone: its four copies.
    let mut ws = model.workspace(2 * k).unwrap();
    let mut e = PrivacyEngine::new(config(c), model.layout().clone(), &dev, Some(1)).unwrap();
    let l = e
        .accumulate_augmented(
            &model,
            &mut ws,
            &xa[..k * 784],
            Loss::CrossEntropy(&ya[..k]),
            k,
        )
        .unwrap();
    assert!(l.is_finite() && l > 0.0);
    assert_eq!(e.lot_size(), 1, "one example, not K rows");
    let sum = e.lot_sum().to_vec().unwrap();
    let norm = l2(&sum);
    assert!(norm <= c as f64 * (1.0 + 1e-5), "‖sum‖ = {norm}, C = {c}");

    // The reference: per-sample rows of the four copies, their mean, clipped.
    let mut rows = Buffer::<f32>::zeros(&dev, k * p).unwrap();
    model.forward_slice(&mut ws, &xa[..k * 784]).unwrap();
    model
        .loss(&mut ws, Loss::CrossEntropy(&ya[..k]), Reduction::Sum)
        .unwrap();
    model
        .backward(&mut ws, Grads::PerSample(&mut rows), false)
        .unwrap();
    let rows = rows.to_vec().unwrap();
    let norms: Vec<f64> = rows.chunks(p).map(l2).collect();
    assert!(norms.iter().all(|&n| n > 10.0 * c as f64), "{norms:?}");
    let clipped_sum: Vec<f64> = (0..p)
        .map(|j| {
            rows.chunks(p)
                .zip(&norms)
                .map(|(r, &n)| r[j] as f64 * (c as f64 / (n + 1e-6)))
                .sum()
        })
        .collect();
    let sep = clipped_sum.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(
        sep > 1.5 * c as f64,
        "separately clipped and summed: ‖·‖ = {sep} (the test must tell it from {c})"
    );
    let mean: Vec<f64> = (0..p)
        .map(|j| rows.chunks(p).map(|r| r[j] as f64).sum::<f64>() / k as f64)
        .collect();
    let mn = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
    let factor = (c as f64 / (mn + 1e-6)).min(1.0);
    for (g, m) in sum.iter().zip(&mean) {
        assert!(
            (*g as f64 - m * factor).abs() <= 1e-4 * c as f64,
            "{g} vs {}",
            m * factor
        );
    }
    assert!(((norm - c as f64) / c as f64).abs() < 1e-4, "{norm}");

    // Both examples: two clipped vectors, lot of 2, ‖sum‖ ≤ 2C.
    let mut e = PrivacyEngine::new(config(c), model.layout().clone(), &dev, Some(1)).unwrap();
    e.accumulate_augmented(&model, &mut ws, &xa, Loss::CrossEntropy(&ya), k)
        .unwrap();
    assert_eq!(e.lot_size(), 2);
    assert!(l2(&e.lot_sum().to_vec().unwrap()) <= 2.0 * c as f64 * (1.0 + 1e-5));
}

/// K = 1 is `accumulate_batch`, bit for bit: the same lot sum and, after a noisy step with
/// the same seed, the same parameters.
#[test]
fn k_one_is_the_plain_path_bit_for_bit() {
    let dev = Device::Cpu;
    let (x, y) = images(5);
    let mut out = Vec::new();
    for augmented in [false, true] {
        let mut model = models::sample_conv_net(&dev, 3).unwrap();
        let mut ws = model.workspace(5).unwrap();
        let mut e = PrivacyEngine::new(config(0.5), model.layout().clone(), &dev, Some(9)).unwrap();
        let l = if augmented {
            e.accumulate_augmented(&model, &mut ws, &x, Loss::CrossEntropy(&y), 1)
        } else {
            e.accumulate_batch(&model, &mut ws, &x, Loss::CrossEntropy(&y))
        }
        .unwrap();
        let sum = e.lot_sum().to_vec().unwrap();
        e.step_sgd(model.params_mut(), None, &SgdConfig::new(0.5))
            .unwrap();
        out.push((l.to_bits(), sum, model.params().to_vec().unwrap()));
    }
    assert_eq!(out[0], out[1]);
}

/// Bad K, a batch that is not whole groups of K, and (with K > 1) a scattering model are
/// typed errors, and nothing is added to the lot.
#[test]
fn bad_k_and_batches_are_typed_errors() {
    let dev = Device::Cpu;
    let model = models::sample_conv_net(&dev, 3).unwrap();
    let mut ws = model.workspace(6).unwrap();
    let mut e = PrivacyEngine::new(config(1.0), model.layout().clone(), &dev, Some(1)).unwrap();
    let (x, y) = images(6);
    for k in [0, MAX_AUGMULT + 1] {
        let r = e.accumulate_augmented(&model, &mut ws, &x, Loss::CrossEntropy(&y), k);
        assert!(
            matches!(
                r,
                Err(Error::InvalidParameter {
                    name: "augmult",
                    ..
                })
            ),
            "{r:?}"
        );
    }
    // 6 rows are not whole groups of 4.
    let r = e.accumulate_augmented(&model, &mut ws, &x, Loss::CrossEntropy(&y), 4);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    assert_eq!(e.lot_size(), 0);
    assert!(e.lot_sum().to_vec().unwrap().iter().all(|&v| v == 0.0));

    // A scattering model draws its K copies among V ≥ K precomputed views; a pixel model has
    // no precomputed views; V is bounded.
    for (model, k, v, field) in [
        (ModelKind::TanhConvnet, 0, 0, "augmult"),
        (ModelKind::TanhConvnet, MAX_AUGMULT + 1, 0, "augmult"),
        (ModelKind::ScatterLinear, 2, 0, "augmult_views"),
        (ModelKind::ScatterCnn, 4, 3, "augmult_views"),
        (ModelKind::ScatterLinear, 2, 17, "augmult_views"),
        (ModelKind::TanhConvnet, 2, 4, "augmult_views"),
    ] {
        let cfg = TrainConfig {
            model,
            augmult: k,
            augmult_views: v,
            ..small_config(1)
        };
        let r = cfg.validate();
        assert!(
            matches!(r, Err(Error::InvalidParameter { name, .. }) if name == field),
            "{model:?} K = {k}, V = {v}: {r:?}"
        );
    }
    for (model, k, v) in [
        (ModelKind::ScatterLinear, 2, 2),
        (ModelKind::ScatterCnn, 1, 4),
        (ModelKind::ScatterLinear, 4, 16),
    ] {
        let cfg = TrainConfig {
            model,
            augmult: k,
            augmult_views: v,
            ..small_config(1)
        };
        cfg.validate().unwrap();
    }
}

/// `b` random `[81, 7, 7]` inputs (scattering-feature sized), large enough that every
/// per-sample gradient is far above the bounds used below.
fn features(b: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let x = (0..b * 3969)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect();
    (x, (0..b as u32).map(|i| (i * 7 + 3) % 10).collect())
}

/// The fused path of augmentation multiplicity (depth-first schedule: each example's K rows
/// summed before the norm — the ghost norm for `Linear`, summed compact rows for GroupNorm and
/// convolutions) against the materialised one (layer-major schedule: `[b·K, P]` rows, averaged
/// in groups of K, clipped): the same clipped sum for K = 1, 2, 3, 5 on the scattering models
/// and the SampleConvNet; and one example's contribution has norm ≤ C for every K, exactly C
/// here (its mean gradient is far above C), so the sensitivity is C whatever K.
#[test]
fn fused_views_match_the_materialised_mean_and_one_example_adds_at_most_c() {
    let dev = Device::Cpu;
    let c = 1e-3f32;
    let nets = [
        (
            "scatter-linear plain",
            models::scatter_linear_plain_builder(81),
        ),
        (
            "scatter-linear GroupNorm",
            models::scatter_linear_builder(81, 27),
        ),
        ("scatter-cnn GroupNorm", models::scatter_cnn_builder(81, 27)),
    ];
    for (name, builder) in nets {
        let model = builder.build(&dev, 5).unwrap();
        let p = model.num_params();
        for k in [1usize, 2, 3, 5] {
            let b = 3;
            let (x, y) = features(b * k, k as u64);
            let y: Vec<u32> = (0..b * k).map(|r| y[r / k]).collect();
            let mut sums = Vec::new();
            for depth_first in [true, false] {
                let mut ws = model.workspace(b * k).unwrap();
                ws.set_depth_first(depth_first);
                let mut e =
                    PrivacyEngine::new(config(c), model.layout().clone(), &dev, Some(1)).unwrap();
                e.accumulate_augmented(&model, &mut ws, &x, Loss::CrossEntropy(&y), k)
                    .unwrap();
                assert_eq!(e.lot_size(), b, "{name}, K = {k}");
                sums.push(e.lot_sum().to_vec().unwrap());
                // Example 0 alone: one clipped vector, norm C.
                let mut e =
                    PrivacyEngine::new(config(c), model.layout().clone(), &dev, Some(1)).unwrap();
                e.accumulate_augmented(
                    &model,
                    &mut ws,
                    &x[..k * 3969],
                    Loss::CrossEntropy(&y[..k]),
                    k,
                )
                .unwrap();
                let n = l2(&e.lot_sum().to_vec().unwrap());
                assert!(
                    n <= c as f64 * (1.0 + 1e-5) && n > c as f64 * (1.0 - 1e-3),
                    "{name}, K = {k}, depth-first {depth_first}: ‖one example‖ = {n}, C = {c}"
                );
            }
            assert_eq!(sums[0].len(), p);
            let diff: f64 = sums[0]
                .iter()
                .zip(&sums[1])
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                diff <= 1e-4 * c as f64,
                "{name}, K = {k}: fused vs materialised differ by {diff}"
            );
            assert!(l2(&sums[0]) <= b as f64 * c as f64 * (1.0 + 1e-5));
        }
    }
}

fn small_config(seed: u64) -> TrainConfig {
    TrainConfig {
        data: DataSource::Synthetic {
            train: 600,
            test: 200,
        },
        model: ModelKind::TanhConvnet,
        noise: Some(NoiseSpec::NoiseMultiplier(1.0)),
        delta: 1e-5,
        epochs: 1,
        batch_size: 60,
        physical_batch: 50,
        lr: 2.0,
        optimizer: OptimizerKind::Sgd { momentum: 0.5 },
        max_grad_norm: 1.0,
        accountant: Method::Rdp,
        seed: Some(seed),
        validation: 0,
        lr_schedule: dpsgd::train::LrSchedule::Constant,
        ema_decay: None,
        augmult: 1,
        augmult_views: 0,
        input_norm: dpsgd::train::InputNorm::GroupNorm,
    }
}

/// A trainer with K = 3 takes the same steps at the same σ and spends exactly the ε of K = 1
/// (the sensitivity is unchanged), trains a different model (the copies are used), and a run
/// resumed from its checkpoint ends bit for bit where the uninterrupted one does (the
/// augmentation draws of a step come from stream = the step).
#[test]
fn trainer_with_augmult_spends_the_same_epsilon_and_resumes_exactly() {
    let dev = Device::Cpu;
    let aug = |seed| TrainConfig {
        augmult: 3,
        epochs: 2,
        ..small_config(seed)
    };
    let mut plain = Trainer::new(
        TrainConfig {
            epochs: 2,
            ..small_config(4)
        },
        &dev,
    )
    .unwrap();
    let mut full = Trainer::new(aug(4), &dev).unwrap();
    for _ in 0..2 {
        let a = plain.train_epoch(|_, _| {}).unwrap();
        let b = full.train_epoch(|_, _| {}).unwrap();
        assert_eq!(a.steps, b.steps);
        assert_eq!(a.epsilon_rdp, b.epsilon_rdp);
        assert_eq!(a.epsilon_prv, b.epsilon_prv);
        assert_eq!(a.noise_multiplier, b.noise_multiplier);
        assert!(b.eval_accuracy.is_finite());
    }
    let pa = plain.model().params().to_vec().unwrap();
    let pb = full.model().params().to_vec().unwrap();
    assert_ne!(pa, pb, "the augmented copies change the gradients");

    let dir = std::env::temp_dir().join(format!("dpsgd-augmult-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut a = Trainer::new(aug(4), &dev).unwrap();
    a.train_epoch(|_, _| {}).unwrap();
    a.save_checkpoint(&dir).unwrap();
    let mut b = Trainer::new(aug(4), &dev).unwrap();
    b.load_checkpoint(&dir).unwrap();
    b.train_epoch(|_, _| {}).unwrap();
    assert_eq!(b.model().params().to_vec().unwrap(), pb);
    let _ = std::fs::remove_dir_all(&dir);
}
