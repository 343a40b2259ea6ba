//! Gaussian and Laplace noise (`add_gaussian`, `add_laplace`) over P values from Philox (seeded
//! runs) and from ChaCha20 with the sum-of-four-normals hardening (`*_secure`: secure mode),
//! beside the bandwidth bound of the same read-modify-write, and on the GPU beside cuRAND's host
//! API (`curandGenerateNormal`). Target: secure within 2× of Philox on the CPU, 1.5× on a GPU.

mod common;

use common::{criterion, gpu, key, PARAMS};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dpsgd::cpu::noise;
use dpsgd::rng::{Purpose, RunKeys};
use dpsgd::{ops, Buffer, NoiseKey};
use rayon::prelude::*;

const SIZES: [usize; 4] = [26_010, 1_000_000, 10_000_000, 100_000_000];

fn cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("noise/cpu");
    for &n in &PARAMS {
        let mut v = vec![0f32; n];
        g.throughput(Throughput::Bytes((n * 4) as u64));
        g.bench_function(BenchmarkId::new("rmw_bound", n), |b| {
            b.iter(|| {
                v.par_chunks_mut(1 << 14)
                    .for_each(|c| c.iter_mut().for_each(|x| *x += 1.0))
            })
        });
        g.bench_function(BenchmarkId::new("add_gaussian", n), |b| {
            b.iter(|| noise::add_gaussian(&mut v, 1.0, key(1)).unwrap())
        });
        g.bench_function(BenchmarkId::new("add_laplace", n), |b| {
            b.iter(|| noise::add_laplace(&mut v, 1.0, key(2)).unwrap())
        });
        let secure = NoiseKey::new(RunKeys::secure().unwrap().key(Purpose::GradientNoise), 1);
        g.bench_function(BenchmarkId::new("add_gaussian_secure", n), |b| {
            b.iter(|| noise::add_gaussian(&mut v, 1.0, secure).unwrap())
        });
        // The generators alone: n random 32-bit words.
        let mut w = vec![0u32; n];
        g.bench_function(BenchmarkId::new("bits_philox", n), |b| {
            b.iter(|| noise::random_bits(&mut w, key(3)).unwrap())
        });
        g.bench_function(BenchmarkId::new("bits_chacha20", n), |b| {
            b.iter(|| noise::random_bits(&mut w, secure).unwrap())
        });
        g.bench_function(BenchmarkId::new("bits_rand_chacha_1thread", n), |b| {
            use rand_chacha::rand_core::{RngCore, SeedableRng};
            let mut r = rand_chacha::ChaCha20Rng::from_seed([7; 32]);
            let mut bytes = vec![0u8; 4 * n];
            b.iter(|| r.fill_bytes(&mut bytes))
        });
    }
    g.finish();
}

fn cuda(c: &mut Criterion) {
    let Some(dev) = gpu() else { return };
    let mut g = c.benchmark_group("noise/gpu");
    for &n in &SIZES {
        let mut v = Buffer::<f32>::zeros(&dev, n).unwrap();
        g.throughput(Throughput::Bytes((n * 4) as u64));
        g.bench_function(BenchmarkId::new("add_gaussian", n), |b| {
            b.iter(|| {
                ops::add_gaussian(&mut v, 1.0, key(1)).unwrap();
                dev.synchronize().unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("add_laplace", n), |b| {
            b.iter(|| {
                ops::add_laplace(&mut v, 1.0, key(2)).unwrap();
                dev.synchronize().unwrap()
            })
        });
        let secure = NoiseKey::new(RunKeys::secure().unwrap().key(Purpose::GradientNoise), 1);
        g.bench_function(BenchmarkId::new("add_gaussian_secure", n), |b| {
            b.iter(|| {
                ops::add_gaussian(&mut v, 1.0, secure).unwrap();
                dev.synchronize().unwrap()
            })
        });
        #[cfg(feature = "cuda")]
        {
            let dpsgd::Device::Cuda(cd) = &dev else {
                unreachable!()
            };
            match dpsgd::cuda::noise::CurandHost::new(cd.backend(), 7) {
                Ok(rng) => {
                    g.bench_function(BenchmarkId::new("curand_host_normal", n), |b| {
                        b.iter(|| {
                            rng.fill_normal(&mut v.cuda_view_mut().unwrap(), 1.0)
                                .unwrap();
                            dev.synchronize().unwrap()
                        })
                    });
                }
                Err(e) => eprintln!("cuRAND host peer skipped: {e}"),
            }
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = cpu, cuda }
criterion_main!(benches);
