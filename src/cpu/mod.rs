//! The CPU backend: the reference twin of every CUDA kernel, with the same signatures and
//! semantics, and the default wherever no GPU is present. Parallel with rayon.

pub mod philox;
