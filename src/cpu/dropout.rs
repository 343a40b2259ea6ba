//! CPU kernels of `Dropout` (Srivastava, Hinton, Krizhevsky, Sutskever, Salakhutdinov,
//! "Dropout: A Simple Way to Prevent Neural Networks from Overfitting", JMLR 2014; PyTorch's
//! inverted dropout: kept units are scaled by 1/(1 − p) in training, eval is the identity).
//!
//! The mask of each example is drawn from the [`Purpose::Dropout`](crate::rng::Purpose) key
//! only (never from another purpose's stream): for layer `layer` of a forward pass with
//! dropout stream `step`, stream id `step << 16 | layer`, and example `e`'s `n` mask values are
//! the `n` 32-bit words from position `e · n` of that stream (one word per unit; a unit is
//! dropped iff its word is below `round(p · 2³²)`). The mask of example `e` therefore does not
//! depend on the other examples of the batch or on how the batch is split across threads, so
//! per-sample gradients stay each example's own (and equal a batch of one with the same
//! example index).
//!
//! GPU twin: pending (no `kernels/dropout.cu` yet); a CUDA model with a Dropout layer is an
//! error when its workspace is made.

use super::grad::check_len;
use crate::rng::{RandomBits, StreamKey};
use crate::{Error, Result};

/// Checks a dropout probability: finite, in [0, 1).
pub fn check_p(p: f64) -> Result<()> {
    if !(p.is_finite() && (0.0..1.0).contains(&p)) {
        return Err(Error::invalid(
            "dropout p",
            p,
            "a probability in [0, 1) (p = 1 would drop every unit)",
        ));
    }
    Ok(())
}

/// The 32-bit threshold below which a unit is dropped (`round(p · 2³²)`).
fn threshold(p: f64) -> u64 {
    (p * 4_294_967_296.0).round() as u64
}

/// Fills `mask` (`examples × n` values) with the masks of examples `first_example ..
/// first_example + examples` of stream `stream` under `key`: 0 for a dropped unit, 1/(1 − p)
/// for a kept one. See the module docs for the stream layout.
pub fn dropout_mask(
    key: &StreamKey,
    stream: u64,
    first_example: u64,
    n: usize,
    p: f64,
    mask: &mut [f32],
) -> Result<()> {
    check_p(p)?;
    if n == 0 || mask.len() % n != 0 {
        return Err(Error::shape(
            "dropout_mask",
            format!(
                "mask of {} values is not a whole number of examples of {n}",
                mask.len()
            ),
        ));
    }
    let thr = threshold(p);
    let keep = (1.0 / (1.0 - p)) as f32;
    let mut rng = key.rng(stream);
    for (e, m) in mask.chunks_exact_mut(n).enumerate() {
        rng.seek((first_example + e as u64) * n as u64);
        for v in m.iter_mut() {
            *v = if (rng.next_u32() as u64) < thr {
                0.0
            } else {
                keep
            };
        }
    }
    Ok(())
}

/// Forward: `y = x ⊙ mask` (training) or `y = x` (`mask = None`: eval).
pub fn dropout_forward(x: &[f32], mask: Option<&[f32]>, y: &mut [f32]) -> Result<()> {
    check_len("dropout", "y", y.len(), x.len())?;
    match mask {
        None => y.copy_from_slice(x),
        Some(m) => {
            check_len("dropout", "mask", m.len(), x.len())?;
            for ((y, x), m) in y.iter_mut().zip(x).zip(m) {
                *y = x * m;
            }
        }
    }
    Ok(())
}

/// Backward: `dx = dy ⊙ mask` (training) or `dx = dy` (eval). No parameters.
pub fn dropout_backward(dy: &[f32], mask: Option<&[f32]>, dx: &mut [f32]) -> Result<()> {
    dropout_forward(dy, mask, dx)
}
