//! Dropout (`src/cpu/dropout.rs`, `Layer::Dropout` in `Sequential`): masks from the
//! `Purpose::Dropout` key only, PyTorch's inverted scaling, eval = identity, per-sample
//! gradients with dropout against a batch of one (same example index → same mask) and against
//! central finite differences of each example's own loss (f32 model, h = 1e-3 on a Tanh
//! Tanh net, |analytic − numeric| ≤ 2e-3·(1 + |numeric|)), both CPU schedules, the clipped sum.
//! GPU twin: pending (a CUDA workspace for a model with Dropout is an error).

use dpsgd::cpu::dropout::{dropout_backward, dropout_forward, dropout_mask};
use dpsgd::cpu::philox::Philox;
use dpsgd::nn::{models, DropoutMode, Grads, Layer, Loss, Reduction, Sequential};
use dpsgd::rng::{Purpose, RandomBits, RunKeys};
use dpsgd::{Buffer, Clipping, Device, Error};

fn train(step: u64, first: u64) -> DropoutMode {
    DropoutMode::Train {
        key: RunKeys::seeded(5).key(Purpose::Dropout),
        step,
        first_example: first,
    }
}

/// Fraction dropped ≈ p (binomial, 6σ ≈ p < 1e-8 two-sided), kept values exactly 1/(1 − p),
/// the same mask for the same (step, example), different for another step or example, and a
/// batch's example e equals a batch of one with `first_example = e`.
#[test]
fn mask_statistics_and_layout() {
    let key = RunKeys::seeded(9).key(Purpose::Dropout);
    let n = 10_000;
    for &p in &[0.0, 0.25, 0.5, 0.9] {
        let mut m = vec![0f32; 8 * n];
        dropout_mask(&key, 3, 0, n, p, &mut m).unwrap();
        let dropped = m.iter().filter(|v| **v == 0.0).count() as f64;
        let total = m.len() as f64;
        let sd = (total * p * (1.0 - p)).sqrt();
        assert!(
            (dropped - total * p).abs() <= 6.0 * sd + 1e-9,
            "p {p}: {dropped} of {total}"
        );
        let keep = (1.0 / (1.0 - p)) as f32;
        assert!(m.iter().all(|v| *v == 0.0 || *v == keep));
        if p > 0.0 {
            let mut one = vec![0f32; n];
            dropout_mask(&key, 3, 5, n, p, &mut one).unwrap();
            assert_eq!(&m[5 * n..6 * n], &one[..]);
            assert_ne!(&m[4 * n..5 * n], &one[..]);
            dropout_mask(&key, 4, 5, n, p, &mut one).unwrap();
            assert_ne!(&m[5 * n..6 * n], &one[..]);
        }
    }
    // Another purpose's key gives another mask (streams are never shared).
    let mut a = vec![0f32; n];
    let mut b = vec![0f32; n];
    dropout_mask(&key, 0, 0, n, 0.5, &mut a).unwrap();
    let other = RunKeys::seeded(9).key(Purpose::GradientNoise);
    dropout_mask(&other, 0, 0, n, 0.5, &mut b).unwrap();
    assert_ne!(a, b);
    // Bad p and shapes are errors.
    for p in [1.0, -0.1, f64::NAN] {
        assert!(matches!(
            dropout_mask(&key, 0, 0, n, p, &mut a),
            Err(Error::InvalidParameter { .. })
        ));
    }
    assert!(dropout_mask(&key, 0, 0, 3, 0.5, &mut a[..10]).is_err());
    assert!(dropout_forward(&a, Some(&b[..5]), &mut vec![0.0; n]).is_err());
}

#[test]
fn forward_backward_kernels() {
    let x = [1.0f32, -2.0, 3.0, 4.0];
    let m = [0.0f32, 2.0, 2.0, 0.0];
    let mut y = [0f32; 4];
    dropout_forward(&x, Some(&m), &mut y).unwrap();
    assert_eq!(y, [0.0, -4.0, 6.0, 0.0]);
    dropout_forward(&x, None, &mut y).unwrap();
    assert_eq!(y, x);
    let mut dx = [0f32; 4];
    dropout_backward(&x, Some(&m), &mut dx).unwrap();
    assert_eq!(dx, [0.0, -4.0, 6.0, 0.0]);
}

/// A small net with both dropout positions of the PyTorch MNIST net (after a pool on an
/// image, after a Linear), Tanh so that finite differences are smooth.
fn small_net(seed: u64) -> Sequential {
    Sequential::builder(&[1, 8, 8])
        .conv2d(3, 3, 1, 0, true)
        .tanh()
        .max_pool2d(2, 2)
        .dropout(0.25)
        .flatten()
        .linear(6, true)
        .tanh()
        .dropout(0.5)
        .linear(4, true)
        .build(&Device::Cpu, seed)
        .unwrap()
}

fn inputs(b: usize, per: usize) -> Vec<f32> {
    let mut r = Philox::new(3, 0);
    (0..b * per)
        .map(|_| r.next_f64() as f32 * 2.0 - 1.0)
        .collect()
}

/// Cross-entropy of one row of logits.
fn ce(logits: &[f32], t: usize) -> f64 {
    let m = logits
        .iter()
        .fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
    let s: f64 = logits.iter().map(|&v| (v as f64 - m).exp()).sum();
    m + s.ln() - logits[t] as f64
}

#[test]
fn per_sample_gradients_with_dropout() {
    let dev = Device::Cpu;
    let mut m = small_net(21);
    let b = 7;
    let per = 64;
    let p = m.num_params();
    let x = inputs(b, per);
    let y: Vec<u32> = (0..b as u32).map(|i| i % 4).collect();
    let mut rows = Buffer::zeros(&dev, b * p).unwrap();
    for depth_first in [true, false] {
        let mut ws = m.workspace(b).unwrap();
        ws.set_depth_first(depth_first);
        ws.set_dropout(train(2, 0));
        m.forward_slice(&mut ws, &x).unwrap();
        m.loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)
            .unwrap();
        m.backward(&mut ws, Grads::PerSample(&mut rows), false)
            .unwrap();
        let r = rows.to_vec().unwrap();
        // Batch of one with the same example index = the row.
        for i in 0..b {
            ws.set_dropout(train(2, i as u64));
            m.forward_slice(&mut ws, &x[i * per..(i + 1) * per])
                .unwrap();
            m.loss(&mut ws, Loss::CrossEntropy(&y[i..i + 1]), Reduction::Sum)
                .unwrap();
            let mut g = Buffer::zeros(&dev, p).unwrap();
            m.backward(
                &mut ws,
                Grads::Sum {
                    grad: &mut g,
                    accumulate: false,
                },
                false,
            )
            .unwrap();
            for (j, (a, c)) in r[i * p..(i + 1) * p]
                .iter()
                .zip(g.to_vec().unwrap())
                .enumerate()
            {
                assert!(
                    (a - c).abs() <= 1e-6 * (1.0 + c.abs()),
                    "df {depth_first} row {i} param {j}: {a} vs {c}"
                );
            }
        }
    }
    // The masks matter: eval mode gives other gradients (and another output).
    let mut ws = m.workspace(b).unwrap();
    ws.set_dropout(train(2, 0));
    m.forward_slice(&mut ws, &x).unwrap();
    let out_train = ws.output().to_vec();
    ws.set_dropout(DropoutMode::Eval);
    m.forward_slice(&mut ws, &x).unwrap();
    assert_ne!(out_train, ws.output());
    // Finite differences of example i's own loss (masks fixed by the step), in f64 around f32
    // parameters: central, h = 1e-3 (f32 forward: rounding ~1e-7/h; small enough that no max-pool window changes its arg-max).
    ws.set_dropout(train(2, 0));
    let r = rows.to_vec().unwrap();
    let h = 1e-3f32;
    let mut rng = Philox::new(17, 0);
    for _ in 0..40 {
        let j = rng.next_below(p as u64) as usize;
        let i = rng.next_below(b as u64) as usize;
        let orig = m.params().to_vec().unwrap()[j];
        let mut f = |v: f32, m: &mut Sequential| {
            let mut pv = m.params().to_vec().unwrap();
            pv[j] = v;
            *m.params_mut() = Buffer::from_slice(&dev, &pv).unwrap();
            m.forward_slice(&mut ws, &x).unwrap();
            ce(&ws.output()[i * 4..(i + 1) * 4], y[i] as usize)
        };
        let num = (f(orig + h, &mut m) - f(orig - h, &mut m)) / (2.0 * h as f64);
        f(orig, &mut m);
        let a = r[i * p + j] as f64;
        assert!(
            (a - num).abs() <= 2e-3 * (1.0 + num.abs()),
            "example {i} param {j}: {a} vs {num}"
        );
    }
}

/// The clipped sum of a model with dropout equals per-sample rows clipped by hand.
#[test]
fn clipped_sum_with_dropout() {
    let dev = Device::Cpu;
    let m = small_net(4);
    let (b, per, p) = (9, 64, m.num_params());
    let x = inputs(b, per);
    let y: Vec<u32> = (0..b as u32).map(|i| (i * 3) % 4).collect();
    let mut ws = m.workspace(b).unwrap();
    ws.set_dropout(train(11, 0));
    let mut sum = Buffer::zeros(&dev, p).unwrap();
    let c = 0.05f32;
    m.forward_backward(
        &mut ws,
        &x,
        Loss::CrossEntropy(&y),
        Reduction::Sum,
        Grads::ClippedSum {
            layout: m.layout(),
            clipping: &Clipping::Flat(c),
            sum: &mut sum,
        },
        false,
    )
    .unwrap();
    let mut rows = Buffer::zeros(&dev, b * p).unwrap();
    m.forward_slice(&mut ws, &x).unwrap();
    m.loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)
        .unwrap();
    m.backward(&mut ws, Grads::PerSample(&mut rows), false)
        .unwrap();
    let r = rows.to_vec().unwrap();
    let mut want = vec![0f64; p];
    for i in 0..b {
        let row = &r[i * p..(i + 1) * p];
        let n = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let f = (c as f64 / (n + 1e-6)).min(1.0);
        for (w, v) in want.iter_mut().zip(row) {
            *w += f * *v as f64;
        }
    }
    for (a, w) in sum.to_vec().unwrap().iter().zip(&want) {
        assert!(
            (*a as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{a} vs {w}"
        );
    }
}

#[test]
fn pytorch_mnist_net_shape_and_layers() {
    let m = models::pytorch_mnist_net(&Device::Cpu, 1).unwrap();
    assert_eq!(m.num_params(), 1_199_882);
    assert_eq!(m.output_shape(), &[10]);
    let names: Vec<&str> = m.param_info().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "0.weight",
            "0.bias",
            "2.weight",
            "2.bias",
            "7.weight",
            "7.bias",
            "10.weight",
            "10.bias"
        ]
    );
    assert_eq!(m.shape_at(6), Some(&[64usize, 12, 12][..]));
    assert!(matches!(m.layers()[5], Layer::Dropout { p } if p == 0.25));
    assert!(matches!(m.layers()[9], Layer::Dropout { p } if p == 0.5));
    // A Dropout with p outside [0, 1) is refused at build time.
    let e = Sequential::builder(&[4]).dropout(1.0).linear(2, true);
    assert!(matches!(e.build(&Device::Cpu, 0), Err(Error::Shape { .. })));
}
