//! CPU kernels of `Conv2d` and `ConvTranspose2d` (groups = 1, square kernels): im2col + GEMM.
//!
//! Activations are NCHW, row-major, the batch first. Each function takes the whole batch,
//! validates every slice length (errors, never panics), and runs chunks of the batch in
//! parallel with rayon; the caller passes the scratch (see [`Conv2dShape::scratch_len`]), so
//! nothing is allocated but, once per geometry and thread, the im2col index tables of a small
//! geometry (kept in a thread-local cache of 16). A CUDA twin takes the same arguments.
//!
//! Parameters are one contiguous slice, PyTorch's layout: `Conv2d` weight `[Cout, Cin, k, k]`,
//! `ConvTranspose2d` weight `[Cin, Cout, k, k]`, then the bias `[Cout]` if any. Parameter
//! gradients go to a [`ParamGrad`] (per-sample rows of the `[B, P]` matrix, or the sum).

use super::gemm::{gemm, Real};
use super::grad::{check_grad, check_len, chunks_for, run_chunks, run_single, GradOut, ParamGrad};
use super::igemm;
use crate::{Error, Result};

/// The geometry of a convolution over one example: input `[c, h, w]`, square kernel `k`,
/// `stride`, zero `pad` on every side, output spatial size `oh × ow`.
///
/// For a transposed convolution this is the geometry of the *adjoint* convolution, from the
/// transposed convolution's output (`c = Cout`, `h × w` = its output size) to its input
/// (`oh × ow` = its input size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Channels of the convolved image.
    pub c: usize,
    /// Height of the convolved image.
    pub h: usize,
    /// Width of the convolved image.
    pub w: usize,
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
    /// Output height, `(h + 2·pad − k) / stride + 1`.
    pub oh: usize,
    /// Output width, `(w + 2·pad − k) / stride + 1`.
    pub ow: usize,
}

impl ConvGeom {
    /// Checks the arguments and computes the output size. Errors if a size is zero or the
    /// kernel is larger than the padded input.
    pub fn new(
        op: &'static str,
        c: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        if c == 0 || h == 0 || w == 0 {
            return Err(Error::shape(
                op,
                format!("input [{c}, {h}, {w}] has a zero dimension"),
            ));
        }
        if k == 0 {
            return Err(Error::invalid("kernel_size", k, ">= 1"));
        }
        if stride == 0 {
            return Err(Error::invalid("stride", stride, ">= 1"));
        }
        let (ph, pw) = (h + 2 * pad, w + 2 * pad);
        if k > ph || k > pw {
            return Err(Error::shape(
                op,
                format!("kernel {k}x{k} is larger than the padded input {ph}x{pw} (input {h}x{w}, padding {pad})"),
            ));
        }
        Ok(ConvGeom {
            c,
            h,
            w,
            k,
            stride,
            pad,
            oh: (ph - k) / stride + 1,
            ow: (pw - k) / stride + 1,
        })
    }

    /// Elements of one image, `c·h·w`.
    pub fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Rows of the column matrix, `c·k·k`.
    pub fn col_rows(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Output positions, `oh·ow`.
    pub fn out_positions(&self) -> usize {
        self.oh * self.ow
    }

    /// Elements of the column matrix `[c·k·k, oh·ow]` of one example.
    pub fn cols_len(&self) -> usize {
        self.col_rows() * self.out_positions()
    }

    /// For kernel column `kj`, the output columns `lo..hi` whose input column is inside the image.
    #[inline]
    fn valid_range(&self, kj: usize, w: usize, ow: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = if self.pad > kj {
            (self.pad - kj).div_ceil(s)
        } else {
            0
        };
        // ix = ox·s + kj − pad ≤ w − 1  ⇔  ox ≤ (w − 1 + pad − kj) / s
        let hi = if w + self.pad > kj {
            ((w - 1 + self.pad - kj) / s + 1).min(ow)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// `cols[(ci·k + ki)·k + kj, oy·ow + ox] = x[ci, oy·s + ki − p, ox·s + kj − p]` (0 outside).
/// `x` is one image (`g.in_len()`), `cols` is `g.cols_len()` long.
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn im2col_raw<T: Real>(g: &ConvGeom, x: &[T], cols: &mut [T], ld: usize) {
    let (h, w, k, s, l) = (g.h, g.w, g.k, g.stride, g.out_positions());
    let x = &x[..g.in_len()];
    for ci in 0..g.c {
        let xc = &x[ci * h * w..(ci + 1) * h * w];
        for ki in 0..k {
            for kj in 0..k {
                let r = (ci * k + ki) * k + kj;
                let row = &mut cols[r * ld..r * ld + l];
                let (lo, hi) = g.valid_range(kj, w, g.ow);
                for oy in 0..g.oh {
                    let out = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    let iy = (oy * s + ki) as isize - g.pad as isize;
                    if iy < 0 || iy >= h as isize {
                        out.fill(T::ZERO);
                        continue;
                    }
                    let xr = &xc[iy as usize * w..(iy as usize + 1) * w];
                    out[..lo].fill(T::ZERO);
                    out[hi..].fill(T::ZERO);
                    if lo < hi {
                        let x0 = lo * s + kj - g.pad;
                        if s == 1 {
                            out[lo..hi].copy_from_slice(&xr[x0..x0 + (hi - lo)]);
                        } else {
                            let src = &xr[x0..x0 + (hi - lo - 1) * s + 1];
                            for (o, c) in out[lo..hi].iter_mut().zip(src.chunks(s)) {
                                *o = c[0];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: `x[ci, iy, ix] += Σ cols[...]` over every column entry that
/// [`im2col`] reads from `(ci, iy, ix)`. Accumulates: zero `x` first for a plain col2im.
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn col2im_raw<T: Real>(g: &ConvGeom, cols: &[T], x: &mut [T], ld: usize) {
    let (h, w, k, s, l) = (g.h, g.w, g.k, g.stride, g.out_positions());
    let x = &mut x[..g.in_len()];
    for ci in 0..g.c {
        let xc = &mut x[ci * h * w..(ci + 1) * h * w];
        for ki in 0..k {
            for kj in 0..k {
                let r = (ci * k + ki) * k + kj;
                let row = &cols[r * ld..r * ld + l];
                let (lo, hi) = g.valid_range(kj, w, g.ow);
                if lo >= hi {
                    continue;
                }
                for oy in 0..g.oh {
                    let iy = (oy * s + ki) as isize - g.pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let src = &row[oy * g.ow + lo..oy * g.ow + hi];
                    let xr = &mut xc[iy as usize * w..(iy as usize + 1) * w];
                    let x0 = lo * s + kj - g.pad;
                    if s == 1 {
                        for (d, v) in xr[x0..x0 + (hi - lo)].iter_mut().zip(src) {
                            *d += *v;
                        }
                    } else {
                        let dst = &mut xr[x0..x0 + (hi - lo - 1) * s + 1];
                        for (t, v) in src.iter().enumerate() {
                            dst[t * s] += *v;
                        }
                    }
                }
            }
        }
    }
}

/// `dst ← src` for the short runs of the phase-split im2col: run lengths up to 16 are copied
/// as fixed-size arrays (inline moves, no `memcpy` call per run).
#[inline(always)]
fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    macro_rules! fixed {
        ($($n:literal)*) => {
            match dst.len() {
                $($n => {
                    let d: &mut [T; $n] = dst.try_into().expect("run length");
                    let s: &[T; $n] = src[..$n].try_into().expect("run length");
                    *d = *s;
                })*
                _ => dst.copy_from_slice(src),
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

impl ConvGeom {
    /// Height and width of one phase plane of the padded image: `⌈(h + 2p)/s⌉ × ⌈(w + 2p)/s⌉`.
    fn phase_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad).div_ceil(self.stride),
            (self.w + 2 * self.pad).div_ceil(self.stride),
        )
    }

    /// Whether the kernel covers the whole unpadded image (`k = h = w`, no padding, so one
    /// output position): the im2col of an example is the example itself (row `r = (ci, ki,
    /// kj)` is `x[ci, ki, kj]`). DCGAN's last discriminator layer, `Conv2d(2d, 1, 7)` on 7 × 7.
    /// `Conv2d` then keeps its column matrix example-major (`cols[j·kk + r]`, a copy of the
    /// inputs) and reads and writes it through strides: no table gather and no col2im.
    fn is_whole_image(&self) -> bool {
        self.k == self.h && self.k == self.w && self.pad == 0
    }

    /// Strides `(row, column)` of a `Conv2d` micro-batch's column matrix `[kk, ld]` in its
    /// buffer: `(ld, 1)`, or `(1, kk)` for a whole-image kernel (see [`Self::is_whole_image`]).
    fn col_strides(&self, ld: usize) -> (usize, usize) {
        if self.is_whole_image() {
            (1, self.col_rows())
        } else {
            (ld, 1)
        }
    }

    /// Elements of the phase-split image (`c · s² ` planes): scratch of [`phase_split`].
    fn phase_len(&self) -> usize {
        let (ph, pw) = self.phase_hw();
        self.c * self.stride * self.stride * ph * pw
    }
}

/// Space-to-depth of one zero-padded image: plane `(ci, py, px)` of `ph` holds
/// `xpad[ci, i·s + py, j·s + px]` at `(i, j)` (`xpad` = `x` with `pad` zeros on each side). Then
/// the im2col row `(ci, ki, kj)` is, for each output row `oy`, the contiguous run of `ow` values
/// of plane `(ci, ki mod s, kj mod s)` at `(ki/s + oy, kj/s ..)`: no strided gather and no
/// bounds logic in the `c·k²` rows, only in the `c·(h+2p)·(w+2p)` values of the split.
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn phase_split<T: Real>(g: &ConvGeom, x: &[T], ph: &mut [T]) {
    let (s, p, h, w) = (g.stride, g.pad, g.h, g.w);
    let (phh, phw) = g.phase_hw();
    let plane = phh * phw;
    for ci in 0..g.c {
        let xc = &x[ci * h * w..(ci + 1) * h * w];
        for py in 0..s {
            for px in 0..s {
                let dst = &mut ph[((ci * s + py) * s + px) * plane..][..plane];
                // Columns j with 0 ≤ j·s + px − p < w.
                let jlo = if p > px { (p - px).div_ceil(s) } else { 0 };
                let jhi = if w + p > px {
                    ((w - 1 + p - px) / s + 1).min(phw)
                } else {
                    0
                };
                let jlo = jlo.min(jhi);
                for (i, row) in dst.chunks_exact_mut(phw).enumerate() {
                    let iy = (i * s + py) as isize - p as isize;
                    if iy < 0 || iy >= h as isize || jlo == jhi {
                        row.fill(T::ZERO);
                        continue;
                    }
                    let xr = &xc[iy as usize * w..(iy as usize + 1) * w];
                    row[..jlo].fill(T::ZERO);
                    row[jhi..].fill(T::ZERO);
                    let x0 = jlo * s + px - p;
                    if s == 1 {
                        row[jlo..jhi].copy_from_slice(&xr[x0..x0 + (jhi - jlo)]);
                    } else {
                        let src = &xr[x0..x0 + (jhi - jlo - 1) * s + 1];
                        for (o, v) in row[jlo..jhi].iter_mut().zip(src.iter().step_by(s)) {
                            *o = *v;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`phase_split`] restricted to the image: `dx[ci, iy, ix] = dph[...]` of its
/// padded position (each image value is in exactly one plane; `dx` overwritten).
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn phase_merge<T: Real>(g: &ConvGeom, dph: &[T], dx: &mut [T]) {
    let (s, p, h, w) = (g.stride, g.pad, g.h, g.w);
    let (phh, phw) = g.phase_hw();
    let plane = phh * phw;
    for ci in 0..g.c {
        let dxc = &mut dx[ci * h * w..(ci + 1) * h * w];
        for (iy, dxr) in dxc.chunks_exact_mut(w).enumerate() {
            let (yy, py) = ((iy + p) / s, (iy + p) % s);
            for px in 0..s {
                let src = &dph[((ci * s + py) * s + px) * plane + yy * phw..][..phw];
                // Image columns ix ≡ px − p (mod s): ix = j·s + px − p.
                let jlo = if p > px { (p - px).div_ceil(s) } else { 0 };
                let mut ix = jlo * s + px - p;
                let mut j = jlo;
                while ix < w {
                    dxr[ix] = src[j];
                    ix += s;
                    j += 1;
                }
            }
        }
    }
}

/// im2col of one example from its phase split (see [`phase_split`]) into columns
/// `[c·k², oh·ow]` with leading dimension `ld`.
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn im2col_phased<T: Real>(g: &ConvGeom, ph: &[T], cols: &mut [T], ld: usize) {
    let (s, k, oh, ow) = (g.stride, g.k, g.oh, g.ow);
    let (phh, phw) = g.phase_hw();
    let plane = phh * phw;
    let l = oh * ow;
    for ci in 0..g.c {
        for ki in 0..k {
            for kj in 0..k {
                let r = (ci * k + ki) * k + kj;
                let src = &ph[((ci * s + ki % s) * s + kj % s) * plane..][..plane];
                let off = (ki / s) * phw + kj / s;
                let row = &mut cols[r * ld..r * ld + l];
                for (oy, out) in row.chunks_exact_mut(ow).enumerate() {
                    copy_run(out, &src[off + oy * phw..off + oy * phw + ow]);
                }
            }
        }
    }
}

/// The adjoint of [`im2col_phased`]: adds the columns into the phase planes `dph` (zero them
/// first), to be scattered back with [`phase_merge`].
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn col2im_phased<T: Real>(g: &ConvGeom, cols: &[T], ld: usize, dph: &mut [T]) {
    let (s, k, oh, ow) = (g.stride, g.k, g.oh, g.ow);
    let (phh, phw) = g.phase_hw();
    let plane = phh * phw;
    let l = oh * ow;
    for ci in 0..g.c {
        for ki in 0..k {
            for kj in 0..k {
                let r = (ci * k + ki) * k + kj;
                let dst = &mut dph[((ci * s + ki % s) * s + kj % s) * plane..][..plane];
                let off = (ki / s) * phw + kj / s;
                let row = &cols[r * ld..r * ld + l];
                for (oy, src) in row.chunks_exact(ow).enumerate() {
                    let d = &mut dst[off + oy * phw..off + oy * phw + ow];
                    for t in 0..ow {
                        d[t] += src[t];
                    }
                }
            }
        }
    }
}

/// The gather offsets of the implicit im2col (see [`igemm::gemm_gather`]) of `n` examples
/// whose phase splits ([`phase_split`]) lie one after another: `po[r]` for the column-matrix
/// row `r = (ci, ki, kj)`, `qo[j·l + oy·ow + ox]` for example `j`'s output position, so that
/// `cols_j[r, oy·ow + ox] = phases[po[r] + qo[j·l + oy·ow + ox]]` — what [`im2col_phased`]
/// copies.
fn phased_offsets(g: &ConvGeom, n: usize) -> (Vec<usize>, Vec<usize>) {
    let (s, k) = (g.stride, g.k);
    let (phh, phw) = g.phase_hw();
    let plane = phh * phw;
    let mut po = Vec::with_capacity(g.col_rows());
    for ci in 0..g.c {
        for ki in 0..k {
            for kj in 0..k {
                po.push(((ci * s + ki % s) * s + kj % s) * plane + (ki / s) * phw + kj / s);
            }
        }
    }
    let pl = g.phase_len();
    let mut qo = Vec::with_capacity(n * g.out_positions());
    for j in 0..n {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                qo.push(j * pl + oy * phw + ox);
            }
        }
    }
    (po, qo)
}

/// Scratch of the implicit-im2col products of a micro-batch of `n` examples: a packed A of up
/// to `m × kmax`, a packed B panel, their phase splits and 8 values of slack (the packing's
/// 8-wide moves may read past the last plane; what they read there is never used).
fn implicit_len(g: &ConvGeom, n: usize, m: usize, kmax: usize) -> usize {
    igemm::packed_a_len(m, kmax) + igemm::PACKED_B_LEN + n * g.phase_len() + 8
}

/// Splits the scratch of [`implicit_len`] into (packed A, packed B, phase splits + slack).
fn implicit_split<T>(
    buf: &mut [T],
    n: usize,
    pl: usize,
    alen: usize,
) -> (&mut [T], &mut [T], &mut [T]) {
    let (apack, rest) = buf.split_at_mut(alen);
    let (bpack, rest) = rest.split_at_mut(igemm::PACKED_B_LEN);
    (apack, bpack, &mut rest[..n * pl + 8])
}

/// Whether the layers of geometry `g` run their weight products on the own GEMM with the
/// weight (or its transpose) packed once per layer call ([`igemm::pack_a`] before the parallel
/// chunks start, shared read-only by every micro-batch and thread): f32 where
/// [`igemm::enabled`], and where the phase split is the im2col path (not the tables of the
/// small layers). Depends on the geometry only, so every schedule and batch size of a layer
/// takes the same kernel (bit-identical results).
fn packs_weight<T: Real>(g: &ConvGeom) -> bool {
    igemm::enabled::<T>() && col_tables(g).is_none()
}

/// Column matrices up to this many entries per example go through [`ColTables`] (4 bytes per
/// entry: up to 4 MiB per geometry and thread); larger ones through the phase split.
const TABLE_MAX_COLS: usize = 1 << 20;

/// Output widths up to this go through [`ColTables`]; wider ones through the phase split, whose
/// contiguous runs of `ow` values then beat one indexed load per value. Measured (CPU time of
/// a first version's forward + backward, batch 64, one thread; BENCHMARKS.md, "stride-2
/// convolutions"): tables 35% faster at `ow` = 4 (scatter-cnn), even at 7, 5–6% slower at 14
/// (DCGAN); the DCGAN layers (`ow` = 7, 14) keep the phase split.
const TABLE_MAX_OW: usize = 4;

/// The index table of the im2col of one geometry: the gather as one indexed load per column
/// entry, and its adjoint as one indexed add per column entry in the columns' own order (rows
/// read as streams; no strided loops, no bounds logic, no phase planes). Built once per
/// geometry and thread (see [`col_tables`]); what the small stride-2 layers (scatter-cnn's
/// 81 × 7 × 7 → 4 × 4) spent in loop overhead of runs of 4 values.
#[derive(Debug)]
struct ColTables {
    /// `gather[r·l + t]`: the offset in the image of column entry `(r, t)` (`l` = `oh·ow`),
    /// or `u32::MAX` where the entry reads the zero padding.
    gather: Vec<u32>,
}

impl ColTables {
    fn new(g: &ConvGeom) -> Self {
        let (h, w, k, s, p) = (g.h, g.w, g.k, g.stride, g.pad);
        let mut gather = Vec::with_capacity(g.cols_len());
        for ci in 0..g.c {
            for ki in 0..k {
                for kj in 0..k {
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let (iy, ix) = (oy * s + ki, ox * s + kj);
                            if iy < p || ix < p || iy - p >= h || ix - p >= w {
                                gather.push(u32::MAX);
                            } else {
                                gather.push(((ci * h + iy - p) * w + ix - p) as u32);
                            }
                        }
                    }
                }
            }
        }
        ColTables { gather }
    }
}

std::thread_local! {
    /// The tables of the geometries this thread ran last (a few layers' worth).
    static COL_TABLES: std::cell::RefCell<Vec<(ConvGeom, std::rc::Rc<ColTables>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The [`ColTables`] of `g`, from this thread's cache (built on first use), or `None` when `g`
/// is too large for tables (then the phase split runs).
fn col_tables(g: &ConvGeom) -> Option<std::rc::Rc<ColTables>> {
    if g.cols_len() > TABLE_MAX_COLS || g.ow > TABLE_MAX_OW {
        return None;
    }
    COL_TABLES.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(pos) = c.iter().position(|(k, _)| k == g) {
            return Some(c[pos].1.clone());
        }
        if c.len() >= 16 {
            c.remove(0);
        }
        let t = std::rc::Rc::new(ColTables::new(g));
        c.push((*g, t.clone()));
        Some(t)
    })
}

/// im2col through the tables: `cols[r·ld + t] = x[gather[r·l + t]]` (0 for padding), rows of
/// `l = oh·ow` values with leading dimension `ld`.
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn im2col_table<T: Real>(tab: &ColTables, l: usize, x: &[T], cols: &mut [T], ld: usize) {
    for (row, idx) in cols.chunks_mut(ld).zip(tab.gather.chunks_exact(l)) {
        for (o, &i) in row[..l].iter_mut().zip(idx) {
            *o = match x.get(i as usize) {
                Some(v) => *v,
                None => T::ZERO,
            };
        }
    }
}

/// col2im through the tables: `x[j] = Σ cols[r·ld + t]` over the entries `(r, t)` whose
/// table entry is `j`, added in the columns' order (increasing `r`); overwrites `x`.
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn col2im_table<T: Real>(tab: &ColTables, l: usize, cols: &[T], ld: usize, x: &mut [T]) {
    x.fill(T::ZERO);
    for (row, idx) in cols.chunks(ld).zip(tab.gather.chunks_exact(l)) {
        for (v, &i) in row[..l].iter().zip(idx) {
            if let Some(d) = x.get_mut(i as usize) {
                *d += *v;
            }
        }
    }
}

/// im2col of one example `x` into `cols` (leading dimension `ld`): through `tab` when given,
/// else through the phase split (`ph`: [`ConvGeom::phase_len`] scratch).
fn gather_cols<T: Real>(
    g: &ConvGeom,
    tab: Option<&ColTables>,
    x: &[T],
    ph: &mut [T],
    cols: &mut [T],
    ld: usize,
) {
    match tab {
        Some(t) => im2col_table(t, g.out_positions(), &x[..g.in_len()], cols, ld),
        None => {
            phase_split(g, x, ph);
            im2col_phased(g, ph, cols, ld);
        }
    }
}

/// col2im of one example's columns `cols` (leading dimension `ld`) into `x` (overwritten):
/// through `tab` when given, else through the phase split (`ph` as in [`gather_cols`]).
fn scatter_cols<T: Real>(
    g: &ConvGeom,
    tab: Option<&ColTables>,
    cols: &[T],
    ld: usize,
    ph: &mut [T],
    x: &mut [T],
) {
    match tab {
        Some(t) => col2im_table(t, g.out_positions(), cols, ld, &mut x[..g.in_len()]),
        None => {
            ph.fill(T::ZERO);
            col2im_phased(g, cols, ld, ph);
            phase_merge(g, ph, x);
        }
    }
}

/// The column matrix of `n` examples `x` (one after another) of a `Conv2d` micro-batch into
/// `cols` (laid out as [`ConvGeom::col_strides`] says): a copy of the inputs for a whole-image
/// kernel, else each example's im2col at column `j·l` (leading dimension `n·l`).
fn fill_cols<T: Real>(g: &ConvGeom, n: usize, x: &[T], ph: &mut [T], cols: &mut [T]) {
    let (il, l) = (g.in_len(), g.out_positions());
    if g.is_whole_image() {
        cols[..n * il].copy_from_slice(&x[..n * il]);
        return;
    }
    let tab = col_tables(g);
    for jj in 0..n {
        let xi = &x[jj * il..(jj + 1) * il];
        gather_cols(g, tab.as_deref(), xi, ph, &mut cols[jj * l..], n * l);
    }
}

/// Checks that `g` is what [`ConvGeom::new`] computes from its own fields.
fn check_geom(op: &'static str, g: &ConvGeom) -> Result<()> {
    let want = ConvGeom::new(op, g.c, g.h, g.w, g.k, g.stride, g.pad)?;
    if want != *g {
        return Err(Error::shape(
            op,
            format!("inconsistent geometry {g:?}: build it with ConvGeom::new"),
        ));
    }
    Ok(())
}

/// `cols[(ci·k + ki)·k + kj, oy·ow + ox] = x[ci, oy·s + ki − p, ox·s + kj − p]` (0 outside).
/// `x` is one image (`g.in_len()`), `cols` is `g.cols_len()` long.
pub fn im2col<T: Real>(g: &ConvGeom, x: &[T], cols: &mut [T]) -> Result<()> {
    check_geom("im2col", g)?;
    check_len("im2col", "x", x.len(), g.in_len())?;
    check_len("im2col", "cols", cols.len(), g.cols_len())?;
    im2col_raw(g, x, cols, g.out_positions());
    Ok(())
}

/// The adjoint of [`im2col`]: `x[ci, iy, ix] += Σ cols[...]` over every column entry that
/// [`im2col`] reads from `(ci, iy, ix)`. Accumulates: zero `x` first for a plain col2im.
pub fn col2im<T: Real>(g: &ConvGeom, cols: &[T], x: &mut [T]) -> Result<()> {
    check_geom("col2im", g)?;
    check_len("col2im", "x", x.len(), g.in_len())?;
    check_len("col2im", "cols", cols.len(), g.cols_len())?;
    col2im_raw(g, cols, x, g.out_positions());
    Ok(())
}

/// Sum over the spatial positions of each channel of `dy` (`[cout, l]`) into `db`, overwriting
/// when `beta = 0` and accumulating when `beta = 1`.
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn bias_grad<T: Real>(dy: &[T], l: usize, db: &mut [T], beta: T) {
    for (c, d) in db.iter_mut().enumerate() {
        // Eight running sums (they vectorise), added pairwise, then the tail.
        let row = &dy[c * l..(c + 1) * l];
        let mut acc = [T::ZERO; 8];
        let mut it = row.chunks_exact(8);
        for ch in &mut it {
            for k in 0..8 {
                acc[k] += ch[k];
            }
        }
        let mut s =
            ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for v in it.remainder() {
            s += *v;
        }
        *d = if beta == T::ZERO { s } else { *d + s };
    }
}

/// Column-matrix elements of one `Conv2d` micro-batch (1 MiB of f32; see
/// [`Conv2dShape::micro_batch`]).
const CONV_MICRO_BATCH_ELEMS: usize = 1 << 18;

/// Column-matrix and input elements of one `ConvTranspose2d` micro-batch (2 MiB of f32).
const CONV_T_MICRO_BATCH_ELEMS: usize = 1 << 19;

/// Most examples in one micro-batch.
const MAX_MICRO_BATCH: usize = 64;

/// Shape of a `Conv2d` call: `batch` images `[cin, h, w]`, `cout` filters of `k × k`,
/// `stride`, zero padding `pad` on every side, optional bias. Output `[batch, cout, oh, ow]`
/// with `oh = (h + 2·pad − k) / stride + 1` (PyTorch's `nn.Conv2d(cin, cout, k, stride, pad)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    /// Examples in the batch.
    pub batch: usize,
    /// Input channels.
    pub cin: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl Conv2dShape {
    /// Validates the shape and returns the per-example im2col geometry. Errors on a zero size
    /// or a kernel larger than the padded input.
    pub fn geom(&self) -> Result<ConvGeom> {
        if self.cout == 0 {
            return Err(Error::invalid("out_channels", 0, ">= 1"));
        }
        ConvGeom::new(
            "conv2d",
            self.cin,
            self.h,
            self.w,
            self.k,
            self.stride,
            self.pad,
        )
    }

    /// Output `(oh, ow)`.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        let g = self.geom()?;
        Ok((g.oh, g.ow))
    }

    /// Elements of the weight, `cout·cin·k·k`.
    pub fn weight_len(&self) -> usize {
        self.cout * self.cin * self.k * self.k
    }

    /// Elements of the parameter slice: weight, then `cout` bias values if any.
    pub fn num_params(&self) -> usize {
        self.weight_len() + if self.bias { self.cout } else { 0 }
    }

    /// Scratch that [`conv2d_forward`] and [`conv2d_backward`] need to run `chunks` chunks of
    /// the batch in parallel (`chunks` = the number of threads is a good choice).
    pub fn scratch_len(&self, chunks: usize) -> Result<usize> {
        let g = self.geom()?;
        Ok(chunks.max(1) * (self.work_len(&g) + self.num_params()))
    }

    /// Examples per GEMM: the im2col matrix of a micro-batch, `[cin·k·k, mb·oh·ow]`, takes
    /// about 1 MiB (up to 64 examples), and the forward, summed-weight-gradient and
    /// input-gradient products run on a whole micro-batch at once (the weight packed once per
    /// micro-batch). Per-sample weight gradients stay one product per example.
    ///
    /// Measured (BENCHMARKS.md, "DP-DCGAN step, issue 12, sixth round"): DCGAN's
    /// `Conv2d(32, 64, 4, 2, 1)` on 14 × 14, batch 64, one thread — micro-batches of 2 (the
    /// earlier 256 KiB budget) against 10: forward −15%, summed dW + dx −6%, dx −8%; the
    /// GEMMs' wider products outweigh the columns' leaving L2 (20 per micro-batch gained
    /// 1–2% more, left for a quiet two-thread check).
    pub fn micro_batch(&self, g: &ConvGeom) -> usize {
        (CONV_MICRO_BATCH_ELEMS / g.cols_len().max(1)).clamp(1, MAX_MICRO_BATCH)
    }

    /// Kernel scratch of one chunk: im2col and its gradient for a micro-batch, the
    /// micro-batch's outputs (or output gradients) as `[cout, mb·oh·ow]`, and the phase split
    /// of one example (or its gradient).
    fn work_len(&self, g: &ConvGeom) -> usize {
        let mb = self.micro_batch(g);
        mb * (2 * g.cols_len() + self.cout * g.out_positions()) + g.phase_len()
    }

    fn check(&self, op: &'static str, x: usize, params: usize) -> Result<ConvGeom> {
        let g = self.geom()?;
        check_len(op, "x", x, self.batch * g.in_len())?;
        check_len(op, "params", params, self.num_params())?;
        Ok(g)
    }
}

/// The forward of `n` examples (`x`: their inputs, `y`: their outputs) as one GEMM: im2col of
/// each into `cols` (`[kk, n·l]`, leading dimension `n·l`), `Y = W·cols` into `ybuf`, then
/// each example's `[cout, l]` plus the bias into `y`. `pk`: the weight packed by
/// [`igemm::pack_a`] and a B panel, where [`packs_weight`] (the product then runs on
/// [`igemm::gemm_packed_a`]).
#[allow(clippy::too_many_arguments)]
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn forward_block<T: Real>(
    s: &Conv2dShape,
    g: &ConvGeom,
    n: usize,
    x: &[T],
    w: &[T],
    pk: Option<(&[T], &mut [T])>,
    b: &[T],
    cols: &mut [T],
    ybuf: &mut [T],
    ph: &mut [T],
    y: &mut [T],
) {
    let (kk, l, cout) = (g.col_rows(), g.out_positions(), s.cout);
    let ld = n * l;
    fill_cols(g, n, x, ph, cols);
    let (crs, ccs) = g.col_strides(ld);
    if let (Some((wp, bpack)), 1) = (pk, ccs) {
        // Y = W · cols, W packed once per layer call ([`packs_weight`]).
        igemm::gemm_packed_a(cout, kk, ld, wp, cols, crs, ybuf, ld, false, bpack);
        unpack_outputs(s, n, l, ybuf, b, y);
        return;
    }
    // Y [cout × n·l] = W [cout × kk] · cols [kk × n·l]
    gemm(
        cout,
        kk,
        ld,
        T::ONE,
        w,
        kk,
        1,
        cols,
        crs,
        ccs,
        T::ZERO,
        ybuf,
        ld,
        1,
    );
    unpack_outputs(s, n, l, ybuf, b, y);
}

/// `y_j[c, t] = ybuf[c, j·l + t] + b[c]` for the `n` examples of a block.
fn unpack_outputs<T: Real>(s: &Conv2dShape, n: usize, l: usize, ybuf: &[T], b: &[T], y: &mut [T]) {
    let (cout, ld) = (s.cout, n * l);
    for jj in 0..n {
        let yi = &mut y[jj * cout * l..(jj + 1) * cout * l];
        for c in 0..cout {
            let src = &ybuf[c * ld + jj * l..c * ld + jj * l + l];
            let dst = &mut yi[c * l..(c + 1) * l];
            if s.bias {
                let bc = b[c];
                for (d, v) in dst.iter_mut().zip(src) {
                    *d = *v + bc;
                }
            } else {
                dst.copy_from_slice(src);
            }
        }
    }
}

/// The backward of `n` examples from their im2col `cols` (`[kk, n·l]`, leading dimension
/// `n·l`, as [`forward_block`] leaves it): `dys` their output gradients; parameter gradients
/// to `gout` (local examples `j0 ..`); their input gradients into `dx` when given. `pk`: the
/// weight's transpose `[kk × cout]` packed by [`igemm::pack_a`] and a B panel, where
/// [`packs_weight`] and not a whole image (`dcols` then runs on [`igemm::gemm_packed_a`]).
#[allow(clippy::too_many_arguments)]
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
fn backward_block<T: Real>(
    s: &Conv2dShape,
    g: &ConvGeom,
    n: usize,
    j0: usize,
    cols: &[T],
    dys: &[T],
    w: &[T],
    pk: Option<(&[T], &mut [T])>,
    dyb: &mut [T],
    dcols: &mut [T],
    ph: &mut [T],
    gout: &mut GradOut<'_, T>,
    dx: Option<&mut [T]>,
) {
    let (kk, l, il, cout) = (g.col_rows(), g.out_positions(), g.in_len(), s.cout);
    let (np, nw) = (s.num_params(), s.weight_len());
    let ld = n * l;
    // cols[r, p] at cols[r·crs + p·ccs]; its transpose has strides (ccs, crs).
    let (crs, ccs) = g.col_strides(ld);
    if gout.is_sum() || dx.is_some() {
        // dY of the block as [cout × n·l].
        for jj in 0..n {
            for c in 0..cout {
                dyb[c * ld + jj * l..c * ld + jj * l + l]
                    .copy_from_slice(&dys[(jj * cout + c) * l..(jj * cout + c + 1) * l]);
            }
        }
    }
    if let Some((region, beta)) = gout.sum_region(np) {
        let (dw, db) = region.split_at_mut(nw);
        // dW [cout × kk] += dY [cout × n·l] · colsᵀ [n·l × kk]
        gemm(
            cout,
            ld,
            kk,
            T::ONE,
            dyb,
            ld,
            1,
            cols,
            ccs,
            crs,
            beta,
            dw,
            kk,
            1,
        );
        if s.bias {
            bias_grad(dyb, ld, db, beta);
        }
    } else {
        for jj in 0..n {
            let Some((region, beta)) = gout.region(j0 + jj, np) else {
                break;
            };
            let dyi = &dys[jj * cout * l..(jj + 1) * cout * l];
            let (dw, db) = region.split_at_mut(nw);
            // dW_i [cout × kk] = dY_i [cout × l] · cols_iᵀ [l × kk]
            gemm(
                cout,
                l,
                kk,
                T::ONE,
                dyi,
                l,
                1,
                &cols[jj * l * ccs..],
                ccs,
                crs,
                beta,
                dw,
                kk,
                1,
            );
            if s.bias {
                bias_grad(dyi, l, db, beta);
            }
        }
    }
    if let Some(dx) = dx {
        if g.is_whole_image() {
            // col2im is the identity: dX [kk × n] = Wᵀ · dY written straight into the
            // examples (dx[j·il + r], il = kk), no dcols.
            gemm(
                kk,
                cout,
                ld,
                T::ONE,
                w,
                1,
                kk,
                dyb,
                ld,
                1,
                T::ZERO,
                dx,
                1,
                il,
            );
            return;
        }
        // dcols [kk × n·l] = Wᵀ [kk × cout] · dY [cout × n·l]
        if let Some((wtp, bpack)) = pk {
            igemm::gemm_packed_a(kk, cout, ld, wtp, dyb, ld, dcols, ld, false, bpack);
        } else {
            gemm(
                kk,
                cout,
                ld,
                T::ONE,
                w,
                1,
                kk,
                dyb,
                ld,
                1,
                T::ZERO,
                dcols,
                ld,
                1,
            );
        }
        let tab = col_tables(g);
        for jj in 0..n {
            let dxi = &mut dx[jj * il..(jj + 1) * il];
            scatter_cols(g, tab.as_deref(), &dcols[jj * l..], ld, ph, dxi);
        }
    }
}

impl Conv2dShape {
    /// Buffers of [`conv2d_forward_group`] / [`conv2d_backward_group`] for the whole batch as
    /// one block: (the im2col kept between them, `[kk, batch·l]`; the work area: im2col
    /// gradient, `[cout, batch·l]` outputs or output gradients, one phase split).
    pub(crate) fn group_lens(&self) -> Result<(usize, usize)> {
        let g = self.geom()?;
        let cols = self.batch * g.cols_len();
        Ok((
            cols,
            cols + self.batch * self.cout * g.out_positions() + g.phase_len(),
        ))
    }
}

/// [`conv2d_forward`] of a small group of examples on the calling thread as one block, keeping
/// its im2col in `cols` (`group_lens().0`) for [`conv2d_backward_group`]: the depth-first
/// schedule's forward, whose backward follows while the group is in cache. `work`:
/// `group_lens().1`. Same outputs as [`conv2d_forward`] (one GEMM over the group instead of
/// micro-batches: the same dot products).
pub(crate) fn conv2d_forward_group<T: Real>(
    s: &Conv2dShape,
    x: &[T],
    params: &[T],
    y: &mut [T],
    cols: &mut [T],
    work: &mut [T],
) -> Result<()> {
    const OP: &str = "conv2d_forward_group";
    let g = s.check(OP, x.len(), params.len())?;
    check_len(OP, "y", y.len(), s.batch * s.cout * g.out_positions())?;
    let (lc, lw) = s.group_lens()?;
    check_len(OP, "cols", cols.len(), lc)?;
    check_len(OP, "work", work.len(), lw)?;
    let (w, b) = params.split_at(s.weight_len());
    let (ybuf, ph) = work[lc..].split_at_mut(s.batch * s.cout * g.out_positions());
    let (cout, kk) = (s.cout, g.col_rows());
    let alen = igemm::packed_a_len(cout, kk);
    let packed = packs_weight::<T>(&g);
    let len = if packed {
        alen + igemm::PACKED_B_LEN
    } else {
        0
    };
    igemm::with_pack_buf(len, |buf: &mut [T]| {
        let pk = packed.then(|| {
            let (wp, bpack) = buf.split_at_mut(alen);
            igemm::pack_a(cout, kk, w, kk, 1, wp);
            (&*wp, bpack)
        });
        forward_block(s, &g, s.batch, x, w, pk, b, cols, ybuf, ph, y);
    });
    Ok(())
}

/// [`conv2d_backward`] of the group that [`conv2d_forward_group`] ran, from the im2col it kept
/// in `cols` (no second im2col). `work`: `group_lens().1`. Same results as
/// [`conv2d_backward`] (a [`ParamGrad::Sum`] is accumulated in place).
pub(crate) fn conv2d_backward_group<T: Real>(
    s: &Conv2dShape,
    cols: &[T],
    params: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    grad: ParamGrad<'_, T>,
    work: &mut [T],
) -> Result<()> {
    const OP: &str = "conv2d_backward_group";
    let g = s.geom()?;
    check_len(OP, "params", params.len(), s.num_params())?;
    let (l, il, cout) = (g.out_positions(), g.in_len(), s.cout);
    check_len(OP, "dy", dy.len(), s.batch * cout * l)?;
    if let Some(dx) = &dx {
        check_len(OP, "dx", dx.len(), s.batch * il)?;
    }
    let (lc, lw) = s.group_lens()?;
    check_len(OP, "cols", cols.len(), lc)?;
    check_len(OP, "work", work.len(), lw)?;
    check_grad(OP, &grad, s.batch, s.num_params())?;
    let w = &params[..s.weight_len()];
    let (dcols, rest) = work.split_at_mut(lc);
    let (dyb, ph) = rest.split_at_mut(s.batch * cout * l);
    let kk = g.col_rows();
    let alen = igemm::packed_a_len(kk, cout);
    let packed = dx.is_some() && packs_weight::<T>(&g) && !g.is_whole_image();
    let len = if packed {
        alen + igemm::PACKED_B_LEN
    } else {
        0
    };
    igemm::with_pack_buf(len, |buf: &mut [T]| {
        let pk = packed.then(|| {
            let (wtp, bpack) = buf.split_at_mut(alen);
            igemm::pack_a(kk, cout, w, 1, kk, wtp);
            (&*wtp, bpack)
        });
        run_single(dx, grad, |dx, gout| {
            backward_block(s, &g, s.batch, 0, cols, dy, w, pk, dyb, dcols, ph, gout, dx)
        });
    });
    Ok(())
}

/// `Conv2d` forward: `y_i = W ⋆ x_i + b` for every example.
///
/// `x`: `[batch, cin, h, w]`; `params`: weight `[cout, cin, k, k]` then bias `[cout]`;
/// `y`: `[batch, cout, oh, ow]` (overwritten); `scratch`: at least
/// [`Conv2dShape::scratch_len`]`(1)` (more gives more parallel chunks).
pub fn conv2d_forward<T: Real>(
    s: &Conv2dShape,
    x: &[T],
    params: &[T],
    y: &mut [T],
    scratch: &mut [T],
) -> Result<()> {
    const OP: &str = "conv2d_forward";
    let g = s.check(OP, x.len(), params.len())?;
    let (l, il, cout) = (g.out_positions(), g.in_len(), s.cout);
    check_len(OP, "y", y.len(), s.batch * cout * l)?;
    let work = s.work_len(&g);
    let chunks = chunks_for(OP, s.batch, scratch.len(), work)?;
    let mb = s.micro_batch(&g);
    let (w, b) = params.split_at(s.weight_len());
    let kk = g.col_rows();
    // The weight packed once for every micro-batch and thread ([`packs_weight`]); the own
    // GEMM reads the phase splits of x (no column matrix) where their buffers fit in the
    // columns' scratch, else the columns are materialised ([`forward_block`]).
    let packed = packs_weight::<T>(&g);
    let implicit = packed && implicit_len(&g, mb, 0, 0) <= mb * g.cols_len();
    let alen = if packed {
        igemm::packed_a_len(cout, kk)
    } else {
        0
    };
    igemm::with_pack_buf(alen, |wp: &mut [T]| {
        if packed {
            igemm::pack_a(cout, kk, w, kk, 1, wp);
        }
        let wp: &[T] = wp;
        let f = |ex: std::ops::Range<usize>,
                 y: Option<&mut [T]>,
                 _: &mut GradOut<'_, T>,
                 scr: &mut [T]| {
            let Some(y) = y else { return };
            let (cols, rest) = scr.split_at_mut(mb * g.cols_len());
            let (ybuf, ph) = rest[mb * g.cols_len()..].split_at_mut(mb * cout * l);
            let pl = g.phase_len();
            let mut bp = vec![
                T::ZERO;
                if packed && !implicit {
                    igemm::PACKED_B_LEN
                } else {
                    0
                }
            ];
            let mut j0 = 0;
            while j0 < ex.len() {
                let n = mb.min(ex.len() - j0);
                let i = ex.start + j0;
                let xs = &x[i * il..(i + n) * il];
                let ys = &mut y[j0 * cout * l..(j0 + n) * cout * l];
                if implicit {
                    let (_, bpack, phs) = implicit_split(cols, n, pl, 0);
                    for jj in 0..n {
                        phase_split(
                            &g,
                            &xs[jj * il..(jj + 1) * il],
                            &mut phs[jj * pl..(jj + 1) * pl],
                        );
                    }
                    let (po, qo) = phased_offsets(&g, n);
                    // Y [cout × n·l] = W [cout × kk] · cols, cols[r, (j, t)] gathered.
                    igemm::gemm_gather(cout, wp, phs, &po, &qo, ybuf, n * l, false, bpack);
                    unpack_outputs(s, n, l, ybuf, b, ys);
                } else {
                    let pk = packed.then_some((wp, &mut bp[..]));
                    forward_block(s, &g, n, xs, w, pk, b, cols, ybuf, ph, ys);
                }
                j0 += n;
            }
        };
        run_chunks(
            s.batch,
            chunks,
            Some((y, cout * l)),
            ParamGrad::None,
            0,
            scratch,
            work,
            &f,
        );
    });
    Ok(())
}

/// `Conv2d` backward.
///
/// Given `dy` (`[batch, cout, oh, ow]`, the gradient of the loss w.r.t. the output), writes the
/// gradient w.r.t. the input into `dx` (`[batch, cin, h, w]`, overwritten) when given, and the
/// parameter gradients (weight `[cout, cin, k, k]` then bias `[cout]`) to `grad`. `x` and
/// `params` are the forward's. `scratch`: at least [`Conv2dShape::scratch_len`]`(1)`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Real>(
    s: &Conv2dShape,
    x: &[T],
    params: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    grad: ParamGrad<'_, T>,
    scratch: &mut [T],
) -> Result<()> {
    const OP: &str = "conv2d_backward";
    let g = s.check(OP, x.len(), params.len())?;
    let (l, il, cout) = (g.out_positions(), g.in_len(), s.cout);
    check_len(OP, "dy", dy.len(), s.batch * cout * l)?;
    if let Some(dx) = &dx {
        check_len(OP, "dx", dx.len(), s.batch * il)?;
    }
    let np = s.num_params();
    check_grad(OP, &grad, s.batch, np)?;
    let work = s.work_len(&g);
    let chunks = chunks_for(OP, s.batch, scratch.len(), work + grad.extra_scratch(np))?;
    let mb = s.micro_batch(&g);
    let nw = s.weight_len();
    let w = &params[..nw];
    // Wᵀ packed once for every micro-batch and thread (the input gradient's product).
    let kk = g.col_rows();
    let packed = dx.is_some() && packs_weight::<T>(&g) && !g.is_whole_image();
    let alen = if packed {
        igemm::packed_a_len(kk, cout)
    } else {
        0
    };
    igemm::with_pack_buf(alen, |wtp: &mut [T]| {
        if packed {
            igemm::pack_a(kk, cout, w, 1, kk, wtp);
        }
        let wtp: &[T] = wtp;
        let f = |ex: std::ops::Range<usize>,
                 mut dx: Option<&mut [T]>,
                 gout: &mut GradOut<'_, T>,
                 scr: &mut [T]| {
            let (cols, rest) = scr.split_at_mut(mb * g.cols_len());
            let (dcols, rest) = rest.split_at_mut(mb * g.cols_len());
            let (dyb, ph) = rest.split_at_mut(mb * cout * l);
            let mut bp = vec![T::ZERO; if packed { igemm::PACKED_B_LEN } else { 0 }];
            let mut j0 = 0;
            while j0 < ex.len() {
                let n = mb.min(ex.len() - j0);
                let first = ex.start + j0;
                if gout.wanted() {
                    fill_cols(&g, n, &x[first * il..(first + n) * il], ph, cols);
                }
                let dys = &dy[first * cout * l..(first + n) * cout * l];
                let dxs = dx.as_deref_mut().map(|d| &mut d[j0 * il..(j0 + n) * il]);
                let pk = packed.then_some((wtp, &mut bp[..]));
                backward_block(s, &g, n, j0, cols, dys, w, pk, dyb, dcols, ph, gout, dxs);
                j0 += n;
            }
        };
        let out = dx.map(|d| (d, il));
        run_chunks(s.batch, chunks, out, grad, np, scratch, work, &f);
    });
    Ok(())
}

/// Shape of a `ConvTranspose2d` call: `batch` inputs `[cin, h, w]`, `cout` output channels,
/// `k × k` kernel, `stride`, `pad` (PyTorch's `padding`; no `output_padding`), optional bias.
/// Output `[batch, cout, oh, ow]` with `oh = (h − 1)·stride − 2·pad + k`, as
/// `nn.ConvTranspose2d(cin, cout, k, stride, pad)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2dShape {
    /// Examples in the batch.
    pub batch: usize,
    /// Input channels.
    pub cin: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Padding (removed from each side of the full output).
    pub pad: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl ConvTranspose2dShape {
    /// Validates the shape and returns the geometry of the adjoint convolution (from this
    /// layer's output to its input; see [`ConvGeom`]).
    pub fn geom(&self) -> Result<ConvGeom> {
        const OP: &str = "conv_transpose2d";
        if self.cin == 0 || self.h == 0 || self.w == 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "input [{}, {}, {}] has a zero dimension",
                    self.cin, self.h, self.w
                ),
            ));
        }
        if self.cout == 0 {
            return Err(Error::invalid("out_channels", 0, ">= 1"));
        }
        if self.k == 0 {
            return Err(Error::invalid("kernel_size", 0, ">= 1"));
        }
        if self.stride == 0 {
            return Err(Error::invalid("stride", 0, ">= 1"));
        }
        let full = |n: usize| (n - 1) * self.stride + self.k;
        let (fh, fw) = (full(self.h), full(self.w));
        if fh <= 2 * self.pad || fw <= 2 * self.pad {
            return Err(Error::shape(
                OP,
                format!(
                    "padding {} removes the whole {fh}x{fw} output (input {}x{}, kernel {}, stride {})",
                    self.pad, self.h, self.w, self.k, self.stride
                ),
            ));
        }
        let g = ConvGeom::new(
            OP,
            self.cout,
            fh - 2 * self.pad,
            fw - 2 * self.pad,
            self.k,
            self.stride,
            self.pad,
        )?;
        debug_assert_eq!((g.oh, g.ow), (self.h, self.w));
        Ok(g)
    }

    /// Output `(oh, ow)`.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        let g = self.geom()?;
        Ok((g.h, g.w))
    }

    /// Elements of the weight, `cin·cout·k·k`.
    pub fn weight_len(&self) -> usize {
        self.cin * self.cout * self.k * self.k
    }

    /// Elements of the parameter slice: weight, then `cout` bias values if any.
    pub fn num_params(&self) -> usize {
        self.weight_len() + if self.bias { self.cout } else { 0 }
    }

    /// Scratch that [`conv_transpose2d_forward`] and [`conv_transpose2d_backward`] need to run
    /// `chunks` chunks of the batch in parallel.
    pub fn scratch_len(&self, chunks: usize) -> Result<usize> {
        let g = self.geom()?;
        Ok(chunks.max(1) * (self.work_len(&g) + self.num_params()))
    }

    /// Examples per GEMM: a micro-batch's column matrix `[cout·k·k, mb·h·w]` and its inputs
    /// `[cin, mb·h·w]` take about 2 MiB (up to 64 examples), so the weight is packed once per
    /// micro-batch instead of once per example (the first DCGAN layer, 1×1 inputs, is a
    /// matrix–vector product per example otherwise).
    ///
    /// Measured (BENCHMARKS.md, "DP-DCGAN step, issue 12, sixth round"): DCGAN's
    /// `ConvTranspose2d(128, 64, 4, 2, 1)` on 7 × 7, batch 64, one thread — micro-batches of 4
    /// (the earlier 1 MiB budget) against 9: forward −6%, summed dW + dx −5% (18 gained 2–3%
    /// more, left for a quiet two-thread check).
    fn micro_batch(&self, g: &ConvGeom) -> usize {
        let per = g.cols_len() + self.cin * g.out_positions();
        (CONV_T_MICRO_BATCH_ELEMS / per.max(1)).clamp(1, MAX_MICRO_BATCH)
    }

    /// Kernel scratch of one chunk: a micro-batch's columns and inputs (or input gradients),
    /// and one phase split of an output image (or its gradient).
    fn work_len(&self, g: &ConvGeom) -> usize {
        let mb = self.micro_batch(g);
        mb * (g.cols_len() + self.cin * g.out_positions()) + g.phase_len()
    }

    /// Whether the layer maps a 1×1 input to the whole `k × k` kernel (no padding): DCGAN's
    /// first generator layer. Its col2im and im2col are the identity, so it is one GEMM.
    fn is_dense_1x1(&self, g: &ConvGeom) -> bool {
        self.h == 1 && self.w == 1 && self.pad == 0 && g.h == self.k && g.w == self.k
    }

    fn check(&self, op: &'static str, x: usize, params: usize) -> Result<ConvGeom> {
        let g = self.geom()?;
        check_len(op, "x", x, self.batch * self.cin * self.h * self.w)?;
        check_len(op, "params", params, self.num_params())?;
        Ok(g)
    }
}

/// `xb[c, j·l + t] = x[j, c, t]`: `n` examples `[cin, l]` side by side as one `[cin, n·l]`
/// matrix.
fn gather_examples<T: Real>(x: &[T], n: usize, cin: usize, l: usize, xb: &mut [T]) {
    let ld = n * l;
    for j in 0..n {
        for c in 0..cin {
            xb[c * ld + j * l..c * ld + (j + 1) * l]
                .copy_from_slice(&x[(j * cin + c) * l..(j * cin + c + 1) * l]);
        }
    }
}

/// The adjoint of [`gather_examples`]: `x[j, c, t] = xb[c, j·l + t]` (overwritten).
fn scatter_examples<T: Real>(xb: &[T], n: usize, cin: usize, l: usize, x: &mut [T]) {
    let ld = n * l;
    for j in 0..n {
        for c in 0..cin {
            x[(j * cin + c) * l..(j * cin + c + 1) * l]
                .copy_from_slice(&xb[c * ld + j * l..c * ld + (j + 1) * l]);
        }
    }
}

/// `ConvTranspose2d` forward: `y_i = col2im(Wᵀ · x_i) + b`.
///
/// `x`: `[batch, cin, h, w]`; `params`: weight `[cin, cout, k, k]` then bias `[cout]`;
/// `y`: `[batch, cout, oh, ow]` (overwritten); `scratch`: at least
/// [`ConvTranspose2dShape::scratch_len`]`(1)`.
///
/// Runs a micro-batch of examples as one GEMM (`cols [kk, n·l] = Wᵀ · [x_1 … x_n]`), then the
/// col2im of each example through the phase split of its output (no strided scatter).
pub fn conv_transpose2d_forward<T: Real>(
    s: &ConvTranspose2dShape,
    x: &[T],
    params: &[T],
    y: &mut [T],
    scratch: &mut [T],
) -> Result<()> {
    const OP: &str = "conv_transpose2d_forward";
    let g = s.check(OP, x.len(), params.len())?;
    let (kk, lin, ol, cin) = (g.col_rows(), g.out_positions(), g.in_len(), s.cin);
    check_len(OP, "y", y.len(), s.batch * ol)?;
    let sp = g.h * g.w;
    let il = cin * lin;
    let work = s.work_len(&g);
    let chunks = chunks_for(OP, s.batch, scratch.len(), work)?;
    let mb = s.micro_batch(&g);
    let (w, b) = params.split_at(s.weight_len());
    let direct = s.is_dense_1x1(&g);
    // Wᵀ packed once for every micro-batch and thread ([`packs_weight`]).
    let packed = !direct && packs_weight::<T>(&g);
    let alen = if packed {
        igemm::packed_a_len(kk, cin)
    } else {
        0
    };
    igemm::with_pack_buf(alen, |wtp: &mut [T]| {
        if packed {
            igemm::pack_a(kk, cin, w, 1, kk, wtp);
        }
        let wtp: &[T] = wtp;
        let f = |ex: std::ops::Range<usize>,
                 y: Option<&mut [T]>,
                 _: &mut GradOut<'_, T>,
                 scr: &mut [T]| {
            let Some(y) = y else { return };
            if direct {
                // col2im is the identity: Y [n × kk] = X [n × cin] · W [cin × kk].
                let n = ex.len();
                let xs = &x[ex.start * il..ex.end * il];
                gemm(n, cin, kk, T::ONE, xs, il, 1, w, kk, 1, T::ZERO, y, ol, 1);
                if s.bias {
                    for yi in y.chunks_exact_mut(ol) {
                        for (c, bc) in b.iter().enumerate() {
                            for v in &mut yi[c * sp..(c + 1) * sp] {
                                *v += *bc;
                            }
                        }
                    }
                }
                return;
            }
            let (cols, rest) = scr.split_at_mut(mb * g.cols_len());
            let (xb, ph) = rest.split_at_mut(mb * il);
            let ph = &mut ph[..g.phase_len()];
            let mut bp = vec![T::ZERO; if packed { igemm::PACKED_B_LEN } else { 0 }];
            let mut j0 = 0;
            while j0 < ex.len() {
                let n = mb.min(ex.len() - j0);
                let i = ex.start + j0;
                let ld = n * lin;
                let xs = &x[i * il..(i + n) * il];
                let xm: &[T] = if n == 1 {
                    xs
                } else {
                    gather_examples(xs, n, cin, lin, xb);
                    &xb[..cin * ld]
                };
                // cols [kk × n·lin] = Wᵀ [kk × cin] · X [cin × n·lin]
                if packed {
                    igemm::gemm_packed_a(kk, cin, ld, wtp, xm, ld, cols, ld, false, &mut bp);
                } else {
                    gemm(
                        kk,
                        cin,
                        ld,
                        T::ONE,
                        w,
                        1,
                        kk,
                        xm,
                        ld,
                        1,
                        T::ZERO,
                        cols,
                        ld,
                        1,
                    );
                }
                let tab = col_tables(&g);
                for jj in 0..n {
                    let yi = &mut y[(j0 + jj) * ol..(j0 + jj + 1) * ol];
                    scatter_cols(&g, tab.as_deref(), &cols[jj * lin..], ld, ph, yi);
                    if s.bias {
                        for (c, bc) in b.iter().enumerate() {
                            for v in &mut yi[c * sp..(c + 1) * sp] {
                                *v += *bc;
                            }
                        }
                    }
                }
                j0 += n;
            }
        };
        run_chunks(
            s.batch,
            chunks,
            Some((y, ol)),
            ParamGrad::None,
            0,
            scratch,
            work,
            &f,
        );
    });
    Ok(())
}

/// `ConvTranspose2d` backward (shapes as in [`conv_transpose2d_forward`]): the input gradient
/// into `dx` (`[batch, cin, h, w]`, overwritten) when given; the parameter gradients (weight
/// `[cin, cout, k, k]` then bias `[cout]`) to `grad`.
///
/// A micro-batch at a time: the im2col of the output gradients (through their phase splits)
/// as one `[kk, n·l]` matrix; a summed weight gradient as one GEMM over it, per-sample ones as
/// one GEMM per example; the input gradients as one GEMM.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_backward<T: Real>(
    s: &ConvTranspose2dShape,
    x: &[T],
    params: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    grad: ParamGrad<'_, T>,
    scratch: &mut [T],
) -> Result<()> {
    const OP: &str = "conv_transpose2d_backward";
    let g = s.check(OP, x.len(), params.len())?;
    let (kk, lin, ol, cin) = (g.col_rows(), g.out_positions(), g.in_len(), s.cin);
    check_len(OP, "dy", dy.len(), s.batch * ol)?;
    let il = cin * lin;
    if let Some(dx) = &dx {
        check_len(OP, "dx", dx.len(), s.batch * il)?;
    }
    let np = s.num_params();
    check_grad(OP, &grad, s.batch, np)?;
    let sp = g.h * g.w;
    let nw = s.weight_len();
    let w = &params[..nw];
    let work = s.work_len(&g);
    let chunks = chunks_for(OP, s.batch, scratch.len(), work + grad.extra_scratch(np))?;
    let mb = s.micro_batch(&g);
    let direct = s.is_dense_1x1(&g);
    // The own GEMM reads the phase splits of dy (no column matrix) where the phase split is
    // the im2col path ([`packs_weight`]) and its buffers (the packed X of the summed dW, the
    // B panel, the splits) fit in the columns' scratch; W, for the input gradient, is packed
    // once for every micro-batch and thread.
    let packed = !direct && packs_weight::<T>(&g);
    let implicit = packed && implicit_len(&g, mb, cin, mb * lin) <= mb * g.cols_len();
    let packed_dx = packed && dx.is_some();
    let alen = if packed_dx {
        igemm::packed_a_len(cin, kk)
    } else {
        0
    };
    igemm::with_pack_buf(alen, |wp: &mut [T]| {
        if packed_dx {
            igemm::pack_a(cin, kk, w, kk, 1, wp);
        }
        let wp: &[T] = wp;
        let f = |ex: std::ops::Range<usize>,
                 mut dx: Option<&mut [T]>,
                 gout: &mut GradOut<'_, T>,
                 scr: &mut [T]| {
            if direct && (gout.is_sum() || !gout.wanted()) {
                // im2col of dy is the identity: dW [cin × kk] += Xᵀ · DY, dX [n × cin] = DY · Wᵀ.
                let n = ex.len();
                let xs = &x[ex.start * il..ex.end * il];
                let dys = &dy[ex.start * ol..ex.end * ol];
                if let Some((region, beta)) = gout.sum_region(np) {
                    let (dw, db) = region.split_at_mut(nw);
                    gemm(cin, n, kk, T::ONE, xs, 1, il, dys, ol, 1, beta, dw, kk, 1);
                    if s.bias {
                        for (jj, dyi) in dys.chunks_exact(ol).enumerate() {
                            let bj = if jj == 0 { beta } else { T::ONE };
                            bias_grad(dyi, sp, db, bj);
                        }
                    }
                }
                if let Some(dx) = dx.as_deref_mut() {
                    gemm(n, kk, cin, T::ONE, dys, ol, 1, w, 1, kk, T::ZERO, dx, il, 1);
                }
                return;
            }
            let (dcols, rest) = scr.split_at_mut(mb * g.cols_len());
            let (xb, ph) = rest.split_at_mut(mb * il);
            let ph = &mut ph[..g.phase_len()];
            let mut bp = vec![T::ZERO; if packed_dx { igemm::PACKED_B_LEN } else { 0 }];
            let mut j0 = 0;
            while j0 < ex.len() {
                let n = mb.min(ex.len() - j0);
                let i = ex.start + j0;
                let ld = n * lin;
                if !gout.wanted() && dx.is_none() {
                    break;
                }
                if implicit && (gout.is_sum() || !gout.wanted()) {
                    let pl = g.phase_len();
                    let (apack, bpack, phs) =
                        implicit_split(dcols, n, pl, igemm::packed_a_len(cin, ld));
                    for jj in 0..n {
                        let dyi = &dy[(i + jj) * ol..(i + jj + 1) * ol];
                        phase_split(&g, dyi, &mut phs[jj * pl..(jj + 1) * pl]);
                    }
                    let (po, qo) = phased_offsets(&g, n);
                    let xs = &x[i * il..(i + n) * il];
                    let dys = &dy[i * ol..(i + n) * ol];
                    if let Some((region, beta)) = gout.sum_region(np) {
                        let (dw, db) = region.split_at_mut(nw);
                        let xm: &[T] = if n == 1 {
                            xs
                        } else {
                            gather_examples(xs, n, cin, lin, xb);
                            &xb[..cin * ld]
                        };
                        // dW [cin × kk] (+)= X [cin × n·lin] · dcolsᵀ, dcolsᵀ[(j, t), r] gathered.
                        igemm::pack_a(cin, ld, xm, ld, 1, apack);
                        igemm::gemm_gather(
                            cin,
                            apack,
                            phs,
                            &qo,
                            &po,
                            dw,
                            kk,
                            beta != T::ZERO,
                            bpack,
                        );
                        if s.bias {
                            for jj in 0..n {
                                let bj = if jj == 0 { beta } else { T::ONE };
                                bias_grad(&dys[jj * ol..(jj + 1) * ol], sp, db, bj);
                            }
                        }
                    }
                    if let Some(dx) = dx.as_deref_mut() {
                        let dxs = &mut dx[j0 * il..(j0 + n) * il];
                        // dX [cin × n·lin] = W [cin × kk] · dcols, dcols[r, (j, t)] gathered.
                        if n == 1 {
                            igemm::gemm_gather(cin, wp, phs, &po, &qo, dxs, lin, false, bpack);
                        } else {
                            igemm::gemm_gather(cin, wp, phs, &po, &qo, xb, ld, false, bpack);
                            scatter_examples(xb, n, cin, lin, dxs);
                        }
                    }
                    j0 += n;
                    continue;
                }
                let tab = col_tables(&g);
                for jj in 0..n {
                    let dyi = &dy[(i + jj) * ol..(i + jj + 1) * ol];
                    gather_cols(&g, tab.as_deref(), dyi, ph, &mut dcols[jj * lin..], ld);
                }
                let xs = &x[i * il..(i + n) * il];
                let dys = &dy[i * ol..(i + n) * ol];
                if let Some((region, beta)) = gout.sum_region(np) {
                    let (dw, db) = region.split_at_mut(nw);
                    let xm: &[T] = if n == 1 {
                        xs
                    } else {
                        gather_examples(xs, n, cin, lin, xb);
                        &xb[..cin * ld]
                    };
                    // dW [cin × kk] += X [cin × n·lin] · dcolsᵀ [n·lin × kk]
                    gemm(
                        cin,
                        ld,
                        kk,
                        T::ONE,
                        xm,
                        ld,
                        1,
                        dcols,
                        1,
                        ld,
                        beta,
                        dw,
                        kk,
                        1,
                    );
                    if s.bias {
                        for jj in 0..n {
                            let bj = if jj == 0 { beta } else { T::ONE };
                            bias_grad(&dys[jj * ol..(jj + 1) * ol], sp, db, bj);
                        }
                    }
                } else {
                    for jj in 0..n {
                        let Some((region, beta)) = gout.region(j0 + jj, np) else {
                            break;
                        };
                        let (dw, db) = region.split_at_mut(nw);
                        // dW_i [cin × kk] = x_i [cin × lin] · dcols_iᵀ [lin × kk]
                        gemm(
                            cin,
                            lin,
                            kk,
                            T::ONE,
                            &xs[jj * il..(jj + 1) * il],
                            lin,
                            1,
                            &dcols[jj * lin..],
                            1,
                            ld,
                            beta,
                            dw,
                            kk,
                            1,
                        );
                        if s.bias {
                            bias_grad(&dys[jj * ol..(jj + 1) * ol], sp, db, beta);
                        }
                    }
                }
                if let Some(dx) = dx.as_deref_mut() {
                    let dxs = &mut dx[j0 * il..(j0 + n) * il];
                    // dX [cin × n·lin] = W [cin × kk] · dcols [kk × n·lin]
                    if packed_dx {
                        if n == 1 {
                            igemm::gemm_packed_a(
                                cin, kk, lin, wp, dcols, lin, dxs, lin, false, &mut bp,
                            );
                        } else {
                            igemm::gemm_packed_a(
                                cin, kk, ld, wp, dcols, ld, xb, ld, false, &mut bp,
                            );
                            scatter_examples(xb, n, cin, lin, dxs);
                        }
                    } else if n == 1 {
                        gemm(
                            cin,
                            kk,
                            lin,
                            T::ONE,
                            w,
                            kk,
                            1,
                            dcols,
                            lin,
                            1,
                            T::ZERO,
                            dxs,
                            lin,
                            1,
                        );
                    } else {
                        gemm(
                            cin,
                            kk,
                            ld,
                            T::ONE,
                            w,
                            kk,
                            1,
                            dcols,
                            ld,
                            1,
                            T::ZERO,
                            xb,
                            ld,
                            1,
                        );
                        scatter_examples(xb, n, cin, lin, dxs);
                    }
                }
                j0 += n;
            }
        };
        let out = dx.map(|d| (d, il));
        run_chunks(s.batch, chunks, out, grad, np, scratch, work, &f);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩ for odd shapes, strides and paddings.
    #[test]
    fn col2im_is_adjoint_of_im2col() {
        for &(c, h, w, k, s, p) in &[
            (2, 5, 7, 3, 1, 1),
            (1, 6, 6, 4, 2, 3),
            (3, 4, 5, 2, 3, 0),
            (1, 3, 3, 5, 1, 2),
        ] {
            let g = ConvGeom::new("t", c, h, w, k, s, p).unwrap();
            let x: Vec<f64> = (0..g.in_len()).map(|i| (i as f64 * 0.7).sin()).collect();
            let cv: Vec<f64> = (0..g.cols_len()).map(|i| (i as f64 * 0.3).cos()).collect();
            let mut cols = vec![f64::NAN; g.cols_len()];
            im2col_raw(&g, &x, &mut cols, g.out_positions());
            let mut xb = vec![0.0; g.in_len()];
            col2im_raw(&g, &cv, &mut xb, g.out_positions());
            let lhs: f64 = cols.iter().zip(&cv).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&xb).map(|(a, b)| a * b).sum();
            assert!((lhs - rhs).abs() < 1e-10, "{lhs} vs {rhs}");
            // Direct check of one entry per row of the naive definition.
            for ci in 0..c {
                for ki in 0..k {
                    for kj in 0..k {
                        for oy in 0..g.oh {
                            for ox in 0..g.ow {
                                let iy = (oy * s + ki) as isize - p as isize;
                                let ix = (ox * s + kj) as isize - p as isize;
                                let v = if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize
                                {
                                    0.0
                                } else {
                                    x[(ci * h + iy as usize) * w + ix as usize]
                                };
                                assert_eq!(
                                    cols[((ci * k + ki) * k + kj) * g.out_positions()
                                        + oy * g.ow
                                        + ox],
                                    v
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The phase-split im2col/col2im (used by `Conv2d`) equal the direct ones, over strides
    /// 1–3, paddings and run lengths above and below the fixed-size copies.
    #[test]
    fn phased_im2col_matches_direct() {
        for &(c, h, w, k, s, p) in &[
            (1, 28, 28, 8, 2, 3),
            (16, 13, 13, 4, 2, 0),
            (2, 5, 7, 3, 1, 1),
            (1, 6, 6, 4, 2, 3),
            (3, 4, 5, 2, 3, 0),
            (1, 3, 3, 5, 1, 2),
            (2, 40, 37, 3, 1, 1),
            (2, 11, 9, 5, 3, 4),
        ] {
            let g = ConvGeom::new("t", c, h, w, k, s, p).unwrap();
            let x: Vec<f64> = (0..g.in_len()).map(|i| (i as f64 * 0.7).sin()).collect();
            let cv: Vec<f64> = (0..g.cols_len()).map(|i| (i as f64 * 0.3).cos()).collect();
            let l = g.out_positions();
            let mut want = vec![f64::NAN; g.cols_len()];
            im2col_raw(&g, &x, &mut want, l);
            let mut ph = vec![f64::NAN; g.phase_len()];
            phase_split(&g, &x, &mut ph);
            let mut got = vec![f64::NAN; g.cols_len()];
            im2col_phased(&g, &ph, &mut got, l);
            assert_eq!(got, want, "{g:?}");
            let mut want = vec![0.0; g.in_len()];
            col2im_raw(&g, &cv, &mut want, l);
            ph.fill(0.0);
            col2im_phased(&g, &cv, l, &mut ph);
            let mut got = vec![f64::NAN; g.in_len()];
            phase_merge(&g, &ph, &mut got);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "{g:?}: {a} vs {b}");
            }
        }
    }

    /// The table im2col/col2im (small geometries) equal the direct ones, in the middle of a
    /// micro-batch's columns (leading dimension 3·l, offset l), over strides 1–3, paddings
    /// larger than the kernel reach, and a stride larger than the kernel (unread pixels).
    #[test]
    fn table_im2col_matches_direct() {
        for &(c, h, w, k, s, p) in &[
            (81, 7, 7, 3, 2, 1),
            (32, 8, 8, 4, 2, 1),
            (2, 5, 4, 3, 1, 1),
            (1, 4, 4, 4, 2, 3),
            (3, 4, 5, 2, 3, 0),
            (1, 3, 3, 5, 1, 2),
            (2, 11, 9, 5, 3, 3),
        ] {
            let g = ConvGeom::new("t", c, h, w, k, s, p).unwrap();
            let tab = col_tables(&g).expect("small geometry");
            let x: Vec<f64> = (0..g.in_len()).map(|i| (i as f64 * 0.7).sin()).collect();
            let l = g.out_positions();
            let kk = g.col_rows();
            let mut want = vec![f64::NAN; g.cols_len()];
            im2col_raw(&g, &x, &mut want, l);
            let mut wide = vec![f64::NAN; kk * 3 * l];
            im2col_table(&tab, l, &x, &mut wide[l..], 3 * l);
            for r in 0..kk {
                assert_eq!(
                    &wide[r * 3 * l + l..r * 3 * l + 2 * l],
                    &want[r * l..(r + 1) * l]
                );
                assert!(wide[r * 3 * l..r * 3 * l + l].iter().all(|v| v.is_nan()));
            }
            let cv: Vec<f64> = (0..wide.len()).map(|i| (i as f64 * 0.3).cos()).collect();
            let mut dense = vec![0.0; g.cols_len()];
            for r in 0..kk {
                dense[r * l..(r + 1) * l].copy_from_slice(&cv[r * 3 * l + l..r * 3 * l + 2 * l]);
            }
            let mut want = vec![0.0; g.in_len()];
            col2im_raw(&g, &dense, &mut want, l);
            let mut got = vec![f64::NAN; g.in_len()];
            col2im_table(&tab, l, &cv[l..], 3 * l, &mut got);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "{g:?}: {a} vs {b}");
            }
        }
        let big = ConvGeom::new("t", 8192, 8, 8, 3, 2, 1).unwrap();
        assert!(
            col_tables(&big).is_none(),
            "large geometries take the phase split"
        );
        let wide = ConvGeom::new("t", 1, 28, 28, 4, 2, 1).unwrap();
        assert!(
            col_tables(&wide).is_none(),
            "wide outputs take the phase split"
        );
    }

    /// `ConvTranspose2d` over several micro-batches (gathered GEMMs) equals the same layer run
    /// one example at a time: outputs, input gradients, per-sample gradients, and their sum.
    #[test]
    fn conv_transpose_micro_batches_match_single_examples() {
        let strided = ConvTranspose2dShape {
            batch: 45,
            cin: 6,
            h: 7,
            w: 7,
            cout: 64,
            k: 4,
            stride: 2,
            pad: 1,
            bias: true,
        };
        let g = strided.geom().unwrap();
        let mb = strided.micro_batch(&g);
        assert!(
            mb > 1 && mb < strided.batch,
            "micro-batch {mb}: pick another shape"
        );
        // The one-GEMM path: a 1×1 input to the whole k × k kernel.
        let dense = ConvTranspose2dShape {
            batch: 5,
            cin: 3,
            h: 1,
            w: 1,
            cout: 4,
            k: 3,
            stride: 1,
            pad: 0,
            bias: true,
        };
        assert!(dense.is_dense_1x1(&dense.geom().unwrap()));
        // Against the definition: y[i, r] = Σ_c x[i, c]·W[c, r] + b, dW[c, r] = Σ_i x[i, c]·dy[i, r],
        // dx[i, c] = Σ_r dy[i, r]·W[c, r] (r = (co, ki, kj)).
        {
            let s = dense;
            let (n, cin, kk) = (s.batch, s.cin, s.cout * s.k * s.k);
            let v = |len: usize, a: f64| -> Vec<f64> {
                (0..len).map(|i| (i as f64 * a).cos()).collect()
            };
            let (x, p, dy) = (v(n * cin, 0.7), v(s.num_params(), 0.3), v(n * kk, 0.9));
            let mut scr = vec![0.0; s.scratch_len(2).unwrap()];
            let mut y = vec![f64::NAN; n * kk];
            conv_transpose2d_forward(&s, &x, &p, &mut y, &mut scr).unwrap();
            let mut dx = vec![f64::NAN; n * cin];
            let mut dp = vec![f64::NAN; s.num_params()];
            let grad = ParamGrad::Sum {
                grad: &mut dp,
                accumulate: false,
            };
            conv_transpose2d_backward(&s, &x, &p, &dy, Some(&mut dx), grad, &mut scr).unwrap();
            let sp = s.k * s.k;
            for i in 0..n {
                for r in 0..kk {
                    let want: f64 = (0..cin)
                        .map(|c| x[i * cin + c] * p[c * kk + r])
                        .sum::<f64>()
                        + p[cin * kk + r / sp];
                    assert!((y[i * kk + r] - want).abs() < 1e-12, "y");
                }
                for c in 0..cin {
                    let want: f64 = (0..kk).map(|r| dy[i * kk + r] * p[c * kk + r]).sum();
                    assert!((dx[i * cin + c] - want).abs() < 1e-12, "dx");
                }
            }
            for c in 0..cin {
                for r in 0..kk {
                    let want: f64 = (0..n).map(|i| x[i * cin + c] * dy[i * kk + r]).sum();
                    assert!((dp[c * kk + r] - want).abs() < 1e-12, "dW");
                }
            }
            for co in 0..s.cout {
                let want: f64 = (0..n)
                    .map(|i| (0..sp).map(|t| dy[i * kk + co * sp + t]).sum::<f64>())
                    .sum();
                assert!((dp[cin * kk + co] - want).abs() < 1e-12, "db");
            }
        }
        for s in [strided, dense] {
            check_against_single_examples(s);
        }
    }

    fn check_against_single_examples(s: ConvTranspose2dShape) {
        let g = s.geom().unwrap();
        let (il, ol, np) = (s.cin * s.h * s.w, g.in_len(), s.num_params());
        let v = |n: usize, a: f64| -> Vec<f64> { (0..n).map(|i| (i as f64 * a).sin()).collect() };
        let (x, p, dy) = (v(s.batch * il, 0.37), v(np, 0.11), v(s.batch * ol, 0.23));
        let mut scr = vec![0.0; s.scratch_len(1).unwrap()];
        let mut y = vec![f64::NAN; s.batch * ol];
        conv_transpose2d_forward(&s, &x, &p, &mut y, &mut scr).unwrap();
        let mut dx = vec![f64::NAN; s.batch * il];
        let mut rows = vec![f64::NAN; s.batch * np];
        let grad = ParamGrad::PerSample {
            rows: &mut rows,
            stride: np,
            offset: 0,
        };
        conv_transpose2d_backward(&s, &x, &p, &dy, Some(&mut dx), grad, &mut scr).unwrap();
        let mut sum = vec![f64::NAN; np];
        let grad = ParamGrad::Sum {
            grad: &mut sum,
            accumulate: false,
        };
        conv_transpose2d_backward(&s, &x, &p, &dy, None, grad, &mut scr).unwrap();
        let one = ConvTranspose2dShape { batch: 1, ..s };
        let mut want_sum = vec![0.0; np];
        for i in 0..s.batch {
            let xi = &x[i * il..(i + 1) * il];
            let dyi = &dy[i * ol..(i + 1) * ol];
            let mut yi = vec![f64::NAN; ol];
            conv_transpose2d_forward(&one, xi, &p, &mut yi, &mut scr).unwrap();
            let mut dxi = vec![f64::NAN; il];
            let mut row = vec![f64::NAN; np];
            let grad = ParamGrad::PerSample {
                rows: &mut row,
                stride: np,
                offset: 0,
            };
            conv_transpose2d_backward(&one, xi, &p, dyi, Some(&mut dxi), grad, &mut scr).unwrap();
            let close = |a: &[f64], b: &[f64], what: &str| {
                for (u, w) in a.iter().zip(b) {
                    assert!(
                        (u - w).abs() <= 1e-12 * (1.0 + w.abs()),
                        "{what} {i}: {u} vs {w}"
                    );
                }
            };
            close(&y[i * ol..(i + 1) * ol], &yi, "y");
            close(&dx[i * il..(i + 1) * il], &dxi, "dx");
            close(&rows[i * np..(i + 1) * np], &row, "row");
            for (t, r) in want_sum.iter_mut().zip(&row) {
                *t += r;
            }
        }
        for (u, w) in sum.iter().zip(&want_sum) {
            assert!((u - w).abs() <= 1e-10 * (1.0 + w.abs()), "sum: {u} vs {w}");
        }
    }

    /// `Conv2d` over several micro-batches (one GEMM each for the forward, the summed weight
    /// gradient and the input gradient) equals the same layer run one example at a time:
    /// outputs, input gradients, per-sample gradients (f64, to 1e-12) and their sum (1e-10);
    /// in f32 the outputs and input gradients are bit-identical (the same dot products in
    /// the same order: only the product's width changes), the summed gradient within 1e-5.
    #[test]
    fn conv2d_micro_batches_match_single_examples() {
        // A stride-2 4 × 4 layer (DCGAN's discriminator geometry) whose column matrix
        // (131 072 values per example) makes micro-batches of 2: batch 9 runs 2 + 2 + 2 + 2 + 1.
        let s = Conv2dShape {
            batch: 9,
            cin: 8,
            h: 64,
            w: 64,
            cout: 5,
            k: 4,
            stride: 2,
            pad: 1,
            bias: true,
        };
        let g = s.geom().unwrap();
        let mb = s.micro_batch(&g);
        assert!(
            mb > 1 && mb < s.batch,
            "micro-batch {mb}: pick another shape"
        );
        conv2d_check_against_single_examples::<f64>(s, 1e-12, 1e-10, false);
        conv2d_check_against_single_examples::<f32>(s, 1e-6, 1e-5, true);
    }

    /// `tol`: relative tolerance of the per-sample rows (and of `y`, `dx` unless `exact`, which
    /// asks them bit-identical); `sum_tol`: of the summed gradient.
    fn conv2d_check_against_single_examples<T: Real>(
        s: Conv2dShape,
        tol: f64,
        sum_tol: f64,
        exact: bool,
    ) {
        let g = s.geom().unwrap();
        let (il, ol, np) = (g.in_len(), s.cout * g.out_positions(), s.num_params());
        let v = |n: usize, a: f64| -> Vec<T> {
            (0..n).map(|i| T::from_f64((i as f64 * a).sin())).collect()
        };
        let (x, p, dy) = (v(s.batch * il, 0.37), v(np, 0.11), v(s.batch * ol, 0.23));
        let nan = T::from_f64(f64::NAN);
        let mut scr = vec![T::ZERO; s.scratch_len(1).unwrap()];
        let mut y = vec![nan; s.batch * ol];
        conv2d_forward(&s, &x, &p, &mut y, &mut scr).unwrap();
        let mut dx = vec![nan; s.batch * il];
        let mut rows = vec![nan; s.batch * np];
        let grad = ParamGrad::PerSample {
            rows: &mut rows,
            stride: np,
            offset: 0,
        };
        conv2d_backward(&s, &x, &p, &dy, Some(&mut dx), grad, &mut scr).unwrap();
        let mut sum = vec![nan; np];
        let mut dx2 = vec![nan; s.batch * il];
        let grad = ParamGrad::Sum {
            grad: &mut sum,
            accumulate: false,
        };
        conv2d_backward(&s, &x, &p, &dy, Some(&mut dx2), grad, &mut scr).unwrap();
        assert_eq!(dx, dx2, "dx with a summed gradient");
        let one = Conv2dShape { batch: 1, ..s };
        let mut want_sum = vec![0.0f64; np];
        let close = |a: &[T], b: &[T], what: &str, i: usize| {
            for (u, w) in a.iter().zip(b) {
                let (u, w) = (u.to_f64(), w.to_f64());
                if exact && what != "row" {
                    assert_eq!(u.to_bits(), w.to_bits(), "{what} {i}: {u} vs {w}");
                } else {
                    assert!(
                        (u - w).abs() <= tol * (1.0 + w.abs()),
                        "{what} {i}: {u} vs {w}"
                    );
                }
            }
        };
        for i in 0..s.batch {
            let xi = &x[i * il..(i + 1) * il];
            let dyi = &dy[i * ol..(i + 1) * ol];
            let mut yi = vec![nan; ol];
            conv2d_forward(&one, xi, &p, &mut yi, &mut scr).unwrap();
            let mut dxi = vec![nan; il];
            let mut row = vec![nan; np];
            let grad = ParamGrad::PerSample {
                rows: &mut row,
                stride: np,
                offset: 0,
            };
            conv2d_backward(&one, xi, &p, dyi, Some(&mut dxi), grad, &mut scr).unwrap();
            close(&y[i * ol..(i + 1) * ol], &yi, "y", i);
            close(&dx[i * il..(i + 1) * il], &dxi, "dx", i);
            close(&rows[i * np..(i + 1) * np], &row, "row", i);
            for (t, r) in want_sum.iter_mut().zip(&row) {
                *t += r.to_f64();
            }
        }
        for (u, w) in sum.iter().zip(&want_sum) {
            let u = u.to_f64();
            assert!(
                (u - w).abs() <= sum_tol * (1.0 + w.abs()),
                "sum: {u} vs {w}"
            );
        }
    }

    /// Inputs in [−1, 1] for the implicit-GEMM checks, in f64 (rounded to f32 for the f32 runs,
    /// so both see the same values).
    fn wave(n: usize, a: f64) -> Vec<f64> {
        (0..n).map(|i| ((i as f64 * a).sin() * 1e4).sin()).collect()
    }

    fn to32(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&u| u as f32).collect()
    }

    /// max |u − w| over the pairs, and max |w|.
    fn max_err(u: &[f32], w: &[f64]) -> (f64, f64) {
        assert_eq!(u.len(), w.len());
        u.iter().zip(w).fold((0.0, 0.0), |(e, m), (&a, &b)| {
            assert!(a.is_finite(), "non-finite output");
            (f64::max(e, (a as f64 - b).abs()), f64::max(m, b.abs()))
        })
    }

    /// The f32 result of the own GEMM (`new`) against the old path in f32 (`old`, im2col +
    /// `matrixmultiply`) and against the old path in f64 (`reference`): within
    /// `1e-6·(depth)·(1 + max |reference|)` of the reference, and no more than 4× the old
    /// path's own error (+ 1e-6) — as accurate as before, with its new summation order.
    fn check_new_old_ref(what: &str, depth: usize, new: &[f32], old: &[f32], reference: &[f64]) {
        let (en, m) = max_err(new, reference);
        let (eo, _) = max_err(old, reference);
        let tol = 1e-6 * depth as f64 * (1.0 + m);
        assert!(en <= tol, "{what}: new path error {en} > {tol}");
        assert!(
            en <= 4.0 * eo + 1e-6,
            "{what}: new path error {en} vs old path {eo}"
        );
    }

    /// `Conv2d` forward through the own GEMM (implicit im2col from the phase split) equals
    /// the old path (f32) and the f64 reference, on odd shapes, strides 1–3, paddings 0–2,
    /// kernels 3–5, batch 1 and several micro-batches (DCGAN's D2: 10 + 2); bias included.
    #[test]
    fn conv2d_forward_implicit_gemm_matches_old_path_and_f64() {
        if !igemm::available() {
            return; // only the old path runs on this CPU / build
        }
        let shapes = [
            (1, 3, 11, 13, 5, 3, 1, 1),
            (7, 4, 15, 12, 13, 5, 2, 2),
            (3, 2, 20, 17, 7, 4, 3, 0),
            (12, 32, 14, 14, 64, 4, 2, 1),
        ];
        for (batch, cin, h, w, cout, k, stride, pad) in shapes {
            let s = Conv2dShape {
                batch,
                cin,
                h,
                w,
                cout,
                k,
                stride,
                pad,
                bias: true,
            };
            let g = s.geom().unwrap();
            assert!(col_tables(&g).is_none(), "{s:?} takes the tables");
            let (il, ol) = (g.in_len(), s.cout * g.out_positions());
            let (x, p) = (wave(batch * il, 0.37), wave(s.num_params(), 0.11));
            let mut y64 = vec![f64::NAN; batch * ol];
            let mut scr64 = vec![0.0; s.scratch_len(2).unwrap()];
            conv2d_forward(&s, &x, &p, &mut y64, &mut scr64).unwrap();
            let (x32, p32) = (to32(&x), to32(&p));
            // One chunk: the layer runs on this thread, where igemm::calls() counts.
            let mut scr = vec![0f32; s.scratch_len(1).unwrap()];
            let mut new = vec![f32::NAN; batch * ol];
            let calls = igemm::calls();
            conv2d_forward(&s, &x32, &p32, &mut new, &mut scr).unwrap();
            assert!(igemm::calls() > calls, "{s:?}: the new path did not run");
            let mut old = vec![f32::NAN; batch * ol];
            igemm::with_old_path(|| conv2d_forward(&s, &x32, &p32, &mut old, &mut scr)).unwrap();
            check_new_old_ref(&format!("y {s:?}"), g.col_rows(), &new, &old, &y64);
        }
    }

    /// `ConvTranspose2d` backward through the own GEMM (implicit im2col of dy from its phase
    /// split, for the summed weight gradient and the input gradient) equals the old path (f32)
    /// and the f64 reference: summed gradient overwritten and accumulated, input gradient with
    /// a summed or no parameter gradient; odd shapes, strides 1–3, batch 1, several
    /// micro-batches (DCGAN's G2: 9 + 2). Per-sample gradients (the old path, unchanged) still
    /// sum to the new summed gradient.
    #[test]
    fn conv_transpose_backward_implicit_gemm_matches_old_path_and_f64() {
        if !igemm::available() {
            return;
        }
        let shapes = [
            (11, 128, 7, 7, 64, 4, 2, 1),
            (1, 3, 5, 6, 4, 3, 1, 0),
            (5, 6, 6, 5, 7, 5, 3, 2),
            (4, 9, 9, 8, 3, 4, 2, 1),
        ];
        for (batch, cin, h, w, cout, k, stride, pad) in shapes {
            let s = ConvTranspose2dShape {
                batch,
                cin,
                h,
                w,
                cout,
                k,
                stride,
                pad,
                bias: true,
            };
            let g = s.geom().unwrap();
            assert!(col_tables(&g).is_none(), "{s:?} takes the tables");
            let (il, ol, np) = (cin * h * w, g.in_len(), s.num_params());
            let (x, p, dy) = (
                wave(batch * il, 0.37),
                wave(np, 0.11),
                wave(batch * ol, 0.23),
            );
            let prior = wave(np, 0.71);
            let (x32, p32, dy32, prior32) = (to32(&x), to32(&p), to32(&dy), to32(&prior));
            // f64 reference (old path): dx, the summed gradient, the accumulated one.
            let mut scr64 = vec![0.0; s.scratch_len(2).unwrap() + np];
            let mut dx64 = vec![f64::NAN; batch * il];
            let mut sum64 = vec![f64::NAN; np];
            let grad = ParamGrad::Sum {
                grad: &mut sum64,
                accumulate: false,
            };
            conv_transpose2d_backward(&s, &x, &p, &dy, Some(&mut dx64), grad, &mut scr64).unwrap();
            let acc64: Vec<f64> = prior.iter().zip(&sum64).map(|(a, b)| a + b).collect();
            let run = |old: bool, accumulate: bool, none: bool| -> (Vec<f32>, Vec<f32>) {
                // One chunk: the layer runs on this thread, where igemm::calls() counts.
                let mut scr = vec![0f32; s.scratch_len(1).unwrap() + np];
                let calls = igemm::calls();
                let mut dx = vec![f32::NAN; batch * il];
                let mut sum = if accumulate {
                    prior32.clone()
                } else {
                    vec![f32::NAN; np]
                };
                let mut f = || {
                    let grad = if none {
                        ParamGrad::None
                    } else {
                        ParamGrad::Sum {
                            grad: &mut sum,
                            accumulate,
                        }
                    };
                    conv_transpose2d_backward(&s, &x32, &p32, &dy32, Some(&mut dx), grad, &mut scr)
                };
                if old {
                    igemm::with_old_path(f).unwrap();
                } else {
                    f().unwrap();
                }
                assert_eq!(igemm::calls() > calls, !old, "{s:?}: which path ran");
                (dx, sum)
            };
            let (dx_new, sum_new) = run(false, false, false);
            let (dx_old, sum_old) = run(true, false, false);
            let depth_dw = batch * g.out_positions();
            check_new_old_ref(&format!("dx {s:?}"), g.col_rows(), &dx_new, &dx_old, &dx64);
            check_new_old_ref(&format!("dW {s:?}"), depth_dw, &sum_new, &sum_old, &sum64);
            let (_, acc_new) = run(false, true, false);
            let (_, acc_old) = run(true, true, false);
            check_new_old_ref(
                &format!("dW += {s:?}"),
                depth_dw,
                &acc_new,
                &acc_old,
                &acc64,
            );
            let (dx_none, _) = run(false, false, true);
            assert_eq!(dx_none, dx_new, "{s:?}: dx with no parameter gradient");
            // Per-sample rows (old path) against the new summed gradient.
            let mut scr = vec![0f32; s.scratch_len(2).unwrap() + np];
            let mut rows = vec![f32::NAN; batch * np];
            let grad = ParamGrad::PerSample {
                rows: &mut rows,
                stride: np,
                offset: 0,
            };
            conv_transpose2d_backward(&s, &x32, &p32, &dy32, None, grad, &mut scr).unwrap();
            let from_rows: Vec<f64> = (0..np)
                .map(|t| (0..batch).map(|i| rows[i * np + t] as f64).sum())
                .collect();
            let (e, m) = max_err(&sum_new, &from_rows);
            let tol = 1e-6 * depth_dw as f64 * (1.0 + m);
            assert!(e <= tol, "{s:?}: Σ per-sample rows vs summed: {e} > {tol}");
        }
    }

    /// The products with the weight packed once per layer call (`Conv2d`: the forward of the
    /// depth-first group and the input gradient on both schedules; `ConvTranspose2d`: the
    /// forward, and the input gradient beside per-sample gradients) against the old path (f32)
    /// and the f64 reference, on odd shapes, strides 1–3, batch 1, several micro-batches
    /// (D2 at W = 32: 10 + 2; D2 and G2 at W = 128: 2 + 1 and 1 + 1 + 1); and bit-identical
    /// across schedules and paths: group forward = layer-major forward, group dx =
    /// layer-major dx, the per-sample path's dx = the summed path's dx, each example's
    /// output = its batch of one.
    #[test]
    fn packed_weight_paths_match_old_path_and_f64() {
        if !igemm::available() {
            return;
        }
        let conv = [
            (1, 3, 11, 13, 5, 3, 1, 1),
            (7, 4, 15, 12, 13, 5, 2, 2),
            (3, 2, 20, 17, 7, 4, 3, 0),
            (12, 32, 14, 14, 64, 4, 2, 1),
            (3, 128, 14, 14, 256, 4, 2, 1),
        ];
        for (batch, cin, h, w, cout, k, stride, pad) in conv {
            let s = Conv2dShape {
                batch,
                cin,
                h,
                w,
                cout,
                k,
                stride,
                pad,
                bias: true,
            };
            let g = s.geom().unwrap();
            assert!(packs_weight::<f32>(&g), "{s:?} does not pack its weight");
            let (il, ol, np) = (g.in_len(), cout * g.out_positions(), s.num_params());
            let (x, p, dy) = (
                wave(batch * il, 0.37),
                wave(np, 0.11),
                wave(batch * ol, 0.23),
            );
            let (x32, p32, dy32) = (to32(&x), to32(&p), to32(&dy));
            let mut scr64 = vec![0.0; s.scratch_len(1).unwrap() + np];
            let mut y64 = vec![f64::NAN; batch * ol];
            conv2d_forward(&s, &x, &p, &mut y64, &mut scr64).unwrap();
            let mut dx64 = vec![f64::NAN; batch * il];
            conv2d_backward(
                &s,
                &x,
                &p,
                &dy,
                Some(&mut dx64),
                ParamGrad::None,
                &mut scr64,
            )
            .unwrap();
            // Layer-major, one chunk (this thread, where igemm::calls() counts), new and old.
            let mut scr = vec![0f32; s.work_len(&g)];
            let mut y = vec![f32::NAN; batch * ol];
            conv2d_forward(&s, &x32, &p32, &mut y, &mut scr).unwrap();
            let mut dx = vec![f32::NAN; batch * il];
            let calls = igemm::calls();
            conv2d_backward(
                &s,
                &x32,
                &p32,
                &dy32,
                Some(&mut dx),
                ParamGrad::None,
                &mut scr,
            )
            .unwrap();
            assert!(
                igemm::calls() > calls,
                "{s:?}: dx did not take the packed Wᵀ"
            );
            let mut dx_old = vec![f32::NAN; batch * il];
            igemm::with_old_path(|| {
                conv2d_backward(
                    &s,
                    &x32,
                    &p32,
                    &dy32,
                    Some(&mut dx_old),
                    ParamGrad::None,
                    &mut scr,
                )
            })
            .unwrap();
            check_new_old_ref(&format!("conv dx {s:?}"), cout, &dx, &dx_old, &dx64);
            // dx beside per-sample gradients, and on two chunks: the same bits.
            let mut scr2 = vec![0f32; s.scratch_len(2).unwrap() + 2 * np];
            let mut rows = vec![f32::NAN; batch * np];
            let mut dx_rows = vec![f32::NAN; batch * il];
            let grad = ParamGrad::PerSample {
                rows: &mut rows,
                stride: np,
                offset: 0,
            };
            conv2d_backward(&s, &x32, &p32, &dy32, Some(&mut dx_rows), grad, &mut scr2).unwrap();
            assert_eq!(
                dx_rows, dx,
                "{s:?}: dx with per-sample gradients, two chunks"
            );
            // The depth-first group: forward and dx bit-identical to the layer-major ones.
            let (lc, lw) = s.group_lens().unwrap();
            let (mut cols, mut work) = (vec![0f32; lc], vec![0f32; lw]);
            let mut yg = vec![f32::NAN; batch * ol];
            let calls = igemm::calls();
            conv2d_forward_group(&s, &x32, &p32, &mut yg, &mut cols, &mut work).unwrap();
            assert!(
                igemm::calls() > calls,
                "{s:?}: the group forward took the old path"
            );
            assert_eq!(yg, y, "{s:?}: group forward vs layer-major");
            let mut dxg = vec![f32::NAN; batch * il];
            let mut rows_g = vec![f32::NAN; batch * np];
            let grad = ParamGrad::PerSample {
                rows: &mut rows_g,
                stride: np,
                offset: 0,
            };
            conv2d_backward_group(&s, &cols, &p32, &dy32, Some(&mut dxg), grad, &mut work).unwrap();
            assert_eq!(dxg, dx, "{s:?}: group dx vs layer-major");
            assert_eq!(rows_g, rows, "{s:?}: group per-sample rows vs layer-major");
            let mut y_old = vec![f32::NAN; batch * ol];
            let mut work_old = vec![0f32; lw];
            igemm::with_old_path(|| {
                conv2d_forward_group(&s, &x32, &p32, &mut y_old, &mut cols, &mut work_old)
            })
            .unwrap();
            check_new_old_ref(&format!("conv y {s:?}"), g.col_rows(), &yg, &y_old, &y64);
        }
        let convt = [
            (11, 128, 7, 7, 64, 4, 2, 1),
            (1, 3, 5, 6, 4, 3, 1, 0),
            (5, 6, 6, 5, 7, 5, 3, 2),
            (3, 512, 7, 7, 256, 4, 2, 1),
        ];
        for (batch, cin, h, w, cout, k, stride, pad) in convt {
            let s = ConvTranspose2dShape {
                batch,
                cin,
                h,
                w,
                cout,
                k,
                stride,
                pad,
                bias: true,
            };
            let g = s.geom().unwrap();
            assert!(packs_weight::<f32>(&g), "{s:?} does not pack its weight");
            let (il, ol, np) = (cin * h * w, g.in_len(), s.num_params());
            let (x, p, dy) = (
                wave(batch * il, 0.37),
                wave(np, 0.11),
                wave(batch * ol, 0.23),
            );
            let (x32, p32, dy32) = (to32(&x), to32(&p), to32(&dy));
            let mut scr64 = vec![0.0; s.scratch_len(1).unwrap() + np];
            let mut y64 = vec![f64::NAN; batch * ol];
            conv_transpose2d_forward(&s, &x, &p, &mut y64, &mut scr64).unwrap();
            let mut dx64 = vec![f64::NAN; batch * il];
            conv_transpose2d_backward(
                &s,
                &x,
                &p,
                &dy,
                Some(&mut dx64),
                ParamGrad::None,
                &mut scr64,
            )
            .unwrap();
            // One chunk: this thread, where igemm::calls() counts.
            let mut scr = vec![0f32; s.work_len(&g)];
            let mut y = vec![f32::NAN; batch * ol];
            let calls = igemm::calls();
            conv_transpose2d_forward(&s, &x32, &p32, &mut y, &mut scr).unwrap();
            assert!(
                igemm::calls() > calls,
                "{s:?}: the forward took the old path"
            );
            let mut y_old = vec![f32::NAN; batch * ol];
            igemm::with_old_path(|| conv_transpose2d_forward(&s, &x32, &p32, &mut y_old, &mut scr))
                .unwrap();
            check_new_old_ref(&format!("convT y {s:?}"), cin, &y, &y_old, &y64);
            // Each example's output equals its batch of one.
            let one = ConvTranspose2dShape { batch: 1, ..s };
            let mut scr1 = vec![0f32; one.scratch_len(1).unwrap()];
            for j in [0, batch - 1] {
                let mut yj = vec![f32::NAN; ol];
                conv_transpose2d_forward(
                    &one,
                    &x32[j * il..(j + 1) * il],
                    &p32,
                    &mut yj,
                    &mut scr1,
                )
                .unwrap();
                assert_eq!(
                    yj,
                    y[j * ol..(j + 1) * ol],
                    "{s:?}: example {j} vs batch of one"
                );
            }
            // dx beside per-sample gradients (materialised columns, packed W) against the
            // old path, f64, and the summed path's dx (gathered columns): the same bits.
            let mut rows = vec![f32::NAN; batch * np];
            let mut dx = vec![f32::NAN; batch * il];
            let grad = ParamGrad::PerSample {
                rows: &mut rows,
                stride: np,
                offset: 0,
            };
            let calls = igemm::calls();
            conv_transpose2d_backward(&s, &x32, &p32, &dy32, Some(&mut dx), grad, &mut scr)
                .unwrap();
            assert!(igemm::calls() > calls, "{s:?}: dx took the old path");
            let mut rows_old = vec![f32::NAN; batch * np];
            let mut dx_old = vec![f32::NAN; batch * il];
            igemm::with_old_path(|| {
                let grad = ParamGrad::PerSample {
                    rows: &mut rows_old,
                    stride: np,
                    offset: 0,
                };
                conv_transpose2d_backward(&s, &x32, &p32, &dy32, Some(&mut dx_old), grad, &mut scr)
            })
            .unwrap();
            check_new_old_ref(
                &format!("convT dx {s:?}"),
                g.col_rows(),
                &dx,
                &dx_old,
                &dx64,
            );
            assert_eq!(rows, rows_old, "{s:?}: per-sample rows (unchanged path)");
            let mut sum = vec![f32::NAN; np];
            let mut dx_sum = vec![f32::NAN; batch * il];
            let grad = ParamGrad::Sum {
                grad: &mut sum,
                accumulate: false,
            };
            let mut scr = vec![0f32; s.scratch_len(2).unwrap() + 2 * np];
            conv_transpose2d_backward(&s, &x32, &p32, &dy32, Some(&mut dx_sum), grad, &mut scr)
                .unwrap();
            assert_eq!(
                dx_sum, dx,
                "{s:?}: dx of the summed path vs the per-sample path"
            );
        }
    }

    /// A whole-image kernel (`k = h = w`, no padding: DCGAN's `Conv2d(64, 1, 7)` on 7 × 7,
    /// whose im2col goes through the tables and is the identity permutation) against the
    /// definition in f64 (`y_j = W·x_j + b`, `dW = Σ_j dy_j ⊗ x_j`, `dx_j = Wᵀ·dy_j`): forward,
    /// backward with a summed (overwritten and accumulated), per-sample or no parameter
    /// gradient, layer-major over several micro-batches (64 + 3) and depth-first over a
    /// group, in f32 and f64, batch 1 and a stride that does not matter (one position); each
    /// example's output and input gradient bit-identical to its batch of one.
    #[test]
    fn conv2d_whole_image_kernel_matches_definition() {
        fn check<T: Real>(s: Conv2dShape, tol: f64) {
            let g = s.geom().unwrap();
            assert_eq!((g.oh, g.ow), (1, 1), "{s:?}");
            let (b, kk, co, np) = (s.batch, g.col_rows(), s.cout, s.num_params());
            assert_eq!(g.in_len(), kk);
            let (x, p, dy) = (wave(b * kk, 0.37), wave(np, 0.11), wave(b * co, 0.23));
            let prior = wave(np, 0.71);
            let t = |v: &[f64]| -> Vec<T> { v.iter().map(|&u| T::from_f64(u)).collect() };
            let (xt, pt, dyt, priort) = (t(&x), t(&p), t(&dy), t(&prior));
            let (w, bias) = p.split_at(co * kk);
            let y_def: Vec<f64> = (0..b * co)
                .map(|e| {
                    let (j, c) = (e / co, e % co);
                    (0..kk).map(|r| w[c * kk + r] * x[j * kk + r]).sum::<f64>() + bias[c]
                })
                .collect();
            let dx_def: Vec<f64> = (0..b * kk)
                .map(|e| {
                    let (j, r) = (e / kk, e % kk);
                    (0..co).map(|c| w[c * kk + r] * dy[j * co + c]).sum()
                })
                .collect();
            let row_def = |j: usize| -> Vec<f64> {
                let mut v: Vec<f64> = (0..co * kk)
                    .map(|e| dy[j * co + e / kk] * x[j * kk + e % kk])
                    .collect();
                v.extend((0..co).map(|c| dy[j * co + c]));
                v
            };
            let sum_def: Vec<f64> = (0..np)
                .map(|e| (0..b).map(|j| row_def(j)[e]).sum())
                .collect();
            let close = |what: &str, u: &[T], v: &[f64]| {
                assert_eq!(u.len(), v.len());
                for (i, (a, w)) in u.iter().zip(v).enumerate() {
                    let a = a.to_f64();
                    assert!(
                        (a - w).abs() <= tol * (1.0 + w.abs()),
                        "{what} {s:?} [{i}]: {a} vs {w}"
                    );
                }
            };
            let nan = T::from_f64(f64::NAN);
            let mut scr = vec![T::ZERO; s.scratch_len(1).unwrap() + np];
            let mut y = vec![nan; b * co];
            conv2d_forward(&s, &xt, &pt, &mut y, &mut scr).unwrap();
            close("y", &y, &y_def);
            for mode in 0..4 {
                let mut dx = vec![nan; b * kk];
                let mut gb = match mode {
                    0 => vec![nan; np],
                    1 => priort.clone(),
                    2 => vec![nan; b * np],
                    _ => vec![],
                };
                let grad = match mode {
                    0 | 1 => ParamGrad::Sum {
                        grad: &mut gb,
                        accumulate: mode == 1,
                    },
                    2 => ParamGrad::PerSample {
                        rows: &mut gb,
                        stride: np,
                        offset: 0,
                    },
                    _ => ParamGrad::None,
                };
                conv2d_backward(&s, &xt, &pt, &dyt, Some(&mut dx), grad, &mut scr).unwrap();
                close("dx", &dx, &dx_def);
                match mode {
                    0 => close("dW", &gb, &sum_def),
                    1 => {
                        let acc: Vec<f64> =
                            prior.iter().zip(&sum_def).map(|(a, c)| a + c).collect();
                        close("dW +=", &gb, &acc)
                    }
                    2 => (0..b).for_each(|j| close("row", &gb[j * np..(j + 1) * np], &row_def(j))),
                    _ => {}
                }
            }
            // Depth-first group.
            let (lc, lw) = s.group_lens().unwrap();
            let (mut cols, mut work) = (vec![T::ZERO; lc], vec![T::ZERO; lw]);
            let mut yg = vec![nan; b * co];
            conv2d_forward_group(&s, &xt, &pt, &mut yg, &mut cols, &mut work).unwrap();
            close("y group", &yg, &y_def);
            let mut rows = vec![nan; b * np];
            let mut dxg = vec![nan; b * kk];
            let grad = ParamGrad::PerSample {
                rows: &mut rows,
                stride: np,
                offset: 0,
            };
            conv2d_backward_group(&s, &cols, &pt, &dyt, Some(&mut dxg), grad, &mut work).unwrap();
            close("dx group", &dxg, &dx_def);
            (0..b).for_each(|j| close("row group", &rows[j * np..(j + 1) * np], &row_def(j)));
            // Each example alone.
            let one = Conv2dShape { batch: 1, ..s };
            let mut scr1 = vec![T::ZERO; one.scratch_len(1).unwrap()];
            for j in 0..b {
                let mut yi = vec![nan; co];
                let xi = &xt[j * kk..(j + 1) * kk];
                conv2d_forward(&one, xi, &pt, &mut yi, &mut scr1).unwrap();
                let mut dxi = vec![nan; kk];
                let dyi = &dyt[j * co..(j + 1) * co];
                conv2d_backward(
                    &one,
                    xi,
                    &pt,
                    dyi,
                    Some(&mut dxi),
                    ParamGrad::None,
                    &mut scr1,
                )
                .unwrap();
                assert!(
                    yi == y[j * co..(j + 1) * co],
                    "{s:?}: y of example {j} alone"
                );
                assert!(
                    dxi == dxg[j * kk..(j + 1) * kk],
                    "{s:?}: dx of example {j} alone"
                );
            }
        }
        let shapes = [(5, 64, 7, 1, 1), (67, 3, 5, 4, 2), (1, 2, 3, 3, 1)];
        for (batch, cin, hw, cout, stride) in shapes {
            let s = Conv2dShape {
                batch,
                cin,
                h: hw,
                w: hw,
                cout,
                k: hw,
                stride,
                pad: 0,
                bias: true,
            };
            if batch == 67 {
                assert_eq!(s.micro_batch(&s.geom().unwrap()), 64, "two micro-batches");
            }
            check::<f64>(s, 1e-12);
            check::<f32>(s, 1e-5);
        }
    }

    #[test]
    fn geometry_errors() {
        assert!(ConvGeom::new("t", 1, 3, 3, 8, 1, 2).is_err());
        assert!(ConvGeom::new("t", 1, 3, 3, 3, 0, 0).is_err());
        assert_eq!(ConvGeom::new("t", 1, 28, 28, 8, 2, 3).unwrap().oh, 14);
    }
}
