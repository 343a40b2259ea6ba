//! Where the CPU layer kernels write parameter gradients, and how they split a batch across
//! threads.
//!
//! Every layer with parameters takes a [`ParamGrad`]:
//! - [`ParamGrad::PerSample`]: example i's gradient of the layer's parameters (weight then
//!   bias, PyTorch order) is written to `rows[i·stride + offset ..][..num_params]` — row i of
//!   the `[B, P]` per-sample gradient matrix that [`crate::ops::clip_and_accumulate`] clips and
//!   sums, at the layer's segment offset (overwritten, not accumulated);
//! - [`ParamGrad::Sum`]: the ordinary gradient Σ_i g_i (for non-private training and a GAN's
//!   generator), overwritten or accumulated;
//! - [`ParamGrad::None`]: no parameter gradient (e.g. only the gradient w.r.t. the input).
//!
//! The kernels split the batch into contiguous chunks, one per scratch region (the number of
//! chunks is `scratch.len() / per_chunk_scratch`, at most the batch size), and run the chunks
//! in parallel with `rayon::join` (no heap allocation). A chunk's partial sum lives in its
//! scratch region; the partial sums are added in chunk order, so a given scratch length gives
//! the same bits on every run.
//!
//! Inside `serial` (on the current thread) every kernel runs as one chunk on that thread:
//! the depth-first schedule of [`crate::nn::Sequential`] parallelises across groups of
//! examples itself and runs each layer on a small, cache-resident group.

use super::gemm::Real;
use crate::{Error, Result};
use std::cell::Cell;
use std::ops::Range;

thread_local! {
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the CPU layer kernels single-threaded on this thread (restoring the previous
/// mode afterwards, also when rayon runs another task on this thread meanwhile).
pub(crate) fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

/// Whether this thread is inside [`serial`].
pub(crate) fn is_serial() -> bool {
    SERIAL.with(|s| s.get())
}

/// The `with_min_len` for the kernels' rayon iterators: no splitting inside [`serial`].
pub(crate) fn min_len() -> usize {
    if is_serial() {
        usize::MAX
    } else {
        1
    }
}

/// The destination of a layer's parameter gradients (see the [module docs](self)).
#[derive(Debug)]
pub enum ParamGrad<'a, T> {
    /// No parameter gradient.
    None,
    /// Per-sample gradients into a row-major `[B, stride]` matrix at column `offset`.
    PerSample {
        /// The matrix, at least `batch · stride` long (extra rows are not touched).
        rows: &'a mut [T],
        /// Row length P (the model's parameter count).
        stride: usize,
        /// Column of the layer's first parameter (its segment offset in the flat vector).
        offset: usize,
    },
    /// The gradient summed over the batch, `num_params` long.
    Sum {
        /// The summed gradient (weight then bias).
        grad: &'a mut [T],
        /// `true`: add to `grad`; `false`: overwrite it.
        accumulate: bool,
    },
}

impl<T> ParamGrad<'_, T> {
    /// A shorter-lived reborrow, to pass the same destination to several calls.
    pub fn reborrow(&mut self) -> ParamGrad<'_, T> {
        match self {
            ParamGrad::None => ParamGrad::None,
            ParamGrad::PerSample {
                rows,
                stride,
                offset,
            } => ParamGrad::PerSample {
                rows,
                stride: *stride,
                offset: *offset,
            },
            ParamGrad::Sum { grad, accumulate } => ParamGrad::Sum {
                grad,
                accumulate: *accumulate,
            },
        }
    }

    /// Whether any parameter gradient is wanted.
    pub fn is_none(&self) -> bool {
        matches!(self, ParamGrad::None)
    }

    /// Extra scratch per chunk that this destination needs on top of the kernel's own
    /// (a partial sum of `np` values for [`ParamGrad::Sum`], else 0).
    pub fn extra_scratch(&self, np: usize) -> usize {
        match self {
            ParamGrad::Sum { .. } => np,
            _ => 0,
        }
    }
}

/// One chunk's view of a [`ParamGrad`] (crate-internal).
pub(crate) enum GradOut<'a, T> {
    None,
    Rows {
        rows: &'a mut [T],
        stride: usize,
        offset: usize,
    },
    Acc {
        acc: &'a mut [T],
        started: bool,
    },
}

impl<T: Real> GradOut<'_, T> {
    /// The `np` gradient values of local example `i` and the β to write them with: 0 to
    /// overwrite, 1 to accumulate into a partial sum. `None` when no gradient is wanted.
    #[inline]
    pub(crate) fn region(&mut self, i: usize, np: usize) -> Option<(&mut [T], T)> {
        match self {
            GradOut::None => None,
            GradOut::Rows {
                rows,
                stride,
                offset,
            } => {
                let s = i * *stride + *offset;
                Some((&mut rows[s..s + np], T::ZERO))
            }
            GradOut::Acc { acc, started } => {
                let beta = if *started { T::ONE } else { T::ZERO };
                *started = true;
                Some((&mut acc[..np], beta))
            }
        }
    }

    /// The chunk's partial sum and the β to write it with, for a kernel that computes the
    /// chunk's summed gradient in one product; `None` unless this is a partial sum.
    #[inline]
    pub(crate) fn sum_region(&mut self, np: usize) -> Option<(&mut [T], T)> {
        match self {
            GradOut::Acc { acc, started } => {
                let beta = if *started { T::ONE } else { T::ZERO };
                *started = true;
                Some((&mut acc[..np], beta))
            }
            _ => None,
        }
    }

    /// Whether this is a chunk's partial sum (a [`ParamGrad::Sum`]).
    #[inline]
    pub(crate) fn is_sum(&self) -> bool {
        matches!(self, GradOut::Acc { .. })
    }

    /// Whether a gradient is wanted.
    #[inline]
    pub(crate) fn wanted(&self) -> bool {
        !matches!(self, GradOut::None)
    }
}

/// Checks that `len` is exactly `want` ([`Error::Shape`] naming `what` otherwise).
pub(crate) fn check_len(op: &'static str, what: &str, len: usize, want: usize) -> Result<()> {
    if len != want {
        return Err(Error::shape(
            op,
            format!("`{what}` has {len} elements, expected {want}"),
        ));
    }
    Ok(())
}

/// Validates `grad` for `batch` examples of `np` parameters.
pub(crate) fn check_grad<T>(
    op: &'static str,
    grad: &ParamGrad<'_, T>,
    batch: usize,
    np: usize,
) -> Result<()> {
    match grad {
        ParamGrad::None => Ok(()),
        ParamGrad::PerSample {
            rows,
            stride,
            offset,
        } => {
            if offset.checked_add(np).is_none_or(|e| e > *stride) {
                return Err(Error::shape(
                    op,
                    format!("segment {offset}..{offset}+{np} does not fit in rows of {stride}"),
                ));
            }
            if batch.checked_mul(*stride).is_none_or(|n| rows.len() < n) {
                return Err(Error::shape(
                    op,
                    format!(
                        "per-sample matrix has {} elements, need {batch} rows × {stride}",
                        rows.len()
                    ),
                ));
            }
            Ok(())
        }
        ParamGrad::Sum { grad, .. } => check_len(op, "grad", grad.len(), np),
    }
}

/// Number of chunks that `scratch_len` elements of scratch give for `per_chunk` elements each
/// (at most `batch`, at least 1 when `per_chunk` is 0). Errors if not even one fits.
pub(crate) fn chunks_for(
    op: &'static str,
    batch: usize,
    scratch_len: usize,
    per_chunk: usize,
) -> Result<usize> {
    let avail = scratch_len.checked_div(per_chunk).unwrap_or(usize::MAX);
    if avail == 0 {
        return Err(Error::shape(
            op,
            format!("scratch has {scratch_len} elements, need at least {per_chunk} (one chunk)"),
        ));
    }
    Ok(avail.min(batch).max(1))
}

/// The runner of the single-threaded group kernels (the depth-first schedule's): `f` gets the
/// whole of `out` and a [`GradOut`] over `grad` — per-sample rows as they are, a sum written
/// straight into the caller's gradient (β = 1 when `accumulate`, so no partial sum to add).
/// `grad` must have been validated with [`check_grad`].
pub(crate) fn run_single<T, F>(out: Option<&mut [T]>, grad: ParamGrad<'_, T>, f: F)
where
    T: Real,
    F: FnOnce(Option<&mut [T]>, &mut GradOut<'_, T>),
{
    let mut g = match grad {
        ParamGrad::None => GradOut::None,
        ParamGrad::PerSample {
            rows,
            stride,
            offset,
        } => GradOut::Rows {
            rows,
            stride,
            offset,
        },
        ParamGrad::Sum { grad, accumulate } => GradOut::Acc {
            acc: grad,
            started: accumulate,
        },
    };
    f(out, &mut g);
    if let GradOut::Acc {
        acc,
        started: false,
    } = g
    {
        // Nothing was written (no examples): an overwritten sum is zero.
        acc.fill(T::ZERO);
    }
}

/// The chunk runner: splits examples `0..batch` into `chunks` contiguous ranges and runs `f`
/// on each in parallel with the chunk's slice of `out` (`out_per` elements per example), its
/// view of `grad`, and its `work` elements of scratch. Afterwards reduces per-chunk partial
/// sums into a [`ParamGrad::Sum`] in chunk order. `scratch` must hold `chunks · (work +
/// grad.extra_scratch(np))` elements and `grad` must have been validated with [`check_grad`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_chunks<T, F>(
    batch: usize,
    chunks: usize,
    out: Option<(&mut [T], usize)>,
    mut grad: ParamGrad<'_, T>,
    np: usize,
    scratch: &mut [T],
    work: usize,
    f: &F,
) where
    T: Real,
    F: Fn(Range<usize>, Option<&mut [T]>, &mut GradOut<'_, T>, &mut [T]) + Sync,
{
    if batch == 0 {
        if let ParamGrad::Sum {
            grad,
            accumulate: false,
        } = grad
        {
            grad.fill(T::ZERO);
        }
        return;
    }
    let chunks = if is_serial() { 1 } else { chunks.max(1) };
    let per = batch.div_ceil(chunks);
    let chunks = batch.div_ceil(per);
    let extra = grad.extra_scratch(np);
    let need = work + extra;
    let scratch = &mut scratch[..chunks * need];
    let (out, out_per) = match out {
        Some((o, per_ex)) => (Some(&mut o[..batch * per_ex]), per_ex),
        None => (None, 0),
    };
    if chunks == 1 {
        if let ParamGrad::Sum { grad, accumulate } = grad {
            // One chunk: its sum goes straight into the caller's gradient (β = 1 when
            // accumulating), without a partial sum to add afterwards.
            let mut g = GradOut::Acc {
                acc: &mut grad[..np],
                started: accumulate,
            };
            f(0..batch, out, &mut g, &mut scratch[..work]);
            if !accumulate && !matches!(g, GradOut::Acc { started: true, .. }) {
                grad[..np].fill(T::ZERO);
            }
            return;
        }
    }
    let view = match &mut grad {
        ParamGrad::None => GradOut::None,
        ParamGrad::PerSample {
            rows,
            stride,
            offset,
        } => GradOut::Rows {
            rows: &mut rows[..batch * *stride],
            stride: *stride,
            offset: *offset,
        },
        // Placeholder: each chunk gets its own accumulator from the scratch.
        ParamGrad::Sum { .. } => GradOut::Acc {
            acc: &mut [],
            started: false,
        },
    };
    let ctx = Ctx {
        batch,
        per,
        need,
        work,
        out_per,
        f,
    };
    split(&ctx, 0..chunks, out, view, scratch);
    if let ParamGrad::Sum { grad, accumulate } = grad {
        if !accumulate {
            grad.fill(T::ZERO);
        }
        for c in 0..chunks {
            let acc = &scratch[c * need + work..c * need + work + np];
            for (g, a) in grad.iter_mut().zip(acc) {
                *g += *a;
            }
        }
    }
}

struct Ctx<'f, F> {
    batch: usize,
    per: usize,
    need: usize,
    work: usize,
    out_per: usize,
    f: &'f F,
}

fn split<T, F>(
    ctx: &Ctx<'_, F>,
    chunks: Range<usize>,
    out: Option<&mut [T]>,
    grad: GradOut<'_, T>,
    scratch: &mut [T],
) where
    T: Real,
    F: Fn(Range<usize>, Option<&mut [T]>, &mut GradOut<'_, T>, &mut [T]) + Sync,
{
    let first_ex = chunks.start * ctx.per;
    if chunks.len() == 1 {
        let ex = first_ex..((chunks.start + 1) * ctx.per).min(ctx.batch);
        let (work, acc) = scratch.split_at_mut(ctx.work);
        let mut g = match grad {
            GradOut::Acc { .. } => GradOut::Acc {
                acc,
                started: false,
            },
            other => other,
        };
        (ctx.f)(ex, out, &mut g, work);
        if let GradOut::Acc {
            acc,
            started: false,
        } = g
        {
            acc.fill(T::ZERO);
        }
        return;
    }
    let mid = chunks.start + chunks.len() / 2;
    let mid_ex = mid * ctx.per;
    let n_left = mid_ex - first_ex;
    let (o1, o2) = match out {
        Some(o) => {
            let (a, b) = o.split_at_mut(n_left * ctx.out_per);
            (Some(a), Some(b))
        }
        None => (None, None),
    };
    let (g1, g2) = match grad {
        GradOut::None => (GradOut::None, GradOut::None),
        GradOut::Rows {
            rows,
            stride,
            offset,
        } => {
            let (a, b) = rows.split_at_mut(n_left * stride);
            (
                GradOut::Rows {
                    rows: a,
                    stride,
                    offset,
                },
                GradOut::Rows {
                    rows: b,
                    stride,
                    offset,
                },
            )
        }
        GradOut::Acc { .. } => (
            GradOut::Acc {
                acc: &mut [],
                started: false,
            },
            GradOut::Acc {
                acc: &mut [],
                started: false,
            },
        ),
    };
    let (s1, s2) = scratch.split_at_mut((mid - chunks.start) * ctx.need);
    rayon::join(
        || split(ctx, chunks.start..mid, o1, g1, s1),
        || split(ctx, mid..chunks.end, o2, g2, s2),
    );
}
