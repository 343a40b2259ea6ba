//! Shared settings of the criterion benches: the shape grid, short measurement windows (the
//! grid is large; each point is bandwidth-bound and stable), and the GPU if one is usable.
#![allow(dead_code)]

use criterion::Criterion;
use dpsgd::{Device, NoiseKey};
use std::time::Duration;

/// Batch sizes of the grid.
pub const BATCHES: [usize; 3] = [64, 256, 1024];
/// Parameter counts: the MNIST SampleConvNet (26 010), 1M, 10M.
pub const PARAMS: [usize; 3] = [26_010, 1_000_000, 10_000_000];

/// Largest B·P run on the CPU (1 GiB of f32: this machine has 24 GiB and 2 cores; larger
/// points take minutes each and say nothing new — the kernels are bandwidth-bound).
pub const CPU_MAX_ELEMS: usize = 1 << 28;
/// Largest B·P run on the GPU (16 GiB of f32).
pub const GPU_MAX_ELEMS: usize = 1 << 32;

/// Criterion tuned for a large grid of bandwidth-bound points.
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args()
}

/// The GPU, or None (printing why) — benches never fail for lack of a GPU.
pub fn gpu() -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => {
            eprintln!("benchmarking on {}", d.describe());
            Some(d)
        }
        Err(e) => {
            eprintln!("GPU benches skipped: {e}");
            None
        }
    }
}

/// A fixed key for benchmark noise.
pub fn key(i: u64) -> NoiseKey {
    NoiseKey::from_parts(0xbe9c, i)
}

/// Fills `n` f32 values with N(0, 0.01²) deterministic test data on the CPU.
pub fn data(n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    dpsgd::cpu::noise::add_gaussian(&mut v, 0.01, key(u64::MAX)).expect("valid std");
    v
}

/// `n` values uniform in [−1, 1) from `rng` (the layer benches' inputs and weights).
pub fn rand(rng: &mut dpsgd::cpu::philox::Philox, n: usize) -> Vec<f32> {
    use dpsgd::rng::RandomBits;
    (0..n)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect()
}
