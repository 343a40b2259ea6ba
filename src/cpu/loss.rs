//! CPU kernels of the losses: cross-entropy (log-softmax + NLL) over class logits, binary
//! cross-entropy with logits, and binary cross-entropy on probabilities.
//!
//! Each returns the loss (accumulated in f64) and, when asked, writes the gradient w.r.t. its
//! input. With [`Reduction::Mean`] that gradient carries the 1/N of the mean, so per-sample
//! parameter gradients are those of `ℓ_i / N`; DP-SGD wants each example's own gradient ∇ℓ_i,
//! so use [`Reduction::Sum`] there (Opacus rescales a mean-reduced loss the same way).

use super::gemm::Real;
use super::grad::check_len;
use crate::{Error, Result};

/// How per-example losses are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reduction {
    /// The mean (over examples for cross-entropy, over all elements for BCE), as PyTorch's
    /// default `reduction="mean"`.
    Mean,
    /// The sum (`reduction="sum"`): per-sample gradients are each example's own.
    Sum,
}

fn check_finite<T: Real>(op: &'static str, what: &'static str, v: &[T]) -> Result<()> {
    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::NonFinite {
            what,
            detail: format!("{op}: element {i} is {x}"),
        });
    }
    Ok(())
}

/// Cross-entropy of `logits` (`[batch, classes]`, batch = `targets.len()`) against class
/// indices: `ℓ_i = logsumexp(z_i) − z_i[t_i]`. Writes `∂L/∂z = softmax(z) − onehot(t)` (times
/// 1/batch for the mean) into `dlogits` when given. Errors on a target ≥ `classes`, a shape
/// mismatch, or non-finite logits.
pub fn cross_entropy<T: Real>(
    logits: &[T],
    classes: usize,
    targets: &[u32],
    reduction: Reduction,
    dlogits: Option<&mut [T]>,
) -> Result<f64> {
    let batch = targets.len();
    let scale = match reduction {
        Reduction::Mean if batch > 0 => 1.0 / batch as f64,
        _ => 1.0,
    };
    cross_entropy_scaled(logits, classes, targets, scale, dlogits)
}

/// [`cross_entropy`] with the reduction as a factor: the loss summed over these examples times
/// `scale`, and the gradients times `scale` (the depth-first schedule runs a mean over the
/// batch one group at a time with `scale = 1/N`). Errors as [`cross_entropy`].
pub(crate) fn cross_entropy_scaled<T: Real>(
    logits: &[T],
    classes: usize,
    targets: &[u32],
    scale: f64,
    dlogits: Option<&mut [T]>,
) -> Result<f64> {
    const OP: &str = "cross_entropy";
    if classes == 0 {
        return Err(Error::invalid("classes", 0, ">= 1"));
    }
    let batch = targets.len();
    check_len(OP, "logits", logits.len(), batch * classes)?;
    if let Some(d) = &dlogits {
        check_len(OP, "dlogits", d.len(), batch * classes)?;
    }
    if let Some((i, t)) = targets
        .iter()
        .enumerate()
        .find(|(_, t)| **t as usize >= classes)
    {
        return Err(Error::invalid(
            "target",
            t,
            format!("a class index < {classes} (example {i})"),
        ));
    }
    check_finite(OP, "logits", logits)?;
    let mut total = 0.0f64;
    let mut dl = dlogits;
    for (i, &t) in targets.iter().enumerate() {
        let z = &logits[i * classes..(i + 1) * classes];
        let m = z
            .iter()
            .map(|v| v.to_f64())
            .fold(f64::NEG_INFINITY, f64::max);
        let se: f64 = z.iter().map(|v| (v.to_f64() - m).exp()).sum();
        let lse = m + se.ln();
        total += lse - z[t as usize].to_f64();
        if let Some(d) = dl.as_deref_mut() {
            let d = &mut d[i * classes..(i + 1) * classes];
            for (c, (o, v)) in d.iter_mut().zip(z).enumerate() {
                let p = (v.to_f64() - lse).exp();
                let g = if c == t as usize { p - 1.0 } else { p };
                *o = T::from_f64(g * scale);
            }
        }
    }
    Ok(total * scale)
}

/// Binary cross-entropy with logits, element-wise over any shape:
/// `ℓ = max(z, 0) − z·t + ln(1 + e^{−|z|})` (PyTorch's `BCEWithLogitsLoss`, numerically
/// stable). Gradient `σ(z) − t` (times 1/N for the mean) into `dlogits` when given.
pub fn bce_with_logits<T: Real>(
    logits: &[T],
    targets: &[T],
    reduction: Reduction,
    dlogits: Option<&mut [T]>,
) -> Result<f64> {
    let n = logits.len();
    let scale = match reduction {
        Reduction::Mean if n > 0 => 1.0 / n as f64,
        _ => 1.0,
    };
    bce_with_logits_scaled(logits, targets, scale, dlogits)
}

/// [`bce_with_logits`] with the reduction as a factor (see [`cross_entropy_scaled`]).
pub(crate) fn bce_with_logits_scaled<T: Real>(
    logits: &[T],
    targets: &[T],
    scale: f64,
    dlogits: Option<&mut [T]>,
) -> Result<f64> {
    const OP: &str = "bce_with_logits";
    check_len(OP, "targets", targets.len(), logits.len())?;
    if let Some(d) = &dlogits {
        check_len(OP, "dlogits", d.len(), logits.len())?;
    }
    check_finite(OP, "logits", logits)?;
    check_finite(OP, "targets", targets)?;
    let mut total = 0.0f64;
    let mut dl = dlogits;
    for (i, (z, t)) in logits.iter().zip(targets).enumerate() {
        let (z, t) = (z.to_f64(), t.to_f64());
        total += z.max(0.0) - z * t + (-z.abs()).exp().ln_1p();
        if let Some(d) = dl.as_deref_mut() {
            let s = if z >= 0.0 {
                1.0 / (1.0 + (-z).exp())
            } else {
                let e = z.exp();
                e / (1.0 + e)
            };
            d[i] = T::from_f64((s - t) * scale);
        }
    }
    Ok(total * scale)
}

/// Binary cross-entropy on probabilities `p ∈ [0, 1]` (PyTorch's `BCELoss`, logs clamped at
/// −100): `ℓ = −(t·ln p + (1 − t)·ln(1 − p))`. Gradient `(p − t) / max(p(1 − p), 1e-12)` (times
/// 1/N for the mean) into `dprobs` when given. Errors on `p` outside `[0, 1]`.
pub fn bce<T: Real>(
    probs: &[T],
    targets: &[T],
    reduction: Reduction,
    dprobs: Option<&mut [T]>,
) -> Result<f64> {
    let n = probs.len();
    let scale = match reduction {
        Reduction::Mean if n > 0 => 1.0 / n as f64,
        _ => 1.0,
    };
    bce_scaled(probs, targets, scale, dprobs)
}

/// [`bce`] with the reduction as a factor (see [`cross_entropy_scaled`]).
pub(crate) fn bce_scaled<T: Real>(
    probs: &[T],
    targets: &[T],
    scale: f64,
    dprobs: Option<&mut [T]>,
) -> Result<f64> {
    const OP: &str = "bce";
    check_len(OP, "targets", targets.len(), probs.len())?;
    if let Some(d) = &dprobs {
        check_len(OP, "dprobs", d.len(), probs.len())?;
    }
    check_finite(OP, "targets", targets)?;
    if let Some((i, p)) = probs
        .iter()
        .enumerate()
        .find(|(_, p)| !(p.to_f64() >= 0.0 && p.to_f64() <= 1.0))
    {
        return Err(Error::invalid(
            "probability",
            p,
            format!("in [0, 1] (element {i}); use bce_with_logits on raw scores"),
        ));
    }
    let mut total = 0.0f64;
    let mut dp = dprobs;
    for (i, (p, t)) in probs.iter().zip(targets).enumerate() {
        let (p, t) = (p.to_f64(), t.to_f64());
        let lp = p.ln().max(-100.0);
        let lq = (1.0 - p).ln().max(-100.0);
        total -= t * lp + (1.0 - t) * lq;
        if let Some(d) = dp.as_deref_mut() {
            d[i] = T::from_f64((p - t) / (p * (1.0 - p)).max(1e-12) * scale);
        }
    }
    Ok(total * scale)
}
