//! Losses on the GPU (`kernels/loss.cu`): cross-entropy, binary cross-entropy with logits and
//! on probabilities. Same semantics as [`crate::cpu::loss`]: each example's (element's) loss
//! is computed in double into `losses`, copied back and summed in order on the host (the loss
//! is a host `f64`, as on the CPU). An invalid input shows up as a NaN loss; the inputs are then
//! copied back and checked by the CPU function, which returns its typed error.

use super::grad::{cfg, cfg_elems, check_view, u32_of};
use super::{drv, CudaBackend};
use crate::cpu::loss::{self as cpu, Reduction};
use crate::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

fn scale(reduction: Reduction, n: usize) -> f64 {
    match reduction {
        Reduction::Mean if n > 0 => 1.0 / n as f64,
        _ => 1.0,
    }
}

/// Sums the losses on the host; on a NaN, runs `recheck` (the CPU function on copied inputs)
/// for its typed error.
fn finish(
    dev: &CudaBackend,
    op: &'static str,
    losses: &CudaViewMut<'_, f64>,
    scale: f64,
    recheck: impl FnOnce() -> Result<f64>,
) -> Result<f64> {
    let host = dev.dtoh(&losses.as_view())?;
    let mut total = 0.0f64;
    for v in &host {
        total += *v;
    }
    if total.is_nan() {
        recheck()?;
        return Err(Error::NonFinite {
            what: "loss",
            detail: format!("{op}: a loss term is NaN"),
        });
    }
    Ok(total * scale)
}

/// GPU twin of [`crate::cpu::loss::cross_entropy`]: `logits` `[batch, classes]`, `targets`
/// `[batch]` class indices on the device, `losses` `batch` doubles of scratch; the gradient
/// goes to `dlogits` when given. Errors on a target ≥ `classes` or a non-finite logit.
pub fn cross_entropy(
    dev: &CudaBackend,
    logits: &CudaView<'_, f32>,
    classes: usize,
    targets: &CudaView<'_, u32>,
    reduction: Reduction,
    dlogits: Option<&mut CudaViewMut<'_, f32>>,
    losses: &mut CudaViewMut<'_, f64>,
) -> Result<f64> {
    const OP: &str = "cross_entropy";
    if classes == 0 {
        return Err(Error::invalid("classes", 0, ">= 1"));
    }
    let batch = targets.len();
    check_view(OP, "logits", logits.len(), batch * classes)?;
    check_view(OP, "losses", losses.len(), batch)?;
    if let Some(d) = &dlogits {
        check_view(OP, "dlogits", d.len(), batch * classes)?;
    }
    if batch == 0 {
        return Ok(0.0);
    }
    let sc = scale(reduction, batch);
    let (b32, c32) = (u32_of(OP, "batch", batch)?, u32_of(OP, "classes", classes)?);
    let want = dlogits.is_some() as i32;
    {
        let mut b = dev.stream.launch_builder(&dev.nn.cross_entropy);
        b.arg(logits)
            .arg(targets)
            .arg(&b32)
            .arg(&c32)
            .arg(&sc)
            .arg(&want);
        b.arg(&mut *losses);
        // Without a gradient the kernel never writes its dlogits argument: pass the logits.
        match dlogits {
            Some(d) => b.arg(d),
            None => b.arg(logits),
        };
        // SAFETY: argument types and order match dpsgd_cross_entropy; logits (and dlogits when
        // want_grad) hold batch·classes floats, targets and losses batch values (checked
        // above); one thread per example.
        unsafe {
            b.launch(cfg((
                batch.div_ceil(super::ffi::DPSGD_BLOCK as usize),
                1,
                1,
            )))
        }
        .map_err(drv("dpsgd_cross_entropy"))?;
    }
    finish(dev, OP, losses, sc, || {
        let z = dev.dtoh(logits)?;
        let t = dev.dtoh(targets)?;
        cpu::cross_entropy(&z, classes, &t, reduction, None)
    })
}

/// Launches one of the element-wise binary losses.
#[allow(clippy::too_many_arguments)]
fn binary(
    dev: &CudaBackend,
    op: &'static str,
    f: &cudarc::driver::CudaFunction,
    inputs: &CudaView<'_, f32>,
    targets: &CudaView<'_, f32>,
    reduction: Reduction,
    dinputs: Option<&mut CudaViewMut<'_, f32>>,
    losses: &mut CudaViewMut<'_, f64>,
) -> Result<f64> {
    let n = inputs.len();
    check_view(op, "targets", targets.len(), n)?;
    check_view(op, "losses", losses.len(), n)?;
    if let Some(d) = &dinputs {
        check_view(op, "gradient", d.len(), n)?;
    }
    if n == 0 {
        return Ok(0.0);
    }
    let sc = scale(reduction, n);
    let (n64, want) = (n as u64, dinputs.is_some() as i32);
    let mut b = dev.stream.launch_builder(f);
    b.arg(inputs).arg(targets).arg(&n64).arg(&sc).arg(&want);
    b.arg(&mut *losses);
    // Without a gradient the kernel never writes its gradient argument: pass the inputs.
    match dinputs {
        Some(d) => b.arg(d),
        None => b.arg(inputs),
    };
    // SAFETY: argument types and order match dpsgd_bce_with_logits / dpsgd_bce; inputs,
    // targets, losses (and the gradient when want_grad) hold n values (checked above);
    // grid-stride loop over n.
    unsafe { b.launch(cfg_elems(dev, n)) }.map_err(drv(op))?;
    Ok(sc)
}

/// GPU twin of [`crate::cpu::loss::bce_with_logits`]: `targets` on the device (same length as
/// `logits`), `losses` one double of scratch per element; the gradient to `dlogits` when given.
pub fn bce_with_logits(
    dev: &CudaBackend,
    logits: &CudaView<'_, f32>,
    targets: &CudaView<'_, f32>,
    reduction: Reduction,
    dlogits: Option<&mut CudaViewMut<'_, f32>>,
    losses: &mut CudaViewMut<'_, f64>,
) -> Result<f64> {
    const OP: &str = "bce_with_logits";
    let f = &dev.nn.bce_with_logits;
    let sc = binary(dev, OP, f, logits, targets, reduction, dlogits, losses)?;
    if logits.is_empty() {
        return Ok(0.0);
    }
    finish(dev, OP, losses, sc, || {
        let (z, t) = (dev.dtoh(logits)?, dev.dtoh(targets)?);
        cpu::bce_with_logits(&z, &t, reduction, None)
    })
}

/// GPU twin of [`crate::cpu::loss::bce`] (probabilities in `[0, 1]`): as [`bce_with_logits`].
pub fn bce(
    dev: &CudaBackend,
    probs: &CudaView<'_, f32>,
    targets: &CudaView<'_, f32>,
    reduction: Reduction,
    dprobs: Option<&mut CudaViewMut<'_, f32>>,
    losses: &mut CudaViewMut<'_, f64>,
) -> Result<f64> {
    const OP: &str = "bce";
    let sc = binary(
        dev,
        OP,
        &dev.nn.bce,
        probs,
        targets,
        reduction,
        dprobs,
        losses,
    )?;
    if probs.is_empty() {
        return Ok(0.0);
    }
    finish(dev, OP, losses, sc, || {
        let (p, t) = (dev.dtoh(probs)?, dev.dtoh(targets)?);
        cpu::bce(&p, &t, reduction, None)
    })
}
