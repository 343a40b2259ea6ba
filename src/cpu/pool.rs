//! CPU kernels of `MaxPool2d` and `AvgPool2d` (square kernel, stride, no padding, floor mode),
//! and `Flatten` (a no-op on NCHW data: the model just reinterprets the shape).
//!
//! No parameters. The max-pool backward finds each window's arg-max in `x` (the first maximum
//! in row-major window order, as PyTorch) — against the forward's output with
//! [`max_pool2d_backward_with_output`], else recomputing the maxima — and routes `dy` there;
//! overlapping windows (stride < kernel) accumulate.

use super::gemm::Real;
use super::grad::{check_len, min_len};
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

/// Outputs per block of a row (stack arrays of the max-pool kernels).
const BLOCK: usize = 64;

/// `m ← v` where `v` beats `m`: larger, or NaN (PyTorch's `val > max || isnan(val)`). Written
/// with a non-short-circuit `|` so that it compiles to a compare-and-blend, not a branch (the
/// comparison is unpredictable on real activations).
#[inline(always)]
fn beats<T: Real>(v: T, m: T) -> bool {
    (v > m) | v.is_nan()
}

/// The maxima of one output row block: `m[t] = max over the window of output ox0 + t` of the
/// plane `xc` (width `w`) in row `oy`, for `t < n` (NaN if the window holds one).
/// Branch-free; vectorises over `t` for stride 1.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn max_row<T: Real>(
    xc: &[T],
    w: usize,
    k: usize,
    st: usize,
    oy: usize,
    ox0: usize,
    m: &mut [T; BLOCK],
    n: usize,
) {
    let r0 = oy * st * w + ox0 * st;
    let m = &mut m[..n];
    if st == 1 {
        m.copy_from_slice(&xc[r0..r0 + n]);
    } else {
        for t in 0..n {
            m[t] = xc[r0 + t * st];
        }
    }
    for ki in 0..k {
        for kj in 0..k {
            if ki == 0 && kj == 0 {
                continue;
            }
            let base = r0 + ki * w + kj;
            if st == 1 {
                let row = &xc[base..base + n];
                for t in 0..n {
                    let (v, mt) = (row[t], m[t]);
                    m[t] = if beats(v, mt) { v } else { mt };
                }
            } else {
                let row = &xc[base..base + (n - 1) * st + 1];
                for t in 0..n {
                    let (v, mt) = (row[t * st], m[t]);
                    m[t] = if beats(v, mt) { v } else { mt };
                }
            }
        }
    }
}

/// Largest plane (h·w) of the flat stride-1 kernels (their stack buffers).
const FLAT: usize = 512;

/// Stride-1 planes of up to [`FLAT`] values take the flat kernels: output `(oy, ox)` is
/// computed at `j = oy·w + ox` of a plane-long row (the `k − 1` columns past `ow` of each row
/// are computed and dropped), so every tap is one long contiguous compare-and-blend loop over
/// `(oh − 1)·w + ow` values instead of `oh` loops of `ow`: they vectorise fully.
#[inline(always)]
fn flat(h: usize, w: usize, st: usize) -> bool {
    st == 1 && h * w <= FLAT
}

/// The window maxima of a stride-1 plane in the flat layout: `m[oy·w + ox]`, `len` values.
#[inline(always)]
fn max_flat<T: Real>(xc: &[T], w: usize, k: usize, m: &mut [T]) {
    let len = m.len();
    m.copy_from_slice(&xc[..len]);
    for ki in 0..k {
        for kj in 0..k {
            if ki == 0 && kj == 0 {
                continue;
            }
            let row = &xc[ki * w + kj..ki * w + kj + len];
            for t in 0..len {
                let (v, mt) = (row[t], m[t]);
                m[t] = if beats(v, mt) { v } else { mt };
            }
        }
    }
}

/// Max-pool forward of one channel plane.
#[inline]
fn max_plane_forward<T: Real>(
    xc: &[T],
    yc: &mut [T],
    w: usize,
    k: usize,
    st: usize,
    ow: usize,
    buf: &mut [T; FLAT],
) {
    let h = xc.len() / w;
    if flat(h, w, st) {
        let oh = yc.len() / ow;
        let len = (oh - 1) * w + ow;
        let m = &mut buf[..len];
        max_flat(xc, w, k, m);
        for (oy, yr) in yc.chunks_exact_mut(ow).enumerate() {
            yr.copy_from_slice(&m[oy * w..oy * w + ow]);
        }
        return;
    }
    let mut m = [T::ZERO; BLOCK];
    for (oy, yr) in yc.chunks_exact_mut(ow).enumerate() {
        let mut ox0 = 0;
        while ox0 < ow {
            let n = BLOCK.min(ow - ox0);
            max_row(xc, w, k, st, oy, ox0, &mut m, n);
            yr[ox0..ox0 + n].copy_from_slice(&m[..n]);
            ox0 += n;
        }
    }
}

/// Max-pool backward of one channel plane: `dxc` (zeroed here) gets each `dyc` at its window's
/// arg-max, the first maximum in row-major window order (PyTorch's choice).
///
/// The maximum `m` is the forward's output `yc` when given, else recomputed; then the taps
/// are visited in order with the gradient still to route, `rem`: a tap equal to `m` takes
/// `rem` and leaves 0 for the later ones. All
/// float compare-and-selects, so that it vectorises (stride 1). A row block whose window holds
/// a NaN takes the scalar path (the gradient goes to the last NaN, as PyTorch's
/// `val > max || isnan(val)` scan).
#[inline]
#[allow(clippy::too_many_arguments)]
fn max_plane_backward<T: Real>(
    xc: &[T],
    yc: Option<&[T]>,
    dyc: &[T],
    dxc: &mut [T],
    w: usize,
    k: usize,
    st: usize,
    ow: usize,
    bufs: &mut ([T; FLAT], [T; FLAT]),
) {
    let h = xc.len() / w;
    if flat(h, w, st) && max_plane_backward_flat(xc, yc, dyc, dxc, w, k, ow, bufs) {
        return;
    }
    let mut m = [T::ZERO; BLOCK];
    let mut rem = [T::ZERO; BLOCK];
    dxc.fill(T::ZERO);
    for (oy, dyr) in dyc.chunks_exact(ow).enumerate() {
        let mut ox0 = 0;
        while ox0 < ow {
            let n = BLOCK.min(ow - ox0);
            match yc {
                Some(yc) => m[..n].copy_from_slice(&yc[oy * ow + ox0..oy * ow + ox0 + n]),
                None => max_row(xc, w, k, st, oy, ox0, &mut m, n),
            }
            let g = &dyr[ox0..ox0 + n];
            let r0 = oy * st * w + ox0 * st;
            let mm = &m[..n];
            if mm.iter().fold(false, |a, v| a | v.is_nan()) {
                for t in 0..n {
                    let (mut best, mut at) = (xc[r0 + t * st], r0 + t * st);
                    for ki in 0..k {
                        for kj in 0..k {
                            let i = r0 + t * st + ki * w + kj;
                            if beats(xc[i], best) {
                                (best, at) = (xc[i], i);
                            }
                        }
                    }
                    dxc[at] += g[t];
                }
                ox0 += n;
                continue;
            }
            let rem = &mut rem[..n];
            rem.copy_from_slice(g);
            for ki in 0..k {
                for kj in 0..k {
                    let base = r0 + ki * w + kj;
                    if st == 1 {
                        let xr = &xc[base..base + n];
                        let d = &mut dxc[base..base + n];
                        for t in 0..n {
                            let (v, r, dt) = (xr[t], rem[t], d[t]);
                            let hit = v == mm[t];
                            d[t] = dt + if hit { r } else { T::ZERO };
                            rem[t] = if hit { T::ZERO } else { r };
                        }
                    } else {
                        for t in 0..n {
                            let i = base + t * st;
                            let (v, r) = (xc[i], rem[t]);
                            let hit = v == mm[t];
                            dxc[i] += if hit { r } else { T::ZERO };
                            rem[t] = if hit { T::ZERO } else { r };
                        }
                    }
                }
            }
            ox0 += n;
        }
    }
}

/// The flat stride-1 backward of one plane (see [`flat`]): the maxima (the forward's output
/// or recomputed) and the gradient still to route laid out at `oy·w + ox`, zero gradient in
/// the dropped columns; then per tap one long masked add. Returns false, having written
/// nothing, when the plane holds a NaN maximum (the caller's scalar path routes it).
#[allow(clippy::too_many_arguments)]
fn max_plane_backward_flat<T: Real>(
    xc: &[T],
    yc: Option<&[T]>,
    dyc: &[T],
    dxc: &mut [T],
    w: usize,
    k: usize,
    ow: usize,
    bufs: &mut ([T; FLAT], [T; FLAT]),
) -> bool {
    let oh = dyc.len() / ow;
    let len = (oh - 1) * w + ow;
    let (m, rem) = (&mut bufs.0[..len], &mut bufs.1[..len]);
    match yc {
        Some(yc) => {
            for (oy, yr) in yc.chunks_exact(ow).enumerate() {
                m[oy * w..oy * w + ow].copy_from_slice(yr);
            }
        }
        None => max_flat(xc, w, k, m),
    }
    // The dropped columns route nothing: gradient 0 (and a maximum of 0, not a stale NaN).
    for oy in 0..oh - 1 {
        m[oy * w + ow..(oy + 1) * w].fill(T::ZERO);
        rem[oy * w + ow..(oy + 1) * w].fill(T::ZERO);
    }
    if m.iter().fold(false, |a, v| a | v.is_nan()) {
        return false;
    }
    for (oy, dr) in dyc.chunks_exact(ow).enumerate() {
        rem[oy * w..oy * w + ow].copy_from_slice(dr);
    }
    dxc.fill(T::ZERO);
    for ki in 0..k {
        for kj in 0..k {
            let base = ki * w + kj;
            let xr = &xc[base..base + len];
            let d = &mut dxc[base..base + len];
            for t in 0..len {
                let (v, r, dt) = (xr[t], rem[t], d[t]);
                let hit = v == m[t];
                d[t] = dt + if hit { r } else { T::ZERO };
                rem[t] = if hit { T::ZERO } else { r };
            }
        }
    }
    true
}

/// `MaxPool2d` forward: `y = max` over each window (`y` overwritten).
pub fn max_pool2d_forward<T: Real>(s: &PoolShape, x: &[T], y: &mut [T]) -> Result<()> {
    let (oh, ow) = s.check("max_pool2d_forward", x.len(), y.len())?;
    let (h, w, k, st) = (s.h, s.w, s.k, s.stride);
    let planes = (CHUNK / (h * w)).max(1);
    y.par_chunks_mut(planes * oh * ow)
        .zip(x.par_chunks(planes * h * w))
        .with_min_len(min_len())
        .for_each(|(yp, xp)| {
            let mut buf = [T::ZERO; FLAT];
            for (yc, xc) in yp.chunks_exact_mut(oh * ow).zip(xp.chunks_exact(h * w)) {
                max_plane_forward(xc, yc, w, k, st, ow, &mut buf);
            }
        });
    Ok(())
}

/// `MaxPool2d` backward: `dx` (overwritten) gets each `dy` at its window's arg-max.
pub fn max_pool2d_backward<T: Real>(s: &PoolShape, x: &[T], dy: &[T], dx: &mut [T]) -> Result<()> {
    max_pool_backward(s, x, None, dy, dx)
}

/// [`max_pool2d_backward`] given also the forward's output `y` (the window maxima, as
/// [`max_pool2d_forward`] wrote them), which it then need not recompute. Same result, bit for
/// bit, when `y` is that output.
pub fn max_pool2d_backward_with_output<T: Real>(
    s: &PoolShape,
    x: &[T],
    y: &[T],
    dy: &[T],
    dx: &mut [T],
) -> Result<()> {
    check_len("max_pool2d_backward", "y", y.len(), dy.len())?;
    max_pool_backward(s, x, Some(y), dy, dx)
}

fn max_pool_backward<T: Real>(
    s: &PoolShape,
    x: &[T],
    y: Option<&[T]>,
    dy: &[T],
    dx: &mut [T],
) -> Result<()> {
    let (oh, ow) = s.check("max_pool2d_backward", x.len(), dy.len())?;
    check_len("max_pool2d_backward", "dx", dx.len(), x.len())?;
    let (h, w, k, st) = (s.h, s.w, s.k, s.stride);
    let planes = (CHUNK / (h * w)).max(1);
    let run = |((dxp, xp), dyp): ((&mut [T], &[T]), &[T]), yp: Option<&[T]>| {
        let mut bufs = ([T::ZERO; FLAT], [T::ZERO; FLAT]);
        for (j, ((dxc, xc), dyc)) in dxp
            .chunks_exact_mut(h * w)
            .zip(xp.chunks_exact(h * w))
            .zip(dyp.chunks_exact(oh * ow))
            .enumerate()
        {
            let yc = yp.map(|y| &y[j * oh * ow..(j + 1) * oh * ow]);
            max_plane_backward(xc, yc, dyc, dxc, w, k, st, ow, &mut bufs);
        }
    };
    let it = dx
        .par_chunks_mut(planes * h * w)
        .zip(x.par_chunks(planes * h * w))
        .zip(dy.par_chunks(planes * oh * ow));
    match y {
        Some(y) => it
            .zip(y.par_chunks(planes * oh * ow))
            .with_min_len(min_len())
            .for_each(|(a, yp)| run(a, Some(yp))),
        None => it.with_min_len(min_len()).for_each(|a| run(a, None)),
    }
    Ok(())
}

/// `AvgPool2d` forward: the mean of each window (`y` overwritten).
pub fn avg_pool2d_forward<T: Real>(s: &PoolShape, x: &[T], y: &mut [T]) -> Result<()> {
    let (oh, ow) = s.check("avg_pool2d_forward", x.len(), y.len())?;
    let (h, w, k, st) = (s.h, s.w, s.k, s.stride);
    let inv = T::ONE / T::from_f64((k * k) as f64);
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .with_min_len(min_len())
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
        .with_min_len(min_len())
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
