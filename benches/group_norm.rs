//! `GroupNorm` CPU kernels on the DP-DCGAN's shapes (28×28 preset, ngf = ndf = 32, 8 groups),
//! batch 64: forward; backward with the summed γ/β gradient and the input gradient (G, D on
//! fakes); backward with per-sample rows and the input gradient (D on the private lot).
//! Run with `RAYON_NUM_THREADS=1` for one thread, as BENCHMARKS.md quotes it.
//!
//!     RAYON_NUM_THREADS=1 cargo bench --bench group_norm

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dpsgd::cpu::grad::ParamGrad;
use dpsgd::cpu::norm::{group_norm_backward, group_norm_forward, GroupNormShape};
use dpsgd::cpu::philox::Philox;
use std::hint::black_box;

mod common;
use common::rand;

const B: usize = 64;

fn bench(c: &mut Criterion) {
    let layers = [
        // name, channels, spatial
        ("g1_128x7x7", 128, 49),
        ("g2_64x14x14", 64, 196),
        ("d2_64x7x7", 64, 49),
    ];
    let mut rng = Philox::new(7, 0);
    let mut g = c.benchmark_group("group_norm_b64");
    g.throughput(Throughput::Elements(B as u64));
    g.sample_size(30);
    for (name, ch, spatial) in layers {
        let s = GroupNormShape {
            batch: B,
            c: ch,
            spatial,
            groups: 8,
            eps: 1e-5,
        };
        let n = B * ch * spatial;
        let (x, dy) = (rand(&mut rng, n), rand(&mut rng, n));
        let p: Vec<f32> = (0..2 * ch)
            .map(|i| if i < ch { 1.0 } else { 0.0 })
            .collect();
        let mut y = vec![0f32; n];
        let mut dx = vec![0f32; n];
        let mut sum = vec![0f32; 2 * ch];
        let mut rows = vec![0f32; B * 2 * ch];
        let mut scr = vec![0f32; s.scratch_len(rayon::current_num_threads())];
        g.bench_function(format!("{name}/forward"), |b| {
            b.iter(|| {
                group_norm_forward(&s, &x, &p, &mut y).unwrap();
                black_box(y[0])
            })
        });
        g.bench_function(format!("{name}/backward_sum_dx"), |b| {
            b.iter(|| {
                let grad = ParamGrad::Sum {
                    grad: &mut sum,
                    accumulate: false,
                };
                group_norm_backward(&s, &x, &p, &dy, Some(&mut dx), grad, &mut scr).unwrap();
                black_box(dx[0])
            })
        });
        g.bench_function(format!("{name}/backward_per_sample_dx"), |b| {
            b.iter(|| {
                let grad = ParamGrad::PerSample {
                    rows: &mut rows,
                    stride: 2 * ch,
                    offset: 0,
                };
                group_norm_backward(&s, &x, &p, &dy, Some(&mut dx), grad, &mut scr).unwrap();
                black_box(dx[0])
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
