//! The `gpu/` group of the nn benches: one DP-SGD step of the Opacus MNIST SampleConvNet at
//! B = 256 on 1×28×28 inputs on `Device::Cuda` — forward, cross-entropy (sum), backward with
//! per-sample gradients into the `[B, P]` matrix, and `dpsgd::ops::clip_and_accumulate` — and
//! the non-private step (summed gradient) beside it. Throughput is in examples per second.
//! Skips (printing why) when `Device::cuda(0)` does not open.
//!
//! `cargo bench --features cuda --bench nn_gpu`.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dpsgd::cpu::loss::Reduction;
use dpsgd::nn::{models, Grads, Loss};
use dpsgd::ops::{self, ClipWorkspace, Clipping};
use dpsgd::Buffer;

fn gpu(c: &mut Criterion) {
    let Some(dev) = common::gpu() else {
        eprintln!("gpu/sample_conv_net: skipped (no usable GPU)");
        return;
    };
    let b = 256;
    let model = models::sample_conv_net(&dev, 1).expect("SampleConvNet on the GPU");
    let p = model.num_params();
    let mut ws = model.workspace(b).expect("workspace");
    let x = Buffer::from_slice(&dev, &common::data(b * 28 * 28)).expect("input");
    let y: Vec<u32> = (0..b as u32).map(|i| i % 10).collect();
    let mut per_sample = Buffer::zeros(&dev, b * p).expect("per-sample matrix");
    let mut sum = Buffer::zeros(&dev, p).expect("sum");
    let mut clip_ws = ClipWorkspace::new(&dev, b, model.layout()).expect("clip workspace");
    let clipping = Clipping::Flat(1.0);

    let mut g = c.benchmark_group("gpu/sample_conv_net");
    g.throughput(Throughput::Elements(b as u64));
    g.bench_function("dp_step_b256", |bch| {
        bch.iter(|| {
            model.forward(&mut ws, &x).unwrap();
            model
                .loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)
                .unwrap();
            model
                .backward(&mut ws, Grads::PerSample(&mut per_sample), false)
                .unwrap();
            sum.fill_zero().unwrap();
            ops::clip_and_accumulate(
                &per_sample,
                b,
                model.layout(),
                &clipping,
                &mut clip_ws,
                &mut sum,
            )
            .unwrap();
            dev.synchronize().unwrap();
        })
    });
    g.bench_function("nonprivate_step_b256", |bch| {
        bch.iter(|| {
            model.forward(&mut ws, &x).unwrap();
            model
                .loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Mean)
                .unwrap();
            model
                .backward(
                    &mut ws,
                    Grads::Sum {
                        grad: &mut sum,
                        accumulate: false,
                    },
                    false,
                )
                .unwrap();
            dev.synchronize().unwrap();
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = gpu
}
criterion_main!(benches);
