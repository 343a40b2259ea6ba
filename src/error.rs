//! The crate's one error type.
//!
//! Every fallible public function returns [`Result<T>`]. Messages say what was wrong and what to
//! do about it; no public function panics on bad input.

use std::path::PathBuf;

/// Everything that can go wrong in `dpsgd`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two arguments disagree on a length or shape.
    #[error("shape mismatch in {op}: {msg}")]
    Shape {
        /// The operation that checked the shapes.
        op: &'static str,
        /// What did not fit.
        msg: String,
    },

    /// A scalar parameter is outside its valid range (ε ≤ 0, δ ∉ (0,1), σ < 0, C ≤ 0, …).
    #[error("invalid parameter `{name}` = {value}: must be {expected}")]
    InvalidParameter {
        /// The parameter's name, as in the API.
        name: &'static str,
        /// The value that was given.
        value: String,
        /// The valid range, in words.
        expected: String,
    },

    /// NaN or ±Inf where only finite values are allowed (a gradient, a loss, an input).
    #[error("non-finite value in {what}: {detail}; a NaN/Inf gradient is never clipped into the sum — check the learning rate, the loss and the inputs")]
    NonFinite {
        /// Which input held it.
        what: &'static str,
        /// Where (row, index) and which value.
        detail: String,
    },

    /// Buffers that live on different devices were passed to one operation.
    #[error("device mismatch in {op}: {msg}; move the buffers to one device first")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
        /// Which buffers live where.
        msg: String,
    },

    /// A CUDA device was asked for, but this build has no CUDA backend.
    #[error("this build of dpsgd has no CUDA backend: run scripts/install-cuda-toolchain, export what it prints, and rebuild with `--features cuda`")]
    CudaNotCompiled,

    /// The CUDA backend is compiled in, but no usable GPU or driver was found.
    #[error("no usable CUDA GPU: {0}")]
    CudaUnavailable(String),

    /// A CUDA driver call failed.
    #[error("CUDA error in {op}: {msg}")]
    Cuda {
        /// The operation that failed.
        op: &'static str,
        /// The driver's message.
        msg: String,
    },

    /// A privacy budget would be exceeded by the requested operation.
    #[error("privacy budget exhausted: {0}")]
    BudgetExhausted(String),

    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file exists but its content is not what it should be (truncated, wrong magic, bad shape).
    #[error("invalid file {path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },

    /// A class target is negative or not below the number of classes
    /// ([`crate::nn::class_targets`]; cross-entropy targets are class indices in `0..classes`).
    #[error("class target {value} of example {index} is out of range: class indices must be in 0..{classes} (check the labels and the model's number of classes)")]
    ClassTarget {
        /// The example (position in the targets).
        index: usize,
        /// Its target.
        value: i64,
        /// The number of classes.
        classes: usize,
    },
    /// Serialising or parsing JSON state failed.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),

    /// Drawing seed bytes from the operating system failed.
    #[error("the operating system's random source failed: {0}")]
    Entropy(String),
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::InvalidParameter`].
    pub fn invalid(
        name: &'static str,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Error::InvalidParameter {
            name,
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// Shorthand for [`Error::Shape`].
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
}

/// Checks that `x` is finite and strictly positive.
pub(crate) fn check_positive(name: &'static str, x: f64) -> Result<()> {
    if x.is_finite() && x > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(name, x, "finite and > 0"))
    }
}

/// Checks that `x` is finite and ≥ 0.
pub(crate) fn check_non_negative(name: &'static str, x: f64) -> Result<()> {
    if x.is_finite() && x >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(name, x, "finite and >= 0"))
    }
}

/// Checks that `x` is finite.
pub(crate) fn check_finite(name: &'static str, x: f64) -> Result<()> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(name, x, "finite"))
    }
}

/// Checks that `x ∈ [lo, hi)` (and finite).
pub(crate) fn check_range(
    name: &'static str,
    x: f64,
    lo: f64,
    hi: f64,
    expected: &str,
) -> Result<()> {
    if x.is_finite() && x >= lo && x < hi {
        Ok(())
    } else {
        Err(Error::invalid(name, x, expected))
    }
}
