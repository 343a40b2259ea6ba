//! The CPU backend: the reference twin of every CUDA kernel, with the same signatures and
//! semantics, and the default wherever no GPU is present. Parallel with rayon.
//!
//! `kernels/clip.cu` ↔ [`clip`], `kernels/noise.cu` ↔ [`noise`], `kernels/optim.cu` ↔ [`optim`].

pub mod chacha;
pub mod clip;
pub mod noise;
pub mod optim;
pub mod philox;
pub mod stream;

// Layers of small conv nets (issue 3): the math behind `crate::nn`, one file per layer family.
pub mod activation;
pub mod conv;
pub mod dropout;
pub mod gemm;
pub mod grad;
pub(crate) mod igemm;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod scatter;

/// Which build of the CPU kernels' hot loops this process runs: `"avx2+fma"` (their AVX2+FMA
/// clones, picked at run time on a CPU that has both) or `"baseline"` (compiled for the build's
/// target: any x86-64, or another architecture; also whenever the `baseline-cpu` feature is
/// on). Both compute the same values bit for bit (no fused multiply-adds are introduced:
/// Rust does not contract `a * b + c`); only the speed differs. GEMM (`matrixmultiply`) picks
/// its own kernel at run time either way, and on a CPU with AVX-512 (not in the `baseline-cpu`
/// build) some f32 convolution products run the crate's own FMA GEMM instead (`cpu::igemm`):
/// which GEMM ran, like `matrixmultiply`'s choice, depends on the CPU.
pub fn simd_path() -> &'static str {
    if cfg!(feature = "baseline-cpu") {
        return "baseline";
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return "avx2+fma";
    }
    "baseline"
}

#[cfg(test)]
mod tests {
    #[test]
    fn simd_path_follows_the_feature_and_the_cpu() {
        let path = super::simd_path();
        if cfg!(feature = "baseline-cpu") {
            assert_eq!(path, "baseline");
        } else {
            #[cfg(target_arch = "x86_64")]
            assert_eq!(
                path == "avx2+fma",
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            );
        }
    }
}
