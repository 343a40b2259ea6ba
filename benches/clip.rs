//! Per-sample norms + fused clip-and-accumulate over a `[B, P]` matrix, beside the bandwidth
//! bound (CPU: a parallel read of the same bytes; GPU: a device-to-device copy) and the unfused
//! pipeline (norms, then materialise the clipped matrix, then reduce).
//!
//! `cargo bench --bench clip [-- FILTER]`; with `--features cuda` on a GPU the `gpu/` groups run too.

mod common;

use common::{criterion, data, gpu, BATCHES, CPU_MAX_ELEMS, GPU_MAX_ELEMS, PARAMS};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dpsgd::cpu::clip;
use dpsgd::ops::{self, ClipWorkspace, Clipping};
use dpsgd::{Buffer, Device, Layout};
use half::bf16;
use rayon::prelude::*;
use std::hint::black_box;

/// The read-only bound: every element read once, summed in 16 lanes per thread.
fn read_all(x: &[f32]) -> f32 {
    x.par_chunks(1 << 16)
        .map(|c| {
            let mut acc = [0f32; 16];
            for q in c.chunks_exact(16) {
                for k in 0..16 {
                    acc[k] += q[k];
                }
            }
            acc.iter().sum::<f32>()
        })
        .sum()
}

fn cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("clip/cpu");
    for &p in &PARAMS {
        for &b in &BATCHES {
            if b * p > CPU_MAX_ELEMS {
                continue;
            }
            let id = format!("B{b}xP{p}");
            let layout = Layout::flat(p);
            let grads = data(b * p);
            let bytes = (b * p * 4) as u64;
            g.throughput(Throughput::Bytes(bytes));
            g.bench_function(BenchmarkId::new("read_only_bound", &id), |bn| {
                bn.iter(|| black_box(read_all(black_box(&grads))))
            });
            let mut norms = vec![0f32; b];
            let mut seg = vec![0f32; b];
            let mut factors = vec![0f32; b];
            clip::per_sample_norms(&grads, b, &layout, &mut norms, &mut seg).unwrap();
            clip::clip_factors(&norms, &[1.0], &mut factors).unwrap();
            let mut sum = vec![0f32; p];
            g.bench_function(BenchmarkId::new("accumulate_f32", &id), |bn| {
                bn.iter(|| clip::clip_accumulate(&grads, b, &layout, &factors, &mut sum).unwrap())
            });
            g.bench_function(BenchmarkId::new("norms_f32", &id), |bn| {
                bn.iter(|| {
                    clip::per_sample_norms(&grads, b, &layout, &mut norms, &mut seg).unwrap()
                })
            });
            let buf = Buffer::from_vec(grads.clone());
            let mut ws = ClipWorkspace::new(&Device::Cpu, b, &layout).unwrap();
            let mut sb = Buffer::from_vec(vec![0f32; p]);
            g.bench_function(BenchmarkId::new("norms+clip+accumulate_f32", &id), |bn| {
                bn.iter(|| {
                    ops::clip_and_accumulate(
                        &buf,
                        b,
                        &layout,
                        &Clipping::Flat(1.0),
                        &mut ws,
                        &mut sb,
                    )
                    .unwrap()
                })
            });
            if b * p <= CPU_MAX_ELEMS / 4 {
                g.bench_function(BenchmarkId::new("unfused_norms_scale_reduce", &id), |bn| {
                    bn.iter(|| {
                        clip::per_sample_norms(&grads, b, &layout, &mut norms, &mut seg).unwrap();
                        clip::clip_factors(&norms, &[1.0], &mut factors).unwrap();
                        clip::clip_then_sum_unfused(&grads, b, p, &factors, &mut sum).unwrap()
                    })
                });
            }
            drop(buf);
            // bf16 input: half the bytes; throughput counted on the bytes actually read.
            let gh: Vec<bf16> = grads.iter().map(|&x| bf16::from_f32(x)).collect();
            drop(grads);
            g.throughput(Throughput::Bytes(bytes / 2));
            g.bench_function(BenchmarkId::new("accumulate_bf16", &id), |bn| {
                bn.iter(|| clip::clip_accumulate(&gh, b, &layout, &factors, &mut sum).unwrap())
            });
        }
    }
    g.finish();
}

fn cuda(c: &mut Criterion) {
    let Some(dev) = gpu() else { return };
    let mut g = c.benchmark_group("clip/gpu");
    for &p in &PARAMS {
        for &b in &BATCHES {
            if b * p > GPU_MAX_ELEMS {
                continue;
            }
            let id = format!("B{b}xP{p}");
            let layout = Layout::flat(p);
            let bytes = (b * p * 4) as u64;
            // Device-resident data drawn on the GPU (no 16 GiB host upload).
            let mut grads = Buffer::<f32>::zeros(&dev, b * p).unwrap();
            ops::add_gaussian(&mut grads, 0.01, common::key(1)).unwrap();
            let mut sum = Buffer::<f32>::zeros(&dev, p).unwrap();
            let mut ws = ClipWorkspace::new(&dev, b, &layout).unwrap();
            ops::clip_and_accumulate(&grads, b, &layout, &Clipping::Flat(1.0), &mut ws, &mut sum)
                .unwrap();
            g.throughput(Throughput::Bytes(bytes));
            #[cfg(feature = "cuda")]
            if b * p <= GPU_MAX_ELEMS / 2 {
                let mut dst = Buffer::<f32>::zeros(&dev, b * p).unwrap();
                let Device::Cuda(cd) = &dev else {
                    unreachable!()
                };
                let stream = cd.backend().stream().clone();
                g.bench_function(BenchmarkId::new("dtod_copy_bound", &id), |bn| {
                    bn.iter(|| {
                        let src = grads.cuda_view().unwrap();
                        let mut d = dst.cuda_view_mut().unwrap();
                        stream.memcpy_dtod(&src, &mut d).unwrap();
                        dev.synchronize().unwrap()
                    })
                });
            }
            g.bench_function(BenchmarkId::new("accumulate_f32", &id), |bn| {
                bn.iter(|| {
                    ops::clip_accumulate(&grads, b, &layout, &ws.factors, &mut sum).unwrap();
                    dev.synchronize().unwrap()
                })
            });
            g.bench_function(BenchmarkId::new("norms+clip+accumulate_f32", &id), |bn| {
                bn.iter(|| {
                    ops::clip_and_accumulate(
                        &grads,
                        b,
                        &layout,
                        &Clipping::Flat(1.0),
                        &mut ws,
                        &mut sum,
                    )
                    .unwrap();
                    dev.synchronize().unwrap()
                })
            });
            drop(grads);
            let mut gh = Buffer::<bf16>::zeros(&dev, b * p).unwrap();
            // bf16 data: upload a small pattern repeatedly would cost host time; zeros + a
            // constant factor read the same bytes, which is what the bound measures.
            g.throughput(Throughput::Bytes(bytes / 2));
            g.bench_function(BenchmarkId::new("accumulate_bf16", &id), |bn| {
                bn.iter(|| {
                    ops::clip_accumulate(&gh, b, &layout, &ws.factors, &mut sum).unwrap();
                    dev.synchronize().unwrap()
                })
            });
            gh.fill_zero().unwrap();
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = criterion(); targets = cpu, cuda }
criterion_main!(benches);
