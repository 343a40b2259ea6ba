//! # dpsgd
//!
//! Differentially private SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016)
//! with hand-written CUDA kernels and a CPU reference twin for every kernel.

#![warn(missing_docs)]

pub mod cpu;
pub mod error;
pub mod layout;

pub use error::{Error, Result};
pub use layout::Layout;
