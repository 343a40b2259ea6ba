//! How a model's parameters are laid out in one flat vector of length P.
//!
//! Per-sample gradients form a row-major `[B, P]` matrix: row i is example i's gradient over
//! every trainable parameter, the tensors one after another. A [`Layout`] records where each
//! parameter tensor (a *segment*) starts and ends, for per-layer clipping and per-tensor noise.

use crate::{Error, Result};
use std::ops::Range;

/// Segment boundaries of a flat parameter vector: `offsets[s]..offsets[s + 1]` is segment `s`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    offsets: Vec<usize>,
}

impl Layout {
    /// One segment covering all `p` parameters (flat clipping).
    pub fn flat(p: usize) -> Self {
        Layout {
            offsets: vec![0, p],
        }
    }

    /// Segments of the given sizes, in order. Every size must be > 0 and there must be at least
    /// one segment.
    pub fn from_sizes(sizes: &[usize]) -> Result<Self> {
        if sizes.is_empty() {
            return Err(Error::shape(
                "Layout::from_sizes",
                "at least one segment is needed",
            ));
        }
        let mut offsets = Vec::with_capacity(sizes.len() + 1);
        offsets.push(0usize);
        for (i, &s) in sizes.iter().enumerate() {
            if s == 0 {
                return Err(Error::shape(
                    "Layout::from_sizes",
                    format!("segment {i} has size 0"),
                ));
            }
            let last = *offsets.last().unwrap_or(&0);
            offsets.push(last.checked_add(s).ok_or_else(|| {
                Error::shape(
                    "Layout::from_sizes",
                    "total parameter count overflows usize",
                )
            })?);
        }
        Ok(Layout { offsets })
    }

    /// Total number of parameters P.
    pub fn num_params(&self) -> usize {
        *self.offsets.last().unwrap_or(&0)
    }

    /// Number of segments S.
    pub fn num_segments(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The column range of segment `s` (panics if `s >= num_segments()`; internal use).
    pub fn segment(&self, s: usize) -> Range<usize> {
        self.offsets[s]..self.offsets[s + 1]
    }

    /// The S + 1 boundaries.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// The segment sizes.
    pub fn sizes(&self) -> Vec<usize> {
        self.offsets.windows(2).map(|w| w[1] - w[0]).collect()
    }
}
