//! Fused noisy SGD/Adam steps: the formula against an unfused reference built from
//! `add_gaussian` with the same key, momentum/weight decay/Adam state, empty batches, parameter
//! validation before any noise, and GPU vs CPU.

mod common;

use approx::assert_relative_eq;
use common::{gpu, uniform};
use dpsgd::cpu::{noise, optim};
use dpsgd::{ops, AdamConfig, Buffer, Error, NoiseKey, NoisyStep, SgdConfig};

fn step(sigma: f64, c: f64, e: f64, step: u64) -> NoisyStep {
    NoisyStep::new(sigma, c, e, NoiseKey::for_step(31337, step, 0).unwrap()).unwrap()
}

/// p − lr·(sum + σC·ξ)/E with ξ from the same stream as `add_gaussian`.
#[test]
fn sgd_equals_unfused_reference() {
    let n = 70_001;
    let p0 = uniform(n, 1.0, 1);
    let s = uniform(n, 5.0, 2);
    let ns = step(1.1, 0.7, 256.0, 4);
    let mut p = p0.clone();
    optim::noisy_sgd_step(&mut p, &s, None, &SgdConfig::new(0.5), &ns).unwrap();
    let mut noisy = s.clone();
    noise::add_gaussian(&mut noisy, 1.1 * 0.7, ns.key).unwrap();
    for j in 0..n {
        let want = p0[j] - 0.5 * noisy[j] / 256.0;
        assert_relative_eq!(p[j], want, epsilon = 1e-6, max_relative = 1e-6);
    }
}

#[test]
fn sgd_hand_computed_without_noise() {
    // σ = 0: p − lr·(sum/E + λp), momentum buffer m = μm + g.
    let mut p = vec![1.0f32, -2.0];
    let mut m = vec![0.5f32, 0.0];
    let cfg = SgdConfig::new(0.1).momentum(0.9).weight_decay(0.01);
    optim::noisy_sgd_step(
        &mut p,
        &[4.0, 8.0],
        Some(&mut m),
        &cfg,
        &step(0.0, 1.0, 2.0, 0),
    )
    .unwrap();
    let g = [4.0 / 2.0 + 0.01 * 1.0, 8.0 / 2.0 + 0.01 * -2.0];
    let mw = [0.9 * 0.5 + g[0], g[1]];
    assert_relative_eq!(m[0], mw[0], max_relative = 1e-6);
    assert_relative_eq!(m[1], mw[1], max_relative = 1e-6);
    assert_relative_eq!(p[0], 1.0 - 0.1 * mw[0], max_relative = 1e-6);
    assert_relative_eq!(p[1], -2.0 - 0.1 * mw[1], max_relative = 1e-6);
}

#[test]
fn adam_hand_computed_two_steps() {
    let cfg = AdamConfig::new(0.01);
    let (mut p, mut m, mut v) = (vec![1.0f32], vec![0f32], vec![0f32]);
    let (mut pr, mut mr, mut vr) = (1.0f64, 0f64, 0f64);
    for t in 1..=2u64 {
        let g = [3.0f32];
        optim::noisy_adam_step(&mut p, &g, &mut m, &mut v, t, &cfg, &step(0.0, 1.0, 1.0, t))
            .unwrap();
        mr = 0.9 * mr + 0.1 * 3.0;
        vr = 0.999 * vr + 0.001 * 9.0;
        let mh = mr / (1.0 - 0.9f64.powi(t as i32));
        let vh = vr / (1.0 - 0.999f64.powi(t as i32));
        pr -= 0.01 * mh / (vh.sqrt() + 1e-8);
        assert_relative_eq!(p[0] as f64, pr, max_relative = 1e-6);
    }
}

/// An empty Poisson batch still takes a valid, noisy step (the sum is zero, the noise is not).
#[test]
fn empty_batch_gives_a_valid_noisy_step() {
    let mut p = vec![0f32; 1000];
    optim::noisy_sgd_step(
        &mut p,
        &[0.0; 1000],
        None,
        &SgdConfig::new(1.0),
        &step(1.0, 1.0, 64.0, 9),
    )
    .unwrap();
    assert!(p.iter().all(|x| x.is_finite()));
    let var = p.iter().map(|x| (x * 64.0).powi(2)).sum::<f32>() / 1000.0;
    assert!((0.7..1.3).contains(&var), "noise variance {var}");
}

#[test]
fn invalid_parameters_fail_before_any_noise() {
    let key = NoiseKey::from_parts(1, 2);
    for (sigma, c, e) in [
        (-1.0, 1.0, 1.0),
        (f64::NAN, 1.0, 1.0),
        (1.0, 0.0, 1.0),
        (1.0, 1.0, 0.0),
    ] {
        let r = NoisyStep::new(sigma, c, e, key);
        assert!(matches!(r, Err(Error::InvalidParameter { .. })), "{r:?}");
    }
    let ns = step(1.0, 1.0, 8.0, 0);
    let mut p = vec![1f32; 4];
    for lr in [f32::NAN, f32::INFINITY, -0.1] {
        let e = optim::noisy_sgd_step(&mut p, &[0.0; 4], None, &SgdConfig::new(lr), &ns);
        assert!(
            matches!(e, Err(Error::InvalidParameter { .. })),
            "lr {lr}: {e:?}"
        );
        let (mut m, mut v) = (vec![0f32; 4], vec![0f32; 4]);
        let e = optim::noisy_adam_step(
            &mut p,
            &[0.0; 4],
            &mut m,
            &mut v,
            1,
            &AdamConfig::new(lr),
            &ns,
        );
        assert!(
            matches!(e, Err(Error::InvalidParameter { .. })),
            "lr {lr}: {e:?}"
        );
    }
    assert_eq!(p, vec![1f32; 4], "parameters untouched on error");
    // A hand-built NoisyStep with a bad field is caught too.
    let bad = NoisyStep {
        noise_std: -1.0,
        ..ns
    };
    assert!(optim::noisy_sgd_step(&mut p, &[0.0; 4], None, &SgdConfig::new(0.1), &bad).is_err());
    // Shapes: sum length, missing momentum buffer, Adam t = 0.
    let e = optim::noisy_sgd_step(&mut p, &[0.0; 3], None, &SgdConfig::new(0.1), &ns);
    assert!(matches!(e, Err(Error::Shape { .. })));
    let e = optim::noisy_sgd_step(
        &mut p,
        &[0.0; 4],
        None,
        &SgdConfig::new(0.1).momentum(0.9),
        &ns,
    );
    assert!(matches!(e, Err(Error::Shape { .. })));
    let (mut m, mut v) = (vec![0f32; 4], vec![0f32; 4]);
    let e = optim::noisy_adam_step(
        &mut p,
        &[0.0; 4],
        &mut m,
        &mut v,
        0,
        &AdamConfig::new(0.1),
        &ns,
    );
    assert!(matches!(e, Err(Error::InvalidParameter { .. })));
}

/// GPU fused steps equal the CPU twins: |Δp| ≤ 1e-5·(1 + |p|) after 3 steps (SGD with and
/// without momentum, Adam, AdamW), for lengths around the vector width, with Philox (seeded)
/// and ChaCha20 (secure) noise.
#[test]
fn gpu_steps_match_cpu() {
    let Some(dev) = gpu("gpu_steps_match_cpu") else {
        return;
    };
    let chacha = dpsgd::rng::RunKeys::secure()
        .unwrap()
        .key(dpsgd::rng::Purpose::GradientNoise);
    for (n, secure) in [1usize, 5, 4096, 100_003]
        .into_iter()
        .flat_map(|n| [(n, false), (n, true)])
    {
        let p0 = uniform(n, 1.0, n as u64);
        let s = uniform(n, 3.0, n as u64 + 1);
        for variant in 0..4 {
            let sgd = match variant {
                0 => SgdConfig::new(0.3),
                _ => SgdConfig::new(0.3).momentum(0.9).weight_decay(1e-3),
            };
            let mut adam = AdamConfig::new(1e-2);
            adam.weight_decay = 0.01;
            adam.decoupled = variant == 3;
            let mut pc = p0.clone();
            let (mut mc, mut vc) = (vec![0f32; n], vec![0f32; n]);
            let mut pg = Buffer::from_slice(&dev, &p0).unwrap();
            let sg = Buffer::from_slice(&dev, &s).unwrap();
            let mut mg = Buffer::<f32>::zeros(&dev, n).unwrap();
            let mut vg = Buffer::<f32>::zeros(&dev, n).unwrap();
            for t in 1..=3u64 {
                let ns = if secure {
                    let key = NoiseKey::for_step_with(chacha, t, 0).unwrap();
                    NoisyStep::new(1.3, 0.9, 64.0, key).unwrap()
                } else {
                    step(1.3, 0.9, 64.0, t)
                };
                if variant < 2 {
                    let m = (variant == 1).then_some(&mut mc[..]);
                    optim::noisy_sgd_step(&mut pc, &s, m, &sgd, &ns).unwrap();
                    let m = (variant == 1).then_some(&mut mg);
                    ops::noisy_sgd_step(&mut pg, &sg, m, &sgd, &ns).unwrap();
                } else {
                    optim::noisy_adam_step(&mut pc, &s, &mut mc, &mut vc, t, &adam, &ns).unwrap();
                    ops::noisy_adam_step(&mut pg, &sg, &mut mg, &mut vg, t, &adam, &ns).unwrap();
                }
            }
            let got = pg.to_vec().unwrap();
            for j in 0..n {
                assert!(
                    (got[j] - pc[j]).abs() <= 1e-5 * (1.0 + pc[j].abs()),
                    "n={n} variant={variant} j={j}: gpu {} cpu {}",
                    got[j],
                    pc[j]
                );
            }
        }
    }
}

/// The noised mean for external optimizers: (sum + σC·ξ)/E with ξ = `add_gaussian`'s stream;
/// GPU equal to CPU within 1e-5·(1 + |x|).
#[test]
fn noisy_mean_matches_reference_and_gpu() {
    let n = 10_003;
    let s = uniform(n, 4.0, 77);
    let ns = step(0.8, 1.5, 32.0, 12);
    let mut out = vec![0f32; n];
    optim::noisy_mean(&mut out, &s, &ns).unwrap();
    let mut want = s.clone();
    noise::add_gaussian(&mut want, 0.8 * 1.5, ns.key).unwrap();
    for j in 0..n {
        assert_relative_eq!(out[j], want[j] / 32.0, epsilon = 1e-6, max_relative = 1e-6);
    }
    assert!(matches!(
        optim::noisy_mean(&mut out[..3], &s, &ns),
        Err(Error::Shape { .. })
    ));
    let Some(dev) = gpu("noisy_mean_matches_reference_and_gpu") else {
        return;
    };
    let sg = Buffer::from_slice(&dev, &s).unwrap();
    let mut og = Buffer::<f32>::zeros(&dev, n).unwrap();
    ops::noisy_mean(&mut og, &sg, &ns).unwrap();
    for (a, b) in og.to_vec().unwrap().iter().zip(&out) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "gpu {a} cpu {b}");
    }
}

/// Adadelta against PyTorch's `torch.optim.Adadelta` formula evaluated by hand in f32
/// (numpy float32, the same operation order as PyTorch's `_single_tensor_adadelta`:
/// `v = v·ρ + (1−ρ)g²; std = √(v+ε); Δ = √(u+ε)/std·g; u = u·ρ + (1−ρ)Δ²; p −= lr·Δ`), three
/// steps with weight decay 0.01; plus the first step's closed form in f64.
#[test]
fn adadelta_matches_pytorch_values() {
    use dpsgd::optim::{Adadelta, AdadeltaConfig};
    let cfg = AdadeltaConfig {
        weight_decay: 0.01,
        ..AdadeltaConfig::default()
    };
    assert_eq!((cfg.lr, cfg.rho, cfg.eps), (1.0, 0.9, 1e-6));
    let mut opt = Adadelta::new(cfg, 3).unwrap();
    let mut p = [0.5f32, -1.0, 2.0];
    let grads = [[1.0f32, -2.0, 0.1], [0.3, 0.5, -4.0], [-1.0, 1.0, 1e-3]];
    let want = [
        [0.4968377351760864, -0.9968377351760864, 1.9968388080596924],
        [0.49547526240348816, -0.9979508519172668, 2.0013084411621094],
        [0.4987789988517761, -1.0000578165054321, 2.0012736320495605],
    ];
    for (g, w) in grads.iter().zip(&want) {
        opt.step(&mut p, g).unwrap();
        for (a, b) in p.iter().zip(w) {
            assert_relative_eq!(*a as f64, *b, max_relative = 2e-6);
        }
    }
    assert_eq!(opt.steps(), 3);
    // First step, no weight decay: Δ = √ε / √((1−ρ)g² + ε) · g.
    let mut opt = Adadelta::new(AdadeltaConfig::new(1.0), 1).unwrap();
    let mut q = [0.0f32];
    opt.step(&mut q, &[1.0]).unwrap();
    let d = 1e-3 / (0.1f64 + 1e-6).sqrt();
    assert_relative_eq!(q[0] as f64, -d, max_relative = 1e-5);
    // Errors before any change.
    let before = q;
    assert!(matches!(
        opt.step(&mut q, &[f32::NAN]),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(
        opt.step(&mut q, &[1.0, 2.0]),
        Err(Error::Shape { .. })
    ));
    assert_eq!(q, before);
    for bad in [
        AdadeltaConfig {
            rho: 1.5,
            ..Default::default()
        },
        AdadeltaConfig {
            eps: 0.0,
            ..Default::default()
        },
        AdadeltaConfig {
            lr: -1.0,
            ..Default::default()
        },
        AdadeltaConfig {
            weight_decay: f32::NAN,
            ..Default::default()
        },
    ] {
        assert!(matches!(
            Adadelta::new(bad, 1),
            Err(Error::InvalidParameter { .. })
        ));
    }
    assert!(Adadelta::new(AdadeltaConfig::default(), 0).is_err());
}

/// StepLR(γ = 0.7, step_size = 1) as PyTorch's: lr₀·0.7^epoch; step_size 3 holds for 3 epochs.
#[test]
fn step_lr_schedule() {
    use dpsgd::optim::StepLr;
    let s = StepLr::new(1.0, 0.7, 1).unwrap();
    let want = [1.0, 0.7, 0.49, 0.343, 0.2401];
    for (e, w) in want.iter().enumerate() {
        assert_relative_eq!(s.lr(e as u64), *w, max_relative = 1e-12);
    }
    let s = StepLr::new(0.1, 0.5, 3).unwrap();
    let got: Vec<f64> = (0..7).map(|e| s.lr(e)).collect();
    assert_eq!(got, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]);
    assert!(StepLr::new(1.0, 0.0, 1).is_err());
    assert!(StepLr::new(1.0, 0.7, 0).is_err());
    assert!(StepLr::new(f64::NAN, 0.7, 1).is_err());
}
