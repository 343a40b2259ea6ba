//! CPU kernels of `MaxPool2d` and `AvgPool2d` (square kernel, stride, no padding, floor mode),
//! and `Flatten` (a no-op on NCHW data: the model just reinterprets the shape).
//!
//! No parameters. The max-pool backward recomputes each window's arg-max from `x` (the first
//! maximum in row-major window order, as PyTorch) and routes `dy` there; overlapping windows
//! (stride < kernel) accumulate.

use super::gemm::Real;
use super::grad::check_len;
use crate::{Error, Result};
use rayon::prelude::*;

/// Elements per parallel task (whole channel planes).
const CHUNK: usize = 1 << 14;

/// Shape of a pooling call: `batch` examples of `[c, h, w]`, `k × k` windows, `stride`.
/// Output `[batch, c, (h − k)/stride + 1, (w − k)/stride + 1]` (PyTorch's
/// `nn.MaxPool2d(k, stride)` / `nn.AvgPool2d(k, stride)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    /// Examples in the batch.
    pub batch: usize,
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
}

impl PoolShape {
    /// Validates the shape and returns the output `(oh, ow)`. Errors on zero sizes or a
    /// window larger than the input.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        if self.c == 0 || self.h == 0 || self.w == 0 {
            return Err(Error::shape(
                "pool2d",
                format!(
                    "input [{}, {}, {}] has a zero dimension",
                    self.c, self.h, self.w
                ),
            ));
        }
        if self.k == 0 {
            return Err(Error::invalid("kernel_size", 0, ">= 1"));
        }
        if self.stride == 0 {
            return Err(Error::invalid("stride", 0, ">= 1"));
        }
        if self.k > self.h || self.k > self.w {
            return Err(Error::shape(
                "pool2d",
                format!(
                    "window {}x{} is larger than the input {}x{}",
                    self.k, self.k, self.h, self.w
                ),
            ));
        }
        if self
            .h
            .checked_mul(self.w)
            .is_none_or(|n| n > u32::MAX as usize)
        {
            return Err(Error::shape(
                "pool2d",
                "a channel plane has more than 2^32 values",
            ));
        }
        Ok((
            (self.h - self.k) / self.stride + 1,
            (self.w - self.k) / self.stride + 1,
        ))
    }

    fn check(&self, op: &'static str, x: usize, y: usize) -> Result<(usize, usize)> {
        let (oh, ow) = self.out_hw()?;
        check_len(op, "x", x, self.batch * self.c * self.h * self.w)?;
        check_len(op, "y/dy", y, self.batch * self.c * oh * ow)?;
        Ok((oh, ow))
    }
}

/// Outputs per block of [`max_plane`] (stack arrays).
const BLOCK: usize = 64;

/// Visits the windows of one channel plane `xc` (width `w`): `visit(output index, index of the
/// window's first maximum in row-major window order in `xc`, the maximum)`; a NaN is taken
/// as the maximum (PyTorch's `val > max || isnan(val)`). Processes blocks of an output row with branch-free selects, so that it vectorises.
#[inline]
#[allow(clippy::too_many_arguments)]
fn max_plane<T: Real>(
    xc: &[T],
    w: usize,
    k: usize,
    st: usize,
    oh: usize,
    ow: usize,
    mut visit: impl FnMut(usize, usize, T),
) {
    let mut m = [T::ZERO; BLOCK];
    let mut idx = [0u32; BLOCK];
    for oy in 0..oh {
        let r0 = oy * st * w;
        let mut ox0 = 0;
        while ox0 < ow {
            let n = BLOCK.min(ow - ox0);
            for t in 0..n {
                let at = r0 + (ox0 + t) * st;
                m[t] = xc[at];
                idx[t] = at as u32;
            }
            for ki in 0..k {
                for kj in 0..k {
                    let base = r0 + ki * w + ox0 * st + kj;
                    if st == 1 {
                        let row = &xc[base..base + n];
                        let b = base as u32;
                        for t in 0..n {
                            let v = row[t];
                            let better = v > m[t] || v.is_nan();
                            m[t] = if better { v } else { m[t] };
                            idx[t] = if better { b + t as u32 } else { idx[t] };
                        }
                    } else {
                        let row = &xc[base..base + (n - 1) * st + 1];
                        for t in 0..n {
                            let v = row[t * st];
                            let better = v > m[t] || v.is_nan();
                            m[t] = if better { v } else { m[t] };
                            idx[t] = if better {
                                (base + t * st) as u32
                            } else {
                                idx[t]
                            };
                        }
                    }
                }
            }
            for t in 0..n {
                visit(oy * ow + ox0 + t, idx[t] as usize, m[t]);
            }
            ox0 += n;
        }
    }
}

/// `MaxPool2d` forward: `y = max` over each window (`y` overwritten).
pub fn max_pool2d_forward<T: Real>(s: &PoolShape, x: &[T], y: &mut [T]) -> Result<()> {
    let (oh, ow) = s.check("max_pool2d_forward", x.len(), y.len())?;
    let (h, w, k, st) = (s.h, s.w, s.k, s.stride);
    let planes = (CHUNK / (h * w)).max(1);
    y.par_chunks_mut(planes * oh * ow)
        .zip(x.par_chunks(planes * h * w))
        .for_each(|(yp, xp)| {
            for (yc, xc) in yp.chunks_exact_mut(oh * ow).zip(xp.chunks_exact(h * w)) {
                max_plane(xc, w, k, st, oh, ow, |o, _, m| yc[o] = m);
            }
        });
    Ok(())
}

/// `MaxPool2d` backward: `dx` (overwritten) gets each `dy` at its window's arg-max.
pub fn max_pool2d_backward<T: Real>(s: &PoolShape, x: &[T], dy: &[T], dx: &mut [T]) -> Result<()> {
    let (oh, ow) = s.check("max_pool2d_backward", x.len(), dy.len())?;
    check_len("max_pool2d_backward", "dx", dx.len(), x.len())?;
    let (h, w, k, st) = (s.h, s.w, s.k, s.stride);
    let planes = (CHUNK / (h * w)).max(1);
    dx.par_chunks_mut(planes * h * w)
        .zip(x.par_chunks(planes * h * w))
        .zip(dy.par_chunks(planes * oh * ow))
        .for_each(|((dxp, xp), dyp)| {
            dxp.fill(T::ZERO);
            for ((dxc, xc), dyc) in dxp
                .chunks_exact_mut(h * w)
                .zip(xp.chunks_exact(h * w))
                .zip(dyp.chunks_exact(oh * ow))
            {
                max_plane(xc, w, k, st, oh, ow, |o, i, _| dxc[i] += dyc[o]);
            }
        });
    Ok(())
}

/// `AvgPool2d` forward: the mean of each window (`y` overwritten).
pub fn avg_pool2d_forward<T: Real>(s: &PoolShape, x: &[T], y: &mut [T]) -> Result<()> {
    let (oh, ow) = s.check("avg_pool2d_forward", x.len(), y.len())?;
    let (h, w, k, st) = (s.h, s.w, s.k, s.stride);
    let inv = T::ONE / T::from_f64((k * k) as f64);
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(yc, xc)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = T::ZERO;
                    for ki in 0..k {
                        let row = (oy * st + ki) * w + ox * st;
                        for v in &xc[row..row + k] {
                            acc += *v;
                        }
                    }
                    yc[oy * ow + ox] = acc * inv;
                }
            }
        });
    Ok(())
}

/// `AvgPool2d` backward: `dx` (overwritten) gets `dy / k²` over each window.
pub fn avg_pool2d_backward<T: Real>(s: &PoolShape, dy: &[T], dx: &mut [T]) -> Result<()> {
    let (oh, ow) = s.check("avg_pool2d_backward", dx.len(), dy.len())?;
    let (h, w, k, st) = (s.h, s.w, s.k, s.stride);
    let inv = T::ONE / T::from_f64((k * k) as f64);
    dx.par_chunks_mut(h * w)
        .zip(dy.par_chunks(oh * ow))
        .for_each(|(dxc, dyc)| {
            dxc.fill(T::ZERO);
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = dyc[oy * ow + ox] * inv;
                    for ki in 0..k {
                        let row = (oy * st + ki) * w + ox * st;
                        for d in &mut dxc[row..row + k] {
                            *d += g;
                        }
                    }
                }
            }
        });
    Ok(())
}
