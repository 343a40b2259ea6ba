//! CPU kernels of `GroupNorm` (PyTorch's `nn.GroupNorm(groups, channels, eps, affine=True)`).
//!
//! Each example is normalised on its own: the channels are split into `groups` groups, and each
//! group of each example is shifted and scaled by its own mean and (biased) variance, then by
//! the per-channel affine `γ_c`, `β_c`. No statistic mixes examples, so per-example gradients
//! stay per-example: this is the DP-safe replacement of BatchNorm (see [`crate::nn`]).
//!
//! Parameters one slice: weight γ `[C]` then bias β `[C]`. The backward recomputes the
//! statistics from `x`, so no state is kept between forward and backward.

use super::gemm::Real;
use super::grad::{check_grad, check_len, chunks_for, run_chunks, GradOut, ParamGrad};
use crate::{Error, Result};

/// Shape of a `GroupNorm` call: `batch` examples of `[c, h, w]` (h = w = 1 for flat features).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormShape {
    /// Examples in the batch.
    pub batch: usize,
    /// Channels C (must be divisible by `groups`).
    pub c: usize,
    /// Spatial positions per channel (`h·w`).
    pub spatial: usize,
    /// Number of groups.
    pub groups: usize,
    /// ε added to the variance (PyTorch's default 1e-5).
    pub eps: f64,
}

impl GroupNormShape {
    /// Elements of the parameter slice, `2·c` (γ then β).
    pub fn num_params(&self) -> usize {
        2 * self.c
    }

    /// Scratch for `chunks` parallel chunks (only a [`ParamGrad::Sum`] uses it).
    pub fn scratch_len(&self, chunks: usize) -> usize {
        chunks.max(1) * self.num_params()
    }

    fn check(&self, op: &'static str, x: usize, params: usize) -> Result<()> {
        if self.c == 0 || self.spatial == 0 {
            return Err(Error::shape(op, "zero channels or spatial size"));
        }
        if self.groups == 0 || self.c % self.groups != 0 {
            return Err(Error::invalid(
                "groups",
                self.groups,
                format!("a divisor of the channel count {}", self.c),
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::invalid("eps", self.eps, "finite and > 0"));
        }
        check_len(op, "x", x, self.batch * self.c * self.spatial)?;
        check_len(op, "params", params, self.num_params())
    }
}

/// Mean and 1/√(var + ε) of one group, accumulated in f64 (four running sums each, so the
/// loops pipeline; added pairwise at the end).
#[inline]
fn stats<T: Real>(xg: &[T], eps: f64) -> (T, T) {
    let n = xg.len() as f64;
    let mean = sum4(xg.len(), |i| xg[i].to_f64()) / n;
    let q = sum4(xg.len(), |i| {
        let d = xg[i].to_f64() - mean;
        d * d
    });
    (T::from_f64(mean), T::from_f64(1.0 / (q / n + eps).sqrt()))
}

/// `Σ_{i < len} f(i)` in four interleaved running sums, `(s0 + s2) + (s1 + s3)`, then the tail.
#[inline(always)]
fn sum4(len: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut a = [0.0f64; 4];
    let body = len / 4 * 4;
    let mut i = 0;
    while i < body {
        a[0] += f(i);
        a[1] += f(i + 1);
        a[2] += f(i + 2);
        a[3] += f(i + 3);
        i += 4;
    }
    let mut s = (a[0] + a[2]) + (a[1] + a[3]);
    while i < len {
        s += f(i);
        i += 1;
    }
    s
}

fn default_chunks(batch: usize) -> usize {
    batch.clamp(1, rayon::current_num_threads().max(1))
}

/// `GroupNorm` forward: `y = γ_c · (x − μ_g) / √(σ²_g + ε) + β_c` (`y` overwritten).
pub fn group_norm_forward<T: Real>(
    s: &GroupNormShape,
    x: &[T],
    params: &[T],
    y: &mut [T],
) -> Result<()> {
    const OP: &str = "group_norm_forward";
    s.check(OP, x.len(), params.len())?;
    let il = s.c * s.spatial;
    check_len(OP, "y", y.len(), s.batch * il)?;
    let (gamma, beta) = params.split_at(s.c);
    let cpg = s.c / s.groups;
    let gl = cpg * s.spatial;
    let f =
        |ex: std::ops::Range<usize>, y: Option<&mut [T]>, _: &mut GradOut<'_, T>, _: &mut [T]| {
            let Some(y) = y else { return };
            for (j, i) in ex.enumerate() {
                for g in 0..s.groups {
                    let xg = &x[i * il + g * gl..i * il + (g + 1) * gl];
                    let yg = &mut y[j * il + g * gl..j * il + (g + 1) * gl];
                    let (mean, rstd) = stats(xg, s.eps);
                    for cc in 0..cpg {
                        let c = g * cpg + cc;
                        let (a, b) = (gamma[c] * rstd, beta[c] - gamma[c] * rstd * mean);
                        let r = cc * s.spatial..(cc + 1) * s.spatial;
                        for (o, v) in yg[r.clone()].iter_mut().zip(&xg[r]) {
                            *o = a * *v + b;
                        }
                    }
                }
            }
        };
    run_chunks(
        s.batch,
        default_chunks(s.batch),
        Some((y, il)),
        ParamGrad::None,
        0,
        &mut [],
        0,
        &f,
    );
    Ok(())
}

/// `GroupNorm` backward: the input gradient into `dx` (overwritten) when given, and the
/// parameter gradients (γ then β, each `[C]`) to `grad`. `x`, `params` are the forward's.
/// `scratch`: [`GroupNormShape::scratch_len`] for a [`ParamGrad::Sum`] (any length otherwise).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward<T: Real>(
    s: &GroupNormShape,
    x: &[T],
    params: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    grad: ParamGrad<'_, T>,
    scratch: &mut [T],
) -> Result<()> {
    const OP: &str = "group_norm_backward";
    s.check(OP, x.len(), params.len())?;
    let il = s.c * s.spatial;
    check_len(OP, "dy", dy.len(), s.batch * il)?;
    if let Some(dx) = &dx {
        check_len(OP, "dx", dx.len(), s.batch * il)?;
    }
    let np = s.num_params();
    check_grad(OP, &grad, s.batch, np)?;
    let extra = grad.extra_scratch(np);
    let chunks = if extra > 0 {
        chunks_for(OP, s.batch, scratch.len(), extra)?
    } else {
        default_chunks(s.batch)
    };
    let gamma = &params[..s.c];
    let cpg = s.c / s.groups;
    let gl = cpg * s.spatial;
    let sp = s.spatial;
    let f = |ex: std::ops::Range<usize>,
             mut dx: Option<&mut [T]>,
             gout: &mut GradOut<'_, T>,
             _: &mut [T]| {
        for (j, i) in ex.enumerate() {
            let mut region = gout.region(j, np);
            for g in 0..s.groups {
                let base = i * il + g * gl;
                let xg = &x[base..base + gl];
                let dyg = &dy[base..base + gl];
                let (mean, rstd) = stats(xg, s.eps);
                // Σ dxhat and Σ dxhat·xhat over the group, with dxhat = dy·γ_c.
                let (mut s1, mut s2) = (0.0f64, 0.0f64);
                for cc in 0..cpg {
                    let c = g * cpg + cc;
                    let (xc, dc) = (&xg[cc * sp..(cc + 1) * sp], &dyg[cc * sp..(cc + 1) * sp]);
                    let sdy = sum4(sp, |t| dc[t].to_f64());
                    let sdyx = sum4(sp, |t| dc[t].to_f64() * ((xc[t] - mean) * rstd).to_f64());
                    let gm = gamma[c].to_f64();
                    s1 += gm * sdy;
                    s2 += gm * sdyx;
                    if let Some((reg, beta)) = region.as_mut() {
                        let (dg, db) = reg.split_at_mut(s.c);
                        let (a, b) = (T::from_f64(sdyx), T::from_f64(sdy));
                        if *beta == T::ZERO {
                            dg[c] = a;
                            db[c] = b;
                        } else {
                            dg[c] += a;
                            db[c] += b;
                        }
                    }
                }
                if let Some(dx) = dx.as_deref_mut() {
                    let n = gl as f64;
                    let (m1, m2) = (T::from_f64(s1 / n), T::from_f64(s2 / n));
                    let dxg = &mut dx[j * il + g * gl..j * il + (g + 1) * gl];
                    for cc in 0..cpg {
                        let gm = gamma[g * cpg + cc];
                        let r = cc * sp..(cc + 1) * sp;
                        for ((o, v), d) in
                            dxg[r.clone()].iter_mut().zip(&xg[r.clone()]).zip(&dyg[r])
                        {
                            let xh = (*v - mean) * rstd;
                            *o = rstd * (gm * *d - m1 - xh * m2);
                        }
                    }
                }
            }
        }
    };
    let out = dx.map(|d| (d, il));
    run_chunks(s.batch, chunks, out, grad, np, scratch, 0, &f);
    Ok(())
}
