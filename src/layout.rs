//! How a model's parameters are laid out in one flat vector of length P.
//!
//! Per-sample gradients form a row-major `[B, P]` matrix: row i is example i's gradient over
//! every trainable parameter, the tensors one after another. A [`Layout`] records where each
//! parameter tensor (a *segment*) starts and ends, for per-layer clipping and per-tensor noise.

use crate::{Error, Result};
use std::ops::Range;

/// Segment boundaries of a flat parameter vector: `offsets[s]..offsets[s + 1]` is segment `s`.
///
/// Deserialisation validates like [`Layout::from_offsets`] (at least one segment, offsets
/// starting at 0 and strictly increasing) and fails with a serde error naming the problem.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RawLayout")]
pub struct Layout {
    offsets: Vec<usize>,
}

/// The serialised form of [`Layout`], before validation.
#[derive(serde::Deserialize)]
struct RawLayout {
    offsets: Vec<usize>,
}

impl TryFrom<RawLayout> for Layout {
    type Error = Error;

    fn try_from(raw: RawLayout) -> Result<Self> {
        Layout::from_offsets(raw.offsets)
    }
}

impl Layout {
    /// One segment covering all `p` parameters (flat clipping). (`p = 0` gives an empty segment,
    /// which [`Layout::from_offsets`] and deserialisation reject.)
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

    /// Segments from their S + 1 boundaries: `offsets[0] == 0`, strictly increasing (every
    /// segment non-empty), at least two entries (one segment). The same invariants as
    /// [`Layout::from_sizes`]; serialised layouts are checked with this.
    pub fn from_offsets(offsets: Vec<usize>) -> Result<Self> {
        const OP: &str = "Layout::from_offsets";
        if offsets.len() < 2 {
            return Err(Error::shape(
                OP,
                format!(
                    "{} offset(s) given; at least 2 are needed (0 and the parameter count, for one segment)",
                    offsets.len()
                ),
            ));
        }
        if offsets[0] != 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "offsets[0] = {} but the first segment must start at 0",
                    offsets[0]
                ),
            ));
        }
        if let Some(i) = offsets.windows(2).position(|w| w[1] <= w[0]) {
            return Err(Error::shape(
                OP,
                format!(
                    "offsets must be strictly increasing (every segment non-empty), but offsets[{}] = {} <= offsets[{i}] = {}",
                    i + 1,
                    offsets[i + 1],
                    offsets[i]
                ),
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> std::result::Result<Layout, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn valid_layout_round_trips() {
        let l = Layout::from_sizes(&[3, 1, 4]).unwrap();
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(json, r#"{"offsets":[0,3,4,8]}"#);
        assert_eq!(parse(&json).unwrap(), l);
        assert_eq!(parse(r#"{"offsets":[0,5]}"#).unwrap(), Layout::flat(5));
    }

    #[test]
    fn invalid_offsets_fail_to_deserialise() {
        for (json, needle) in [
            (r#"{"offsets":[]}"#, "at least 2"),
            (r#"{"offsets":[0]}"#, "at least 2"),
            (r#"{"offsets":[1,4]}"#, "start at 0"),
            (
                r#"{"offsets":[0,4,4,6]}"#,
                "offsets[2] = 4 <= offsets[1] = 4",
            ),
            (r#"{"offsets":[0,5,3]}"#, "offsets[2] = 3 <= offsets[1] = 5"),
        ] {
            let err = parse(json).expect_err(json).to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
        assert!(parse(r#"{"offsets":[0,-1]}"#).is_err());
        assert!(parse(r#"{}"#).is_err());
    }

    #[test]
    fn from_offsets_matches_from_sizes() {
        let l = Layout::from_offsets(vec![0, 2, 7]).unwrap();
        assert_eq!(l, Layout::from_sizes(&[2, 5]).unwrap());
        assert_eq!(l.sizes(), vec![2, 5]);
        assert!(Layout::from_offsets(vec![0, 0]).is_err());
    }
}
