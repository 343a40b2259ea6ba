//! `Conv2d` CPU kernels on the stride-2 shapes that bound the scatter-cnn epoch and the
//! DP-DCGAN step, batch 64, one chunk (single-threaded, as the depth-first schedule and a
//! one-thread run call them): forward; backward with per-sample weight gradients and the input
//! gradient (the private path); backward with the summed gradient (D on fakes).
//!
//!     cargo bench --bench conv2d

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dpsgd::cpu::conv::{conv2d_backward, conv2d_forward, Conv2dShape};
use dpsgd::cpu::grad::ParamGrad;
use dpsgd::cpu::philox::Philox;
use std::hint::black_box;

mod common;
use common::rand;

const B: usize = 64;

fn bench(c: &mut Criterion) {
    let layers = [
        // name, cin, h, cout, k, stride, pad
        ("scatter_cnn_81x7x7_to_16x4x4", 81, 7, 16, 3, 2, 1),
        ("dcgan_d1_1x28x28_to_32x14x14", 1, 28, 32, 4, 2, 1),
        ("dcgan_d2_32x14x14_to_64x7x7", 32, 14, 64, 4, 2, 1),
    ];
    let mut rng = Philox::new(5, 0);
    let mut g = c.benchmark_group("conv2d_b64");
    g.throughput(Throughput::Elements(B as u64));
    g.sample_size(20);
    for (name, cin, h, cout, k, stride, pad) in layers {
        let s = Conv2dShape {
            batch: B,
            cin,
            h,
            w: h,
            cout,
            k,
            stride,
            pad,
            bias: true,
        };
        let (oh, ow) = s.out_hw().unwrap();
        let (il, ol, np) = (cin * h * h, cout * oh * ow, s.num_params());
        let x = rand(&mut rng, B * il);
        let p = rand(&mut rng, np);
        let dy = rand(&mut rng, B * ol);
        // One chunk, plus the partial sum a summed gradient takes.
        let mut scr = vec![0f32; s.scratch_len(1).unwrap() + np];
        let mut y = vec![0f32; B * ol];
        let mut dx = vec![0f32; B * il];
        let mut sum = vec![0f32; np];
        let mut rows = vec![0f32; B * np];
        g.bench_function(format!("{name}/forward"), |b| {
            b.iter(|| {
                conv2d_forward(&s, &x, &p, &mut y, &mut scr).unwrap();
                black_box(y[0])
            })
        });
        g.bench_function(format!("{name}/backward_per_sample_dx"), |b| {
            b.iter(|| {
                let grad = ParamGrad::PerSample {
                    rows: &mut rows,
                    stride: np,
                    offset: 0,
                };
                conv2d_backward(&s, &x, &p, &dy, Some(&mut dx), grad, &mut scr).unwrap();
                black_box(rows[0])
            })
        });
        g.bench_function(format!("{name}/backward_sum_dx"), |b| {
            b.iter(|| {
                let grad = ParamGrad::Sum {
                    grad: &mut sum,
                    accumulate: false,
                };
                conv2d_backward(&s, &x, &p, &dy, Some(&mut dx), grad, &mut scr).unwrap();
                black_box(sum[0])
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
