//! The two GEMMs compared by `benches/gemm.rs`, single-threaded (dpsgd parallelises across the
//! batch), row-major `C[m×n] = A[m×k]·B[k×n]`.

/// The shapes `(name, m, k, n)`: SampleConvNet on MNIST in groups of 16 examples (the trainer's
/// depth-first schedule) and a DCGAN discriminator layer.
pub const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("conv1 forward (W·cols, 16 examples)", 16, 64, 3136),
    ("conv1 per-example dW (dY_i·cols_iᵀ)", 16, 196, 64),
    ("conv2 forward (W·cols, 16 examples)", 32, 256, 400),
    ("conv2 per-example dW (dY_i·cols_iᵀ)", 32, 25, 256),
    ("conv2 input grad (Wᵀ·dY, 16 examples)", 256, 32, 400),
    ("fc1 forward (X·Wᵀ, 16 examples)", 16, 512, 32),
    ("fc1 summed dW (dYᵀ·X, 256 examples)", 32, 256, 512),
    ("fc2 forward (X·Wᵀ, 256 examples)", 256, 32, 10),
    ("DCGAN D conv3 forward (ndf 128, one 64×64 image)", 512, 4096, 64),
];

/// `c = a·b` with matrixmultiply (via ndarray, as dpsgd's `cpu::gemm`).
pub fn with_matrixmultiply(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    use ndarray::{ArrayView2, ArrayViewMut2};
    let av = ArrayView2::from_shape((m, k), a).expect("a is m×k");
    let bv = ArrayView2::from_shape((k, n), b).expect("b is k×n");
    let mut cv = ArrayViewMut2::from_shape((m, n), c).expect("c is m×n");
    ndarray::linalg::general_mat_mul(1.0, &av, &bv, 0.0, &mut cv);
}

/// `c = a·b` with the `gemm` crate (runtime-dispatched AVX2/AVX-512 kernels), single-threaded.
pub fn with_gemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
    // SAFETY: the three slices hold m×k, k×n and m×n contiguous row-major f32s (checked above),
    // so every (row stride, column stride) pair addresses inside them; `c` is exclusively
    // borrowed and does not alias `a` or `b`; read_dst = false, so c's old values are unused.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_compute_the_same_product() {
        for &(_, m, k, n) in super::SHAPES {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
            let (mut c1, mut c2) = (vec![0.0; m * n], vec![0.0; m * n]);
            super::with_matrixmultiply(m, k, n, &a, &b, &mut c1);
            super::with_gemm(m, k, n, &a, &b, &mut c2);
            for (x, y) in c1.iter().zip(&c2) {
                assert!((x - y).abs() <= 1e-3 * (1.0 + x.abs()), "{x} vs {y}");
            }
        }
    }
}
