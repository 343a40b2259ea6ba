//! CPU kernels of `Linear` (PyTorch's `nn.Linear`): `y = x·Wᵀ + b`.
//!
//! `x`: `[batch, inf]`, `y`: `[batch, outf]`; parameters one slice, weight `[outf, inf]` then
//! bias `[outf]`. A chunk of the batch is one GEMM. Per-sample weight gradients are the outer
//! products `dy_i ⊗ x_i`, written straight into row i of the `[B, P]` matrix.

use super::gemm::{gemm, Real};
use super::grad::{check_grad, check_len, chunks_for, run_chunks, GradOut, ParamGrad};
use crate::{Error, Result};

/// Shape of a `Linear` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// Examples in the batch.
    pub batch: usize,
    /// Input features.
    pub inf: usize,
    /// Output features.
    pub outf: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl LinearShape {
    /// Elements of the weight, `outf·inf`.
    pub fn weight_len(&self) -> usize {
        self.outf * self.inf
    }

    /// Elements of the parameter slice: weight, then `outf` bias values if any.
    pub fn num_params(&self) -> usize {
        self.weight_len() + if self.bias { self.outf } else { 0 }
    }

    /// Scratch that [`linear_backward`] needs for `chunks` parallel chunks (only a
    /// [`ParamGrad::Sum`] uses it; [`linear_forward`] needs none).
    pub fn scratch_len(&self, chunks: usize) -> usize {
        chunks.max(1) * self.num_params()
    }

    fn check(&self, op: &'static str, x: usize, params: usize) -> Result<()> {
        if self.inf == 0 || self.outf == 0 {
            return Err(Error::shape(
                op,
                format!("Linear({}, {}) has a zero dimension", self.inf, self.outf),
            ));
        }
        check_len(op, "x", x, self.batch * self.inf)?;
        check_len(op, "params", params, self.num_params())
    }
}

/// Examples per chunk when no scratch decides: enough work per task to amortise rayon.
fn default_chunks(batch: usize, inf: usize, outf: usize) -> usize {
    let per_example = (inf * outf).max(1);
    let min_rows = (1 << 16) / per_example + 1;
    (batch / min_rows).clamp(1, rayon::current_num_threads().max(1))
}

/// `Linear` forward: `y = x·Wᵀ + b` (`y` overwritten).
pub fn linear_forward<T: Real>(s: &LinearShape, x: &[T], params: &[T], y: &mut [T]) -> Result<()> {
    const OP: &str = "linear_forward";
    s.check(OP, x.len(), params.len())?;
    let (inf, outf) = (s.inf, s.outf);
    check_len(OP, "y", y.len(), s.batch * outf)?;
    let (w, b) = params.split_at(s.weight_len());
    let chunks = default_chunks(s.batch, inf, outf);
    let f =
        |ex: std::ops::Range<usize>, y: Option<&mut [T]>, _: &mut GradOut<'_, T>, _: &mut [T]| {
            let Some(y) = y else { return };
            let n = ex.len();
            let beta = if s.bias {
                for row in y.chunks_exact_mut(outf) {
                    row.copy_from_slice(b);
                }
                T::ONE
            } else {
                T::ZERO
            };
            let xs = &x[ex.start * inf..ex.end * inf];
            gemm(
                n,
                inf,
                outf,
                T::ONE,
                xs,
                inf,
                1,
                w,
                1,
                inf,
                beta,
                y,
                outf,
                1,
            );
        };
    run_chunks(
        s.batch,
        chunks,
        Some((y, outf)),
        ParamGrad::None,
        0,
        &mut [],
        0,
        &f,
    );
    Ok(())
}

/// `Linear` backward: `dx = dy·W` (overwritten) when `dx` is given; parameter gradients
/// (weight `[outf, inf]` = `dy_iᵀ x_i` per example, then bias = `dy_i`) to `grad`.
/// `scratch`: [`LinearShape::scratch_len`] for a [`ParamGrad::Sum`] (any length otherwise).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<T: Real>(
    s: &LinearShape,
    x: &[T],
    params: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    grad: ParamGrad<'_, T>,
    scratch: &mut [T],
) -> Result<()> {
    const OP: &str = "linear_backward";
    s.check(OP, x.len(), params.len())?;
    let (inf, outf) = (s.inf, s.outf);
    check_len(OP, "dy", dy.len(), s.batch * outf)?;
    if let Some(dx) = &dx {
        check_len(OP, "dx", dx.len(), s.batch * inf)?;
    }
    let np = s.num_params();
    check_grad(OP, &grad, s.batch, np)?;
    let extra = grad.extra_scratch(np);
    let chunks = if extra > 0 {
        chunks_for(OP, s.batch, scratch.len(), extra)?
    } else {
        default_chunks(s.batch, inf, outf)
    };
    let nw = s.weight_len();
    let w = &params[..nw];
    let f = |ex: std::ops::Range<usize>,
             dx: Option<&mut [T]>,
             gout: &mut GradOut<'_, T>,
             _: &mut [T]| {
        let n = ex.len();
        let xs = &x[ex.start * inf..ex.end * inf];
        let dys = &dy[ex.start * outf..ex.end * outf];
        if let Some((acc, beta)) = gout.sum_region(np) {
            let (dw, db) = acc.split_at_mut(nw);
            // dW [outf × inf] = dYᵀ [outf × n] · X [n × inf]
            gemm(
                outf,
                n,
                inf,
                T::ONE,
                dys,
                1,
                outf,
                xs,
                inf,
                1,
                beta,
                dw,
                inf,
                1,
            );
            if s.bias {
                if beta == T::ZERO {
                    db.fill(T::ZERO);
                }
                for row in dys.chunks_exact(outf) {
                    for (d, v) in db.iter_mut().zip(row) {
                        *d += *v;
                    }
                }
            }
        } else if gout.wanted() {
            for j in 0..n {
                let Some((region, _)) = gout.region(j, np) else {
                    break;
                };
                let (dw, db) = region.split_at_mut(nw);
                let xi = &xs[j * inf..(j + 1) * inf];
                let dyi = &dys[j * outf..(j + 1) * outf];
                for (o, &g) in dyi.iter().enumerate() {
                    for (d, &xv) in dw[o * inf..(o + 1) * inf].iter_mut().zip(xi) {
                        *d = g * xv;
                    }
                }
                if s.bias {
                    db.copy_from_slice(dyi);
                }
            }
        }
        if let Some(dx) = dx {
            // dX [n × inf] = dY [n × outf] · W [outf × inf]
            gemm(
                n,
                outf,
                inf,
                T::ONE,
                dys,
                outf,
                1,
                w,
                inf,
                1,
                T::ZERO,
                dx,
                inf,
                1,
            );
        }
    };
    let out = dx.map(|d| (d, inf));
    run_chunks(s.batch, chunks, out, grad, np, scratch, 0, &f);
    Ok(())
}
