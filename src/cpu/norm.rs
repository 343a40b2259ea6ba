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

/// Mean and 1/√(var + ε) of one group, accumulated in f64 (two passes, each in
/// [`LANES`] running sums).
#[inline(always)]
fn stats<T: Real>(xg: &[T], eps: f64) -> (T, T) {
    let n = xg.len() as f64;
    let mean = sum_lanes(xg, xg, |v, _| v.to_f64()) / n;
    let q = sum_lanes(xg, xg, |v, _| {
        let d = v.to_f64() - mean;
        d * d
    });
    (T::from_f64(mean), T::from_f64(1.0 / (q / n + eps).sqrt()))
}

/// Running sums of [`sum_lanes`]: four 4-wide f64 vectors under AVX2, so the additions of
/// consecutive elements do not wait on each other (an f64 add's latency is 3–4 cycles).
const LANES: usize = 16;

/// `Σ_i f(a[i], b[i])` (over `a.len()` elements; `b` at least as long) in [`LANES`]
/// interleaved running sums (element `i` into sum `i mod LANES`), added pairwise at the end
/// (`s_k += s_{k+8}`, then `+4`, `+2`, `+1`), then the tail in order.
#[inline(always)]
fn sum_lanes<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> f64) -> f64 {
    let b = &b[..a.len()];
    let mut acc = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += f(x[k], y[k]);
        }
    }
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for k in 0..w {
            acc[k] += acc[k + w];
        }
    }
    let mut s = acc[0];
    for (x, y) in ta.iter().zip(tb) {
        s += f(*x, *y);
    }
    s
}

/// [`group_norm_forward`] of one example `xi` into `yi`.
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn forward_example<T: Real>(s: &GroupNormShape, xi: &[T], gamma: &[T], beta: &[T], yi: &mut [T]) {
    let cpg = s.c / s.groups;
    let gl = cpg * s.spatial;
    for g in 0..s.groups {
        let xg = &xi[g * gl..(g + 1) * gl];
        let yg = &mut yi[g * gl..(g + 1) * gl];
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

/// [`group_norm_backward`] of one example: `xi`, `dyi` its input and output gradient; its
/// parameter gradient into `region` (γ then β; overwritten when its β is 0, else added to),
/// its input gradient into `dxi`.
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn backward_example<T: Real>(
    s: &GroupNormShape,
    xi: &[T],
    dyi: &[T],
    gamma: &[T],
    mut region: Option<(&mut [T], T)>,
    mut dxi: Option<&mut [T]>,
) {
    let cpg = s.c / s.groups;
    let gl = cpg * s.spatial;
    let sp = s.spatial;
    for g in 0..s.groups {
        let xg = &xi[g * gl..(g + 1) * gl];
        let dyg = &dyi[g * gl..(g + 1) * gl];
        let (mean, rstd) = stats(xg, s.eps);
        // Σ dxhat and Σ dxhat·xhat over the group, with dxhat = dy·γ_c.
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for cc in 0..cpg {
            let c = g * cpg + cc;
            let (xc, dc) = (&xg[cc * sp..(cc + 1) * sp], &dyg[cc * sp..(cc + 1) * sp]);
            let sdy = sum_lanes(dc, dc, |d, _| d.to_f64());
            let sdyx = sum_lanes(dc, xc, |d, x| d.to_f64() * ((x - mean) * rstd).to_f64());
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
        if let Some(dx) = dxi.as_deref_mut() {
            let n = gl as f64;
            let (m1, m2) = (T::from_f64(s1 / n), T::from_f64(s2 / n));
            let dxg = &mut dx[g * gl..(g + 1) * gl];
            for cc in 0..cpg {
                let gm = gamma[g * cpg + cc];
                let r = cc * sp..(cc + 1) * sp;
                for ((o, v), d) in dxg[r.clone()].iter_mut().zip(&xg[r.clone()]).zip(&dyg[r]) {
                    let xh = (*v - mean) * rstd;
                    *o = rstd * (gm * *d - m1 - xh * m2);
                }
            }
        }
    }
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
    let f =
        |ex: std::ops::Range<usize>, y: Option<&mut [T]>, _: &mut GradOut<'_, T>, _: &mut [T]| {
            let Some(y) = y else { return };
            for (j, i) in ex.enumerate() {
                let xi = &x[i * il..(i + 1) * il];
                forward_example(s, xi, gamma, beta, &mut y[j * il..(j + 1) * il]);
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
    let f = |ex: std::ops::Range<usize>,
             mut dx: Option<&mut [T]>,
             gout: &mut GradOut<'_, T>,
             _: &mut [T]| {
        for (j, i) in ex.enumerate() {
            let region = gout.region(j, np);
            let dxi = dx.as_deref_mut().map(|d| &mut d[j * il..(j + 1) * il]);
            let (xi, dyi) = (&x[i * il..(i + 1) * il], &dy[i * il..(i + 1) * il]);
            backward_example(s, xi, dyi, gamma, region, dxi);
        }
    };
    let out = dx.map(|d| (d, il));
    run_chunks(s.batch, chunks, out, grad, np, scratch, 0, &f);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`sum_lanes`] is the sum, for lengths below, at and around multiples of its lanes.
    #[test]
    fn sum_lanes_is_the_sum() {
        for n in [0, 1, 7, 15, 16, 17, 31, 32, 33, 49, 196, 1000] {
            let a: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin() * 1e3).collect();
            let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11).cos()).collect();
            let got = sum_lanes(&a, &b, |x, y| x * y);
            let want: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!(
                (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
                "{n}: {got} vs {want}"
            );
        }
    }

    /// f32 forward and backward (input gradient, per-sample and summed γ/β gradients) against
    /// the definitions evaluated in f64 from the same f32 inputs, on the DCGAN generator's
    /// GroupNorm shapes (spatial 49 and 196: tails after the 16-lane sums) and one with a
    /// spatial size below the lanes.
    #[test]
    fn group_norm_f32_matches_f64_definition() {
        for (c, spatial, groups) in [(16, 49, 8), (8, 196, 4), (6, 5, 3)] {
            let s = GroupNormShape {
                batch: 3,
                c,
                spatial,
                groups,
                eps: 1e-5,
            };
            let il = c * spatial;
            let v = |n: usize, a: f64, o: f64| -> Vec<f32> {
                (0..n).map(|i| ((i as f64 * a).sin() + o) as f32).collect()
            };
            let x = v(s.batch * il, 0.71, 0.3);
            let dy = v(s.batch * il, 0.29, -0.1);
            let p = v(2 * c, 0.5, 1.0);
            let mut y = vec![f32::NAN; s.batch * il];
            group_norm_forward(&s, &x, &p, &mut y).unwrap();
            let mut dx = vec![f32::NAN; s.batch * il];
            let mut rows = vec![f32::NAN; s.batch * 2 * c];
            let grad = ParamGrad::PerSample {
                rows: &mut rows,
                stride: 2 * c,
                offset: 0,
            };
            group_norm_backward(&s, &x, &p, &dy, Some(&mut dx), grad, &mut []).unwrap();
            let mut sum = vec![f32::NAN; 2 * c];
            let mut scr = vec![0f32; s.scratch_len(2)];
            let grad = ParamGrad::Sum {
                grad: &mut sum,
                accumulate: false,
            };
            group_norm_backward(&s, &x, &p, &dy, None, grad, &mut scr).unwrap();
            let cpg = c / groups;
            let gl = cpg * spatial;
            let mut want_sum = vec![0f64; 2 * c];
            for i in 0..s.batch {
                for g in 0..groups {
                    let o = i * il + g * gl;
                    let xg: Vec<f64> = x[o..o + gl].iter().map(|&v| v as f64).collect();
                    let dyg: Vec<f64> = dy[o..o + gl].iter().map(|&v| v as f64).collect();
                    let mean = xg.iter().sum::<f64>() / gl as f64;
                    let var = xg.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / gl as f64;
                    let rstd = 1.0 / (var + s.eps).sqrt();
                    let xh: Vec<f64> = xg.iter().map(|v| (v - mean) * rstd).collect();
                    let gam = |t: usize| p[g * cpg + t / spatial] as f64;
                    let dxh: Vec<f64> = (0..gl).map(|t| dyg[t] * gam(t)).collect();
                    let m1 = dxh.iter().sum::<f64>() / gl as f64;
                    let m2 = dxh.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / gl as f64;
                    for t in 0..gl {
                        let cc = g * cpg + t / spatial;
                        let wy = gam(t) * xh[t] + p[c + cc] as f64;
                        let wdx = rstd * (dxh[t] - m1 - xh[t] * m2);
                        assert!((y[o + t] as f64 - wy).abs() < 1e-5, "y {}: {wy}", y[o + t]);
                        assert!(
                            (dx[o + t] as f64 - wdx).abs() < 1e-4,
                            "dx {}: {wdx}",
                            dx[o + t]
                        );
                    }
                    for cc in 0..cpg {
                        let ch = g * cpg + cc;
                        let r = cc * spatial..(cc + 1) * spatial;
                        let dg: f64 = r.clone().map(|t| dyg[t] * xh[t]).sum();
                        let db: f64 = r.map(|t| dyg[t]).sum();
                        let row = &rows[i * 2 * c..(i + 1) * 2 * c];
                        assert!((row[ch] as f64 - dg).abs() < 1e-4, "dγ {}: {dg}", row[ch]);
                        assert!(
                            (row[c + ch] as f64 - db).abs() < 1e-4,
                            "dβ {}: {db}",
                            row[c + ch]
                        );
                        want_sum[ch] += dg;
                        want_sum[c + ch] += db;
                    }
                }
            }
            for (u, w) in sum.iter().zip(&want_sum) {
                assert!((*u as f64 - w).abs() < 1e-4, "sum {u}: {w}");
            }
        }
    }
}
