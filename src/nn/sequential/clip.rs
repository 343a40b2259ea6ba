//! The fused clipping of [`super::Grads::ClippedSum`] in the depth-first CPU backward.
//!
//! DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Algorithm 1)
//! needs `Σ_i g_i · min(1, C / (‖g_i‖ + 1e-6))` (Opacus's factor). The depth-first backward
//! runs every layer on a small group of examples; once the group's gradients are known, its
//! norms, factors and clipped sum are computed on the spot, in cache, and only a P-long
//! partial sum per thread survives the group. Two kinds of parameter tensors:
//!
//! - **Rows**: convolutions, GroupNorm, … write each example's gradient into a compact row
//!   (only these tensors' columns), whose squared norms are summed as
//!   [`crate::cpu::clip::per_sample_norms`] sums them, and which are added with their factors.
//! - **Ghost** (every layer whose `LayerKind::ghost` is `Some`: `Linear`, when the layout's
//!   segments are whole tensors): the
//!   per-example weight gradient `dy_i x_iᵀ` is never formed. Its squared Frobenius norm is
//!   `‖dy_i‖²·‖x_i‖²` (Goodfellow, "Efficient Per-Example Gradient Computations", 2015; the
//!   "ghost norm" of Li et al., ICLR 2022, and Bu et al.'s mixed ghost clipping, 2022), and the
//!   clipped sum of the group is one GEMM, `(f ⊙ dY)ᵀ · X`. The bias gradient is `dy_i` itself.
//!
//! Norms and factors equal those of the `[B, P]` path up to f32/f64 rounding (about 1e-7
//! relative); the sum is added in another order (per thread, then the threads in order).

use super::cpu::{ClipTarget, MAX_LAYERS};
use super::Sequential;
use crate::cpu::clip::{axpy, axpy4, segment_sumsq, CLIP_EPS};
use crate::cpu::gemm::gemm;
use crate::Error;

/// Parameter tensors (or layout segments) the plan handles.
pub(super) const MAX_TENSORS: usize = 2 * MAX_LAYERS;

/// A `Linear` layer clipped by its ghost norm.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ghost {
    /// Offset of its output gradient in an example's block of the ghost store.
    off: usize,
    outf: usize,
    inf: usize,
    bias: bool,
}

/// How the clipped backward handles each layer and tensor of one model and layout.
pub(super) struct ClipPlan<'a> {
    bounds: &'a [f32],
    /// Per layer: `Some` for a ghost-clipped `Linear`.
    ghost: [Option<Ghost>; MAX_LAYERS],
    /// Per layer: where its parameters start in the compact row (row-clipped layers).
    row_off: [usize; MAX_LAYERS],
    /// Per layer: its first tensor.
    t_first: [usize; MAX_LAYERS],
    /// Values of one compact row.
    pub(super) p_rows: usize,
    /// Values of one example's block of the ghost store (Σ outf over ghost layers).
    pub(super) g_len: usize,
    /// Tensors (or, when the layout does not follow the tensors, layout segments).
    n_t: usize,
    /// Per tensor: its columns in P.
    t_range: [(usize, usize); MAX_TENSORS],
    /// Per tensor: where it starts in the compact row (`None`: ghost).
    t_row: [Option<usize>; MAX_TENSORS],
    /// Per tensor: its layout segment.
    t_seg: [usize; MAX_TENSORS],
    /// Rows per example (augmentation multiplicity K; 1 normally).
    views: usize,
}

impl<'a> ClipPlan<'a> {
    /// The plan for `model` and `target` (`None` when the layout has more segments than the
    /// depth-first schedule handles and they do not follow the tensors).
    pub(super) fn new(model: &Sequential, target: &ClipTarget<'a>) -> Option<Self> {
        let layout = target.layout;
        let p = model.num_params();
        let mut plan = ClipPlan {
            bounds: target.bounds,
            ghost: [None; MAX_LAYERS],
            row_off: [0; MAX_LAYERS],
            t_first: [0; MAX_LAYERS],
            p_rows: 0,
            g_len: 0,
            n_t: 0,
            t_range: [(0, 0); MAX_TENSORS],
            t_row: [None; MAX_TENSORS],
            t_seg: [0; MAX_TENSORS],
            views: target.views.max(1),
        };
        let infos = model.param_info();
        let offsets = layout.offsets();
        let aligned = infos.len() <= MAX_TENSORS
            && offsets
                .iter()
                .all(|&o| o == p || infos.iter().any(|t| t.range.start == o));
        if !aligned {
            // Full rows, one "tensor" per layout segment.
            let s = layout.num_segments();
            if s > MAX_TENSORS {
                return None;
            }
            for (l, r) in model.ranges.iter().enumerate() {
                plan.row_off[l] = r.start;
            }
            for k in 0..s {
                let r = layout.segment(k);
                plan.t_range[k] = (r.start, r.end);
                plan.t_row[k] = Some(r.start);
                plan.t_seg[k] = k;
            }
            plan.n_t = s;
            plan.p_rows = p;
            return Some(plan);
        }
        let mut t = 0;
        for (l, (kind, r)) in model.kinds.iter().zip(&model.ranges).enumerate() {
            plan.t_first[l] = t;
            if r.is_empty() {
                continue;
            }
            if let Some(g) = kind.ghost() {
                plan.ghost[l] = Some(Ghost {
                    off: plan.g_len,
                    outf: g.outf,
                    inf: g.inf,
                    bias: g.bias,
                });
                plan.g_len += g.outf;
            } else {
                plan.row_off[l] = plan.p_rows;
                plan.p_rows += r.len();
            }
            while t < infos.len() && infos[t].range.start < r.end {
                let tr = &infos[t].range;
                plan.t_range[t] = (tr.start, tr.end);
                plan.t_row[t] = plan.ghost[l]
                    .is_none()
                    .then(|| plan.row_off[l] + tr.start - r.start);
                plan.t_seg[t] = offsets.partition_point(|&o| o <= tr.start) - 1;
                t += 1;
            }
        }
        plan.n_t = t;
        Some(plan)
    }

    /// Rows per example (K).
    pub(super) fn views(&self) -> usize {
        self.views
    }

    /// Factors per example (1: flat clipping; S: per layer).
    pub(super) fn nf(&self) -> usize {
        self.bounds.len()
    }

    /// Tensors per example in the squared-norm scratch.
    pub(super) fn n_tensors(&self) -> usize {
        self.n_t
    }

    /// Whether layer `l` is ghost-clipped (its backward then writes no rows).
    pub(super) fn is_ghost(&self, l: usize) -> bool {
        self.ghost[l].is_some()
    }

    /// Where layer `l`'s parameters start in the compact row.
    pub(super) fn row_offset(&self, l: usize) -> usize {
        self.row_off[l]
    }

    /// After ghost layer `l`'s backward on a group of `m` examples (input `x`, `[m, inf]`;
    /// output gradient `dy`, `[m, outf]`): keeps `dy` in the ghost store `gdy` (`[m, g_len]`)
    /// and writes the squared norms of the layer's tensors into `tsq` (`[m, n_t]`).
    pub(super) fn record_ghost(
        &self,
        l: usize,
        m: usize,
        x: &[f32],
        dy: &[f32],
        gdy: &mut [f32],
        tsq: &mut [f64],
    ) {
        let Some(g) = self.ghost[l] else { return };
        let t = self.t_first[l];
        let kv = self.views;
        if kv > 1 {
            // Example e's averaged weight gradient is (1/K) Σ_j dy_j x_jᵀ over its K rows:
            // ‖·‖² = (1/K²) Σ_{j,j'} (dy_j · dy_j')(x_j · x_j'); its bias gradient's is
            // ‖Σ_j dy_j‖² / K². Written at example e's row of `tsq`.
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter().zip(b).map(|(&u, &v)| u as f64 * v as f64).sum()
            };
            let kk = (kv * kv) as f64;
            for e in 0..m / kv {
                let mut w2 = 0f64;
                for j in 0..kv {
                    let r = e * kv + j;
                    let (dj, xj) = (
                        &dy[r * g.outf..(r + 1) * g.outf],
                        &x[r * g.inf..(r + 1) * g.inf],
                    );
                    w2 += dot(dj, dj) * dot(xj, xj);
                    for jj in j + 1..kv {
                        let s = e * kv + jj;
                        let dd = dot(dj, &dy[s * g.outf..(s + 1) * g.outf]);
                        w2 += 2.0 * dd * dot(xj, &x[s * g.inf..(s + 1) * g.inf]);
                    }
                }
                let row = &mut tsq[e * self.n_t..];
                row[t] = w2.max(0.0) / kk;
                if g.bias {
                    row[t + 1] = (0..g.outf)
                        .map(|o| {
                            let s: f64 =
                                (0..kv).map(|j| dy[(e * kv + j) * g.outf + o] as f64).sum();
                            s * s
                        })
                        .sum::<f64>()
                        / kk;
                }
            }
            for j in 0..m {
                let d = &dy[j * g.outf..(j + 1) * g.outf];
                gdy[j * self.g_len + g.off..][..g.outf].copy_from_slice(d);
            }
            return;
        }
        for j in 0..m {
            let d = &dy[j * g.outf..(j + 1) * g.outf];
            gdy[j * self.g_len + g.off..][..g.outf].copy_from_slice(d);
            let d2: f64 = d.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let x2: f64 = x[j * g.inf..(j + 1) * g.inf]
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum();
            let row = &mut tsq[j * self.n_t..];
            row[t] = d2 * x2;
            if g.bias {
                row[t + 1] = d2;
            }
        }
    }

    /// Clips a group of `m` examples (rows `first_row ..` of the batch) into `acc`: squared
    /// norms of the row tensors from the compact rows `rows` (`[m, p_rows]`), the ghost layers'
    /// already in `tsq`; factors into `factors` (`[m, F]`); then `acc += Σ_j clip(g_j)` —
    /// rows with [`axpy4`], ghost weights as one GEMM against the layer's input `input(l)`
    /// (`[m, inf]`). With `norms` (`[m, F]`) the norms clipped by are written there too.
    /// Errors (nothing added) on a non-finite norm, naming the example.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn clip_group<'x>(
        &self,
        m: usize,
        first_row: usize,
        rows: &[f32],
        gdy: &mut [f32],
        tsq: &mut [f64],
        factors: &mut [f32],
        input: impl Fn(usize) -> &'x [f32],
        acc: &mut [f32],
        mut norms: Option<&mut [f32]>,
    ) -> crate::Result<()> {
        let nf = self.bounds.len();
        let (pr, nt) = (self.p_rows, self.n_t);
        let kv = self.views;
        // With K rows per example, `j` below is an example (rows j·K .. j·K + K) whose
        // gradient is its rows' mean; with K = 1, a row.
        for j in 0..m / kv {
            let sq = &mut tsq[j * nt..(j + 1) * nt];
            for (t, q) in sq.iter_mut().enumerate() {
                if let Some(c) = self.t_row[t] {
                    let (a, b) = self.t_range[t];
                    *q = if kv == 1 {
                        segment_sumsq(&rows[j * pr + c..j * pr + c + (b - a)])
                    } else {
                        let kk = (kv * kv) as f64;
                        (0..b - a)
                            .map(|i| {
                                let s: f64 = (0..kv)
                                    .map(|u| rows[(j * kv + u) * pr + c + i] as f64)
                                    .sum();
                                s * s
                            })
                            .sum::<f64>()
                            / kk
                    };
                }
            }
            let mut seg = [0f64; MAX_TENSORS];
            let mut total = 0f64;
            for t in 0..nt {
                seg[self.t_seg[t]] += sq[t];
                total += sq[t];
            }
            let norm = total.sqrt() as f32;
            if !norm.is_finite() {
                return Err(Error::NonFinite {
                    what: "per-sample gradients",
                    detail: format!(
                        "row {} has L2 norm {norm} (a NaN/Inf entry, or values too large for f32)",
                        first_row + j * kv
                    ),
                });
            }
            let f = &mut factors[j * nf..(j + 1) * nf];
            let mut out = norms
                .as_deref_mut()
                .map(|v| &mut v[j * kv * nf..(j * kv + 1) * nf]);
            if nf == 1 {
                f[0] = (self.bounds[0] / (norm + CLIP_EPS)).min(1.0);
                if let Some(o) = out.as_deref_mut() {
                    o[0] = norm;
                }
            } else {
                for (k, fk) in f.iter_mut().enumerate() {
                    let n = seg[k].sqrt() as f32;
                    *fk = (self.bounds[k] / (n + CLIP_EPS)).min(1.0);
                    if let Some(o) = out.as_deref_mut() {
                        o[k] = n;
                    }
                }
            }
        }
        if kv > 1 {
            // Each of an example's K rows carries its norm (the norms are per row).
            if let Some(v) = norms {
                for j in 0..m / kv {
                    for u in 1..kv {
                        v.copy_within(j * kv * nf..(j * kv + 1) * nf, (j * kv + u) * nf);
                    }
                }
            }
        }
        // Row j's factor: its example's, over K (the mean of the K rows is what is clipped;
        // K = 1: the factor itself, `x / 1.0` is exact).
        let inv = 1.0 / kv as f32;
        let fac = |j: usize, t: usize| {
            factors[(j / kv) * nf + if nf == 1 { 0 } else { self.t_seg[t] }] * inv
        };
        // Row tensors: four rows per pass over the accumulator.
        for t in 0..nt {
            let Some(c) = self.t_row[t] else { continue };
            let (a, b) = self.t_range[t];
            let dst = &mut acc[a..b];
            let x = |j: usize| &rows[j * pr + c..j * pr + c + (b - a)];
            let mut j = 0;
            while j + 4 <= m {
                let f = std::array::from_fn(|u| fac(j + u, t));
                axpy4(f, [x(j), x(j + 1), x(j + 2), x(j + 3)], dst);
                j += 4;
            }
            for j in j..m {
                axpy(fac(j, t), x(j), dst);
            }
        }
        // Ghost layers: the bias from dy, then dW += (f ⊙ dY)ᵀ · X.
        for (l, g) in self.ghost.iter().enumerate() {
            let Some(g) = *g else { continue };
            let tw = self.t_first[l];
            let (wa, wb) = self.t_range[tw];
            if g.bias {
                let (ba, bb) = self.t_range[tw + 1];
                let db = &mut acc[ba..bb];
                for j in 0..m {
                    axpy(fac(j, tw + 1), &gdy[j * self.g_len + g.off..][..g.outf], db);
                }
            }
            for j in 0..m {
                let f = fac(j, tw);
                for v in &mut gdy[j * self.g_len + g.off..][..g.outf] {
                    *v *= f;
                }
            }
            // dW [outf × inf] += (f ⊙ dY)ᵀ [outf × m] · X [m × inf]
            gemm(
                g.outf,
                m,
                g.inf,
                1.0,
                &gdy[g.off..],
                1,
                self.g_len,
                input(l),
                g.inf,
                1,
                1.0,
                &mut acc[wa..wb],
                g.inf,
                1,
            );
        }
        Ok(())
    }
}
