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

/// Index (within the channel plane) of the first maximum of the window at `(oy, ox)`.
#[inline]
fn argmax<T: Real>(xc: &[T], w: usize, k: usize, y0: usize, x0: usize) -> usize {
    let mut best = y0 * w + x0;
    let mut m = xc[best];
    for ki in 0..k {
        let row = (y0 + ki) * w;
        for kj in 0..k {
            let v = xc[row + x0 + kj];
            if v > m || (v.to_f64().is_nan() && !m.to_f64().is_nan()) {
                m = v;
                best = row + x0 + kj;
            }
        }
    }
    best
}

/// `MaxPool2d` forward: `y = max` over each window (`y` overwritten).
pub fn max_pool2d_forward<T: Real>(s: &PoolShape, x: &[T], y: &mut [T]) -> Result<()> {
    let (oh, ow) = s.check("max_pool2d_forward", x.len(), y.len())?;
    let (h, w, k, st) = (s.h, s.w, s.k, s.stride);
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(yc, xc)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    yc[oy * ow + ox] = xc[argmax(xc, w, k, oy * st, ox * st)];
                }
            }
        });
    Ok(())
}

/// `MaxPool2d` backward: `dx` (overwritten) gets each `dy` at its window's arg-max.
pub fn max_pool2d_backward<T: Real>(s: &PoolShape, x: &[T], dy: &[T], dx: &mut [T]) -> Result<()> {
    let (oh, ow) = s.check("max_pool2d_backward", x.len(), dy.len())?;
    check_len("max_pool2d_backward", "dx", dx.len(), x.len())?;
    let (h, w, k, st) = (s.h, s.w, s.k, s.stride);
    dx.par_chunks_mut(h * w)
        .zip(x.par_chunks(h * w))
        .zip(dy.par_chunks(oh * ow))
        .for_each(|((dxc, xc), dyc)| {
            dxc.fill(T::ZERO);
            for oy in 0..oh {
                for ox in 0..ow {
                    dxc[argmax(xc, w, k, oy * st, ox * st)] += dyc[oy * ow + ox];
                }
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
