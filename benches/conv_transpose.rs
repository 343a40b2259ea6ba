//! The DCGAN generator's `ConvTranspose2d` CPU kernels (28×28 preset: ngf = 32, nz = 100) on a
//! batch of 64, one chunk (single-threaded, as the depth-first schedule and a one-thread run
//! call them): forward, and backward with the summed weight gradient and the input gradient
//! (what the generator's step asks for), plus per-sample gradients of layer 2.
//!
//!     cargo bench --bench conv_transpose

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dpsgd::cpu::conv::{conv_transpose2d_backward, conv_transpose2d_forward, ConvTranspose2dShape};
use dpsgd::cpu::grad::ParamGrad;
use dpsgd::cpu::philox::Philox;
use std::hint::black_box;

mod common;
use common::rand;

const B: usize = 64;

fn bench(c: &mut Criterion) {
    let layers = [
        // name, cin, h, cout, k, stride, pad
        ("g1_100x1x1_to_128x7x7", 100, 1, 128, 7, 1, 0),
        ("g2_128x7x7_to_64x14x14", 128, 7, 64, 4, 2, 1),
        ("g3_64x14x14_to_1x28x28", 64, 14, 1, 4, 2, 1),
    ];
    let mut rng = Philox::new(3, 0);
    let mut g = c.benchmark_group("conv_transpose_b64");
    g.throughput(Throughput::Elements(B as u64));
    g.sample_size(20);
    for (name, cin, h, cout, k, stride, pad) in layers {
        let s = ConvTranspose2dShape {
            batch: B,
            cin,
            h,
            w: h,
            cout,
            k,
            stride,
            pad,
            bias: false,
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
        g.bench_function(format!("{name}/forward"), |b| {
            b.iter(|| {
                conv_transpose2d_forward(&s, &x, &p, &mut y, &mut scr).unwrap();
                black_box(y[0])
            })
        });
        g.bench_function(format!("{name}/backward_sum_dx"), |b| {
            b.iter(|| {
                let grad = ParamGrad::Sum {
                    grad: &mut sum,
                    accumulate: false,
                };
                conv_transpose2d_backward(&s, &x, &p, &dy, Some(&mut dx), grad, &mut scr).unwrap();
                black_box(sum[0])
            })
        });
        if name.starts_with("g2") {
            let mut rows = vec![0f32; B * np];
            g.bench_function(format!("{name}/backward_per_sample"), |b| {
                b.iter(|| {
                    let grad = ParamGrad::PerSample {
                        rows: &mut rows,
                        stride: np,
                        offset: 0,
                    };
                    conv_transpose2d_backward(&s, &x, &p, &dy, None, grad, &mut scr).unwrap();
                    black_box(rows[0])
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
