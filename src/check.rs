//! Shape and parameter checks shared by both backends ([`crate::cpu`], `crate::cuda`) and the
//! dispatchers ([`crate::ops`], [`crate::engine`]), run before any kernel or noise. Depends on
//! no backend, so the backends and `ops` both import it and dependencies point one way:
//! `ops` → backends → `check`.

use crate::optim::{AdamConfig, NoisyStep, SgdConfig};
use crate::{Error, Layout, Result};

pub fn norms_shapes(
    glen: usize,
    batch: usize,
    layout: &Layout,
    nlen: usize,
    slen: usize,
) -> Result<()> {
    let p = layout.num_params();
    let s = layout.num_segments();
    if batch.checked_mul(p) != Some(glen) {
        return Err(Error::shape(
            "per_sample_norms",
            format!("grads has {glen} elements, expected batch {batch} × P {p}"),
        ));
    }
    if nlen != batch {
        return Err(Error::shape(
            "per_sample_norms",
            format!("norms has {nlen} elements, expected batch {batch}"),
        ));
    }
    if slen != batch * s {
        return Err(Error::shape(
            "per_sample_norms",
            format!("seg_norms has {slen} elements, expected batch {batch} × segments {s}"),
        ));
    }
    Ok(())
}

pub fn finite_norms(norms: &[f32]) -> Result<()> {
    match norms.iter().position(|n| !n.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite {
            what: "per-sample gradients",
            detail: format!(
                "row {i} has L2 norm {} (a NaN/Inf entry, or values too large for f32)",
                norms[i]
            ),
        }),
    }
}

pub fn max_norms(max_norms: &[f32]) -> Result<()> {
    if max_norms.is_empty() {
        return Err(Error::shape(
            "clip_factors",
            "at least one clipping bound is needed",
        ));
    }
    for &c in max_norms {
        if !(c.is_finite() && c > 0.0) {
            return Err(Error::invalid("max_grad_norm", c, "finite and > 0"));
        }
    }
    Ok(())
}

pub fn factors_shapes(nlen: usize, max_norms: &[f32], flen: usize) -> Result<()> {
    self::max_norms(max_norms)?;
    let s = max_norms.len();
    if nlen % s != 0 || flen != nlen {
        return Err(Error::shape(
            "clip_factors",
            format!("norms ({nlen}) must be [B, S] with S = {s} bounds, and factors the same length (got {flen})"),
        ));
    }
    Ok(())
}

/// Returns P, the row length of a `[batch, P]` matrix of `glen` elements scaled by `flen`
/// factors (one per row).
pub fn scale_rows_shapes(glen: usize, batch: usize, flen: usize) -> Result<usize> {
    if flen != batch || (batch == 0 && glen != 0) || (batch > 0 && glen % batch != 0) {
        return Err(Error::shape(
            "scale_rows",
            format!(
                "rows has {glen} elements and factors {flen}: expected a [batch, P] matrix with \
                 one factor per row (batch = {batch})"
            ),
        ));
    }
    Ok(glen.checked_div(batch).unwrap_or(0))
}

/// Returns F, the number of factors per row (1 or S).
pub fn accumulate_shapes(
    glen: usize,
    batch: usize,
    layout: &Layout,
    flen: usize,
    slen: usize,
) -> Result<usize> {
    let p = layout.num_params();
    let s = layout.num_segments();
    if batch.checked_mul(p) != Some(glen) {
        return Err(Error::shape(
            "clip_accumulate",
            format!("grads has {glen} elements, expected batch {batch} × P {p}"),
        ));
    }
    if slen != p {
        return Err(Error::shape(
            "clip_accumulate",
            format!("sum has {slen} elements, expected P = {p}"),
        ));
    }
    if flen == batch {
        Ok(1)
    } else if flen == batch * s {
        Ok(s)
    } else {
        Err(Error::shape(
            "clip_accumulate",
            format!("factors has {flen} elements, expected batch {batch} (flat) or batch × segments {s} (per layer)"),
        ))
    }
}

pub fn sgd(
    plen: usize,
    slen: usize,
    mlen: Option<usize>,
    cfg: &SgdConfig,
    noisy: &NoisyStep,
) -> Result<()> {
    cfg.validate()?;
    noisy.validate()?;
    if slen != plen {
        return Err(Error::shape(
            "noisy_sgd_step",
            format!("grad_sum has {slen} elements, params {plen}"),
        ));
    }
    match mlen {
        Some(m) if m != plen => Err(Error::shape(
            "noisy_sgd_step",
            format!("momentum buffer has {m} elements, params {plen}"),
        )),
        None if cfg.momentum > 0.0 => Err(Error::shape(
            "noisy_sgd_step",
            "momentum > 0 needs a momentum buffer of the parameters' length",
        )),
        _ => Ok(()),
    }
}

pub fn adam(
    plen: usize,
    slen: usize,
    m1: usize,
    m2: usize,
    t: u64,
    cfg: &AdamConfig,
    noisy: &NoisyStep,
) -> Result<()> {
    cfg.validate()?;
    noisy.validate()?;
    if t == 0 {
        return Err(Error::invalid("t", t, "the 1-based step count, >= 1"));
    }
    if slen != plen || m1 != plen || m2 != plen {
        return Err(Error::shape(
            "noisy_adam_step",
            format!("params {plen}, grad_sum {slen}, m {m1}, v {m2}: all must be equal"),
        ));
    }
    Ok(())
}

pub fn noisy_mean(olen: usize, slen: usize, noisy: &NoisyStep) -> Result<()> {
    noisy.validate()?;
    if olen != slen {
        return Err(Error::shape(
            "noisy_mean",
            format!("out has {olen} elements, grad_sum {slen}"),
        ));
    }
    Ok(())
}

pub fn bias_corrections(cfg: &AdamConfig, t: u64) -> (f32, f32) {
    let t = t.min(i32::MAX as u64) as i32;
    let bc1 = 1.0 - (cfg.beta1 as f64).powi(t);
    let bc2 = 1.0 - (cfg.beta2 as f64).powi(t);
    (bc1 as f32, bc2 as f32)
}
