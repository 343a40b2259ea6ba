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
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pool;
