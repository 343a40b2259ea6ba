//! The CPU schedules of [`Sequential`]'s forward and backward passes.
//!
//! - **Layer-major** (the simple one): each layer runs on the whole batch, and each kernel
//!   splits the batch across the rayon threads itself. Every activation and gradient of the
//!   batch passes through memory once per layer (at B = 256 the SampleConvNet's activations
//!   are ~13 MB: L3, not L2).
//! - **Depth-first** (the default): the batch is split once into one contiguous range of
//!   examples per thread, and each thread runs *all* the layers on a small group of its
//!   examples at a time ([`Workspace`]'s `group`, sized so that the group's activations stay in
//!   the core's L2 cache), the kernels single-threaded. The backward's gradient ping-pong
//!   buffers are the thread's own, one group long; summed parameter gradients go to one
//!   accumulator per thread, added in thread order afterwards (a given number of threads gives
//!   the same bits on every run). Same kernels, same arithmetic per example: per-sample
//!   gradients, activations and input gradients equal the layer-major schedule's.
//!
//! Neither allocates: the per-thread views are fixed-size arrays on the stack (models of up to
//! [`MAX_LAYERS`]` − 1` layers take the depth-first path; longer ones the layer-major one).

use super::clip::ClipPlan;
use super::{numel, Loss, Sequential, Workspace};
use crate::cpu::clip::{clip_accumulate, clip_factors, per_sample_norms};
use crate::cpu::grad::{serial, ParamGrad};
use crate::cpu::loss::{bce_scaled, bce_with_logits_scaled, cross_entropy_scaled};
use crate::nn::layer::{Bwd, Fwd};
use crate::{Layout, Result};
use std::ops::Range;

/// Layer boundaries (layers + 1) the depth-first schedule handles.
pub(super) const MAX_LAYERS: usize = 64;

/// Bytes of activations one group of examples may take (forward activations of all layers).
const GROUP_BYTES: usize = 512 * 1024;

/// Most examples in one group.
const MAX_GROUP: usize = 32;

/// Bytes of per-sample gradient rows one group may take in the clipped backward (fewer
/// examples per group when the row-clipped tensors have many parameters).
const CLIP_ROW_BYTES: usize = 1024 * 1024;

/// The destination of a [`super::Grads::ClippedSum`] backward, validated.
pub(super) struct ClipTarget<'a> {
    pub(super) layout: &'a Layout,
    /// One bound (flat) or one per segment of `layout`.
    pub(super) bounds: &'a [f32],
    /// P values, added to.
    pub(super) sum: &'a mut [f32],
    /// Rows per example (augmentation multiplicity K, 1 normally): each run of K consecutive
    /// rows is one example, clipped once by the norm of its K rows' *mean* gradient (De et al.
    /// 2022, §3.1), its rows added with factor f/K. Depth-first schedule only.
    pub(super) views: usize,
}

/// Bytes of activations and kept im2col matrices one group may take in the fused
/// forward-backward pass. More than the L2 cache: measured on the SampleConvNet (2-core EPYC,
/// 1 MiB L2 per core), groups of 16 (2 MiB) beat groups of 5 (L2-sized) by 8%, the larger
/// GEMMs outweighing the L2 misses, which L3 serves.
const FUSED_GROUP_BYTES: usize = 2 * 1024 * 1024;

/// Examples per group in [`Sequential::forward_backward`] for a model whose one example's
/// activations take `act_elems` floats and whose Conv2d layers' im2col take `cols_elems`.
pub(super) fn fused_group_size(act_elems: usize, cols_elems: usize) -> usize {
    (FUSED_GROUP_BYTES / 4 / (act_elems + cols_elems).max(1)).clamp(1, MAX_GROUP)
}

/// Examples per group for a model whose one example's activations (all layer boundaries) take
/// `act_elems` floats.
pub(super) fn group_size(act_elems: usize) -> usize {
    (GROUP_BYTES / 4 / act_elems.max(1)).clamp(1, MAX_GROUP)
}

type Views<'a> = [&'a mut [f32]; MAX_LAYERS];

fn empty_views<'a>() -> Views<'a> {
    std::array::from_fn(|_| Default::default())
}

/// The mutable buffers of one range of examples in the backward pass.
struct BwdBufs<'a> {
    /// The activations of these examples at each layer boundary (written by a fused pass).
    acts: Views<'a>,
    /// Their output gradient (written by a fused pass's loss).
    dy_out: &'a mut [f32],
    /// The input gradient of these examples (when wanted).
    input_grad: Option<&'a mut [f32]>,
    /// Their rows of the per-sample matrix (per-sample mode).
    rows: Option<&'a mut [f32]>,
    /// One P-long accumulator per chunk (summed and clipped modes).
    sums: Option<&'a mut [f32]>,
    /// Clipped mode, per chunk: one group's compact per-sample rows; its factors and the
    /// ghost layers' output gradients; its tensors' squared norms.
    crows: Option<&'a mut [f32]>,
    caux: Option<&'a mut [f32]>,
    csq: Option<&'a mut [f64]>,
    /// Clipped mode with norms recorded: these examples' clipping norms (`[n, F]`).
    norms: Option<&'a mut [f32]>,
    /// Fused mode, per chunk: the Conv2d layers' kept im2col and their work area.
    fbuf: Option<&'a mut [f32]>,
    /// Two group-long gradient buffers per chunk.
    ping: &'a mut [f32],
    /// The kernels' scratch, `need` per chunk.
    scratch: &'a mut [f32],
}

fn split_opt(v: Option<&mut [f32]>, at: usize) -> (Option<&mut [f32]>, Option<&mut [f32]>) {
    match v {
        Some(v) => {
            let (a, b) = v.split_at_mut(at);
            (Some(a), Some(b))
        }
        None => (None, None),
    }
}

/// What does not change across the recursion.
struct Plan<'a> {
    params: &'a [f32],
    /// Examples per chunk (the last may have fewer).
    per: usize,
    /// Scratch per chunk.
    need: usize,
    /// Examples per group.
    group: usize,
    /// Largest activation of one example, over the layer boundaries.
    maxper: usize,
}

impl Sequential {
    /// Scratch one thread needs for any layer (a kernel running as one chunk).
    pub(super) fn thread_scratch(&self) -> Result<usize> {
        let mut need = 0;
        for i in 0..self.layers.len() {
            need = need.max(self.scratch_for(i, 1)?);
        }
        Ok(need)
    }

    fn plan<'a>(&self, ws: &Workspace, params: &'a [f32], batch: usize) -> Result<Plan<'a>> {
        let per = batch.div_ceil(ws.chunks.max(1));
        Ok(Plan {
            params,
            per,
            need: self.thread_scratch()?,
            group: ws.group,
            maxper: self.shapes.iter().map(|s| numel(s)).max().unwrap_or(0),
        })
    }

    /// Depth-first forward of `batch` examples already copied into `ws.acts[0]`.
    pub(super) fn forward_depth_first(
        &self,
        ws: &mut Workspace,
        params: &[f32],
        batch: usize,
    ) -> Result<()> {
        let plan = self.plan(ws, params, batch)?;
        let chunks = batch.div_ceil(plan.per);
        let n = self.shapes.len();
        let Workspace {
            acts,
            scratch,
            masks,
            ..
        } = ws;
        let mut views = empty_views();
        for (i, (v, a)) in views.iter_mut().zip(acts.iter_mut()).enumerate() {
            *v = &mut a[..batch * numel(&self.shapes[i])];
        }
        let scratch = &mut scratch[..chunks * plan.need];
        self.fwd_split(&plan, masks, &mut views[..n], 0..batch, 0..chunks, scratch)
    }

    fn fwd_split(
        &self,
        plan: &Plan<'_>,
        masks: &[Vec<f32>],
        views: &mut [&mut [f32]],
        ex: Range<usize>,
        chunks: Range<usize>,
        scratch: &mut [f32],
    ) -> Result<()> {
        if chunks.len() == 1 {
            return serial(|| self.fwd_leaf(plan, masks, views, ex, scratch));
        }
        let mid = chunks.start + chunks.len() / 2;
        let mid_ex = (mid * plan.per).min(ex.end);
        let left_n = mid_ex - ex.start;
        let (mut left, mut right) = (empty_views(), empty_views());
        for (i, v) in views.iter_mut().enumerate() {
            let (a, b) = std::mem::take(v).split_at_mut(left_n * numel(&self.shapes[i]));
            left[i] = a;
            right[i] = b;
        }
        let n = views.len();
        let (s1, s2) = scratch.split_at_mut((mid - chunks.start) * plan.need);
        let (r1, r2) = rayon::join(
            || {
                self.fwd_split(
                    plan,
                    masks,
                    &mut left[..n],
                    ex.start..mid_ex,
                    chunks.start..mid,
                    s1,
                )
            },
            || {
                self.fwd_split(
                    plan,
                    masks,
                    &mut right[..n],
                    mid_ex..ex.end,
                    mid..chunks.end,
                    s2,
                )
            },
        );
        r1.and(r2)
    }

    /// All layers on the examples `ex` (views relative to the first), one group at a time.
    fn fwd_leaf(
        &self,
        plan: &Plan<'_>,
        masks: &[Vec<f32>],
        views: &mut [&mut [f32]],
        ex: Range<usize>,
        scratch: &mut [f32],
    ) -> Result<()> {
        let n = ex.len();
        let mut a = 0;
        while a < n {
            let b = (a + plan.group).min(n);
            for i in 0..self.layers.len() {
                let (pi, po) = (numel(&self.shapes[i]), numel(&self.shapes[i + 1]));
                let (lo, hi) = views.split_at_mut(i + 1);
                let xin = &lo[i][a * pi..b * pi];
                let y = &mut hi[0][a * po..b * po];
                let mask = self.mask_of(masks, i, ex.start + a, b - a);
                self.layer_forward(i, b - a, xin, plan.params, y, scratch, mask)?;
            }
            a = b;
        }
        Ok(())
    }

    /// The depth-first backward from the output gradient in `ws.ga` — or, with `fused`, the
    /// forward, the loss and the backward of each group in turn (the input already in
    /// `ws.acts[0]`), returning the loss. Parameter gradients go to `grads`, or with `clip` to
    /// the clipped sum.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_depth_first(
        &self,
        ws: &mut Workspace,
        params: &[f32],
        grads: ParamGrad<'_, f32>,
        clip: Option<ClipTarget<'_>>,
        first: usize,
        input_grad: bool,
        fused: Option<&FusedLoss<'_>>,
    ) -> Result<f64> {
        let kv = clip.as_ref().map_or(1, |c| c.views.max(1));
        if kv > 1 && ws.batch % kv != 0 {
            return Err(crate::Error::shape(
                "Sequential::backward",
                format!(
                    "a batch of {} rows is not a whole number of examples of {kv} views",
                    ws.batch
                ),
            ));
        }
        let cplan = match &clip {
            None => None,
            Some(c) => match ClipPlan::new(self, c) {
                Some(cp) => Some(cp),
                None if kv > 1 => {
                    return Err(crate::Error::shape(
                        "Sequential::backward",
                        "augmentation multiplicity needs the depth-first clipped schedule, which this clipping layout does not fit (too many segments)",
                    ))
                }
                None if fused.is_none() => {
                    let clip = clip.expect("matched Some");
                    self.backward_layer_major_clipped(ws, params, clip, first, input_grad)?;
                    return Ok(0.0);
                }
                None => {
                    return Err(crate::Error::shape(
                        "Sequential::forward_backward",
                        "a clipping layout with more segments than the depth-first schedule handles; call forward, loss and backward instead",
                    ))
                }
            },
        };
        let batch = ws.batch;
        let mut plan = self.plan(ws, params, batch)?;
        // Whole examples per chunk (K rows each).
        plan.per = plan.per.div_ceil(kv) * kv;
        let chunks = batch.div_ceil(plan.per);
        let p = self.num_params();
        if fused.is_some() {
            plan.group = ws.fused_group;
        }
        // Per chunk: compact rows, [factors | ghost dy], squared norms.
        let (mut lrow, mut laux, mut lsq) = (0, 0, 0);
        let record = clip.is_some() && ws.record_norms;
        let nf = clip.as_ref().map_or(1, |c| c.bounds.len());
        if record {
            grow(&mut ws.clip_norms, batch * nf);
        }
        if let (Some(cp), Some(c)) = (&cplan, &clip) {
            plan.group = plan
                .group
                .min((CLIP_ROW_BYTES / 4 / cp.p_rows.max(1)).max(1));
            // Whole examples per group (K rows each).
            plan.group = (plan.group / kv).max(1) * kv;
            lrow = plan.group * cp.p_rows;
            laux = plan.group * (c.bounds.len() + cp.g_len);
            lsq = plan.group * cp.n_tensors();
            grow(&mut ws.clip_rows, chunks * lrow);
            grow(&mut ws.clip_aux, chunks * laux);
            if ws.clip_sq.len() < chunks * lsq {
                ws.clip_sq.resize(chunks * lsq, 0.0);
            }
        }
        // Fused: per chunk, each kept intermediate (Conv2d's im2col) for a group, then the
        // work area.
        let mut cache_off = [usize::MAX; MAX_LAYERS];
        let (mut lfused, mut work_len) = (0, 0);
        if fused.is_some() {
            for (i, l) in self.kinds.iter().enumerate() {
                if let Some((lc, lw)) = l.kept_lens(&self.shapes[i], plan.group)? {
                    cache_off[i] = lfused;
                    lfused += lc;
                    work_len = work_len.max(lw);
                }
            }
            lfused += work_len;
            grow(&mut ws.fused, chunks * lfused);
        }
        grow(&mut ws.ping, chunks * 2 * plan.group * plan.maxper);
        let Workspace {
            acts,
            ga,
            input_grad: ig,
            scratch,
            ping,
            sums,
            clip_rows,
            clip_aux,
            clip_sq,
            clip_norms,
            norms_len,
            fused: fbuf,
            masks,
            ..
        } = ws;
        let n = self.shapes.len();
        let mut views = empty_views();
        for (i, (v, a)) in views.iter_mut().zip(acts.iter_mut()).enumerate() {
            *v = &mut a[..batch * numel(&self.shapes[i])];
        }
        let (rows, sum_target) = match grads {
            ParamGrad::None => (None, None),
            ParamGrad::PerSample { rows, .. } => (Some(&mut rows[..batch * p]), None),
            ParamGrad::Sum { grad, accumulate } => (None, Some((grad, accumulate))),
        };
        let clipped = clip.is_some();
        let bufs = BwdBufs {
            acts: views,
            dy_out: &mut ga[..batch * numel(self.output_shape())],
            input_grad: input_grad.then(|| &mut ig[..batch * numel(&self.input)]),
            rows,
            sums: (sum_target.is_some() || clipped).then(|| &mut sums[..chunks * p]),
            crows: clipped.then(|| &mut clip_rows[..chunks * lrow]),
            caux: clipped.then(|| &mut clip_aux[..chunks * laux]),
            csq: clipped.then(|| &mut clip_sq[..chunks * lsq]),
            norms: record.then(|| &mut clip_norms[..batch * nf]),
            fbuf: fused.is_some().then(|| &mut fbuf[..chunks * lfused]),
            ping: &mut ping[..chunks * 2 * plan.group * plan.maxper],
            scratch: &mut scratch[..chunks * plan.need],
        };
        let ctx = BwdCtx {
            plan: &plan,
            n,
            first,
            clip: cplan.as_ref(),
            clip_lens: (lrow, laux, lsq),
            fused,
            lfused,
            cache_off,
            work_off: lfused - work_len,
            masks,
        };
        let loss = self.bwd_split(&ctx, bufs, 0..batch, 0..chunks)?;
        *norms_len = record.then_some(batch * nf);
        if let Some(c) = clip {
            // The threads' partial sums, in thread order.
            for acc in sums[..chunks * p].chunks_exact(p) {
                for (g, a) in c.sum.iter_mut().zip(acc) {
                    *g += *a;
                }
            }
        }
        if let Some((grad, accumulate)) = sum_target {
            if !accumulate {
                grad.fill(0.0);
            }
            for acc in sums[..chunks * p].chunks_exact(p) {
                for (g, a) in grad.iter_mut().zip(acc) {
                    *g += *a;
                }
            }
        }
        Ok(loss)
    }

    fn bwd_split(
        &self,
        ctx: &BwdCtx<'_>,
        bufs: BwdBufs<'_>,
        ex: Range<usize>,
        chunks: Range<usize>,
    ) -> Result<f64> {
        if chunks.len() == 1 {
            return serial(|| self.bwd_leaf(ctx, bufs, ex));
        }
        let plan = ctx.plan;
        let p = self.num_params();
        let mid = chunks.start + chunks.len() / 2;
        let mid_ex = (mid * plan.per).min(ex.end);
        let (nl, cl) = (mid_ex - ex.start, mid - chunks.start);
        let BwdBufs {
            mut acts,
            dy_out,
            input_grad,
            rows,
            sums,
            crows,
            caux,
            csq,
            norms,
            fbuf,
            ping,
            scratch,
        } = bufs;
        let (mut left, mut right) = (empty_views(), empty_views());
        for i in 0..ctx.n {
            let (a, b) = std::mem::take(&mut acts[i]).split_at_mut(nl * numel(&self.shapes[i]));
            left[i] = a;
            right[i] = b;
        }
        let (d1, d2) = dy_out.split_at_mut(nl * numel(self.output_shape()));
        let (ig1, ig2) = split_opt(input_grad, nl * numel(&self.input));
        let (r1, r2) = split_opt(rows, nl * p);
        let (s1, s2) = split_opt(sums, cl * p);
        let (lrow, laux, lsq) = ctx.clip_lens;
        let (cr1, cr2) = split_opt(crows, cl * lrow);
        let (ca1, ca2) = split_opt(caux, cl * laux);
        let (cs1, cs2) = match csq {
            Some(v) => {
                let (a, b) = v.split_at_mut(cl * lsq);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        let nf = ctx.clip.map_or(1, |cp| cp.nf());
        let (n1, n2) = split_opt(norms, nl * nf);
        let (f1, f2) = split_opt(fbuf, cl * ctx.lfused);
        let (p1, p2) = ping.split_at_mut(cl * 2 * plan.group * plan.maxper);
        let (c1, c2) = scratch.split_at_mut(cl * plan.need);
        let left = BwdBufs {
            acts: left,
            dy_out: d1,
            input_grad: ig1,
            rows: r1,
            sums: s1,
            crows: cr1,
            caux: ca1,
            csq: cs1,
            norms: n1,
            fbuf: f1,
            ping: p1,
            scratch: c1,
        };
        let right = BwdBufs {
            acts: right,
            dy_out: d2,
            input_grad: ig2,
            rows: r2,
            sums: s2,
            crows: cr2,
            caux: ca2,
            csq: cs2,
            norms: n2,
            fbuf: f2,
            ping: p2,
            scratch: c2,
        };
        let (a, b) = rayon::join(
            || self.bwd_split(ctx, left, ex.start..mid_ex, chunks.start..mid),
            || self.bwd_split(ctx, right, mid_ex..ex.end, mid..chunks.end),
        );
        Ok(a? + b?)
    }

    /// Examples `ex` one group at a time (buffers relative to `ex.start`): with `ctx.fused`,
    /// the forward and the loss of the group first; then all layers from the top down to
    /// `ctx.first`; then, when clipping, the group's clipped gradients into the thread's sum.
    fn bwd_leaf(&self, ctx: &BwdCtx<'_>, bufs: BwdBufs<'_>, ex: Range<usize>) -> Result<f64> {
        let plan = ctx.plan;
        let p = self.num_params();
        let top = self.layers.len();
        let glen = plan.group * plan.maxper;
        let BwdBufs {
            mut acts,
            dy_out,
            mut input_grad,
            mut rows,
            mut sums,
            mut crows,
            mut caux,
            mut csq,
            mut norms,
            mut fbuf,
            ping,
            scratch,
        } = bufs;
        let acts = &mut acts[..ctx.n];
        let (pa, pb) = ping[..2 * glen].split_at_mut(glen);
        let mut started = false;
        if ctx.clip.is_some() {
            if let Some(acc) = sums.as_deref_mut() {
                acc.fill(0.0);
            }
        }
        let mut loss = 0f64;
        let mut a = 0;
        let n = ex.len();
        // Groups of (nearly) equal size, at most `plan.group`, of whole examples (K rows each
        // with augmentation multiplicity; `n` and `plan.group` are multiples of K then).
        let kv = ctx.clip.map_or(1, |cp| cp.views());
        let (ne, ge) = (n / kv, (plan.group / kv).max(1));
        let group = ne.div_ceil(ne.div_ceil(ge).max(1)).max(1) * kv;
        while a < n {
            let b = (a + group).min(n);
            let m = b - a;
            let g0 = ex.start + a;
            if let Some(fl) = ctx.fused {
                for i in 0..top {
                    let (pi, po) = (numel(&self.shapes[i]), numel(&self.shapes[i + 1]));
                    let (lo, hi) = acts.split_at_mut(i + 1);
                    let xin = &lo[i][a * pi..b * pi];
                    let y = &mut hi[0][a * po..b * po];
                    match (self.kept(ctx, i, m)?, fbuf.as_deref_mut()) {
                        (Some((cols, lw)), Some(fb)) => {
                            let (cache, work) = fb.split_at_mut(ctx.work_off);
                            let a = Fwd {
                                shape: &self.shapes[i],
                                batch: m,
                                x: xin,
                                p: &plan.params[self.ranges[i].clone()],
                                y,
                                scratch: &mut work[..lw],
                                mask: None,
                            };
                            self.kinds[i].forward_kept(a, &mut cache[cols])?;
                        }
                        _ => {
                            let mask = self.mask_of(ctx.masks, i, g0, m);
                            self.layer_forward(i, m, xin, plan.params, y, scratch, mask)?
                        }
                    }
                }
                let po = numel(self.output_shape());
                let out = &acts[top][a * po..b * po];
                let dout = &mut dy_out[a * po..b * po];
                loss += fl.group(g0, m, po, out, dout)?;
            }
            let (mut cur, mut nxt): (&mut [f32], &mut [f32]) = (&mut *pa, &mut *pb);
            for i in (ctx.first..top).rev() {
                let (pi, po) = (numel(&self.shapes[i]), numel(&self.shapes[i + 1]));
                let x = &acts[i][a * pi..b * pi];
                let y = &acts[i + 1][a * po..b * po];
                let dy: &[f32] = if i + 1 == top {
                    &dy_out[a * po..b * po]
                } else {
                    &cur[..m * po]
                };
                let dx = if i == 0 {
                    input_grad.as_deref_mut().map(|g| &mut g[a * pi..b * pi])
                } else if i > ctx.first {
                    Some(&mut nxt[..m * pi])
                } else {
                    None
                };
                let r = self.ranges[i].clone();
                let pg = if r.is_empty() {
                    ParamGrad::None
                } else if let (Some(cp), Some(rows)) = (ctx.clip, crows.as_deref_mut()) {
                    if cp.is_ghost(i) {
                        ParamGrad::None
                    } else {
                        ParamGrad::PerSample {
                            rows: &mut rows[..m * cp.p_rows],
                            stride: cp.p_rows,
                            offset: cp.row_offset(i),
                        }
                    }
                } else if let Some(rows) = rows.as_deref_mut() {
                    ParamGrad::PerSample {
                        rows: &mut rows[a * p..b * p],
                        stride: p,
                        offset: r.start,
                    }
                } else if let Some(sums) = sums.as_deref_mut() {
                    ParamGrad::Sum {
                        grad: &mut sums[r],
                        accumulate: started,
                    }
                } else {
                    ParamGrad::None
                };
                match (self.kept(ctx, i, m)?, fbuf.as_deref_mut()) {
                    (Some((cols, lw)), Some(fb)) => {
                        let (cache, work) = fb.split_at_mut(ctx.work_off);
                        let a = Bwd {
                            shape: &self.shapes[i],
                            batch: m,
                            x,
                            y,
                            p: &plan.params[self.ranges[i].clone()],
                            dy,
                            dx,
                            pg,
                            scratch: &mut work[..lw],
                            mask: None,
                        };
                        self.kinds[i].backward_kept(a, &cache[cols])?;
                    }
                    _ => {
                        let mask = self.mask_of(ctx.masks, i, g0, m);
                        self.layer_backward(i, m, x, y, plan.params, dy, dx, pg, scratch, mask)?
                    }
                }
                if let (Some(cp), Some(aux), Some(sq)) =
                    (ctx.clip, caux.as_deref_mut(), csq.as_deref_mut())
                {
                    let (_, gdy) = aux.split_at_mut(plan.group * cp.nf());
                    cp.record_ghost(i, m, x, dy, gdy, sq);
                }
                std::mem::swap(&mut cur, &mut nxt);
            }
            if let (Some(cp), Some(rows), Some(aux), Some(sq), Some(acc)) = (
                ctx.clip,
                crows.as_deref(),
                caux.as_deref_mut(),
                csq.as_deref_mut(),
                sums.as_deref_mut(),
            ) {
                // The group's gradients are complete and still in cache: clip them into the
                // thread's partial sum.
                let (fac, gdy) = aux.split_at_mut(plan.group * cp.nf());
                let input = |l: usize| {
                    let pl = numel(&self.shapes[l]);
                    &acts[l][a * pl..b * pl]
                };
                let nf = cp.nf();
                let nrm = norms.as_deref_mut().map(|v| &mut v[a * nf..b * nf]);
                cp.clip_group(m, g0, rows, gdy, sq, fac, input, acc, nrm)?;
            }
            started = true;
            a = b;
        }
        Ok(loss)
    }

    /// Layer `i` on a group of `m` in a fused pass, when it keeps an intermediate (a Conv2d's
    /// im2col): the kept matrix's place in the chunk's buffer, and its work area's length.
    fn kept(&self, ctx: &BwdCtx<'_>, i: usize, m: usize) -> Result<Option<(Range<usize>, usize)>> {
        let off = ctx.cache_off[i];
        if off == usize::MAX {
            return Ok(None);
        }
        Ok(self.kinds[i]
            .kept_lens(&self.shapes[i], m)?
            .map(|(lc, lw)| (off..off + lc, lw)))
    }

    /// The layer-major backward into a clipped sum: the `[B, P]` matrix in the workspace, then
    /// norms, factors and the fused accumulate of `cpu::clip` (parallel inside).
    pub(super) fn backward_layer_major_clipped(
        &self,
        ws: &mut Workspace,
        params: &[f32],
        clip: ClipTarget<'_>,
        first: usize,
        input_grad: bool,
    ) -> Result<()> {
        let (b, p) = (ws.batch, self.num_params());
        let (s, nf) = (clip.layout.num_segments(), clip.bounds.len());
        let mut rows = std::mem::take(&mut ws.clip_rows);
        grow(&mut rows, b * p);
        let r = (|| {
            let grads = ParamGrad::PerSample {
                rows: &mut rows[..b * p],
                stride: p,
                offset: 0,
            };
            self.backward_layer_major(ws, params, grads, first, input_grad)?;
            grow(&mut ws.clip_aux, b * (1 + s + nf));
            let (norms, rest) = ws.clip_aux.split_at_mut(b);
            let (seg, rest) = rest.split_at_mut(b * s);
            let factors = &mut rest[..b * nf];
            per_sample_norms(&rows[..b * p], b, clip.layout, norms, seg)?;
            let used = if nf == 1 { &*norms } else { &*seg };
            clip_factors(used, clip.bounds, factors)?;
            if ws.record_norms {
                grow(&mut ws.clip_norms, b * nf);
                ws.clip_norms[..b * nf].copy_from_slice(used);
            }
            clip_accumulate(&rows[..b * p], b, clip.layout, factors, clip.sum)
        })();
        ws.clip_rows = rows;
        ws.norms_len = (r.is_ok() && ws.record_norms).then_some(b * nf);
        r
    }

    /// The layer-major backward (each kernel on the whole batch, parallel inside).
    pub(super) fn backward_layer_major(
        &self,
        ws: &mut Workspace,
        params: &[f32],
        mut grads: ParamGrad<'_, f32>,
        first: usize,
        input_grad: bool,
    ) -> Result<()> {
        let b = ws.batch;
        let p = self.num_params();
        let chunks = ws.chunks;
        let Workspace {
            acts,
            ga,
            gb,
            scratch,
            input_grad: ig,
            masks,
            ..
        } = ws;
        let (mut dyb, mut dxb): (&mut Vec<f32>, &mut Vec<f32>) = (ga, gb);
        for i in (first..self.layers.len()).rev() {
            let r = self.ranges[i].clone();
            let nin = b * numel(&self.shapes[i]);
            let nout = b * numel(&self.shapes[i + 1]);
            let need_dx = i > first || input_grad;
            let x = &acts[i][..nin];
            let y = &acts[i + 1][..nout];
            let dy = &dyb[..nout];
            let dx: &mut [f32] = if i == 0 {
                &mut ig[..nin]
            } else {
                &mut dxb[..nin]
            };
            let pg = match &mut grads {
                ParamGrad::None => ParamGrad::None,
                ParamGrad::PerSample { rows, .. } => ParamGrad::PerSample {
                    rows,
                    stride: p,
                    offset: r.start,
                },
                ParamGrad::Sum { grad, accumulate } => ParamGrad::Sum {
                    grad: &mut grad[r.clone()],
                    accumulate: *accumulate,
                },
            };
            let pg = if r.is_empty() { ParamGrad::None } else { pg };
            let dxo = if need_dx { Some(dx) } else { None };
            let scr = &mut scratch[..self.scratch_for(i, chunks)?];
            let mask = self.mask_of(masks, i, 0, b);
            self.layer_backward(i, b, x, y, params, dy, dxo, pg, scr, mask)?;
            std::mem::swap(&mut dyb, &mut dxb);
        }
        Ok(())
    }
}

/// The read-only part of the backward recursion.
struct BwdCtx<'a> {
    plan: &'a Plan<'a>,
    /// Layer boundaries (layers + 1).
    n: usize,
    first: usize,
    /// Clipped mode: the plan, and the per-chunk lengths of the rows, aux and squared norms.
    clip: Option<&'a ClipPlan<'a>>,
    clip_lens: (usize, usize, usize),
    /// Fused mode: the loss; per-chunk length of `fbuf`; where each Conv2d's im2col is kept
    /// in it (`usize::MAX`: not a kept one); where the work area starts.
    fused: Option<&'a FusedLoss<'a>>,
    lfused: usize,
    cache_off: [usize; MAX_LAYERS],
    work_off: usize,
    /// The Dropout layers' masks of the whole batch.
    masks: &'a [Vec<f32>],
}

/// The loss of a fused forward-backward pass: the batch's targets and the reduction's scale.
pub(super) struct FusedLoss<'a> {
    pub(super) loss: Loss<'a>,
    /// 1 for a sum; 1/N for a mean (N = examples, or elements for BCE).
    pub(super) scale: f64,
}

impl FusedLoss<'_> {
    /// The loss of examples `g0 .. g0 + m` (`out`, `per` values each), its gradient into `dout`.
    fn group(&self, g0: usize, m: usize, per: usize, out: &[f32], dout: &mut [f32]) -> Result<f64> {
        let r = match self.loss {
            Loss::CrossEntropy(t) => {
                cross_entropy_scaled(out, per, &t[g0..g0 + m], self.scale, Some(dout))
            }
            Loss::BceWithLogits(t) => {
                bce_with_logits_scaled(out, &t[g0 * per..(g0 + m) * per], self.scale, Some(dout))
            }
            Loss::Bce(t) => bce_scaled(out, &t[g0 * per..(g0 + m) * per], self.scale, Some(dout)),
        };
        // Element indices of the kernels are the group's: say which examples.
        r.map_err(|e| match e {
            crate::Error::NonFinite { what, detail } => crate::Error::NonFinite {
                what,
                detail: format!("{detail} of examples {g0}..{} of the batch", g0 + m),
            },
            crate::Error::InvalidParameter {
                name,
                value,
                expected,
            } => crate::Error::InvalidParameter {
                name,
                value,
                expected: format!("{expected} (in examples {g0}..{} of the batch)", g0 + m),
            },
            e => e,
        })
    }
}

/// Grows `v` to at least `len` (never shrinks; allocates only the first time a size is seen).
fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}
