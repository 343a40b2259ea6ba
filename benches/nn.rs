//! SampleConvNet (Opacus MNIST) at B = 256 on 1×28×28, CPU: one DP-SGD step's compute
//! (forward + cross-entropy + backward with per-sample gradients into [B, P] +
//! `ops::clip_and_accumulate`; and the trainer's one-pass `forward_backward` into a clipped
//! sum), the non-private step (summed gradient), and the forward alone.
//! Throughput is reported in examples per second. Compare with `benches/python/nn_step.py`.
//!
//! The `gpu/` group (with `--features cuda`, when `Device::cuda(0)` opens; it prints why it
//! skips otherwise) runs the same DP-SGD step and non-private step on the GPU: the model,
//! workspace, input, per-sample matrix and clipped sum all live in device memory.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dpsgd::cpu::loss::Reduction;
use dpsgd::cpu::philox::Philox;
use dpsgd::nn::{models, Grads, Loss};
#[allow(unused_imports)]
use dpsgd::rng::RandomBits;
use dpsgd::{ops, Buffer, ClipWorkspace, Clipping, Device, NoiseKey, NoisyStep, SgdConfig};
use std::hint::black_box;

const B: usize = 256;

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let model = models::sample_conv_net(&dev, 0).expect("model");
    let p = model.num_params();
    let mut rng = Philox::new(1, 0);
    let x: Vec<f32> = (0..B * 784).map(|_| rng.next_f64() as f32).collect();
    let x = Buffer::from_slice(&dev, &x).expect("x");
    let y: Vec<u32> = (0..B).map(|_| rng.next_below(10) as u32).collect();
    let mut ws = model.workspace(B).expect("workspace");
    let mut per_sample = Buffer::zeros(&dev, B * p).expect("per-sample");
    let mut sum = Buffer::zeros(&dev, p).expect("sum");
    let mut clip_ws = ClipWorkspace::new(&dev, B, model.layout()).expect("clip ws");
    let clipping = Clipping::Flat(1.0);

    let mut g = c.benchmark_group("sample_conv_net_b256");
    g.throughput(Throughput::Elements(B as u64));
    g.sample_size(30);
    g.bench_function("dp_step", |bch| {
        bch.iter(|| {
            model.forward(&mut ws, &x).unwrap();
            let l = model
                .loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)
                .unwrap();
            model
                .backward(&mut ws, Grads::PerSample(&mut per_sample), false)
                .unwrap();
            sum.fill_zero().unwrap();
            ops::clip_and_accumulate(
                &per_sample,
                B,
                model.layout(),
                &clipping,
                &mut clip_ws,
                &mut sum,
            )
            .unwrap();
            black_box(l)
        })
    });
    // The whole DP-SGD step, as Opacus's DPOptimizer does it: the above, then Gaussian noise
    // (σ = 1, C = 1) and the SGD update of the parameters, fused.
    let mut model_noisy = models::sample_conv_net(&dev, 0).expect("model");
    let noisy = NoisyStep::new(1.0, 1.0, B as f64, NoiseKey::from_parts(0xbe9c, 1)).expect("noise");
    let layout = model_noisy.layout().clone();
    let sgd = SgdConfig::new(0.1);
    g.bench_function("dp_step_noisy", |bch| {
        bch.iter(|| {
            model_noisy.forward(&mut ws, &x).unwrap();
            let l = model_noisy
                .loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)
                .unwrap();
            model_noisy
                .backward(&mut ws, Grads::PerSample(&mut per_sample), false)
                .unwrap();
            sum.fill_zero().unwrap();
            ops::clip_and_accumulate(
                &per_sample,
                B,
                model_noisy.layout(),
                &clipping,
                &mut clip_ws,
                &mut sum,
            )
            .unwrap();
            ops::noisy_sgd_step(model_noisy.params_mut(), &sum, None, &sgd, &noisy).unwrap();
            black_box(l)
        })
    });
    // The trainer's step: forward, loss, backward and clipping in one depth-first pass
    // (`forward_backward` into `Grads::ClippedSum`: no [B, P] matrix), then the fused noisy
    // SGD update.
    let xs = x.to_vec().expect("x");
    g.bench_function("dp_step_fused_noisy", |bch| {
        bch.iter(|| {
            sum.fill_zero().unwrap();
            let l = model_noisy
                .forward_backward(
                    &mut ws,
                    &xs,
                    Loss::CrossEntropy(&y),
                    Reduction::Sum,
                    Grads::ClippedSum {
                        layout: &layout,
                        clipping: &clipping,
                        sum: &mut sum,
                    },
                    false,
                )
                .unwrap();
            ops::noisy_sgd_step(model_noisy.params_mut(), &sum, None, &sgd, &noisy).unwrap();
            black_box(l)
        })
    });
    g.bench_function("non_private_step_fused", |bch| {
        bch.iter(|| {
            let l = model
                .forward_backward(
                    &mut ws,
                    &xs,
                    Loss::CrossEntropy(&y),
                    Reduction::Mean,
                    Grads::Sum {
                        grad: &mut sum,
                        accumulate: false,
                    },
                    false,
                )
                .unwrap();
            black_box(l)
        })
    });
    g.bench_function("non_private_step", |bch| {
        bch.iter(|| {
            model.forward(&mut ws, &x).unwrap();
            let l = model
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
            black_box(l)
        })
    });
    g.bench_function("forward", |bch| {
        bch.iter(|| {
            model.forward(&mut ws, &x).unwrap();
            black_box(ws.output()[0])
        })
    });
    g.bench_function("clip_and_accumulate", |bch| {
        bch.iter(|| {
            ops::clip_and_accumulate(
                &per_sample,
                B,
                model.layout(),
                &clipping,
                &mut clip_ws,
                &mut sum,
            )
            .unwrap()
        })
    });
    g.finish();
}

fn gpu(c: &mut Criterion) {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("gpu/sample_conv_net_b256: skipped, no usable GPU ({e})");
            return;
        }
    };
    eprintln!("gpu/sample_conv_net_b256 on {}", dev.describe());
    let b = B;
    let model = models::sample_conv_net(&dev, 1).expect("SampleConvNet on the GPU");
    let p = model.num_params();
    let mut ws = model.workspace(b).expect("workspace");
    let mut rng = Philox::new(1, 0);
    let x: Vec<f32> = (0..b * 784).map(|_| rng.next_f64() as f32).collect();
    let x = Buffer::from_slice(&dev, &x).expect("input");
    let y: Vec<u32> = (0..b as u32).map(|i| i % 10).collect();
    let mut per_sample = Buffer::zeros(&dev, b * p).expect("per-sample matrix");
    let mut sum = Buffer::zeros(&dev, p).expect("sum");
    let mut clip_ws = ClipWorkspace::new(&dev, b, model.layout()).expect("clip workspace");
    let clipping = Clipping::Flat(1.0);

    let mut g = c.benchmark_group("gpu/sample_conv_net_b256");
    g.throughput(Throughput::Elements(b as u64));
    g.bench_function("dp_step", |bch| {
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
    g.bench_function("non_private_step", |bch| {
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

criterion_group!(benches, bench, gpu);
criterion_main!(benches);
