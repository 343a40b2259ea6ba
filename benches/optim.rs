//! The fused noisy optimizer step (noise drawn inside the update, no noise buffer) beside the
//! unfused pipeline (add_gaussian into a copy of the sum, then a separate update).

mod common;

use common::{criterion, data, gpu, key, PARAMS};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dpsgd::cpu::{noise, optim};
use dpsgd::{ops, AdamConfig, Buffer, NoisyStep, SgdConfig};
use rayon::prelude::*;

fn noisy() -> NoisyStep {
    NoisyStep::new(1.1, 1.0, 256.0, key(3)).unwrap()
}

fn cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("optim/cpu");
    for &n in &PARAMS {
        let mut p = data(n);
        let s = data(n);
        let mut m = vec![0f32; n];
        let mut v = vec![0f32; n];
        let mut tmp = vec![0f32; n];
        // Bytes touched by plain SGD: read p and sum, write p.
        g.throughput(Throughput::Bytes((n * 12) as u64));
        let ns = noisy();
        g.bench_function(BenchmarkId::new("fused_sgd", n), |b| {
            b.iter(|| optim::noisy_sgd_step(&mut p, &s, None, &SgdConfig::new(0.1), &ns).unwrap())
        });
        g.bench_function(BenchmarkId::new("unfused_noise_then_sgd", n), |b| {
            b.iter(|| {
                tmp.copy_from_slice(&s);
                noise::add_gaussian(&mut tmp, ns.noise_std, ns.key).unwrap();
                let inv = (1.0 / ns.expected_batch_size) as f32;
                p.par_chunks_mut(1 << 14)
                    .zip(tmp.par_chunks(1 << 14))
                    .for_each(|(pc, tc)| {
                        for (pj, tj) in pc.iter_mut().zip(tc) {
                            *pj -= 0.1 * tj * inv;
                        }
                    });
            })
        });
        let sgdm = SgdConfig::new(0.1).momentum(0.9);
        g.bench_function(BenchmarkId::new("fused_sgd_momentum", n), |b| {
            b.iter(|| optim::noisy_sgd_step(&mut p, &s, Some(&mut m), &sgdm, &ns).unwrap())
        });
        let adam = AdamConfig::new(1e-3);
        g.bench_function(BenchmarkId::new("fused_adam", n), |b| {
            b.iter(|| optim::noisy_adam_step(&mut p, &s, &mut m, &mut v, 10, &adam, &ns).unwrap())
        });
    }
    g.finish();
}

fn cuda(c: &mut Criterion) {
    let Some(dev) = gpu() else { return };
    let mut g = c.benchmark_group("optim/gpu");
    for &n in &[26_010usize, 1_000_000, 10_000_000, 100_000_000] {
        let mut p = Buffer::<f32>::zeros(&dev, n).unwrap();
        let mut s = Buffer::<f32>::zeros(&dev, n).unwrap();
        ops::add_gaussian(&mut s, 1.0, key(4)).unwrap();
        let mut m = Buffer::<f32>::zeros(&dev, n).unwrap();
        let mut v = Buffer::<f32>::zeros(&dev, n).unwrap();
        let mut tmp = Buffer::<f32>::zeros(&dev, n).unwrap();
        let ns = noisy();
        g.throughput(Throughput::Bytes((n * 12) as u64));
        g.bench_function(BenchmarkId::new("fused_sgd", n), |b| {
            b.iter(|| {
                ops::noisy_sgd_step(&mut p, &s, None, &SgdConfig::new(0.1), &ns).unwrap();
                dev.synchronize().unwrap()
            })
        });
        // Unfused: noise into a separate buffer, then a noiseless step with the noisy sum.
        let quiet = NoisyStep {
            noise_std: 0.0,
            ..ns
        };
        g.bench_function(BenchmarkId::new("unfused_noise_then_sgd", n), |b| {
            b.iter(|| {
                ops::add_gaussian(&mut tmp, ns.noise_std, ns.key).unwrap();
                ops::noisy_sgd_step(&mut p, &tmp, None, &SgdConfig::new(0.1), &quiet).unwrap();
                dev.synchronize().unwrap()
            })
        });
        let sgdm = SgdConfig::new(0.1).momentum(0.9);
        g.bench_function(BenchmarkId::new("fused_sgd_momentum", n), |b| {
            b.iter(|| {
                ops::noisy_sgd_step(&mut p, &s, Some(&mut m), &sgdm, &ns).unwrap();
                dev.synchronize().unwrap()
            })
        });
        let adam = AdamConfig::new(1e-3);
        g.bench_function(BenchmarkId::new("fused_adam", n), |b| {
            b.iter(|| {
                ops::noisy_adam_step(&mut p, &s, &mut m, &mut v, 10, &adam, &ns).unwrap();
                dev.synchronize().unwrap()
            })
        });
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = cpu, cuda }
criterion_main!(benches);
