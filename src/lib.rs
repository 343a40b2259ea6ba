//! # dpsgd
//!
//! Differentially private SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016)
//! with hand-written CUDA kernels and a CPU reference twin for every kernel.
//!
//! A DP-SGD step: Poisson-sample a batch; compute each example's gradient; clip each to L2 norm
//! C; sum; add Gaussian noise N(0, σ²C²); divide by the expected batch size; step. This crate
//! provides those operations ([`ops`]) on a [`Device`] — the CPU, or a CUDA GPU with the `cuda`
//! feature — over device-resident [`Buffer`]s, with the same semantics on both.
//!
//! ## Features
//!
//! | feature | default | adds |
//! |---------|---------|------|
//! | `cli`   | on      | the `dpsgd` binary (`src/main.rs`, `src/cli/`): clap, progress bars (indicatif), PNG plots (plotters) |
//! | `cuda`  | off     | the CUDA backend ([`Device::Cuda`], `dpsgd::cuda`); needs nvcc (`scripts/install-cuda-toolchain`) |
//! | `baseline-cpu` | off | the CPU loops without their AVX2+FMA clones, which are otherwise picked at run time ([`cpu::simd_path`]) |
//!
//! The library itself (engine, ops, nn, trainer, accounting, mechanisms) is the same with or
//! without `cli`. A crate that depends on dpsgd as a library turns the CLI off:
//!
//! ```toml
//! [dependencies]
//! dpsgd = { version = "0.1", default-features = false }            # CPU
//! # dpsgd = { version = "0.1", default-features = false, features = ["cuda"] }
//! ```
//!
//! `tests/lean-dependent` is the smallest complete program of that kind.

#![deny(missing_docs)]

pub mod accounting;
mod atomic;
pub mod audit;
pub mod augment;
pub mod buffer;
mod check;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod device;
pub mod dtype;
pub mod engine;
pub mod error;
pub mod layout;
pub mod mechanisms;
pub mod nn;
pub mod noise;
pub mod ops;
pub mod optim;
pub mod pate;
pub mod rng;
pub mod sampling;
pub mod train;

pub use buffer::Buffer;
pub use device::{CudaDevice, Device};
pub use dtype::{Element, GradElement};
pub use error::{Error, Result};
pub use layout::Layout;
pub use noise::NoiseKey;
pub use ops::{ClipWorkspace, Clipping};
pub use optim::{AdamConfig, NoisyStep, SgdConfig};

/// The README's Rust example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
