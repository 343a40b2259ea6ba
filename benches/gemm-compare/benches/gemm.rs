//! matrixmultiply (dpsgd's GEMM) vs the `gemm` crate on dpsgd's layer shapes, f32,
//! single-threaded.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gemm_compare::{with_gemm, with_matrixmultiply, SHAPES};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    for &(name, m, k, n) in SHAPES {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 19) as f32 * 0.01).collect();
        let mut out = vec![0.0f32; m * n];
        let mut g = c.benchmark_group(format!("{m}x{k}x{n} {name}"));
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function("matrixmultiply", |bch| {
            bch.iter(|| with_matrixmultiply(m, k, n, black_box(&a), black_box(&b), &mut out))
        });
        g.bench_function("gemm", |bch| {
            bch.iter(|| with_gemm(m, k, n, black_box(&a), black_box(&b), &mut out))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
