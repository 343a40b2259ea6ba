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

/// Values of the flat stride-1 kernels' stack buffers: up to this many values of
/// consecutive planes are pooled at once.
const FLAT: usize = 4096;

/// Stride-1 planes of up to [`FLAT`] values take the flat kernels: a run of consecutive planes
/// (contiguous in NCHW) is seen as one tall image of width `w`, and output `(c, oy, ox)` is
/// computed at `j = (c·h + oy)·w + ox` (the `k − 1` columns past `ow` of each row, and the
/// `k − 1` rows past `oh` of each plane, whose windows straddle two planes, are computed and
/// dropped), so every tap is one long contiguous compare-and-blend loop over the whole run
/// instead of `oh` loops of `ow` per plane: they vectorise fully.
#[inline(always)]
fn flat(h: usize, w: usize, st: usize) -> bool {
    st == 1 && h * w <= FLAT
}

/// Planes per flat run.
#[inline(always)]
fn flat_planes(h: usize, w: usize) -> usize {
    (FLAT / (h * w)).max(1)
}

/// Values of the flat layout of `np` planes: up to the last valid output.
#[inline(always)]
fn flat_len(np: usize, h: usize, w: usize, oh: usize, ow: usize) -> usize {
    ((np - 1) * h + oh - 1) * w + ow
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

/// Max-pool forward of a run of `np` consecutive stride-1 planes in the flat layout (see
/// [`flat`]): `xp` is `np · h · w` values, `yp` their `np · oh · ow` outputs.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn max_planes_forward_flat<T: Real>(
    xp: &[T],
    yp: &mut [T],
    h: usize,
    w: usize,
    k: usize,
    oh: usize,
    ow: usize,
    buf: &mut [T; FLAT],
) {
    let np = yp.len() / (oh * ow);
    let m = &mut buf[..flat_len(np, h, w, oh, ow)];
    max_flat(xp, w, k, m);
    for (c, yc) in yp.chunks_exact_mut(oh * ow).enumerate() {
        for (oy, yr) in yc.chunks_exact_mut(ow).enumerate() {
            let j = (c * h + oy) * w;
            yr.copy_from_slice(&m[j..j + ow]);
        }
    }
}

/// Max-pool forward of one channel plane (not a flat one).
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn max_plane_forward<T: Real>(xc: &[T], yc: &mut [T], w: usize, k: usize, st: usize, ow: usize) {
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
#[allow(clippy::too_many_arguments)]
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn max_plane_backward<T: Real>(
    xc: &[T],
    yc: Option<&[T]>,
    dyc: &[T],
    dxc: &mut [T],
    w: usize,
    k: usize,
    st: usize,
    ow: usize,
) {
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

/// The flat stride-1 backward of a run of `np` consecutive planes (see [`flat`]): the maxima
/// (the forward's output, or recomputed) and the gradient still to route laid out at
/// `(c·h + oy)·w + ox`, zero at the dropped positions; then per tap one long masked add.
/// Returns false, having written nothing, when the run holds a NaN maximum (the caller's
/// scalar path routes it, plane by plane).
#[allow(clippy::too_many_arguments)]
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn max_planes_backward_flat<T: Real>(
    xp: &[T],
    yp: Option<&[T]>,
    dyp: &[T],
    dxp: &mut [T],
    h: usize,
    w: usize,
    k: usize,
    oh: usize,
    ow: usize,
    bufs: &mut ([T; FLAT], [T; FLAT]),
) -> bool {
    let np = dyp.len() / (oh * ow);
    let len = flat_len(np, h, w, oh, ow);
    let (m, rem) = (&mut bufs.0[..len], &mut bufs.1[..len]);
    match yp {
        Some(yp) => {
            m.fill(T::ZERO);
            for (c, yc) in yp.chunks_exact(oh * ow).enumerate() {
                for (oy, yr) in yc.chunks_exact(ow).enumerate() {
                    let j = (c * h + oy) * w;
                    m[j..j + ow].copy_from_slice(yr);
                }
            }
        }
        None => {
            max_flat(xp, w, k, m);
            // The dropped positions route nothing (and hold no stale NaN): maximum 0.
            for (j, v) in m.iter_mut().enumerate() {
                let (oy, ox) = ((j / w) % h, j % w);
                if oy >= oh || ox >= ow {
                    *v = T::ZERO;
                }
            }
        }
    }
    if m.iter().fold(false, |a, v| a | v.is_nan()) {
        return false;
    }
    rem.fill(T::ZERO);
    for (c, dyc) in dyp.chunks_exact(oh * ow).enumerate() {
        for (oy, dr) in dyc.chunks_exact(ow).enumerate() {
            let j = (c * h + oy) * w;
            rem[j..j + ow].copy_from_slice(dr);
        }
    }
    dxp.fill(T::ZERO);
    for ki in 0..k {
        for kj in 0..k {
            let base = ki * w + kj;
            let xr = &xp[base..base + len];
            let d = &mut dxp[base..base + len];
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
            if flat(h, w, st) {
                let mut buf = [T::ZERO; FLAT];
                let f = flat_planes(h, w);
                for (yr, xr) in yp.chunks_mut(f * oh * ow).zip(xp.chunks(f * h * w)) {
                    max_planes_forward_flat(xr, yr, h, w, k, oh, ow, &mut buf);
                }
            } else {
                for (yc, xc) in yp.chunks_exact_mut(oh * ow).zip(xp.chunks_exact(h * w)) {
                    max_plane_forward(xc, yc, w, k, st, ow);
                }
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
    let per_plane = |dxp: &mut [T], xp: &[T], dyp: &[T], yp: Option<&[T]>| {
        for (j, ((dxc, xc), dyc)) in dxp
            .chunks_exact_mut(h * w)
            .zip(xp.chunks_exact(h * w))
            .zip(dyp.chunks_exact(oh * ow))
            .enumerate()
        {
            let yc = yp.map(|y| &y[j * oh * ow..(j + 1) * oh * ow]);
            max_plane_backward(xc, yc, dyc, dxc, w, k, st, ow);
        }
    };
    let run = |((dxp, xp), dyp): ((&mut [T], &[T]), &[T]), yp: Option<&[T]>| {
        if !flat(h, w, st) {
            return per_plane(dxp, xp, dyp, yp);
        }
        let mut bufs = ([T::ZERO; FLAT], [T::ZERO; FLAT]);
        let f = flat_planes(h, w);
        for (r, ((dxr, xr), dyr)) in dxp
            .chunks_mut(f * h * w)
            .zip(xp.chunks(f * h * w))
            .zip(dyp.chunks(f * oh * ow))
            .enumerate()
        {
            let n = dyr.len();
            let yr = yp.map(|y| &y[r * f * oh * ow..r * f * oh * ow + n]);
            if !max_planes_backward_flat(xr, yr, dyr, dxr, h, w, k, oh, ow, &mut bufs) {
                per_plane(dxr, xr, dyr, yr);
            }
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
