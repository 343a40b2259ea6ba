//! Layer kernels and the `Sequential` model: finite differences (f64), per-sample gradients vs
//! a batch of one, summed vs per-sample, errors, safetensors.
//!
//! Tolerances: finite differences are central, h = 1e-6, in f64, compared with
//! |analytic − numeric| ≤ 1e-6·(1 + |numeric|). Per-sample vs batch-of-one in f64 is compared
//! to 1e-10 relative (same arithmetic up to GEMM blocking); model-level checks run in f32 with
//! 1e-5·(1 + |x|).

use dpsgd::cpu::activation::{activation_backward, activation_forward, Activation};
use dpsgd::cpu::conv::*;
use dpsgd::cpu::grad::ParamGrad;
use dpsgd::cpu::linear::*;
use dpsgd::cpu::loss::*;
use dpsgd::cpu::norm::*;
use dpsgd::cpu::philox::Philox;
use dpsgd::cpu::pool::*;
use dpsgd::nn::{models, Grads, Layer, Loss, Sequential};
#[allow(unused_imports)]
use dpsgd::rng::RandomBits;
use dpsgd::{Buffer, Device, Error};

fn rand_vec(rng: &mut Philox, n: usize) -> Vec<f64> {
    (0..n).map(|_| 2.0 * rng.next_f64() - 1.0).collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(close(*x, *y, tol), "{what}[{i}]: {x} vs {y}");
    }
}

type Fwd<'a> = &'a dyn Fn(&[f64], &[f64]) -> Vec<f64>;
type Bwd<'a> = &'a dyn Fn(&[f64], &[f64], &[f64]) -> (Vec<f64>, Vec<f64>);

/// Checks the backward (`dx`, summed `dp`) of a layer against central differences of
/// L = Σ r ⊙ forward(x, p).
fn fd_check(name: &str, x: &[f64], p: &[f64], fwd: Fwd, bwd: Bwd, seed: u64) {
    let mut rng = Philox::new(seed, 99);
    let y = fwd(x, p);
    let r = rand_vec(&mut rng, y.len());
    let loss = |x: &[f64], p: &[f64]| -> f64 { fwd(x, p).iter().zip(&r).map(|(a, b)| a * b).sum() };
    let (dx, dp) = bwd(x, p, &r);
    let h = 1e-6;
    let mut xv = x.to_vec();
    for i in 0..x.len() {
        let o = xv[i];
        xv[i] = o + h;
        let lp = loss(&xv, p);
        xv[i] = o - h;
        let lm = loss(&xv, p);
        xv[i] = o;
        let num = (lp - lm) / (2.0 * h);
        assert!(
            close(dx[i], num, 1e-6),
            "{name}: dx[{i}] = {} vs numeric {num}",
            dx[i]
        );
    }
    let mut pv = p.to_vec();
    for i in 0..p.len() {
        let o = pv[i];
        pv[i] = o + h;
        let lp = loss(x, &pv);
        pv[i] = o - h;
        let lm = loss(x, &pv);
        pv[i] = o;
        let num = (lp - lm) / (2.0 * h);
        assert!(
            close(dp[i], num, 1e-6),
            "{name}: dp[{i}] = {} vs numeric {num}",
            dp[i]
        );
    }
}

fn conv_case(rng: &mut Philox) -> Conv2dShape {
    loop {
        let k = 1 + rng.next_below(4) as usize;
        let s = Conv2dShape {
            batch: 1 + rng.next_below(4) as usize,
            cin: 1 + rng.next_below(3) as usize,
            h: 1 + rng.next_below(7) as usize,
            w: 1 + rng.next_below(7) as usize,
            cout: 1 + rng.next_below(3) as usize,
            k,
            stride: 1 + rng.next_below(3) as usize,
            pad: rng.next_below(3) as usize,
            bias: rng.next_below(2) == 0,
        };
        if s.geom().is_ok() {
            return s;
        }
    }
}

fn convt_case(rng: &mut Philox) -> ConvTranspose2dShape {
    loop {
        let s = ConvTranspose2dShape {
            batch: 1 + rng.next_below(4) as usize,
            cin: 1 + rng.next_below(3) as usize,
            h: 1 + rng.next_below(5) as usize,
            w: 1 + rng.next_below(5) as usize,
            cout: 1 + rng.next_below(3) as usize,
            k: 1 + rng.next_below(4) as usize,
            stride: 1 + rng.next_below(3) as usize,
            pad: rng.next_below(2) as usize,
            bias: rng.next_below(2) == 0,
        };
        if s.geom().is_ok() {
            return s;
        }
    }
}

// ---------------------------------------------------------------- finite differences

#[test]
fn fd_conv2d() {
    let mut rng = Philox::new(1, 0);
    for case in 0..12 {
        let s = conv_case(&mut rng);
        let g = s.geom().unwrap();
        let x = rand_vec(&mut rng, s.batch * g.in_len());
        let p = rand_vec(&mut rng, s.num_params());
        let scratch = vec![0.0; s.scratch_len(2).unwrap()];
        let ny = s.batch * s.cout * g.out_positions();
        let fwd = |x: &[f64], p: &[f64]| {
            let mut y = vec![0.0; ny];
            conv2d_forward(&s, x, p, &mut y, &mut scratch.clone()).unwrap();
            y
        };
        let bwd = |x: &[f64], p: &[f64], dy: &[f64]| {
            let mut dx = vec![f64::NAN; x.len()];
            let mut dp = vec![f64::NAN; p.len()];
            let g = ParamGrad::Sum {
                grad: &mut dp,
                accumulate: false,
            };
            conv2d_backward(&s, x, p, dy, Some(&mut dx), g, &mut scratch.clone()).unwrap();
            (dx, dp)
        };
        fd_check(&format!("conv2d {s:?}"), &x, &p, &fwd, &bwd, case);
    }
}

#[test]
fn fd_conv_transpose2d() {
    let mut rng = Philox::new(2, 0);
    for case in 0..12 {
        let s = convt_case(&mut rng);
        let (oh, ow) = s.out_hw().unwrap();
        let x = rand_vec(&mut rng, s.batch * s.cin * s.h * s.w);
        let p = rand_vec(&mut rng, s.num_params());
        let scratch = vec![0.0; s.scratch_len(3).unwrap()];
        let ny = s.batch * s.cout * oh * ow;
        let fwd = |x: &[f64], p: &[f64]| {
            let mut y = vec![0.0; ny];
            conv_transpose2d_forward(&s, x, p, &mut y, &mut scratch.clone()).unwrap();
            y
        };
        let bwd = |x: &[f64], p: &[f64], dy: &[f64]| {
            let mut dx = vec![f64::NAN; x.len()];
            let mut dp = vec![f64::NAN; p.len()];
            let g = ParamGrad::Sum {
                grad: &mut dp,
                accumulate: false,
            };
            conv_transpose2d_backward(&s, x, p, dy, Some(&mut dx), g, &mut scratch.clone())
                .unwrap();
            (dx, dp)
        };
        fd_check(&format!("conv_transpose2d {s:?}"), &x, &p, &fwd, &bwd, case);
    }
}

#[test]
fn fd_linear() {
    let mut rng = Philox::new(3, 0);
    for case in 0..8 {
        let s = LinearShape {
            batch: 1 + rng.next_below(5) as usize,
            inf: 1 + rng.next_below(7) as usize,
            outf: 1 + rng.next_below(5) as usize,
            bias: case % 2 == 0,
        };
        let x = rand_vec(&mut rng, s.batch * s.inf);
        let p = rand_vec(&mut rng, s.num_params());
        let fwd = |x: &[f64], p: &[f64]| {
            let mut y = vec![0.0; s.batch * s.outf];
            linear_forward(&s, x, p, &mut y).unwrap();
            y
        };
        let bwd = |x: &[f64], p: &[f64], dy: &[f64]| {
            let mut dx = vec![f64::NAN; x.len()];
            let mut dp = vec![f64::NAN; p.len()];
            let mut scr = vec![0.0; s.scratch_len(2)];
            let g = ParamGrad::Sum {
                grad: &mut dp,
                accumulate: false,
            };
            linear_backward(&s, x, p, dy, Some(&mut dx), g, &mut scr).unwrap();
            (dx, dp)
        };
        fd_check(&format!("linear {s:?}"), &x, &p, &fwd, &bwd, case);
    }
}

#[test]
fn fd_group_norm() {
    let mut rng = Philox::new(4, 0);
    for case in 0..8 {
        let groups = 1 + rng.next_below(3) as usize;
        let s = GroupNormShape {
            batch: 1 + rng.next_below(3) as usize,
            c: groups * (1 + rng.next_below(3) as usize),
            spatial: 1 + rng.next_below(6) as usize,
            groups,
            eps: 1e-5,
        };
        if s.c / s.groups * s.spatial < 2 {
            continue;
        }
        let x = rand_vec(&mut rng, s.batch * s.c * s.spatial);
        let p = rand_vec(&mut rng, s.num_params());
        let fwd = |x: &[f64], p: &[f64]| {
            let mut y = vec![0.0; x.len()];
            group_norm_forward(&s, x, p, &mut y).unwrap();
            y
        };
        let bwd = |x: &[f64], p: &[f64], dy: &[f64]| {
            let mut dx = vec![f64::NAN; x.len()];
            let mut dp = vec![f64::NAN; p.len()];
            let mut scr = vec![0.0; s.scratch_len(2)];
            let g = ParamGrad::Sum {
                grad: &mut dp,
                accumulate: false,
            };
            group_norm_backward(&s, x, p, dy, Some(&mut dx), g, &mut scr).unwrap();
            (dx, dp)
        };
        fd_check(&format!("group_norm {s:?}"), &x, &p, &fwd, &bwd, case);
    }
}

#[test]
fn fd_pools_and_activations() {
    let mut rng = Philox::new(5, 0);
    for case in 0..6 {
        let s = PoolShape {
            batch: 2,
            c: 2,
            h: 3 + rng.next_below(4) as usize,
            w: 3 + rng.next_below(4) as usize,
            k: 1 + rng.next_below(3) as usize,
            stride: 1 + rng.next_below(2) as usize,
        };
        let (oh, ow) = s.out_hw().unwrap();
        let x = rand_vec(&mut rng, s.batch * s.c * s.h * s.w);
        let ny = s.batch * s.c * oh * ow;
        let fwd = |x: &[f64], _: &[f64]| {
            let mut y = vec![0.0; ny];
            max_pool2d_forward(&s, x, &mut y).unwrap();
            y
        };
        let bwd = |x: &[f64], _: &[f64], dy: &[f64]| {
            let mut dx = vec![f64::NAN; x.len()];
            max_pool2d_backward(&s, x, dy, &mut dx).unwrap();
            (dx, vec![])
        };
        fd_check("max_pool2d", &x, &[], &fwd, &bwd, case);
        let fwd = |x: &[f64], _: &[f64]| {
            let mut y = vec![0.0; ny];
            avg_pool2d_forward(&s, x, &mut y).unwrap();
            y
        };
        let bwd = |_: &[f64], _: &[f64], dy: &[f64]| {
            let mut dx = vec![f64::NAN; x.len()];
            avg_pool2d_backward(&s, dy, &mut dx).unwrap();
            (dx, vec![])
        };
        fd_check("avg_pool2d", &x, &[], &fwd, &bwd, case);
    }
    for act in [
        Activation::Relu,
        Activation::LeakyRelu(0.2),
        Activation::Tanh,
        Activation::Sigmoid,
    ] {
        let x = rand_vec(&mut rng, 40000); // > one parallel chunk
        let xs = &x[..50];
        let fwd = |x: &[f64], _: &[f64]| {
            let mut y = vec![0.0; x.len()];
            activation_forward(act, x, &mut y).unwrap();
            y
        };
        let bwd = |x: &[f64], _: &[f64], dy: &[f64]| {
            let y = fwd(x, &[]);
            let mut dx = vec![f64::NAN; x.len()];
            activation_backward(act, x, &y, dy, &mut dx).unwrap();
            (dx, vec![])
        };
        fd_check(&format!("{act:?}"), xs, &[], &fwd, &bwd, 7);
        // Large input: backward consistent with the small one on the shared prefix.
        let dy = vec![1.0; x.len()];
        let (dx, _) = bwd(&x, &[], &dy);
        let (dxs, _) = bwd(xs, &[], &dy[..50]);
        assert_eq!(&dx[..50], &dxs[..]);
    }
}

/// Naive max-pool (first maximum in row-major window order; a NaN beats everything, the last
/// NaN wins, as PyTorch's `val > max || isnan(val)`): output and backward routing.
fn naive_max_pool(s: &PoolShape, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (oh, ow) = s.out_hw().unwrap();
    let mut y = vec![0.0; s.batch * s.c * oh * ow];
    let mut dx = vec![0.0; x.len()];
    for p in 0..s.batch * s.c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut at = p * s.h * s.w + oy * s.stride * s.w + ox * s.stride;
                for ki in 0..s.k {
                    for kj in 0..s.k {
                        let i = p * s.h * s.w + (oy * s.stride + ki) * s.w + ox * s.stride + kj;
                        if x[i] > x[at] || x[i].is_nan() {
                            at = i;
                        }
                    }
                }
                let o = (p * oh + oy) * ow + ox;
                y[o] = x[at];
                dx[at] += dy[o];
            }
        }
    }
    (y, dx)
}

/// The vectorised max-pool against the naive one on inputs full of ties (small integers, so
/// every routing decision is exact) and with NaNs, over strides 1–2, windows 1–3 and rows
/// longer than one block; and the branch-free activation backward on signed zeros.
#[test]
fn max_pool_ties_nans_and_relu_zeros() {
    let mut rng = Philox::new(11, 0);
    for case in 0..40 {
        let s = PoolShape {
            batch: 2,
            c: 3,
            h: 2 + rng.next_below(8) as usize,
            w: 2 + rng.next_below(if case % 5 == 0 { 150 } else { 12 }) as usize,
            k: 1 + rng.next_below(3) as usize,
            stride: 1 + rng.next_below(2) as usize,
        };
        if s.out_hw().is_err() {
            continue;
        }
        let n = s.batch * s.c * s.h * s.w;
        let mut x: Vec<f32> = (0..n).map(|_| rng.next_below(4) as f32 - 2.0).collect();
        if case % 3 == 0 {
            for _ in 0..3 {
                let i = rng.next_below(n as u64) as usize;
                x[i] = f32::NAN;
            }
        }
        let (oh, ow) = s.out_hw().unwrap();
        let dy: Vec<f32> = (0..s.batch * s.c * oh * ow)
            .map(|i| (i % 7) as f32 + 1.0)
            .collect();
        let (want_y, want_dx) = naive_max_pool(&s, &x, &dy);
        let mut y = vec![0.0; want_y.len()];
        max_pool2d_forward(&s, &x, &mut y).unwrap();
        let mut dx = vec![f32::NAN; n];
        max_pool2d_backward(&s, &x, &dy, &mut dx).unwrap();
        for (a, b) in y.iter().zip(&want_y) {
            assert!(a == b || (a.is_nan() && b.is_nan()), "{s:?}: y {a} vs {b}");
        }
        assert_eq!(dx, want_dx, "{s:?}: dx");
        // Given the forward's output, the backward skips recomputing the maxima: same dx.
        let mut dx2 = vec![f32::NAN; n];
        max_pool2d_backward_with_output(&s, &x, &y, &dy, &mut dx2).unwrap();
        assert_eq!(dx2, want_dx, "{s:?}: dx from the output");
    }
    let x = [-1.0f32, -0.0, 0.0, 2.0, f32::NAN, 0.5];
    let dy = [1.0f32; 6];
    let mut y = [0.0f32; 6];
    let mut dx = [0.0f32; 6];
    activation_forward(Activation::Relu, &x, &mut y).unwrap();
    activation_backward(Activation::Relu, &x, &y, &dy, &mut dx).unwrap();
    assert_eq!(dx, [0.0, 0.0, 0.0, 1.0, 0.0, 1.0]);
    activation_backward(Activation::LeakyRelu(0.25), &x, &y, &dy, &mut dx).unwrap();
    assert_eq!(&dx[..4], &[0.25, 0.25, 0.25, 1.0]);
    assert_eq!(dx[5], 1.0);
}

#[test]
fn fd_losses() {
    let mut rng = Philox::new(6, 0);
    for red in [Reduction::Mean, Reduction::Sum] {
        let (b, k) = (4, 5);
        let z = rand_vec(&mut rng, b * k)
            .iter()
            .map(|v| 3.0 * v)
            .collect::<Vec<_>>();
        let t: Vec<u32> = (0..b).map(|_| rng.next_below(k as u64) as u32).collect();
        let mut d = vec![0.0; b * k];
        let l = cross_entropy(&z, k, &t, red, Some(&mut d)).unwrap();
        // Against the naive formula.
        let mut naive = 0.0;
        for i in 0..b {
            let row = &z[i * k..(i + 1) * k];
            let se: f64 = row.iter().map(|v| v.exp()).sum();
            naive += se.ln() - row[t[i] as usize];
        }
        if red == Reduction::Mean {
            naive /= b as f64;
        }
        assert!(close(l, naive, 1e-12));
        fd_scalar("cross_entropy", &z, &d, |z| {
            cross_entropy(z, k, &t, red, None).unwrap()
        });

        let tb: Vec<f64> = (0..b * k).map(|_| rng.next_f64()).collect();
        let mut d = vec![0.0; b * k];
        bce_with_logits(&z, &tb, red, Some(&mut d)).unwrap();
        fd_scalar("bce_with_logits", &z, &d, |z| {
            bce_with_logits(z, &tb, red, None).unwrap()
        });

        let p: Vec<f64> = (0..b * k).map(|_| 0.05 + 0.9 * rng.next_f64()).collect();
        let mut d = vec![0.0; b * k];
        let l1 = bce(&p, &tb, red, Some(&mut d)).unwrap();
        fd_scalar("bce", &p, &d, |p| bce(p, &tb, red, None).unwrap());
        // bce(σ(z)) == bce_with_logits(z)
        let sig: Vec<f64> = z.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
        let a = bce(&sig, &tb, red, None).unwrap();
        let c = bce_with_logits(&z, &tb, red, None).unwrap();
        assert!(close(a, c, 1e-10), "{a} vs {c}");
        assert!(l1.is_finite());
    }
}

fn fd_scalar(name: &str, x: &[f64], d: &[f64], f: impl Fn(&[f64]) -> f64) {
    let h = 1e-6;
    let mut v = x.to_vec();
    for i in 0..x.len() {
        let o = v[i];
        v[i] = o + h;
        let a = f(&v);
        v[i] = o - h;
        let b = f(&v);
        v[i] = o;
        let num = (a - b) / (2.0 * h);
        assert!(close(d[i], num, 1e-6), "{name}: d[{i}] = {} vs {num}", d[i]);
    }
}

// ---------------------------------------------------------------- per-sample gradients

/// Runs a layer's backward on `n` examples starting at `only` (or 0), into a gradient.
type RunFn<'a> = dyn Fn(usize, Option<usize>, ParamGrad<'_, f64>) + 'a;

/// Per-sample rows (written at an offset into wider rows) == the summed gradient of a batch of
/// one, example by example; the summed gradient == the sum of the rows.
fn per_sample_check(name: &str, batch: usize, np: usize, run: &RunFn) {
    let (stride, offset) = (np + 7, 3);
    let mut rows = vec![f64::NAN; batch * stride];
    run(
        batch,
        None,
        ParamGrad::PerSample {
            rows: &mut rows,
            stride,
            offset,
        },
    );
    let mut total = vec![0.0; np];
    for i in 0..batch {
        let mut one = vec![f64::NAN; np];
        run(
            1,
            Some(i),
            ParamGrad::Sum {
                grad: &mut one,
                accumulate: false,
            },
        );
        let row = &rows[i * stride + offset..i * stride + offset + np];
        assert_close(&format!("{name} row {i}"), row, &one, 1e-10);
        for (t, v) in total.iter_mut().zip(row) {
            *t += v;
        }
        // Untouched columns.
        assert!(rows[i * stride..i * stride + offset]
            .iter()
            .all(|v| v.is_nan()));
    }
    let mut sum = vec![f64::NAN; np];
    run(
        batch,
        None,
        ParamGrad::Sum {
            grad: &mut sum,
            accumulate: false,
        },
    );
    assert_close(&format!("{name} sum"), &sum, &total, 1e-10);
    // Accumulate adds.
    run(
        batch,
        None,
        ParamGrad::Sum {
            grad: &mut sum,
            accumulate: true,
        },
    );
    let twice: Vec<f64> = total.iter().map(|v| 2.0 * v).collect();
    assert_close(&format!("{name} accumulate"), &sum, &twice, 1e-10);
}

#[test]
fn per_sample_equals_batch_of_one() {
    let mut rng = Philox::new(7, 0);
    for _ in 0..25 {
        let s = conv_case(&mut rng);
        let s = Conv2dShape {
            batch: 2 + s.batch,
            ..s
        };
        let g = s.geom().unwrap();
        let x = rand_vec(&mut rng, s.batch * g.in_len());
        let p = rand_vec(&mut rng, s.num_params());
        let dy = rand_vec(&mut rng, s.batch * s.cout * g.out_positions());
        let chunks = 1 + rng.next_below(3) as usize;
        let run = |n: usize, only: Option<usize>, pg: ParamGrad<'_, f64>| {
            let sh = Conv2dShape { batch: n, ..s };
            let (il, ol) = (g.in_len(), s.cout * g.out_positions());
            let i = only.unwrap_or(0);
            let mut scr = vec![0.0; sh.scratch_len(chunks).unwrap()];
            conv2d_backward(
                &sh,
                &x[i * il..(i + n) * il],
                &p,
                &dy[i * ol..(i + n) * ol],
                None,
                pg,
                &mut scr,
            )
            .unwrap();
        };
        per_sample_check(&format!("conv2d {s:?}"), s.batch, s.num_params(), &run);
    }
    for _ in 0..15 {
        let s = convt_case(&mut rng);
        let s = ConvTranspose2dShape {
            batch: 2 + s.batch,
            ..s
        };
        let (oh, ow) = s.out_hw().unwrap();
        let (il, ol) = (s.cin * s.h * s.w, s.cout * oh * ow);
        let x = rand_vec(&mut rng, s.batch * il);
        let p = rand_vec(&mut rng, s.num_params());
        let dy = rand_vec(&mut rng, s.batch * ol);
        let run = |n: usize, only: Option<usize>, pg: ParamGrad<'_, f64>| {
            let sh = ConvTranspose2dShape { batch: n, ..s };
            let i = only.unwrap_or(0);
            let mut scr = vec![0.0; sh.scratch_len(2).unwrap()];
            conv_transpose2d_backward(
                &sh,
                &x[i * il..(i + n) * il],
                &p,
                &dy[i * ol..(i + n) * ol],
                None,
                pg,
                &mut scr,
            )
            .unwrap();
        };
        per_sample_check(
            &format!("conv_transpose2d {s:?}"),
            s.batch,
            s.num_params(),
            &run,
        );
    }
    for case in 0..10 {
        let s = LinearShape {
            batch: 2 + rng.next_below(9) as usize,
            inf: 1 + rng.next_below(9) as usize,
            outf: 1 + rng.next_below(6) as usize,
            bias: case % 3 != 0,
        };
        let x = rand_vec(&mut rng, s.batch * s.inf);
        let p = rand_vec(&mut rng, s.num_params());
        let dy = rand_vec(&mut rng, s.batch * s.outf);
        let run = |n: usize, only: Option<usize>, pg: ParamGrad<'_, f64>| {
            let sh = LinearShape { batch: n, ..s };
            let i = only.unwrap_or(0);
            let mut scr = vec![0.0; sh.scratch_len(3)];
            linear_backward(
                &sh,
                &x[i * s.inf..(i + n) * s.inf],
                &p,
                &dy[i * s.outf..(i + n) * s.outf],
                None,
                pg,
                &mut scr,
            )
            .unwrap();
        };
        per_sample_check(&format!("linear {s:?}"), s.batch, s.num_params(), &run);
    }
    for _ in 0..10 {
        let groups = 1 + rng.next_below(3) as usize;
        let s = GroupNormShape {
            batch: 2 + rng.next_below(5) as usize,
            c: groups * (1 + rng.next_below(3) as usize),
            spatial: 2 + rng.next_below(6) as usize,
            groups,
            eps: 1e-5,
        };
        let il = s.c * s.spatial;
        let x = rand_vec(&mut rng, s.batch * il);
        let p = rand_vec(&mut rng, s.num_params());
        let dy = rand_vec(&mut rng, s.batch * il);
        let run = |n: usize, only: Option<usize>, pg: ParamGrad<'_, f64>| {
            let sh = GroupNormShape { batch: n, ..s };
            let i = only.unwrap_or(0);
            let mut scr = vec![0.0; sh.scratch_len(2)];
            group_norm_backward(
                &sh,
                &x[i * il..(i + n) * il],
                &p,
                &dy[i * il..(i + n) * il],
                None,
                pg,
                &mut scr,
            )
            .unwrap();
        };
        per_sample_check(&format!("group_norm {s:?}"), s.batch, s.num_params(), &run);
    }
}

// ---------------------------------------------------------------- Sequential

#[test]
fn sample_conv_net_shape_and_names() {
    let m = models::sample_conv_net(&Device::Cpu, 0).unwrap();
    assert_eq!(m.num_params(), 26010);
    assert_eq!(m.output_shape(), &[10]);
    let names: Vec<&str> = m.param_info().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"]
    );
    assert_eq!(m.param_info()[0].shape, [16, 1, 8, 8]);
    assert_eq!(m.param_info()[4].shape, [32, 512]);
    assert_eq!(m.layout().num_segments(), 8);
    // PyTorch's init bounds: ±1/√fan_in.
    let p = m.params().to_vec().unwrap();
    let w0 = &p[m.param_info()[0].range.clone()];
    assert!(w0.iter().all(|v| v.abs() <= 1.0 / 8.0));
    assert!(w0.iter().any(|v| v.abs() > 0.1));
    let w7 = &p[m.param_info()[4].range.clone()];
    let b = 1.0 / 512f32.sqrt();
    assert!(w7.iter().all(|v| v.abs() <= b) && w7.iter().any(|v| v.abs() > 0.9 * b));
    let t = models::sample_conv_net_tanh(&Device::Cpu, 0).unwrap();
    assert_eq!(t.num_params(), 26010);
    assert_eq!(t.params().to_vec().unwrap(), p, "same seed, same init");
}

fn model_per_sample_check(
    m: &Sequential,
    batch: usize,
    loss: &dyn Fn(&Sequential, &mut dpsgd::nn::Workspace, usize, usize) -> f64,
) {
    let dev = Device::Cpu;
    let per: usize = m.input_shape().iter().product();
    let p = m.num_params();
    let mut rng = Philox::new(11, 0);
    let x: Vec<f32> = (0..batch * per).map(|_| rng.next_f64() as f32).collect();
    let mut ws = m.workspace(batch).unwrap();
    let xb = Buffer::from_slice(&dev, &x).unwrap();
    m.forward(&mut ws, &xb).unwrap();
    loss(m, &mut ws, 0, batch);
    let mut rows = Buffer::zeros(&dev, batch * p).unwrap();
    m.backward(&mut ws, Grads::PerSample(&mut rows), true)
        .unwrap();
    let ig = ws.input_grad().unwrap().to_vec();
    let rows = rows.to_vec().unwrap();
    let mut total = vec![0f64; p];
    for i in 0..batch {
        let xi = Buffer::from_slice(&dev, &x[i * per..(i + 1) * per]).unwrap();
        m.forward(&mut ws, &xi).unwrap();
        loss(m, &mut ws, i, 1);
        let mut g = Buffer::zeros(&dev, p).unwrap();
        m.backward(
            &mut ws,
            Grads::Sum {
                grad: &mut g,
                accumulate: false,
            },
            true,
        )
        .unwrap();
        let g = g.to_vec().unwrap();
        for j in 0..p {
            let (a, b) = (rows[i * p + j], g[j]);
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "row {i} param {j}: {a} vs {b}"
            );
            total[j] += a as f64;
        }
        let igi = ws.input_grad().unwrap();
        for (a, b) in ig[i * per..(i + 1) * per].iter().zip(igi) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()));
        }
    }
    m.forward(&mut ws, &xb).unwrap();
    loss(m, &mut ws, 0, batch);
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
    assert!(ws.input_grad().is_none());
    for (a, b) in g.to_vec().unwrap().iter().zip(&total) {
        assert!(
            (*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "sum {a} vs {b}"
        );
    }
}

#[test]
fn sample_conv_net_per_sample_equals_batch_of_one() {
    for m in [
        models::sample_conv_net(&Device::Cpu, 3).unwrap(),
        models::sample_conv_net_tanh(&Device::Cpu, 4).unwrap(),
    ] {
        let targets: Vec<u32> = (0..6).map(|i| (i * 7 % 10) as u32).collect();
        let loss = |m: &Sequential, ws: &mut dpsgd::nn::Workspace, i: usize, n: usize| {
            m.loss(ws, Loss::CrossEntropy(&targets[i..i + n]), Reduction::Sum)
                .unwrap()
        };
        model_per_sample_check(&m, 6, &loss);
    }
}

/// The depth-first CPU schedule (the default) against the layer-major one: same output,
/// activations, per-sample rows and input gradient, bit for bit (the same kernels run on the
/// same examples, only grouped differently); the summed gradient to 1e-5 (added in another
/// order). Batches below, at and above one group per thread, so that threads get several
/// groups and a last short one.
#[test]
fn depth_first_schedule_equals_layer_major() {
    let cfg = models::DcganConfig {
        image_size: 28,
        ngf: 8,
        ndf: 8,
        nz: 16,
        groups: 4,
        channels: 1,
    };
    let nets = [
        models::sample_conv_net(&Device::Cpu, 3).unwrap(),
        models::sample_conv_net_tanh(&Device::Cpu, 4).unwrap(),
        models::dcgan_discriminator(&Device::Cpu, &cfg, 5).unwrap(),
        models::dcgan_generator(&Device::Cpu, &cfg, 6).unwrap(),
    ];
    let dev = Device::Cpu;
    for m in &nets {
        let per: usize = m.input_shape().iter().product();
        let out: usize = m.output_shape().iter().product();
        let p = m.num_params();
        let mut ws_df = m.workspace(80).unwrap();
        let mut ws_lm = m.workspace(80).unwrap();
        ws_lm.set_depth_first(false);
        let g = ws_df.group();
        for batch in [1, g, 2 * g + 1, 80] {
            let mut rng = Philox::new(batch as u64, 9);
            let x: Vec<f32> = (0..batch * per)
                .map(|_| rng.next_f64() as f32 - 0.5)
                .collect();
            let dy: Vec<f32> = (0..batch * out)
                .map(|_| rng.next_f64() as f32 - 0.5)
                .collect();
            let mut res = Vec::new();
            for ws in [&mut ws_df, &mut ws_lm] {
                m.forward_slice(ws, &x).unwrap();
                let acts: Vec<Vec<f32>> = (0..=m.layers().len())
                    .map(|i| ws.activation(i).unwrap().to_vec())
                    .collect();
                m.set_output_grad(ws, &dy).unwrap();
                let mut rows = Buffer::zeros(&dev, batch * p).unwrap();
                m.backward(ws, Grads::PerSample(&mut rows), true).unwrap();
                let ig = ws.input_grad().unwrap().to_vec();
                m.set_output_grad(ws, &dy).unwrap();
                let mut sum = Buffer::from_slice(&dev, &vec![1.0f32; p]).unwrap();
                let grads = Grads::Sum {
                    grad: &mut sum,
                    accumulate: true,
                };
                m.backward(ws, grads, false).unwrap();
                res.push((acts, rows.to_vec().unwrap(), ig, sum.to_vec().unwrap()));
            }
            let (a, b) = (&res[0], &res[1]);
            let what = format!("{:?}, batch {batch}", m.layers()[0]);
            assert_eq!(a.0, b.0, "{what}: activations");
            assert_eq!(a.1, b.1, "{what}: per-sample rows");
            assert_eq!(a.2, b.2, "{what}: input gradient");
            for (u, v) in a.3.iter().zip(&b.3) {
                assert!(
                    (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                    "{what}: sum {u} vs {v}"
                );
            }
        }
    }
}

/// SampleConvNet (ReLU, Tanh), the DCGAN discriminator and generator, and an MLP with a
/// bias-free layer (3 classes): the models of the fused-pass tests.
fn six_nets() -> [Sequential; 6] {
    let cfg = models::DcganConfig {
        image_size: 28,
        ngf: 8,
        ndf: 8,
        nz: 16,
        groups: 4,
        channels: 1,
    };
    let dev = Device::Cpu;
    let mlp = Sequential::builder(&[2, 5, 5])
        .flatten()
        .linear(16, true)
        .tanh()
        .linear(8, false)
        .relu()
        .linear(3, true)
        .build(&dev, 7)
        .unwrap();
    [
        models::sample_conv_net(&dev, 3).unwrap(),
        models::sample_conv_net_tanh(&dev, 4).unwrap(),
        models::dcgan_discriminator(&dev, &cfg, 5).unwrap(),
        models::dcgan_generator(&dev, &cfg, 6).unwrap(),
        mlp,
        models::scatter_cnn_builder(6, 3).build(&dev, 8).unwrap(),
    ]
}

/// `Grads::ClippedSum` (clipping fused into the backward; ghost norms for `Linear`) and
/// per-sample rows + `ops::clip_and_accumulate` both equal the clipped sum computed in f64
/// from the rows, to 1e-5·Σ|terms| + 1e-7 (f32 rounding, each summed in its own order): four models plus an MLP with a bias-free layer and a scatter-cnn (parameter-free first layer); flat clipping over the model's
/// layout and a one-segment layout, per-layer clipping, and a layout whose segments cut
/// through tensors (no ghost norms then); both CPU schedules; batches of 1, one group, several
/// groups per thread. Bounds at about the median norm, so some rows are clipped and some not.
#[test]
fn clipped_sum_equals_per_sample_then_clip() {
    use dpsgd::ops::{clip_and_accumulate, per_sample_norms, ClipWorkspace, Clipping};
    use dpsgd::Layout;
    let dev = Device::Cpu;
    let nets = six_nets();
    for m in &nets {
        let per: usize = m.input_shape().iter().product();
        let out: usize = m.output_shape().iter().product();
        let p = m.num_params();
        let mut ws_df = m.workspace(80).unwrap();
        let mut ws_lm = m.workspace(80).unwrap();
        ws_lm.set_depth_first(false);
        let g = ws_df.group();
        for batch in [1, g, 2 * g + 1, 80] {
            let mut rng = Philox::new(batch as u64, 11);
            let x: Vec<f32> = (0..batch * per)
                .map(|_| rng.next_f64() as f32 - 0.5)
                .collect();
            let dy: Vec<f32> = (0..batch * out)
                .map(|_| 4.0 * (rng.next_f64() as f32 - 0.5))
                .collect();
            // The reference rows and their norms.
            let mut rows = Buffer::zeros(&dev, batch * p).unwrap();
            m.forward_slice(&mut ws_lm, &x).unwrap();
            m.set_output_grad(&mut ws_lm, &dy).unwrap();
            m.backward(&mut ws_lm, Grads::PerSample(&mut rows), false)
                .unwrap();
            let s = m.layout().num_segments();
            let mut norms = Buffer::zeros(&dev, batch).unwrap();
            let mut seg = Buffer::zeros(&dev, batch * s).unwrap();
            per_sample_norms(&rows, batch, m.layout(), &mut norms, &mut seg).unwrap();
            let mut sorted = norms.to_vec().unwrap();
            sorted.sort_by(f32::total_cmp);
            let c = sorted[batch / 2].max(1e-3);
            let seg_v = seg.to_vec().unwrap();
            let per_layer: Vec<f32> = (0..s)
                .map(|k| seg_v[(batch / 2) * s + k].max(1e-3))
                .collect();
            let cut = Layout::from_sizes(&[p / 3, p - p / 3]).unwrap();
            let cases = [
                (m.layout().clone(), Clipping::Flat(c)),
                (Layout::flat(p), Clipping::Flat(c)),
                (m.layout().clone(), Clipping::PerLayer(per_layer)),
                (cut, Clipping::PerLayer(vec![c, 0.5 * c])),
            ];
            let rv = rows.to_vec().unwrap();
            for (layout, clipping) in &cases {
                let init: Vec<f32> = (0..p).map(|j| (j % 7) as f32 * 0.01).collect();
                // The exact clipped sum in f64, and Σ|terms| (the scale of f32 rounding).
                let ns = layout.num_segments();
                let mut exact: Vec<f64> = init.iter().map(|&v| v as f64).collect();
                let mut scale: Vec<f64> = init.iter().map(|&v| v.abs() as f64).collect();
                for row in rv.chunks_exact(p) {
                    let sq: Vec<f64> = (0..ns)
                        .map(|k| {
                            row[layout.segment(k)]
                                .iter()
                                .map(|&v| (v as f64).powi(2))
                                .sum()
                        })
                        .collect();
                    let f: Vec<f64> = match clipping {
                        Clipping::Flat(c) => {
                            let n = sq.iter().sum::<f64>().sqrt();
                            vec![(*c as f64 / (n + 1e-6)).min(1.0); ns]
                        }
                        Clipping::PerLayer(v) => (0..ns)
                            .map(|k| (v[k] as f64 / (sq[k].sqrt() + 1e-6)).min(1.0))
                            .collect(),
                    };
                    for (k, fk) in f.iter().enumerate() {
                        for j in layout.segment(k) {
                            let t = fk * row[j] as f64;
                            exact[j] += t;
                            scale[j] += t.abs();
                        }
                    }
                }
                let mut reference = Buffer::from_slice(&dev, &init).unwrap();
                let mut cws = ClipWorkspace::new(&dev, batch, layout).unwrap();
                clip_and_accumulate(&rows, batch, layout, clipping, &mut cws, &mut reference)
                    .unwrap();
                let mut results = vec![("clip_and_accumulate", reference.to_vec().unwrap())];
                // The norms each example is clipped by (`[batch, F]`), in f64.
                let want_norms: Vec<f64> = rv
                    .chunks_exact(p)
                    .flat_map(|row| {
                        let sq: Vec<f64> = (0..ns)
                            .map(|k| {
                                row[layout.segment(k)]
                                    .iter()
                                    .map(|&v| (v as f64).powi(2))
                                    .sum()
                            })
                            .collect();
                        match clipping {
                            Clipping::Flat(_) => vec![sq.iter().sum::<f64>().sqrt()],
                            Clipping::PerLayer(_) => sq.iter().map(|q| q.sqrt()).collect(),
                        }
                    })
                    .collect();
                for (name, ws) in [("depth-first", &mut ws_df), ("layer-major", &mut ws_lm)] {
                    m.forward_slice(ws, &x).unwrap();
                    m.set_output_grad(ws, &dy).unwrap();
                    let mut got = Buffer::from_slice(&dev, &init).unwrap();
                    ws.set_record_norms(true);
                    m.backward(
                        ws,
                        Grads::ClippedSum {
                            layout,
                            clipping,
                            sum: &mut got,
                        },
                        false,
                    )
                    .unwrap();
                    let norms = ws.clip_norms().expect("recorded");
                    assert_eq!(norms.len(), want_norms.len(), "{name}: [batch, F]");
                    for (i, (u, v)) in norms.iter().zip(&want_norms).enumerate() {
                        assert!(
                            (*u as f64 - v).abs() <= 1e-4 * v + 1e-7,
                            "{name}, batch {batch}, {clipping:?}: norm {i} {u} vs {v}"
                        );
                    }
                    ws.set_record_norms(false);
                    assert!(ws.clip_norms().is_none(), "{name}: off again");
                    results.push((name, got.to_vec().unwrap()));
                }
                for (name, got) in &results {
                    let what = format!(
                        "{name}: {:?}, batch {batch}, {clipping:?}, {ns} segments",
                        m.layers()[0],
                    );
                    for j in 0..p {
                        let (u, v) = (got[j] as f64, exact[j]);
                        assert!(
                            (u - v).abs() <= 1e-5 * scale[j] + 1e-7,
                            "{what}: sum[{j}] {u} vs exact {v} (Σ|terms| {})",
                            scale[j]
                        );
                    }
                }
            }
        }
    }
}

/// `forward_backward` (each group's forward, loss and backward in one pass; Conv2d reusing
/// its forward's im2col) equals `forward_slice` + `loss` + `backward`: activations, input
/// gradients and per-sample rows bit for bit; the loss to 1e-12; summed and clipped gradients
/// to 1e-5 of their largest entry (added in another order). Four models and an MLP; sum and
/// mean reductions; cross-entropy and BCE with logits; batches of 1 to 80.
#[test]
fn forward_backward_equals_three_calls() {
    use dpsgd::ops::Clipping;
    let dev = Device::Cpu;
    let nets = six_nets();
    for m in &nets {
        let per: usize = m.input_shape().iter().product();
        let out: usize = m.output_shape().iter().product();
        let p = m.num_params();
        let classes = out >= 3 && m.output_shape().len() == 1;
        let mut ws = m.workspace(80).unwrap();
        for (batch, reduction) in [
            (1, Reduction::Sum),
            (7, Reduction::Mean),
            (33, Reduction::Sum),
            (80, Reduction::Mean),
        ] {
            let mut rng = Philox::new(batch as u64, 21);
            let x: Vec<f32> = (0..batch * per)
                .map(|_| rng.next_f64() as f32 - 0.5)
                .collect();
            let t_ce: Vec<u32> = (0..batch)
                .map(|_| rng.next_below(out as u64) as u32)
                .collect();
            let t_bce: Vec<f32> = (0..batch * out).map(|_| rng.next_f64() as f32).collect();
            let loss = || {
                if classes {
                    Loss::CrossEntropy(&t_ce)
                } else {
                    Loss::BceWithLogits(&t_bce)
                }
            };
            let what = format!("{:?}, batch {batch}, {reduction:?}", m.layers()[0]);
            let segs = m.layout().num_segments();
            let clipping = Clipping::PerLayer(vec![0.05; segs]);
            // Reference: the three calls.
            let mut rows_a = Buffer::zeros(&dev, batch * p).unwrap();
            m.forward_slice(&mut ws, &x).unwrap();
            let acts_a: Vec<Vec<f32>> = (0..=m.layers().len())
                .map(|i| ws.activation(i).unwrap().to_vec())
                .collect();
            let la = m.loss(&mut ws, loss(), reduction).unwrap();
            m.backward(&mut ws, Grads::PerSample(&mut rows_a), true)
                .unwrap();
            let ig_a = ws.input_grad().unwrap().to_vec();
            let mut sum_a = Buffer::from_slice(&dev, &vec![0.5f32; p]).unwrap();
            m.forward_slice(&mut ws, &x).unwrap();
            m.loss(&mut ws, loss(), reduction).unwrap();
            m.backward(
                &mut ws,
                Grads::Sum {
                    grad: &mut sum_a,
                    accumulate: true,
                },
                false,
            )
            .unwrap();
            // The clipped sum needs per-example gradients: a Mean loss is refused (its
            // gradients depend on the realised batch size), so the reference for Mean runs
            // with Sum and the Mean calls below must fail.
            let clip_reduction = Reduction::Sum;
            let mut clip_a = Buffer::zeros(&dev, p).unwrap();
            m.forward_slice(&mut ws, &x).unwrap();
            m.loss(&mut ws, loss(), clip_reduction).unwrap();
            m.backward(
                &mut ws,
                Grads::ClippedSum {
                    layout: m.layout(),
                    clipping: &clipping,
                    sum: &mut clip_a,
                },
                false,
            )
            .unwrap();
            if reduction == Reduction::Mean {
                m.forward_slice(&mut ws, &x).unwrap();
                m.loss(&mut ws, loss(), reduction).unwrap();
                let mut scratch = Buffer::zeros(&dev, p).unwrap();
                let r = m.backward(
                    &mut ws,
                    Grads::ClippedSum {
                        layout: m.layout(),
                        clipping: &clipping,
                        sum: &mut scratch,
                    },
                    false,
                );
                assert!(r.is_err(), "{what}: a Mean loss into a clipped sum");
            }
            // Fused.
            let mut rows_b = Buffer::zeros(&dev, batch * p).unwrap();
            let lb = m
                .forward_backward(
                    &mut ws,
                    &x,
                    loss(),
                    reduction,
                    Grads::PerSample(&mut rows_b),
                    true,
                )
                .unwrap();
            for (i, a) in acts_a.iter().enumerate() {
                assert_eq!(ws.activation(i).unwrap(), &a[..], "{what}: activation {i}");
            }
            assert_eq!(
                ws.input_grad().unwrap(),
                &ig_a[..],
                "{what}: input gradient"
            );
            assert_eq!(
                rows_a.to_vec().unwrap(),
                rows_b.to_vec().unwrap(),
                "{what}: rows"
            );
            assert!(close(la, lb, 1e-12), "{what}: loss {la} vs {lb}");
            let mut sum_b = Buffer::from_slice(&dev, &vec![0.5f32; p]).unwrap();
            m.forward_backward(
                &mut ws,
                &x,
                loss(),
                reduction,
                Grads::Sum {
                    grad: &mut sum_b,
                    accumulate: true,
                },
                false,
            )
            .unwrap();
            let mut clip_b = Buffer::zeros(&dev, p).unwrap();
            m.forward_backward(
                &mut ws,
                &x,
                loss(),
                clip_reduction,
                Grads::ClippedSum {
                    layout: m.layout(),
                    clipping: &clipping,
                    sum: &mut clip_b,
                },
                false,
            )
            .unwrap();
            for (name, a, b) in [("sum", &sum_a, &sum_b), ("clipped sum", &clip_a, &clip_b)] {
                let (a, b) = (a.to_vec().unwrap(), b.to_vec().unwrap());
                let big = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (j, (u, v)) in b.iter().zip(&a).enumerate() {
                    assert!(
                        (u - v).abs() <= 1e-5 * big,
                        "{what}: {name}[{j}] {u} vs {v}"
                    );
                }
            }
        }
    }
}

/// `forward_backward`'s errors: targets that do not fit (naming the example in the batch),
/// non-finite logits (naming the examples), all before anything is added to the sum.
#[test]
fn forward_backward_errors() {
    let dev = Device::Cpu;
    let m = models::sample_conv_net_tanh(&dev, 1).unwrap();
    let p = m.num_params();
    let batch = 40;
    let mut ws = m.workspace(batch).unwrap();
    let x = vec![0.1f32; batch * 784];
    let mut t = vec![1u32; batch];
    let mut sum = Buffer::from_slice(&dev, &vec![1f32; p]).unwrap();
    let run = |ws: &mut dpsgd::nn::Workspace, sum: &mut Buffer<f32>, x: &[f32], t: &[u32]| {
        m.forward_backward(
            ws,
            x,
            Loss::CrossEntropy(t),
            Reduction::Sum,
            Grads::Sum {
                grad: sum,
                accumulate: true,
            },
            false,
        )
    };
    assert!(matches!(
        run(&mut ws, &mut sum, &x, &t[..39]),
        Err(Error::Shape { .. })
    ));
    t[33] = 10;
    match run(&mut ws, &mut sum, &x, &t) {
        Err(e @ Error::InvalidParameter { .. }) => {
            assert!(e.to_string().contains("example 33"), "{e}")
        }
        other => panic!("expected InvalidParameter, got {other:?}"),
    }
    t[33] = 1;
    let mut xn = x.clone();
    xn[25 * 784..26 * 784].fill(f32::INFINITY);
    assert!(matches!(
        run(&mut ws, &mut sum, &xn, &t),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(
        run(&mut ws, &mut sum, &x[..784 * 3 + 1], &t[..3]),
        Err(Error::Shape { .. })
    ));
    assert!(sum.to_vec().unwrap().iter().all(|&v| v == 1.0));
    run(&mut ws, &mut sum, &x, &t).unwrap();
    assert!(sum.to_vec().unwrap().iter().any(|&v| v != 1.0));
}

/// A NaN in one example's gradient is an error naming that example, on both schedules, and
/// nothing is added to the sum; mismatched layouts and bounds are typed errors.
#[test]
fn clipped_sum_errors() {
    use dpsgd::ops::Clipping;
    use dpsgd::Layout;
    let dev = Device::Cpu;
    let m = models::sample_conv_net_tanh(&dev, 1).unwrap();
    let p = m.num_params();
    let batch = 40;
    let mut ws_df = m.workspace(batch).unwrap();
    let mut ws_lm = m.workspace(batch).unwrap();
    ws_lm.set_depth_first(false);
    let mut x = vec![0.1f32; batch * 784];
    x[27 * 784 + 300] = f32::NAN;
    let dy = vec![0.5f32; batch * 10];
    for ws in [&mut ws_df, &mut ws_lm] {
        m.forward_slice(ws, &x).unwrap();
        m.set_output_grad(ws, &dy).unwrap();
        let mut sum = Buffer::from_slice(&dev, &vec![1f32; p]).unwrap();
        let e = m.backward(
            ws,
            Grads::ClippedSum {
                layout: m.layout(),
                clipping: &Clipping::Flat(1.0),
                sum: &mut sum,
            },
            false,
        );
        match e {
            Err(Error::NonFinite { detail, .. }) => {
                assert!(detail.contains("row 27"), "{detail}")
            }
            other => panic!("expected NonFinite, got {other:?}"),
        }
        assert!(sum.to_vec().unwrap().iter().all(|&v| v == 1.0));
    }
    let x = vec![0.1f32; batch * 784];
    let bad: [(Layout, Clipping); 4] = [
        (Layout::flat(p - 1), Clipping::Flat(1.0)),
        (m.layout().clone(), Clipping::Flat(0.0)),
        (m.layout().clone(), Clipping::Flat(f32::NAN)),
        (m.layout().clone(), Clipping::PerLayer(vec![1.0; 3])),
    ];
    for (layout, clipping) in &bad {
        m.forward_slice(&mut ws_df, &x).unwrap();
        m.set_output_grad(&mut ws_df, &dy).unwrap();
        let mut sum = Buffer::zeros(&dev, p).unwrap();
        let e = m.backward(
            &mut ws_df,
            Grads::ClippedSum {
                layout,
                clipping,
                sum: &mut sum,
            },
            false,
        );
        assert!(
            matches!(e, Err(Error::Shape { .. } | Error::InvalidParameter { .. })),
            "{clipping:?}: {e:?}"
        );
    }
}

#[test]
fn dcgan_models() {
    for size in [28, 32, 64] {
        let cfg = models::DcganConfig {
            image_size: size,
            ngf: 8,
            ndf: 8,
            nz: 16,
            groups: 4,
            channels: 1 + (size == 32) as usize * 2,
        };
        let g = models::dcgan_generator(&Device::Cpu, &cfg, 1).unwrap();
        assert_eq!(g.output_shape(), &[cfg.channels, size, size]);
        let d = models::dcgan_discriminator(&Device::Cpu, &cfg, 2).unwrap();
        assert_eq!(d.output_shape(), &[1]);
        assert_eq!(d.input_shape(), g.output_shape());
        let tb = [1.0f32, 0.0, 1.0];
        let loss = |m: &Sequential, ws: &mut dpsgd::nn::Workspace, i: usize, n: usize| {
            m.loss(ws, Loss::BceWithLogits(&tb[i..i + n]), Reduction::Sum)
                .unwrap()
        };
        model_per_sample_check(&d, 3, &loss);
        // Generator: output gradient set by hand (as from a discriminator).
        let per: usize = g.output_shape().iter().product();
        let dy: Vec<f32> = (0..3 * per)
            .map(|j| ((j % 13) as f32 - 6.0) * 0.01)
            .collect();
        let set = |m: &Sequential, ws: &mut dpsgd::nn::Workspace, i: usize, n: usize| {
            m.set_output_grad(ws, &dy[i * per..(i + n) * per]).unwrap();
            0.0
        };
        model_per_sample_check(&g, 3, &set);
    }
    let bad = models::DcganConfig {
        groups: 5,
        ..Default::default()
    };
    assert!(models::dcgan_generator(&Device::Cpu, &bad, 0).is_err());
    assert!(models::dcgan_discriminator(
        &Device::Cpu,
        &models::DcganConfig {
            image_size: 48,
            ..Default::default()
        },
        0
    )
    .is_err());
}

/// DCGAN's N(0, 0.02) initialisation: conv weights redrawn with that spread, GroupNorm left at
/// (1, 0), the same draws for the same stream, and the 64×64 pair has `dcgan.py`'s indices.
#[test]
fn dcgan_init_draws_normal_002() {
    use dpsgd::rng::{Purpose, RunKeys};
    let cfg = models::DcganConfig {
        image_size: 64,
        ..Default::default()
    };
    let key = RunKeys::seeded(3).key(Purpose::ModelInit);
    // From a zeroed model: GroupNorm's γ must come out 1, not 0.
    let mut g = models::dcgan_generator_builder(&cfg)
        .unwrap()
        .build_zeroed(&Device::Cpu)
        .unwrap();
    models::dcgan_init(&mut g, &mut key.rng(0)).unwrap();
    let p = g.params().to_vec().unwrap();
    let names: Vec<&str> = g.param_info().iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "0.weight",
            "1.weight",
            "1.bias",
            "3.weight",
            "4.weight",
            "4.bias",
            "6.weight",
            "7.weight",
            "7.bias",
            "9.weight",
            "10.weight",
            "10.bias",
            "12.weight"
        ]
    );
    for info in g.param_info() {
        let v = &p[info.range.clone()];
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        if info.name == "0.weight" || info.name == "3.weight" {
            // ≥ 130 000 draws: the sample sd is 0.02 within 1%.
            assert!((sd - 0.02).abs() < 2e-4, "{}: sd {sd}", info.name);
            assert!(mean.abs() < 2e-4, "{}: mean {mean}", info.name);
        } else if info.name.ends_with(".bias") {
            assert!(v.iter().all(|&x| x == 0.0), "{}", info.name);
        } else if ["1.weight", "4.weight", "7.weight", "10.weight"].contains(&info.name.as_str()) {
            assert!(v.iter().all(|&x| x == 1.0), "{}", info.name);
        }
    }
    let mut again = models::dcgan_generator(&Device::Cpu, &cfg, 99).unwrap();
    models::dcgan_init(&mut again, &mut key.rng(0)).unwrap();
    assert_eq!(again.params().to_vec().unwrap(), p);
    let mut d = models::dcgan_discriminator(&Device::Cpu, &cfg, 2).unwrap();
    models::dcgan_init(&mut d, &mut key.rng(1)).unwrap();
    let names: Vec<&str> = d.param_info().iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "0.weight",
            "2.weight",
            "3.weight",
            "3.bias",
            "5.weight",
            "6.weight",
            "6.bias",
            "8.weight",
            "9.weight",
            "9.bias",
            "11.weight"
        ]
    );
}

/// `group_norm_plain` (`affine=False`): no parameters; the same forward as an affine GroupNorm
/// at γ = 1, β = 0, bit for bit; per-sample gradients equal a batch of one; and the layers above
/// get the same per-sample gradients as in the affine model (the backward stops at the first
/// layer with parameters, which changes no arithmetic above it). The scatter-cnn uses it.
#[test]
fn group_norm_without_affine_parameters() {
    let dev = Device::Cpu;
    let tail = |b: dpsgd::nn::SequentialBuilder| {
        b.conv2d(4, 3, 2, 1, true)
            .tanh()
            .flatten()
            .linear(3, true)
            .build(&dev, 9)
            .unwrap()
    };
    let plain = tail(Sequential::builder(&[6, 5, 5]).group_norm_plain(3));
    let mut affine = tail(Sequential::builder(&[6, 5, 5]).group_norm(3));
    let names: Vec<&str> = plain.param_info().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["1.weight", "1.bias", "4.weight", "4.bias"]);
    assert_eq!(affine.num_params(), plain.num_params() + 12);
    assert!(matches!(
        plain.layers()[0],
        Layer::GroupNorm { affine: false, .. }
    ));
    // The affine model with γ = 1, β = 0 and the plain model's other weights.
    let mut pa = vec![1.0f32; 6];
    pa.extend([0.0f32; 6]);
    pa.extend(plain.params().to_vec().unwrap());
    affine.params_mut().copy_from_slice(&pa).unwrap();
    let (batch, per, p) = (5, 150, plain.num_params());
    let mut rng = Philox::new(21, 0);
    let x: Vec<f32> = (0..batch * per)
        .map(|_| rng.next_f64() as f32 * 3.0 - 1.0)
        .collect();
    let t: Vec<u32> = vec![0, 2, 1, 1, 0];
    let mut outs = Vec::new();
    let mut rows = Vec::new();
    for m in [&plain, &affine] {
        let mut ws = m.workspace(batch).unwrap();
        m.forward_slice(&mut ws, &x).unwrap();
        outs.push(ws.output().to_vec());
        m.loss(&mut ws, Loss::CrossEntropy(&t), Reduction::Sum)
            .unwrap();
        let mut r = Buffer::zeros(&dev, batch * m.num_params()).unwrap();
        m.backward(&mut ws, Grads::PerSample(&mut r), false)
            .unwrap();
        rows.push(r.to_vec().unwrap());
    }
    assert_eq!(outs[0], outs[1]);
    for i in 0..batch {
        let a = &rows[0][i * p..(i + 1) * p];
        let b = &rows[1][i * (p + 12) + 12..(i + 1) * (p + 12)];
        assert_eq!(a, b, "example {i}");
        assert!(a.iter().any(|v| *v != 0.0));
    }
    let loss = |m: &Sequential, ws: &mut dpsgd::nn::Workspace, i: usize, n: usize| {
        m.loss(ws, Loss::CrossEntropy(&t[i..i + n]), Reduction::Sum)
            .unwrap()
    };
    model_per_sample_check(&plain, batch, &loss);
}

#[test]
fn builder_mirrors_layers_and_pools() {
    let m = Sequential::builder(&[2, 9, 9])
        .conv2d(4, 3, 1, 1, true)
        .group_norm(2)
        .leaky_relu(0.1)
        .avg_pool2d(3, 2)
        .conv2d(3, 2, 1, 0, false)
        .sigmoid()
        .flatten()
        .linear(5, true)
        .build(&Device::Cpu, 5)
        .unwrap();
    assert_eq!(m.shape_at(4), Some(&[4, 4, 4][..]));
    let names: Vec<&str> = m.param_info().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "7.weight", "7.bias"]
    );
    let t: Vec<u32> = vec![0, 4, 2, 1];
    let loss = |m: &Sequential, ws: &mut dpsgd::nn::Workspace, i: usize, n: usize| {
        m.loss(ws, Loss::CrossEntropy(&t[i..i + n]), Reduction::Sum)
            .unwrap()
    };
    model_per_sample_check(&m, 4, &loss);
    let same = Sequential::new(&Device::Cpu, &[2, 9, 9], m.layers().to_vec(), 5).unwrap();
    assert_eq!(
        same.params().to_vec().unwrap(),
        m.params().to_vec().unwrap()
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn errors_not_panics() {
    let dev = Device::Cpu;
    let m = models::sample_conv_net(&dev, 0).unwrap();
    let mut ws = m.workspace(4).unwrap();
    // Input that does not fit the model.
    for n in [0, 27 * 28, 5 * 784, 784 + 1] {
        let x = Buffer::from_slice(&dev, &vec![0f32; n]).unwrap();
        assert!(
            matches!(m.forward(&mut ws, &x), Err(Error::Shape { .. })),
            "len {n}"
        );
    }
    // Backward/loss before forward.
    assert!(m
        .loss(&mut ws, Loss::CrossEntropy(&[1]), Reduction::Sum)
        .is_err());
    let mut g = Buffer::zeros(&dev, m.num_params()).unwrap();
    assert!(m
        .backward(
            &mut ws,
            Grads::Sum {
                grad: &mut g,
                accumulate: false
            },
            false
        )
        .is_err());
    let x = Buffer::from_slice(&dev, &vec![0f32; 2 * 784]).unwrap();
    m.forward(&mut ws, &x).unwrap();
    assert!(
        m.loss(&mut ws, Loss::CrossEntropy(&[1]), Reduction::Sum)
            .is_err(),
        "one target for two"
    );
    assert!(
        m.loss(&mut ws, Loss::CrossEntropy(&[1, 10]), Reduction::Sum)
            .is_err(),
        "class 10 of 10"
    );
    m.loss(&mut ws, Loss::CrossEntropy(&[1, 9]), Reduction::Sum)
        .unwrap();
    let mut short = Buffer::zeros(&dev, m.num_params()).unwrap();
    assert!(m
        .backward(&mut ws, Grads::PerSample(&mut short), false)
        .is_err());
    let mut wrong = Buffer::zeros(&dev, 3).unwrap();
    assert!(m
        .backward(
            &mut ws,
            Grads::Sum {
                grad: &mut wrong,
                accumulate: false
            },
            false
        )
        .is_err());
    // A workspace of another model.
    let other = models::sample_conv_net_tanh(&dev, 0).unwrap();
    let m2 = Sequential::builder(&[1, 28, 28])
        .flatten()
        .linear(3, true)
        .build(&dev, 0)
        .unwrap();
    let mut ws2 = m2.workspace(2).unwrap();
    assert!(other.forward(&mut ws2, &x).is_err());
    // Kernel larger than the padded input.
    assert!(Sequential::builder(&[1, 5, 5])
        .conv2d(2, 8, 1, 1, true)
        .build(&dev, 0)
        .is_err());
    assert!(Sequential::builder(&[1, 5, 5])
        .max_pool2d(6, 1)
        .build(&dev, 0)
        .is_err());
    assert!(
        Sequential::builder(&[3, 5, 5])
            .linear(2, true)
            .build(&dev, 0)
            .is_err(),
        "no flatten"
    );
    assert!(
        Sequential::builder(&[1, 5, 5])
            .relu()
            .build(&dev, 0)
            .is_err(),
        "no parameters"
    );
    assert!(Sequential::new(
        &dev,
        &[1, 5, 5],
        vec![Layer::Conv2d {
            cin: 2,
            cout: 1,
            k: 3,
            stride: 1,
            pad: 0,
            bias: true
        }],
        0
    )
    .is_err());
    assert!(m.workspace(0).is_err());
    let s = Conv2dShape {
        batch: 1,
        cin: 1,
        h: 3,
        w: 3,
        cout: 1,
        k: 8,
        stride: 1,
        pad: 2,
        bias: true,
    };
    assert!(matches!(s.geom(), Err(Error::Shape { .. })));
    let mut y = vec![0f32; 9];
    assert!(conv2d_forward(&s, &[0.0; 9], &[0.0; 65], &mut y, &mut [0.0; 10]).is_err());
    // Kernel functions: short slices and scratch are errors.
    let s = Conv2dShape {
        batch: 2,
        cin: 1,
        h: 4,
        w: 4,
        cout: 2,
        k: 3,
        stride: 1,
        pad: 1,
        bias: true,
    };
    let np = s.num_params();
    let mut scr = vec![0f32; s.scratch_len(1).unwrap()];
    let mut y = vec![0f32; 2 * 2 * 16];
    assert!(conv2d_forward(&s, &[0.0; 31], &vec![0.0; np], &mut y, &mut scr).is_err());
    assert!(conv2d_forward(&s, &[0.0; 32], &vec![0.0; np], &mut y, &mut [0.0; 3]).is_err());
    let mut rows = vec![0f32; 2 * np];
    let pg = ParamGrad::PerSample {
        rows: &mut rows,
        stride: np,
        offset: 1,
    };
    assert!(conv2d_backward(&s, &[0.0; 32], &vec![0.0; np], &y, None, pg, &mut scr).is_err());
    let g = ConvGeom {
        c: 1,
        h: 4,
        w: 4,
        k: 3,
        stride: 1,
        pad: 1,
        oh: 9,
        ow: 9,
    };
    assert!(im2col(&g, &[0f32; 16], &mut [0f32; 729]).is_err());
    let ps = PoolShape {
        batch: 1,
        c: 1,
        h: 2,
        w: 2,
        k: 3,
        stride: 1,
    };
    assert!(max_pool2d_forward(&ps, &[0f32; 4], &mut [0f32; 1]).is_err());
    assert!(bce(&[1.5f32], &[1.0], Reduction::Sum, None).is_err());
    assert!(matches!(
        cross_entropy(&[f32::NAN, 0.0], 2, &[0], Reduction::Sum, None),
        Err(Error::NonFinite { .. })
    ));
    let gn = GroupNormShape {
        batch: 1,
        c: 3,
        spatial: 2,
        groups: 2,
        eps: 1e-5,
    };
    assert!(group_norm_forward(&gn, &[0f32; 6], &[0f32; 6], &mut [0f32; 6]).is_err());
}

// ---------------------------------------------------------------- safetensors

#[test]
fn safetensors_round_trip_and_bad_files() {
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("dpsgd-nn-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    let a = models::sample_conv_net(&dev, 1).unwrap();
    a.save_safetensors(&path).unwrap();
    let mut b = models::sample_conv_net(&dev, 2).unwrap();
    assert_ne!(a.params().to_vec().unwrap(), b.params().to_vec().unwrap());
    b.load_safetensors(&path).unwrap();
    assert_eq!(a.params().to_vec().unwrap(), b.params().to_vec().unwrap());
    // The file's own content, read with the safetensors crate: PyTorch names and shapes.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("3.weight").unwrap().shape(), &[32, 16, 4, 4]);
    assert_eq!(st.tensor("9.bias").unwrap().shape(), &[10]);

    let before = b.params().to_vec().unwrap();
    // Another architecture: missing / mis-shaped tensors.
    let c = Sequential::builder(&[1, 28, 28])
        .conv2d(16, 8, 2, 3, true)
        .build(&dev, 0)
        .unwrap();
    let pc = dir.join("c.safetensors");
    c.save_safetensors(&pc).unwrap();
    assert!(
        matches!(b.load_safetensors(&pc), Err(Error::Format { .. })),
        "missing"
    );
    let d = Sequential::builder(&[1, 28, 28])
        .conv2d(16, 7, 2, 3, true)
        .relu()
        .max_pool2d(2, 1)
        .conv2d(32, 4, 2, 0, true)
        .relu()
        .max_pool2d(2, 1)
        .flatten()
        .linear(32, true)
        .relu()
        .linear(10, true)
        .build(&dev, 0)
        .unwrap();
    let pd = dir.join("d.safetensors");
    d.save_safetensors(&pd).unwrap();
    let e = b.load_safetensors(&pd).unwrap_err();
    assert!(
        matches!(e, Error::Format { .. }) && e.to_string().contains("0.weight"),
        "{e}"
    );
    // Extra tensor: the other way round (c has fewer tensors than b).
    let mut c2 = Sequential::builder(&[1, 28, 28])
        .conv2d(16, 8, 2, 3, true)
        .build(&dev, 0)
        .unwrap();
    assert!(
        matches!(c2.load_safetensors(&path), Err(Error::Format { .. })),
        "unexpected tensors"
    );
    // Corrupt and truncated files, a missing file.
    let pz = dir.join("z.safetensors");
    std::fs::write(&pz, b"not a safetensors file at all").unwrap();
    assert!(matches!(b.load_safetensors(&pz), Err(Error::Format { .. })));
    std::fs::write(&pz, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(b.load_safetensors(&pz), Err(Error::Format { .. })));
    assert!(matches!(
        b.load_safetensors(dir.join("nope.safetensors")),
        Err(Error::Io { .. })
    ));
    assert_eq!(
        b.params().to_vec().unwrap(),
        before,
        "unchanged after failed loads"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The f32 tanh used by the Tanh layers stays within 5e-7 relative (about 4 ulp; measured
/// 3.1e-7) of the f64 tanh over [−12, 12], keeps NaN and the sign of zero, and saturates to ±1.
#[test]
fn fast_tanh_f32_is_accurate() {
    use dpsgd::cpu::gemm::tanh_f32;
    let mut worst = 0f64;
    let mut x = -12.0f32;
    while x <= 12.0 {
        let want = (x as f64).tanh();
        let got = tanh_f32(x) as f64;
        let err = (got - want).abs() / want.abs().max(1e-30);
        worst = worst.max(if want.abs() > 1e-3 {
            err
        } else {
            (got - want).abs() / 1e-3
        });
        x += 1.0e-3;
    }
    assert!(worst < 5e-7, "worst relative error {worst}");
    assert!(tanh_f32(f32::NAN).is_nan());
    assert_eq!(tanh_f32(100.0), 1.0);
    assert_eq!(tanh_f32(-100.0), -1.0);
    assert_eq!(tanh_f32(1e-5), 1e-5);
    assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0f32).to_bits());
}

// ---------------------------------------------------------------- dpsgd::nn as a dependency's API

/// `Reduction` and the loss types are exported from `dpsgd::nn`; the old path still works and
/// names the same type.
#[test]
fn reduction_and_loss_types_are_exported_from_nn() {
    use dpsgd::nn::{Loss as NnLoss, Reduction as NnReduction};
    let old: dpsgd::cpu::loss::Reduction = NnReduction::Sum;
    assert_eq!(old, dpsgd::cpu::loss::Reduction::Sum);
    let dev = Device::Cpu;
    let m = models::sample_conv_net(&dev, 0).unwrap();
    let mut ws = m.workspace(2).unwrap();
    m.forward_slice(&mut ws, &vec![0.1f32; 2 * 784]).unwrap();
    let a = m
        .loss(&mut ws, NnLoss::CrossEntropy(&[1, 9]), NnReduction::Sum)
        .unwrap();
    let b = m.loss(&mut ws, NnLoss::CrossEntropy(&[1, 9]), old).unwrap();
    assert_eq!(a, b);
}

/// `class_targets` turns i64 labels into the native u32 class indices, giving the same loss;
/// negative and out-of-range labels are `Error::ClassTarget` naming the example, and a
/// nonsensical class count is `InvalidParameter`.
#[test]
fn class_targets_from_i64() {
    use dpsgd::nn::class_targets;
    assert_eq!(class_targets(&[3, 1, 4, 1], 10).unwrap(), vec![3, 1, 4, 1]);
    assert_eq!(class_targets(&[], 10).unwrap(), Vec::<u32>::new());
    assert_eq!(class_targets(&[0, 9], 10).unwrap(), vec![0, 9]);

    let dev = Device::Cpu;
    let m = models::sample_conv_net(&dev, 0).unwrap();
    let mut ws = m.workspace(2).unwrap();
    m.forward_slice(&mut ws, &vec![0.1f32; 2 * 784]).unwrap();
    let labels: Vec<i64> = vec![7, 2];
    let y = class_targets(&labels, 10).unwrap();
    let a = m
        .loss(&mut ws, Loss::CrossEntropy(&y), dpsgd::nn::Reduction::Sum)
        .unwrap();
    let b = m
        .loss(
            &mut ws,
            Loss::CrossEntropy(&[7, 2]),
            dpsgd::nn::Reduction::Sum,
        )
        .unwrap();
    assert_eq!(a, b);

    let e = class_targets(&[0, -1, 3], 10).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ClassTarget {
                index: 1,
                value: -1,
                classes: 10
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("0..10"), "{e}");
    assert!(matches!(
        class_targets(&[2, 10], 10),
        Err(Error::ClassTarget {
            index: 1,
            value: 10,
            ..
        })
    ));
    let huge = u32::MAX as i64 + 1;
    assert!(matches!(
        class_targets(&[huge], 10),
        Err(Error::ClassTarget { index: 0, .. })
    ));
    assert!(matches!(
        class_targets(&[0], 0),
        Err(Error::InvalidParameter {
            name: "classes",
            ..
        })
    ));
}

/// Weights load from bytes and from a parsed `SafeTensors` view (strict, like the file
/// loader); `IgnoreUnknown` loads the model's tensors and returns the names of the others;
/// missing, mis-shaped and corrupt sources are errors in both modes and leave the model as it
/// was.
#[test]
fn safetensors_from_bytes_and_view_strict_and_not() {
    use dpsgd::nn::io::SafeTensors;
    use dpsgd::nn::LoadMode;
    let dev = Device::Cpu;
    let a = models::sample_conv_net(&dev, 1).unwrap();
    let want = a.params().to_vec().unwrap();
    let tensors = |extra: &[(&str, Vec<usize>)]| -> Vec<u8> {
        let mut sd = a.state_dict().unwrap();
        for (n, s) in extra {
            let len = s.iter().product();
            sd.push((n.to_string(), s.clone(), vec![0.5f32; len]));
        }
        let bytes: Vec<Vec<u8>> = sd
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = sd
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap();
                (n.clone(), v)
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    };
    let exact = tensors(&[]);
    let with_extra = tensors(&[("optimizer.step", vec![1]), ("10.weight", vec![2, 3])]);

    // Strict from bytes and from a view.
    let mut b = models::sample_conv_net(&dev, 2).unwrap();
    let fresh = b.params().to_vec().unwrap();
    assert_ne!(fresh, want);
    assert!(b
        .load_safetensors_bytes(&exact, LoadMode::Strict)
        .unwrap()
        .is_empty());
    assert_eq!(b.params().to_vec().unwrap(), want);
    let mut b = models::sample_conv_net(&dev, 2).unwrap();
    let st = SafeTensors::deserialize(&exact).unwrap();
    assert!(b
        .load_safetensors_view(&st, LoadMode::default())
        .unwrap()
        .is_empty());
    assert_eq!(b.params().to_vec().unwrap(), want);

    // Unknown tensors: an error when strict (naming them, model unchanged), ignored and
    // returned (sorted) when not.
    let mut b = models::sample_conv_net(&dev, 2).unwrap();
    let e = b
        .load_safetensors_bytes(&with_extra, LoadMode::Strict)
        .unwrap_err();
    assert!(
        matches!(e, Error::Format { .. }) && e.to_string().contains("optimizer.step"),
        "{e}"
    );
    assert_eq!(b.params().to_vec().unwrap(), fresh);
    let ignored = b
        .load_safetensors_bytes(&with_extra, LoadMode::IgnoreUnknown)
        .unwrap();
    assert_eq!(
        ignored,
        vec!["10.weight".to_string(), "optimizer.step".into()]
    );
    assert_eq!(b.params().to_vec().unwrap(), want);
    let mut b = models::sample_conv_net(&dev, 2).unwrap();
    let st = SafeTensors::deserialize(&with_extra).unwrap();
    assert_eq!(
        b.load_safetensors_view(&st, LoadMode::IgnoreUnknown)
            .unwrap(),
        ignored
    );
    assert_eq!(b.params().to_vec().unwrap(), want);

    // A parameter the source lacks (`small` has only the first conv), or one of another shape
    // (`bigger`'s 3.weight is a Linear, the source's a Conv2d): an error in both modes.
    let mut small = Sequential::builder(&[1, 28, 28])
        .conv2d(16, 8, 2, 3, true)
        .relu()
        .build(&dev, 0)
        .unwrap();
    let small_bytes = {
        let sd = small.state_dict().unwrap();
        let bytes: Vec<Vec<u8>> = sd
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = sd
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap();
                (n.clone(), v)
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    };
    let mut bigger = Sequential::builder(&[1, 28, 28])
        .conv2d(16, 8, 2, 3, true)
        .relu()
        .flatten()
        .linear(10, true)
        .build(&dev, 0)
        .unwrap();
    let before = bigger.params().to_vec().unwrap();
    let mut b = models::sample_conv_net(&dev, 2).unwrap();
    for mode in [LoadMode::Strict, LoadMode::IgnoreUnknown] {
        let e = b.load_safetensors_bytes(&small_bytes, mode).unwrap_err();
        assert!(
            matches!(e, Error::Format { .. })
                && e.to_string().contains("missing tensor `3.weight`"),
            "{mode:?}: {e}"
        );
        assert_eq!(b.params().to_vec().unwrap(), fresh, "{mode:?}");
        let e = bigger.load_safetensors_bytes(&exact, mode).unwrap_err();
        assert!(
            matches!(e, Error::Format { .. }) && e.to_string().contains("shape"),
            "{mode:?}: {e}"
        );
        assert_eq!(bigger.params().to_vec().unwrap(), before, "{mode:?}");
    }
    // `small`'s 0.weight is [16, 1, 8, 8]; sample_conv_net's is too, and its 0.bias [16]: so
    // `exact` loads into `small` non-strictly, ignoring the rest.
    let ignored = small
        .load_safetensors_bytes(&exact, LoadMode::IgnoreUnknown)
        .unwrap();
    assert!(ignored.contains(&"3.weight".to_string()) && !ignored.contains(&"0.weight".into()));
    assert_eq!(small.params().to_vec().unwrap(), want[..small.num_params()]);

    // Corrupt and truncated bytes: Format errors naming the source, model unchanged.
    let mut b = models::sample_conv_net(&dev, 2).unwrap();
    for bad in [&b"not a safetensors file"[..], &exact[..exact.len() / 2]] {
        for mode in [LoadMode::Strict, LoadMode::IgnoreUnknown] {
            let e = b.load_safetensors_bytes(bad, mode).unwrap_err();
            assert!(
                matches!(e, Error::Format { .. }) && e.to_string().contains("<bytes>"),
                "{e}"
            );
        }
    }
    assert_eq!(b.params().to_vec().unwrap(), fresh);
}

/// A known architecture builds without an initialisation seed (every parameter 0, the same
/// tensors and names as a seeded build) and takes a trained model's weights from bytes.
#[test]
fn zeroed_models_load_weights_without_a_seed() {
    use dpsgd::nn::{models, LoadMode};
    use dpsgd::train::ModelKind;
    let dev = Device::Cpu;
    let trained = models::sample_conv_net_tanh(&dev, 9).unwrap();
    let mut fresh = ModelKind::TanhConvnet.builder().build_zeroed(&dev).unwrap();
    assert_eq!(fresh.param_info(), trained.param_info());
    assert!(fresh.params().to_vec().unwrap().iter().all(|&v| v == 0.0));
    let dir = std::env::temp_dir().join(format!("dpsgd-zeroed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    trained.save_safetensors(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let ignored = fresh
        .load_safetensors_bytes(&bytes, LoadMode::Strict)
        .unwrap();
    assert!(ignored.is_empty());
    assert_eq!(
        fresh.params().to_vec().unwrap(),
        trained.params().to_vec().unwrap()
    );
    // The DCGAN pair too; a bad configuration is still an error, not a panic.
    let cfg = models::DcganConfig::default();
    let g = models::dcgan_generator_builder(&cfg)
        .unwrap()
        .build_zeroed(&dev)
        .unwrap();
    let g_seeded = models::dcgan_generator(&dev, &cfg, 1).unwrap();
    assert_eq!(g.param_info(), g_seeded.param_info());
    let bad = models::DcganConfig {
        image_size: 30,
        ..cfg
    };
    assert!(models::dcgan_discriminator_builder(&bad).is_err());
    let bad_groups = models::DcganConfig { groups: 7, ..cfg };
    let b = models::dcgan_discriminator_builder(&bad_groups).unwrap();
    assert!(b.build_zeroed(&dev).is_err(), "64 channels in 7 groups");
}

/// `forward` and `forward_backward` take any input form (slice, `Vec`, array, `Buffer`) and
/// give the same results for each.
#[test]
fn one_input_story_for_forward_and_forward_backward() {
    use dpsgd::nn::{models, Input, Loss, Reduction};
    let dev = Device::Cpu;
    let m = models::sample_conv_net(&dev, 4).unwrap();
    let mut ws = m.workspace(2).unwrap();
    let x: Vec<f32> = (0..2 * 784).map(|i| (i % 29) as f32 / 29.0).collect();
    let arr: [f32; 784] = std::array::from_fn(|i| x[i]);
    let buf = Buffer::from_slice(&dev, &x).unwrap();
    m.forward(&mut ws, &x).unwrap();
    let want = ws.output().to_vec();
    m.forward(&mut ws, &x[..]).unwrap();
    assert_eq!(ws.output(), &want[..]);
    m.forward(&mut ws, &buf).unwrap();
    assert_eq!(ws.output(), &want[..]);
    m.forward(&mut ws, Input::Host(&x)).unwrap();
    assert_eq!(ws.output(), &want[..]);
    m.forward(&mut ws, &arr).unwrap();
    assert_eq!(ws.output(), &want[..10], "one example from an array");
    let y = [3u32, 7];
    let p = m.num_params();
    let mut g1 = Buffer::zeros(&dev, p).unwrap();
    let mut g2 = Buffer::zeros(&dev, p).unwrap();
    let l1 = m
        .forward_backward(
            &mut ws,
            &x,
            Loss::CrossEntropy(&y),
            Reduction::Sum,
            Grads::Sum {
                grad: &mut g1,
                accumulate: false,
            },
            false,
        )
        .unwrap();
    let l2 = m
        .forward_backward(
            &mut ws,
            &buf,
            Loss::CrossEntropy(&y),
            Reduction::Sum,
            Grads::Sum {
                grad: &mut g2,
                accumulate: false,
            },
            false,
        )
        .unwrap();
    assert_eq!(l1, l2);
    assert_eq!(g1.to_vec().unwrap(), g2.to_vec().unwrap());
    // A wrong length is still a shape error, whatever the form.
    assert!(m.forward(&mut ws, &x[..100]).is_err());
    assert!(m
        .forward(&mut ws, &Buffer::from_slice(&dev, &x[..100]).unwrap())
        .is_err());
}
