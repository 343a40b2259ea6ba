//! Per-sample gradient norms, clip factors and fused clip-and-accumulate on the CPU: the
//! reference twins of `kernels/clip.cu` (GPU: `crate::cuda::clip` with the `cuda` feature).
//!
//! DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Algorithm 1)
//! clips each example's gradient g_i to L2 norm C: ḡ_i = g_i · min(1, C / ‖g_i‖), and sums the
//! clipped gradients. Opacus computes the factor as `min(1, C / (‖g_i‖ + 1e-6))`; so do we.
//!
//! The per-sample gradients are a row-major `[B, P]` matrix (row i = example i). Norms and sums
//! accumulate in a fixed order (norms: 16 f32 lanes per chunk of 8192, chunk sums in f64; sums:
//! rows in order in f32),
//! so the same input gives the same bits, run after run, whatever the thread count.

use crate::check;
use crate::dtype::GradElement;
use crate::{Error, Layout, Result};
use rayon::prelude::*;

/// Columns of the sum one task owns in [`clip_accumulate`] (16 KiB of f32 accumulators).
pub const ACC_TILE: usize = 32768;
/// Elements widened at a time for bf16/f16 inputs.
const WIDEN: usize = 1024;
/// Opacus's ε in the clip factor.
pub const CLIP_EPS: f32 = 1e-6;

#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn sumsq_f32(x: &[f32], acc: &mut [f32; 16]) {
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for k in 0..16 {
            acc[k] += c[k] * c[k];
        }
    }
    for (k, v) in it.remainder().iter().enumerate() {
        acc[k] += v * v;
    }
}

/// Elements per partial sum of squares (the GPU's `DPSGD_NORM_CHUNK`): each chunk is summed in
/// 16 f32 lanes, and the chunk sums are added in f64, so long rows (P in the millions) keep
/// ~1e-7 relative accuracy instead of the ~1e-5 of one running f32 sum.
const NORM_CHUNK: usize = 8192;

/// Σ x² of one chunk, in the fixed 16-lane order.
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn chunk_sumsq<T: GradElement>(x: &[T]) -> f32 {
    let mut acc = [0f32; 16];
    if let Some(xf) = T::as_f32(x) {
        sumsq_f32(xf, &mut acc);
    } else {
        let mut buf = [0f32; WIDEN];
        for c in x.chunks(WIDEN) {
            let b = &mut buf[..c.len()];
            T::widen(c, b);
            sumsq_f32(b, &mut acc);
        }
    }
    // Fixed pairwise order.
    let mut w = acc;
    let mut n = 16;
    while n > 1 {
        n /= 2;
        for k in 0..n {
            w[k] += w[k + n];
        }
    }
    w[0]
}

/// Σ x² of one segment of one row: chunk sums in a fixed order, accumulated in f64.
pub(crate) fn segment_sumsq<T: GradElement>(x: &[T]) -> f64 {
    x.chunks(NORM_CHUNK).map(|c| chunk_sumsq(c) as f64).sum()
}

/// Per-sample L2 norms, overall and per segment, in one pass over `grads`.
///
/// - `grads`: `[batch, P]` row-major, P = `layout.num_params()`.
/// - `norms[i] = ‖g_i‖₂ = sqrt(Σ_s seg_norms[i, s]²)`, length `batch`.
/// - `seg_norms[i * S + s] = ‖g_i[segment s]‖₂`, length `batch · S` (S = segments).
///
/// Errors: lengths that do not match ([`Error::Shape`]); a row whose norm is NaN or ±Inf, i.e.
/// a NaN/Inf gradient or one too large for f32 ([`Error::NonFinite`], naming the row) — a
/// non-finite gradient is reported, never clipped into the sum.
pub fn per_sample_norms<T: GradElement>(
    grads: &[T],
    batch: usize,
    layout: &Layout,
    norms: &mut [f32],
    seg_norms: &mut [f32],
) -> Result<()> {
    check::norms_shapes(grads.len(), batch, layout, norms.len(), seg_norms.len())?;
    let p = layout.num_params();
    let s = layout.num_segments();
    if batch == 0 {
        return Ok(());
    }
    norms
        .par_iter_mut()
        .zip(seg_norms.par_chunks_mut(s))
        .zip(grads.par_chunks(p.max(1)))
        .for_each(|((n, sn), row)| {
            let mut total = 0f64;
            for (k, out) in sn.iter_mut().enumerate() {
                let sq = segment_sumsq(&row[layout.segment(k)]);
                total += sq;
                *out = sq.sqrt() as f32;
            }
            *n = total.sqrt() as f32;
        });
    check::finite_norms(norms)
}

/// Clip factors `factors[i] = min(1, C[i % S] / (norms[i] + 1e-6))` (Opacus's formula).
///
/// `norms` is `[B, S]` row-major and `max_norms` holds one bound C per segment (S = 1 for flat
/// clipping, where `norms` is just the `[B]` overall norms). Errors: any C not finite and > 0,
/// `norms.len()` not a multiple of S, or lengths that differ.
pub fn clip_factors(norms: &[f32], max_norms: &[f32], factors: &mut [f32]) -> Result<()> {
    check::factors_shapes(norms.len(), max_norms, factors.len())?;
    let s = max_norms.len();
    factors
        .par_chunks_mut(s)
        .zip(norms.par_chunks(s))
        .for_each(|(f, n)| {
            for k in 0..s {
                f[k] = (max_norms[k] / (n[k] + CLIP_EPS)).min(1.0);
            }
        });
    Ok(())
}

/// Clips rows in place: `g[i, j] *= factors[i]` for a row-major `[batch, P]` matrix (P =
/// `g.len() / batch`), e.g. with factors from [`clip_factors`]. GPU twin: `dpsgd_scale_rows`
/// in `kernels/clip.cu`. Errors: `g.len()` not a multiple of `batch`, or `factors.len() !=
/// batch`.
pub fn scale_rows(g: &mut [f32], batch: usize, factors: &[f32]) -> Result<()> {
    let p = check::scale_rows_shapes(g.len(), batch, factors.len())?;
    if batch == 0 || p == 0 {
        return Ok(());
    }
    g.par_chunks_mut(p)
        .zip(factors.par_iter())
        .for_each(|(row, &f)| {
            for x in row {
                *x *= f;
            }
        });
    Ok(())
}

/// Fused clip-and-accumulate: `sum[j] += Σ_i factors[i, seg(j)] · g[i, j]` over rows i in order.
///
/// Reads the `[batch, P]` matrix once and allocates no `[B, P]` temporary. `factors` is
/// `[batch, F]` with F = 1 (flat clipping: one factor per row) or F = S (per-layer clipping:
/// one factor per row and segment). The sum is *added to*, so several physical batches can
/// accumulate into one logical batch; zero it first for a fresh sum. With `batch == 0` it leaves
/// `sum` unchanged.
pub fn clip_accumulate<T: GradElement>(
    grads: &[T],
    batch: usize,
    layout: &Layout,
    factors: &[f32],
    sum: &mut [f32],
) -> Result<()> {
    let nf = check::accumulate_shapes(grads.len(), batch, layout, factors.len(), sum.len())?;
    let p = layout.num_params();
    if batch == 0 || p == 0 {
        return Ok(());
    }
    let offsets = layout.offsets();
    // Narrower tiles when P is small, so every thread gets several (the bits do not depend on
    // the width: each column sums its rows in order).
    let tile = (p / (rayon::current_num_threads() * 2))
        .clamp(256, ACC_TILE)
        .next_multiple_of(16);
    sum.par_chunks_mut(tile).enumerate().for_each(|(t, out)| {
        let c0 = t * tile;
        let c1 = c0 + out.len();
        // Segments that intersect [c0, c1): (segment, a, b) with a..b in absolute columns.
        let first = offsets.partition_point(|&o| o <= c0) - 1;
        let mut pieces = Vec::new();
        let mut seg = first;
        while seg + 1 < offsets.len() && offsets[seg] < c1 {
            let a = offsets[seg].max(c0);
            let b = offsets[seg + 1].min(c1);
            if a < b {
                pieces.push((seg, a, b));
            }
            seg += 1;
        }
        let mut buf = [0f32; ACC_TILE];
        let row = |r: usize| &grads[r * p..(r + 1) * p];
        let factor = |r: usize, seg: usize| factors[r * nf + if nf == 1 { 0 } else { seg }];
        for &(seg, a, b) in &pieces {
            let dst = &mut out[a - c0..b - c0];
            let mut r = 0;
            // Four rows per pass over the tile (a quarter of the accumulator traffic). Each
            // column still adds its rows in order, one rounding each: the same bits as one row
            // at a time.
            if T::as_f32(&grads[..0]).is_some() {
                while r + 4 <= batch {
                    let x = |k: usize| T::as_f32(&row(r + k)[a..b]).unwrap_or(&[]);
                    let f = [
                        factor(r, seg),
                        factor(r + 1, seg),
                        factor(r + 2, seg),
                        factor(r + 3, seg),
                    ];
                    axpy4(f, [x(0), x(1), x(2), x(3)], dst);
                    r += 4;
                }
            }
            for r in r..batch {
                let f = factor(r, seg);
                let src = &row(r)[a..b];
                if let Some(sf) = T::as_f32(src) {
                    axpy(f, sf, dst);
                } else {
                    let w = &mut buf[..b - a];
                    T::widen(src, w);
                    axpy(f, w, dst);
                }
            }
        }
    });
    Ok(())
}

#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
pub(crate) fn axpy4(f: [f32; 4], x: [&[f32]; 4], y: &mut [f32]) {
    let n = y.len();
    let (x0, x1, x2, x3) = (&x[0][..n], &x[1][..n], &x[2][..n], &x[3][..n]);
    for i in 0..n {
        let mut v = y[i];
        v += f[0] * x0[i];
        v += f[1] * x1[i];
        v += f[2] * x2[i];
        v += f[3] * x3[i];
        y[i] = v;
    }
}

#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
pub(crate) fn axpy(f: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += f * *xi;
    }
}

/// Unfused reference pipeline (for tests and the fusion benchmark): materialises the clipped
/// `[B, P]` matrix, then reduces it. Same result as [`clip_accumulate`] up to rounding.
pub fn clip_then_sum_unfused(
    grads: &[f32],
    batch: usize,
    p: usize,
    factors: &[f32],
    sum: &mut [f32],
) -> Result<()> {
    if grads.len() != batch * p || factors.len() != batch || sum.len() != p {
        return Err(Error::shape(
            "clip_then_sum_unfused",
            "grads must be [B, P], factors [B], sum [P]",
        ));
    }
    let mut clipped = grads.to_vec();
    clipped
        .par_chunks_mut(p.max(1))
        .zip(factors.par_iter())
        .for_each(|(row, &f)| row.iter_mut().for_each(|x| *x *= f));
    for row in clipped.chunks(p.max(1)) {
        for (s, x) in sum.iter_mut().zip(row) {
            *s += *x;
        }
    }
    Ok(())
}

/// Per-example **L1** clipping and sum, for the Laplace mechanism: `sum += Σ_i f_i·g_i` with
/// `f_i = min(1, C / (‖g_i‖₁·(1 + 2⁻²⁰)))`, so that every clipped row has L1 norm ≤ C even
/// after the f32 rounding of `f_i·g_ij` (each product is within 2⁻²⁴ of exact, and the factor
/// keeps a 2⁻²⁰ relative margin). Then the sum of a Poisson-sampled batch has L1 sensitivity C
/// under add/remove one example — the assumption of
/// [`epsilon_pld_laplace`](crate::accounting::epsilon_pld_laplace). (The L1 ball is the Laplace
/// mechanism's sensitivity ball: Dwork, McSherry, Nissim, Smith, TCC 2006; with L2 clipping
/// the L1 sensitivity could be √P·C.)
///
/// `rows` is `[batch, P]` row-major, `P = sum.len()`; `norms` gets each row's L1 norm (f64
/// accumulation, `batch` values). Errors: lengths ([`Error::Shape`]), `max_norm` not finite
/// and > 0 ([`Error::InvalidParameter`]), a row with a NaN/Inf value ([`Error::NonFinite`],
/// naming the row) — all before `sum` is changed. GPU twin: pending (`kernels/clip.cu` has
/// only the L2 norms).
pub fn clip_l1_accumulate(
    rows: &[f32],
    batch: usize,
    max_norm: f32,
    norms: &mut [f32],
    sum: &mut [f32],
) -> Result<()> {
    let p = sum.len();
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::invalid(
            "max_norm",
            max_norm,
            "a finite L1 clipping bound C > 0",
        ));
    }
    if p == 0 || rows.len() != batch * p || norms.len() != batch {
        return Err(Error::shape(
            "clip_l1_accumulate",
            format!(
                "rows has {} values, norms {}, for batch {batch} × P {p}",
                rows.len(),
                norms.len()
            ),
        ));
    }
    let l1: Vec<f64> = rows
        .par_chunks(p)
        .map(|r| r.iter().map(|v| v.abs() as f64).sum::<f64>())
        .collect();
    if let Some(i) = l1.iter().position(|n| !n.is_finite()) {
        return Err(Error::NonFinite {
            what: "per-sample gradient",
            detail: format!("row {i} has a NaN or infinite value (L1 norm {})", l1[i]),
        });
    }
    let margin = 1.0 + (2f64).powi(-20);
    let factors: Vec<f32> = l1
        .iter()
        .map(|&n| {
            if n * margin <= max_norm as f64 {
                1.0
            } else {
                (max_norm as f64 / (n * margin)) as f32
            }
        })
        .collect();
    for (o, n) in norms.iter_mut().zip(&l1) {
        *o = *n as f32;
    }
    sum.par_chunks_mut(ACC_TILE)
        .enumerate()
        .for_each(|(t, acc)| {
            let c0 = t * ACC_TILE;
            for (i, f) in factors.iter().enumerate() {
                let r = &rows[i * p + c0..i * p + c0 + acc.len()];
                for (a, v) in acc.iter_mut().zip(r) {
                    *a += f * v;
                }
            }
        });
    Ok(())
}
