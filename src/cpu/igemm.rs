//! An own GEMM whose B operand is never materialised: it is packed straight from an image (or
//! a micro-batch of phase-split images) by a gather `B[p, j] = src[po[p] + qo[j]]` — the
//! implicit im2col of a convolution, with row offsets `po` (one per `(ci, ki, kj)`) and column
//! offsets `qo` (one per `(example, oy, ox)`).
//!
//! Safe Rust: a 6 × 32 register tile of fixed-size arrays whose inner loop the compiler turns
//! into AVX-512 FMAs in the `multiversion` clone (12 accumulator registers of 16 f32, A
//! broadcast from memory, B two 16-wide loads), packed A panels (`MR` rows, `KC` deep) streamed
//! from L2 or L3, a block of `NB` packed B panels (`KC × NR`, 32 KiB each in f32) kept in L2,
//! each A panel passing over all of them from L1. Used only where [`available`] (an x86-64 CPU with AVX-512F/VL,
//! AVX2 and FMA, and not the `baseline-cpu` build); elsewhere the callers keep the im2col +
//! `matrixmultiply` path. (A 6 × 16 AVX2 tile of the same code ran at ~100 GFLOP/s on this
//! project's Zen 5 VM against `matrixmultiply`'s ~190, and 12 × 16 in AVX-512 much slower:
//! BENCHMARKS.md, "DP-DCGAN step, issue 12, seventh round".)

use super::gemm::Real;

/// Rows of the register tile (A values broadcast per step).
pub(crate) const MR: usize = 6;
/// Columns of the register tile (two 16-wide f32 vectors).
pub(crate) const NR: usize = 32;
/// Depth of one packed block (A panel `KC × MR`, B panel `KC × NR`).
pub(crate) const KC: usize = 256;

/// Whether this process runs the own GEMM: an x86-64 CPU with AVX-512F/VL, AVX2 and FMA, and
/// not the `baseline-cpu` build (whose `mul_add` would be a library call, and whose AVX2-only
/// tile would not fit the 16 vector registers).
pub(crate) fn available() -> bool {
    if cfg!(feature = "baseline-cpu") {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512vl")
    {
        return true;
    }
    false
}

#[cfg(test)]
std::thread_local! {
    /// Tests: run the old path (im2col + `matrixmultiply`) on this thread (see [`with_old_path`]).
    static FORCE_OLD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
std::thread_local! {
    /// Tests: calls of [`gemm_gather`] on this thread.
    static CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Tests: calls of [`gemm_gather`] on this thread so far (a layer run with one chunk runs on
/// the calling thread).
#[cfg(test)]
pub(crate) fn calls() -> usize {
    CALLS.with(|c| c.get())
}

/// Whether the layer kernels called on this thread take the own GEMM for scalar `T`: f32 only
/// (the f64 kernels, run by the finite-difference tests, keep the old path and so serve as the
/// reference), and only where [`available`].
pub(crate) fn enabled<T: Real>() -> bool {
    #[cfg(test)]
    if FORCE_OLD.with(|f| f.get()) {
        return false;
    }
    T::DTYPE == "F32" && available()
}

/// Tests: runs `f` with the old path forced on this thread (the layer functions read the switch
/// on the calling thread, before their parallel chunks start).
#[cfg(test)]
pub(crate) fn with_old_path<R>(f: impl FnOnce() -> R) -> R {
    FORCE_OLD.with(|c| c.set(true));
    let r = f();
    FORCE_OLD.with(|c| c.set(false));
    r
}

/// Elements of the packed A of an `m × k` operand (rows rounded up to `MR`).
pub(crate) fn packed_a_len(m: usize, k: usize) -> usize {
    m.div_ceil(MR) * MR * k
}

/// B panels packed together: each packed A panel passes over `NB` B panels (`NB·NR` columns)
/// while it is in L1, so a tall A (a weight of 2048–4096 rows, 2–4 MiB per `KC` block, more
/// than L2) is read from L3 once per `NB·NR` columns instead of once per `NR`.
const NB: usize = 4;

/// Elements of the packed B block (`NB` panels of `KC × NR`, plus the 8-value overhang of the
/// last run copy).
pub(crate) const PACKED_B_LEN: usize = NB * KC * NR + 8;

/// Packs `A` (`m × k`, element `(i, p)` at `a[i·rsa + p·csa]`) for [`gemm_gather`]: for each
/// block of `KC` columns of A (the last one shorter), its `MR`-row panels, each `kc × MR`
/// values `p`-major; rows past `m` are zero. `apack`: at least [`packed_a_len`]`(m, k)`.
pub(crate) fn pack_a<T: Real>(
    m: usize,
    k: usize,
    a: &[T],
    rsa: usize,
    csa: usize,
    apack: &mut [T],
) {
    let mp = m.div_ceil(MR) * MR;
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        let blk = &mut apack[p0 * mp..p0 * mp + kc * mp];
        for (ir, panel) in blk.chunks_exact_mut(kc * MR).enumerate() {
            for (p, out) in panel.chunks_exact_mut(MR).enumerate() {
                for (i, o) in out.iter_mut().enumerate() {
                    let row = ir * MR + i;
                    *o = if row < m {
                        a[row * rsa + (p0 + p) * csa]
                    } else {
                        T::ZERO
                    };
                }
            }
        }
    }
}

/// The `MR × NR` tile `Σ_p a[p, i] · b[p, j]` over `kc` steps of one packed A panel and the
/// packed B panel.
#[inline(always)]
fn tile<T: Real>(kc: usize, a: &[T], b: &[T]) -> [[T; NR]; MR] {
    let mut acc = [[T::ZERO; NR]; MR];
    for (ap, bp) in a[..kc * MR]
        .chunks_exact(MR)
        .zip(b[..kc * NR].chunks_exact(NR))
    {
        let ap: &[T; MR] = ap.try_into().expect("MR");
        let bp: &[T; NR] = bp.try_into().expect("NR");
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] = ap[i].mul_add(bp[j], acc[i][j]);
            }
        }
    }
    acc
}

/// Packs the B panel of the columns with offsets `q` and the rows with offsets `po`:
/// `bpack[p·NR + j] = src[po[p] + q[j]]`. The panel's columns form runs of consecutive
/// offsets (an output row of a convolution: `ow` values); a panel of at most 8 runs is
/// copied as one 8-wide move per run (in order, so each move's overhang past its run is
/// overwritten by the next run, or by the next row's first), a panel of more runs — or a run
/// whose 8 values would pass the end of `src` — value by value.
#[inline(always)]
fn pack_b_panel<T: Real>(q: &[usize; NR], src: &[T], po: &[usize], bpack: &mut [T]) {
    // Runs (first column, its offset), each at most 8 long.
    let mut runs = [(0usize, 0usize); NR];
    let mut nruns = 0;
    for j in 0..NR {
        if j == 0 || q[j] != q[j - 1] + 1 || j - runs[nruns - 1].0 == 8 {
            runs[nruns] = (j, q[j]);
            nruns += 1;
        }
    }
    let qmax = q.iter().copied().max().unwrap_or(0);
    let pmax = po.iter().copied().max().unwrap_or(0);
    let last_run = runs[..nruns].iter().map(|r| r.1).max().unwrap_or(0);
    if nruns <= 8 && pmax + last_run + 8 <= src.len() {
        let runs = &runs[..nruns];
        for (p, &off) in po.iter().enumerate() {
            let base = &src[off..];
            let out = &mut bpack[p * NR..];
            for &(j, qj) in runs {
                let d: &mut [T; 8] = (&mut out[j..j + 8]).try_into().expect("8");
                let v: &[T; 8] = base[qj..qj + 8].try_into().expect("8");
                *d = *v;
            }
        }
    } else {
        for (out, &off) in bpack.chunks_exact_mut(NR).zip(po) {
            let base = &src[off..off + qmax + 1];
            let out: &mut [T; NR] = out.try_into().expect("NR");
            for j in 0..NR {
                out[j] = base[q[j].min(qmax)];
            }
        }
    }
}

/// `C ← A·B` (or `C += A·B` with `accumulate`), `A` packed by [`pack_a`] (`m` rows,
/// `k = po.len()` columns), `B[p, j] = src[po[p] + qo[j]]` (`k × n`, `n = qo.len()`), `C`
/// row-major with row stride `rsc` (`C[i, j]` at `c[i·rsc + j]`). `bpack`: at least
/// [`PACKED_B_LEN`].
///
/// Summation order: `KC`-deep blocks, each summed in one running FMA chain per entry, the
/// blocks added in order (equal to any other order within f32 rounding; the same order as
/// [`gemm_packed_a`], whatever `n` or the column a value lands in).
/// Crate-internal: callers size every slice; an offset outside `src` is a bug and panics.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma+avx512f+avx512vl"))
)]
pub(crate) fn gemm_gather<T: Real>(
    m: usize,
    apack: &[T],
    src: &[T],
    po: &[usize],
    qo: &[usize],
    c: &mut [T],
    rsc: usize,
    accumulate: bool,
    bpack: &mut [T],
) {
    #[cfg(test)]
    CALLS.with(|c| c.set(c.get() + 1));
    let (k, n) = (po.len(), qo.len());
    gemm_core(
        m,
        k,
        n,
        apack,
        c,
        rsc,
        accumulate,
        bpack,
        |p0, kc, j0, nr, bp| {
            // Columns past n read offset qo[j0] again: computed, never stored.
            let mut q = [qo[j0]; NR];
            q[..nr].copy_from_slice(&qo[j0..j0 + nr]);
            pack_b_panel(&q, src, &po[p0..p0 + kc], bp);
        },
    );
}

/// `C ← A·B` (or `C += A·B` with `accumulate`) for a plain row-major `B` (`k × n`, `B[p, j]`
/// at `b[p·ldb + j]`), `A` packed by [`pack_a`] (`m × k`) — typically a layer's weight,
/// packed once per layer call and shared by every micro-batch and thread. `C` and `bpack` as
/// in [`gemm_gather`], and the same kernel and summation order: a product equals the
/// [`gemm_gather`] of the same values bit for bit.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma+avx512f+avx512vl"))
)]
pub(crate) fn gemm_packed_a<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    apack: &[T],
    b: &[T],
    ldb: usize,
    c: &mut [T],
    rsc: usize,
    accumulate: bool,
    bpack: &mut [T],
) {
    #[cfg(test)]
    CALLS.with(|c| c.set(c.get() + 1));
    gemm_core(
        m,
        k,
        n,
        apack,
        c,
        rsc,
        accumulate,
        bpack,
        |p0, kc, j0, nr, bp| {
            // Columns past n keep what the panel held: computed, never stored.
            for (p, out) in bp.chunks_exact_mut(NR).take(kc).enumerate() {
                let row = &b[(p0 + p) * ldb + j0..][..nr];
                out[..nr].copy_from_slice(row);
            }
        },
    );
}

/// The loops of [`gemm_gather`] and [`gemm_packed_a`]: for each `KC` block of the depth and
/// each block of `NB` panels of `NR` columns, `pack(p0, kc, j0, nr, bpack)` fills each
/// `kc × NR` B panel (columns `j0 .. j0 + nr` valid; it may write 8 values past its panel,
/// into the next one, packed after it), then every packed A panel passes over the block's
/// panels. Each entry of C is one `KC`-deep FMA chain per depth block, whatever the blocking
/// of the columns.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm_core<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    apack: &[T],
    c: &mut [T],
    rsc: usize,
    accumulate: bool,
    bpack: &mut [T],
    mut pack: impl FnMut(usize, usize, usize, usize, &mut [T]),
) {
    let mp = m.div_ceil(MR) * MR;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * rsc..i * rsc + n].fill(T::ZERO);
            }
        }
        return;
    }
    let bpack = &mut bpack[..PACKED_B_LEN];
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        let ablk = &apack[p0 * mp..p0 * mp + kc * mp];
        let add = accumulate || p0 > 0;
        for jb in (0..n).step_by(NB * NR) {
            let panels = (NB * NR).min(n - jb).div_ceil(NR);
            for q in 0..panels {
                let j0 = jb + q * NR;
                pack(p0, kc, j0, NR.min(n - j0), &mut bpack[q * KC * NR..]);
            }
            for (ir, apanel) in ablk.chunks_exact(kc * MR).enumerate() {
                let rows = MR.min(m - ir * MR);
                for q in 0..panels {
                    let j0 = jb + q * NR;
                    let nr = NR.min(n - j0);
                    let acc = tile(kc, apanel, &bpack[q * KC * NR..]);
                    for (i, ai) in acc.iter().enumerate().take(rows) {
                        let crow = &mut c[(ir * MR + i) * rsc + j0..][..nr];
                        if add {
                            for (d, v) in crow.iter_mut().zip(ai) {
                                *d += *v;
                            }
                        } else {
                            crow.copy_from_slice(&ai[..nr]);
                        }
                    }
                }
            }
        }
    }
}

std::thread_local! {
    /// This thread's buffer of packed weights (f32; see [`with_pack_buf`]).
    static PACK_BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a buffer of `len` values (contents unspecified) for a layer's packed weight:
/// this thread's reusable f32 buffer (grown as needed, kept between calls, so a layer call
/// does not allocate and fault in megabytes), or a fresh one for f64 or when this thread's is
/// in use (a layer call nested in another's parallel chunks by work stealing).
pub(crate) fn with_pack_buf<T: Real, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let mut f = Some(f);
    let r = PACK_BUF.with(|cell| {
        let mut guard = cell.try_borrow_mut().ok()?;
        let v = (&mut *guard as &mut dyn std::any::Any).downcast_mut::<Vec<T>>()?;
        if v.len() < len {
            v.resize(len, T::ZERO);
        }
        let f = f.take().expect("called once");
        Some(f(&mut v[..len]))
    });
    match r {
        Some(r) => r,
        None => {
            let f = f.take().expect("not called");
            f(&mut vec![T::ZERO; len])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    /// Random gathers (odd sizes, K across several blocks, N not a multiple of NR, M not a
    /// multiple of MR, strided A) against the f64 definition, in f32 and f64, overwriting
    /// and accumulating.
    #[test]
    fn gemm_gather_matches_definition() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (5, 7, 3),
            (6, 16, 16),
            (13, 300, 37),
            (64, 513, 50),
            (7, 1030, 17),
        ] {
            let src = rnd(4000, (m * 31 + k * 7 + n) as u64);
            let a = rnd(m * k, 3);
            let po: Vec<usize> = (0..k).map(|p| (p * 37) % 2000).collect();
            let qo: Vec<usize> = (0..n).map(|j| (j * 53) % 1999).collect();
            let c0 = rnd(m * (n + 2), 9);
            let want = |i: usize, j: usize| -> f64 {
                (0..k)
                    .map(|p| a[p * m + i] * src[po[p] + qo[j]])
                    .sum::<f64>()
            };
            for accumulate in [false, true] {
                // A given transposed (k × m row-major): rsa = 1, csa = m.
                let mut ap64 = vec![0f64; packed_a_len(m, k)];
                pack_a(m, k, &a, 1, m, &mut ap64);
                let mut bp64 = vec![0f64; PACKED_B_LEN];
                let mut c64 = c0.clone();
                gemm_gather(
                    m,
                    &ap64,
                    &src,
                    &po,
                    &qo,
                    &mut c64,
                    n + 2,
                    accumulate,
                    &mut bp64,
                );
                let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
                let s32: Vec<f32> = src.iter().map(|&v| v as f32).collect();
                let mut ap32 = vec![0f32; packed_a_len(m, k)];
                pack_a(m, k, &a32, 1, m, &mut ap32);
                let mut bp32 = vec![0f32; PACKED_B_LEN];
                let mut c32: Vec<f32> = c0.iter().map(|&v| v as f32).collect();
                gemm_gather(
                    m,
                    &ap32,
                    &s32,
                    &po,
                    &qo,
                    &mut c32,
                    n + 2,
                    accumulate,
                    &mut bp32,
                );
                for i in 0..m {
                    for j in 0..n + 2 {
                        let idx = i * (n + 2) + j;
                        let w = if j >= n {
                            c0[idx] // outside the n columns: untouched
                        } else if accumulate {
                            c0[idx] + want(i, j)
                        } else {
                            want(i, j)
                        };
                        assert!((c64[idx] - w).abs() < 1e-12, "f64 {m}x{k}x{n} ({i},{j})");
                        // f32: inputs rounded, k terms of size <= 1/4.
                        let tol = 1e-6 * (k as f64).sqrt() * 4.0 + 1e-6;
                        assert!(
                            (c32[idx] as f64 - w).abs() < tol,
                            "f32 {m}x{k}x{n} ({i},{j}): {} vs {w}",
                            c32[idx]
                        );
                    }
                }
            }
        }
    }
}

/// `gemm_packed_a` (plain row-major B, wider than `n`: `ldb = n + 3`) against the f64
/// definition, and bit-identical to `gemm_gather` on the same values (same kernel and order);
/// the panel's stale columns (a `bpack` full of NaN) never reach C.
#[cfg(test)]
mod packed_a_tests {
    use super::*;

    #[test]
    fn gemm_packed_a_matches_definition_and_gather() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (5, 7, 3),
            (6, 16, 33),
            (13, 300, 37),
            (64, 513, 50),
            (7, 1030, 17),
        ] {
            let ldb = n + 3;
            let wave = |len: usize, a: f64| -> Vec<f64> {
                (0..len)
                    .map(|i| ((i as f64 * a).sin() * 1e4).sin())
                    .collect()
            };
            let (a, b, c0) = (
                wave(m * k, 0.37),
                wave(k * ldb, 0.11),
                wave(m * (n + 2), 0.5),
            );
            let want = |i: usize, j: usize| -> f64 {
                (0..k).map(|p| a[i * k + p] * b[p * ldb + j]).sum::<f64>()
            };
            for accumulate in [false, true] {
                let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
                let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
                let mut ap = vec![0f32; packed_a_len(m, k)];
                pack_a(m, k, &a32, k, 1, &mut ap);
                let mut bp = vec![f32::NAN; PACKED_B_LEN];
                let mut c: Vec<f32> = c0.iter().map(|&v| v as f32).collect();
                gemm_packed_a(m, k, n, &ap, &b32, ldb, &mut c, n + 2, accumulate, &mut bp);
                let po: Vec<usize> = (0..k).map(|p| p * ldb).collect();
                let qo: Vec<usize> = (0..n).collect();
                let mut cg: Vec<f32> = c0.iter().map(|&v| v as f32).collect();
                gemm_gather(m, &ap, &b32, &po, &qo, &mut cg, n + 2, accumulate, &mut bp);
                assert_eq!(c, cg, "{m}x{k}x{n}: packed-A and gather products differ");
                let tol = 1e-6 * k as f64 + 1e-6;
                for i in 0..m {
                    for j in 0..n + 2 {
                        let idx = i * (n + 2) + j;
                        let w = if j >= n {
                            c0[idx]
                        } else if accumulate {
                            c0[idx] + want(i, j)
                        } else {
                            want(i, j)
                        };
                        assert!(
                            (c[idx] as f64 - w).abs() < tol,
                            "{m}x{k}x{n} ({i},{j}): {} vs {w}",
                            c[idx]
                        );
                    }
                }
            }
        }
    }

    /// The thread's buffer serves f32 calls; a nested call (buffer in use) and f64 get a
    /// fresh one of the asked length.
    #[test]
    fn pack_buf_nests_and_serves_f64() {
        with_pack_buf::<f32, _>(100, |outer| {
            assert_eq!(outer.len(), 100);
            outer.fill(1.0);
            with_pack_buf::<f32, _>(7, |inner| {
                assert_eq!(inner.len(), 7);
                inner.fill(2.0);
            });
            assert!(
                outer.iter().all(|&v| v == 1.0),
                "nested call wrote the outer buffer"
            );
        });
        with_pack_buf::<f64, _>(9, |b| assert_eq!(b.len(), 9));
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use std::time::Instant;

    fn best(reps: usize, mut f: impl FnMut()) -> f64 {
        let mut b = f64::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            f();
            b = b.min(t.elapsed().as_secs_f64());
        }
        b
    }

    /// Probe, not a check: `cargo test --release --lib igemm_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn igemm_speed() {
        for &(m, k, n) in &[
            (64usize, 512usize, 490usize),
            (128, 1024, 441),
            (96, 256, 256),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.1).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.3).cos()).collect();
            let mut c = vec![0f32; m * n];
            let mut ap = vec![0f32; packed_a_len(m, k)];
            let mut bp = vec![0f32; PACKED_B_LEN];
            pack_a(m, k, &a, k, 1, &mut ap);
            let po: Vec<usize> = (0..k).map(|p| p * n).collect();
            let qo: Vec<usize> = (0..n).collect();
            let fl = 2.0 * (m * k * n) as f64 * 1e-9;
            let t_new = best(20, || {
                gemm_gather(m, &ap, &b, &po, &qo, &mut c, n, false, &mut bp)
            });
            let t_pack = best(20, || pack_a(m, k, &a, k, 1, &mut ap));
            let t_mm = best(20, || {
                crate::cpu::gemm::gemm(m, k, n, 1.0, &a, k, 1, &b, n, 1, 0.0, &mut c, n, 1)
            });
            println!(
                "{m}x{k}x{n}: own (gather from contiguous rows) {:.0} GFLOP/s, matrixmultiply {:.0}, pack A {:.3} ms",
                fl / t_new,
                fl / t_mm,
                t_pack * 1e3
            );
        }
    }
}
