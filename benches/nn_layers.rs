//! Per-layer timings of SampleConvNet's CPU kernels at B = 256 (forward and backward with
//! per-sample gradients into the `[B, P]` matrix), to see where a DP-SGD step's time goes.
//! A plain harness (median of `ITERS` runs after a warm-up), not criterion: the point is the
//! split, measured back-to-back in one process.
//!
//!     cargo bench --bench nn_layers
//!     DPSGD_BENCH_ACT=tanh cargo bench --bench nn_layers

use dpsgd::cpu::activation::{activation_backward, activation_forward, Activation};
use dpsgd::cpu::conv::{conv2d_backward, conv2d_forward, Conv2dShape};
use dpsgd::cpu::grad::ParamGrad;
use dpsgd::cpu::linear::{linear_backward, linear_forward, LinearShape};
use dpsgd::cpu::philox::Philox;
use dpsgd::cpu::pool::{max_pool2d_backward_with_output, max_pool2d_forward, PoolShape};
use std::time::Instant;

mod common;
use common::rand;

const B: usize = 256;
const P: usize = 26_010;
const ITERS: usize = 40;

fn time(name: &str, mut f: impl FnMut()) -> f64 {
    for _ in 0..5 {
        f();
    }
    let mut ts: Vec<f64> = (0..ITERS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    let m = ts[ITERS / 2];
    println!("{name:32} {m:8.3} ms");
    m
}

fn main() {
    // `DPSGD_BENCH_ACT=tanh` times the Tanh variant (the trainer's default model).
    let act = match std::env::var("DPSGD_BENCH_ACT").as_deref() {
        Ok("tanh") => Activation::Tanh,
        _ => Activation::Relu,
    };
    println!("activation: {act:?}");
    let mut rng = Philox::new(7, 0);
    let chunks = rayon::current_num_threads();
    let mut rows = vec![0f32; B * P];
    let mut total = 0.0;

    // conv1 → relu → pool → conv2 → relu → pool → linear → relu → linear
    let c1 = Conv2dShape {
        batch: B,
        cin: 1,
        h: 28,
        w: 28,
        cout: 16,
        k: 8,
        stride: 2,
        pad: 3,
        bias: true,
    };
    let c2 = Conv2dShape {
        batch: B,
        cin: 16,
        h: 13,
        w: 13,
        cout: 32,
        k: 4,
        stride: 2,
        pad: 0,
        bias: true,
    };
    let p1 = PoolShape {
        batch: B,
        c: 16,
        h: 14,
        w: 14,
        k: 2,
        stride: 1,
    };
    let p2 = PoolShape {
        batch: B,
        c: 32,
        h: 5,
        w: 5,
        k: 2,
        stride: 1,
    };
    let l1 = LinearShape {
        batch: B,
        inf: 512,
        outf: 32,
        bias: true,
    };
    let l2 = LinearShape {
        batch: B,
        inf: 32,
        outf: 10,
        bias: true,
    };
    let x0 = rand(&mut rng, B * 784);
    let w1 = rand(&mut rng, c1.num_params());
    let w2 = rand(&mut rng, c2.num_params());
    let wl1 = rand(&mut rng, l1.num_params());
    let wl2 = rand(&mut rng, l2.num_params());
    let mut s1 = vec![0f32; c1.scratch_len(chunks).unwrap()];
    let mut s2 = vec![0f32; c2.scratch_len(chunks).unwrap()];
    let mut y1 = vec![0f32; B * 16 * 196];
    let mut a1 = y1.clone();
    let mut q1 = vec![0f32; B * 16 * 169];
    let mut y2 = vec![0f32; B * 32 * 25];
    let mut a2 = y2.clone();
    let mut q2 = vec![0f32; B * 512];
    let mut h1 = vec![0f32; B * 32];
    let mut r1 = h1.clone();
    let mut out = vec![0f32; B * 10];

    total += time("conv1 fwd", || {
        conv2d_forward(&c1, &x0, &w1, &mut y1, &mut s1).unwrap()
    });
    total += time("relu1 fwd", || {
        activation_forward(act, &y1, &mut a1).unwrap()
    });
    total += time("pool1 fwd", || {
        max_pool2d_forward(&p1, &a1, &mut q1).unwrap()
    });
    total += time("conv2 fwd", || {
        conv2d_forward(&c2, &q1, &w2, &mut y2, &mut s2).unwrap()
    });
    total += time("relu2 fwd", || {
        activation_forward(act, &y2, &mut a2).unwrap()
    });
    total += time("pool2 fwd", || {
        max_pool2d_forward(&p2, &a2, &mut q2).unwrap()
    });
    total += time("linear1 fwd", || {
        linear_forward(&l1, &q2, &wl1, &mut h1).unwrap()
    });
    total += time("relu3 fwd", || {
        activation_forward(act, &h1, &mut r1).unwrap()
    });
    total += time("linear2 fwd", || {
        linear_forward(&l2, &r1, &wl2, &mut out).unwrap()
    });

    let dout = rand(&mut rng, B * 10);
    let mut dr1 = vec![0f32; B * 32];
    let mut dh1 = dr1.clone();
    let mut dq2 = vec![0f32; B * 512];
    let mut da2 = vec![0f32; B * 800];
    let mut dy2 = da2.clone();
    let mut dq1 = vec![0f32; B * 16 * 169];
    let mut da1 = vec![0f32; B * 16 * 196];
    let mut dy1 = da1.clone();
    let mut none: Vec<f32> = Vec::new();
    let off = [0usize, 1040, 1040 + 8224, 1040 + 8224 + 16416];
    total += time("linear2 bwd", || {
        let g = ParamGrad::PerSample {
            rows: &mut rows,
            stride: P,
            offset: off[3],
        };
        linear_backward(&l2, &r1, &wl2, &dout, Some(&mut dr1), g, &mut none).unwrap()
    });
    total += time("relu3 bwd", || {
        activation_backward(act, &h1, &r1, &dr1, &mut dh1).unwrap()
    });
    total += time("linear1 bwd", || {
        let g = ParamGrad::PerSample {
            rows: &mut rows,
            stride: P,
            offset: off[2],
        };
        linear_backward(&l1, &q2, &wl1, &dh1, Some(&mut dq2), g, &mut none).unwrap()
    });
    total += time("pool2 bwd", || {
        max_pool2d_backward_with_output(&p2, &a2, &q2, &dq2, &mut da2).unwrap()
    });
    total += time("relu2 bwd", || {
        activation_backward(act, &y2, &a2, &da2, &mut dy2).unwrap()
    });
    total += time("conv2 bwd (dx + per-sample)", || {
        let g = ParamGrad::PerSample {
            rows: &mut rows,
            stride: P,
            offset: off[1],
        };
        conv2d_backward(&c2, &q1, &w2, &dy2, Some(&mut dq1), g, &mut s2).unwrap()
    });
    total += time("pool1 bwd", || {
        max_pool2d_backward_with_output(&p1, &a1, &q1, &dq1, &mut da1).unwrap()
    });
    total += time("relu1 bwd", || {
        activation_backward(act, &y1, &a1, &da1, &mut dy1).unwrap()
    });
    total += time("conv1 bwd (per-sample)", || {
        let g = ParamGrad::PerSample {
            rows: &mut rows,
            stride: P,
            offset: off[0],
        };
        conv2d_backward(&c1, &x0, &w1, &dy1, None, g, &mut s1).unwrap()
    });
    println!("{:32} {total:8.3} ms", "sum of layers");
}
