//! Per-sample norms, clip factors and fused clip-and-accumulate: hand-computed cases, Opacus's
//! boundary behaviour, empty batches, determinism, half-precision inputs, typed errors, and
//! GPU vs CPU on random shapes.

mod common;

use approx::assert_relative_eq;
use common::{gpu, int_in, uniform};
use dpsgd::cpu::clip;
use dpsgd::cpu::philox::Philox;
use dpsgd::ops::{self, ClipWorkspace, Clipping};
#[allow(unused_imports)]
use dpsgd::rng::RandomBits;
use dpsgd::{Buffer, Device, Error, GradElement, Layout};
use half::{bf16, f16};

fn cpu_clip_sum(grads: &[f32], batch: usize, layout: &Layout, clipping: &Clipping) -> Vec<f32> {
    let dev = Device::Cpu;
    let g = Buffer::from_slice(&dev, grads).unwrap();
    let mut ws = ClipWorkspace::new(&dev, batch, layout).unwrap();
    let mut sum = Buffer::zeros(&dev, layout.num_params()).unwrap();
    ops::clip_and_accumulate(&g, batch, layout, clipping, &mut ws, &mut sum).unwrap();
    sum.to_vec().unwrap()
}

#[test]
fn hand_computed_flat_clipping() {
    // Row 0 = (3, 4, 0): norm 5 → factor 1/(5 + 1e-6). Row 1 = (0.3, 0.4, 0): norm 0.5 → 1.
    let g = [3.0, 4.0, 0.0, 0.3, 0.4, 0.0];
    let layout = Layout::flat(3);
    let mut norms = [0f32; 2];
    let mut seg = [0f32; 2];
    clip::per_sample_norms(&g, 2, &layout, &mut norms, &mut seg).unwrap();
    assert_eq!(norms, [5.0, 0.5]);
    assert_eq!(seg, norms);
    let mut f = [0f32; 2];
    clip::clip_factors(&norms, &[1.0], &mut f).unwrap();
    assert_eq!(f, [1.0 / (5.0 + 1e-6), 1.0]);
    let sum = cpu_clip_sum(&g, 2, &layout, &Clipping::Flat(1.0));
    assert_relative_eq!(sum[0], 0.6 + 0.3, max_relative = 1e-6);
    assert_relative_eq!(sum[1], 0.8 + 0.4, max_relative = 1e-6);
    assert_eq!(sum[2], 0.0);
}

#[test]
fn hand_computed_per_layer_clipping() {
    // Segments [0..2) and [2..3); row (3, 4, 12): segment norms 5 and 12, total 13.
    let layout = Layout::from_sizes(&[2, 1]).unwrap();
    let g = [3.0f32, 4.0, 12.0];
    let mut norms = [0f32; 1];
    let mut seg = [0f32; 2];
    clip::per_sample_norms(&g, 1, &layout, &mut norms, &mut seg).unwrap();
    assert_eq!(norms, [13.0]);
    assert_eq!(seg, [5.0, 12.0]);
    let clipping = Clipping::PerLayer(vec![10.0, 6.0]);
    assert_relative_eq!(clipping.sensitivity(), (136f32).sqrt());
    let sum = cpu_clip_sum(&g, 1, &layout, &clipping);
    // Segment 0 is under its bound (factor 1), segment 1 is scaled to 6.
    assert_eq!(&sum[..2], &[3.0, 4.0]);
    assert_relative_eq!(sum[2], 12.0 * 6.0 / (12.0 + 1e-6), max_relative = 1e-6);
}

#[test]
fn factor_boundary_and_zero_rows_like_opacus() {
    let mut f = [0f32; 4];
    // norm == C: Opacus's C/(norm + 1e-6) is just below 1; norm 0 → 1; norm ≫ C → C/norm.
    clip::clip_factors(&[2.0, 0.0, 1e6, 1.999_99], &[2.0], &mut f).unwrap();
    assert!(f[0] < 1.0 && f[0] > 0.999_999);
    assert_eq!(f[1], 1.0);
    assert_relative_eq!(f[2], 2e-6, max_relative = 1e-6);
    assert!(f[3] <= 1.0);
    // A zero gradient row contributes nothing and breaks nothing.
    let sum = cpu_clip_sum(&[0.0; 8], 2, &Layout::flat(4), &Clipping::Flat(1.0));
    assert_eq!(sum, vec![0.0; 4]);
}

#[test]
fn every_clipped_row_has_norm_at_most_c() {
    let (b, p) = (37, 301);
    let g = uniform(b * p, 3.0, 11);
    let layout = Layout::flat(p);
    for row in 0..b {
        let r = &g[row * p..(row + 1) * p];
        let s = cpu_clip_sum(r, 1, &layout, &Clipping::Flat(0.5));
        let n: f32 = s.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(n <= 0.5 * (1.0 + 1e-6), "row {row}: clipped norm {n}");
    }
}

#[test]
fn empty_batch_leaves_sum_unchanged() {
    let layout = Layout::from_sizes(&[3, 5]).unwrap();
    let mut norms: [f32; 0] = [];
    let mut seg: [f32; 0] = [];
    clip::per_sample_norms::<f32>(&[], 0, &layout, &mut norms, &mut seg).unwrap();
    let mut sum = vec![1.5f32; 8];
    clip::clip_accumulate::<f32>(&[], 0, &layout, &[], &mut sum).unwrap();
    assert_eq!(sum, vec![1.5; 8]);
    assert_eq!(
        cpu_clip_sum(&[], 0, &layout, &Clipping::Flat(1.0)),
        vec![0.0; 8]
    );
}

#[test]
fn fused_equals_unfused_and_is_deterministic() {
    let (b, p) = (64, 10_007);
    let g = uniform(b * p, 1.0, 5);
    let layout = Layout::flat(p);
    let fused = cpu_clip_sum(&g, b, &layout, &Clipping::Flat(1.0));
    let mut norms = vec![0f32; b];
    let mut seg = vec![0f32; b];
    clip::per_sample_norms(&g, b, &layout, &mut norms, &mut seg).unwrap();
    let mut f = vec![0f32; b];
    clip::clip_factors(&norms, &[1.0], &mut f).unwrap();
    let mut unfused = vec![0f32; p];
    clip::clip_then_sum_unfused(&g, b, p, &f, &mut unfused).unwrap();
    for j in 0..p {
        assert_relative_eq!(fused[j], unfused[j], epsilon = 1e-5, max_relative = 1e-5);
    }
    // Same input → same bits, run after run (and whatever rayon's scheduling).
    for _ in 0..3 {
        let again = cpu_clip_sum(&g, b, &layout, &Clipping::Flat(1.0));
        assert!(again
            .iter()
            .zip(&fused)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

#[test]
fn accumulates_across_calls() {
    // Two physical batches add up to the logical batch (Opacus's BatchMemoryManager).
    let (b, p) = (10, 50);
    let g = uniform(b * p, 2.0, 8);
    let layout = Layout::flat(p);
    let whole = cpu_clip_sum(&g, b, &layout, &Clipping::Flat(1.0));
    let dev = Device::Cpu;
    let mut ws = ClipWorkspace::new(&dev, 4, &layout).unwrap();
    let mut sum = Buffer::zeros(&dev, p).unwrap();
    for (r0, r1) in [(0, 4), (4, 7), (7, 10)] {
        let part = Buffer::from_slice(&dev, &g[r0 * p..r1 * p]).unwrap();
        ops::clip_and_accumulate(
            &part,
            r1 - r0,
            &layout,
            &Clipping::Flat(1.0),
            &mut ws,
            &mut sum,
        )
        .unwrap();
    }
    for (a, b) in sum.to_vec().unwrap().iter().zip(&whole) {
        assert_relative_eq!(a, b, epsilon = 1e-6, max_relative = 1e-5);
    }
}

fn half_case<T: GradElement>() {
    let (b, p) = (9, 1500);
    let g32 = uniform(b * p, 1.0, 21);
    let gh: Vec<T> = g32.iter().map(|&x| T::from_f32(x)).collect();
    let back: Vec<f32> = gh.iter().map(|&x| x.to_f32()).collect();
    let layout = Layout::from_sizes(&[1000, 500]).unwrap();
    let want = cpu_clip_sum(&back, b, &layout, &Clipping::PerLayer(vec![1.0, 0.5]));
    let dev = Device::Cpu;
    let buf = Buffer::from_slice(&dev, &gh).unwrap();
    let mut ws = ClipWorkspace::new(&dev, b, &layout).unwrap();
    let mut sum = Buffer::zeros(&dev, p).unwrap();
    let clipping = Clipping::PerLayer(vec![1.0, 0.5]);
    ops::clip_and_accumulate(&buf, b, &layout, &clipping, &mut ws, &mut sum).unwrap();
    // Widening is exact, so the half path equals the f32 path on the widened values.
    assert_eq!(sum.to_vec().unwrap(), want);
}

#[test]
fn bf16_and_f16_accumulate_in_f32() {
    half_case::<bf16>();
    half_case::<f16>();
}

#[test]
fn bad_inputs_are_typed_errors() {
    let layout = Layout::flat(3);
    let dev = Device::Cpu;
    let mut ws = ClipWorkspace::new(&dev, 2, &layout).unwrap();
    let mut sum = Buffer::zeros(&dev, 3).unwrap();
    // Mismatched lengths.
    let g = Buffer::from_slice(&dev, &[1.0f32; 5]).unwrap();
    let e = ops::clip_and_accumulate(&g, 2, &layout, &Clipping::Flat(1.0), &mut ws, &mut sum);
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    let mut short = Buffer::zeros(&dev, 2).unwrap();
    let g = Buffer::from_slice(&dev, &[1.0f32; 6]).unwrap();
    let e = ops::clip_and_accumulate(&g, 2, &layout, &Clipping::Flat(1.0), &mut ws, &mut short);
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    // C ≤ 0, NaN C.
    for c in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let e = ops::clip_and_accumulate(&g, 2, &layout, &Clipping::Flat(c), &mut ws, &mut sum);
        assert!(matches!(e, Err(Error::InvalidParameter { .. })), "{e:?}");
    }
    // Per-layer bounds that do not match the segments.
    let e = ops::clip_and_accumulate(
        &g,
        2,
        &layout,
        &Clipping::PerLayer(vec![1.0, 1.0]),
        &mut ws,
        &mut sum,
    );
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    // NaN / Inf gradients are reported (naming the row), never clipped into the sum.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let g = Buffer::from_slice(&dev, &[1.0, 2.0, 3.0, 4.0, bad, 6.0]).unwrap();
        let mut sum = Buffer::zeros(&dev, 3).unwrap();
        let e = ops::clip_and_accumulate(&g, 2, &layout, &Clipping::Flat(1.0), &mut ws, &mut sum)
            .unwrap_err();
        assert!(matches!(e, Error::NonFinite { .. }), "{e}");
        assert!(e.to_string().contains("row 1"), "{e}");
        assert_eq!(sum.to_vec().unwrap(), vec![0.0; 3], "sum untouched");
    }
    // Layouts reject empty segments.
    assert!(Layout::from_sizes(&[3, 0]).is_err());
}

/// GPU twins on random shapes (P not a multiple of any block size, B = 1, many segments,
/// f32/bf16/f16): norms to 1e-5 relative, the sum to 1e-5·(1 + Σ|f·g|), factors exactly as
/// computed from the same norms.
#[test]
fn gpu_matches_cpu_on_random_shapes() {
    let Some(dev) = gpu("gpu_matches_cpu_on_random_shapes") else {
        return;
    };
    let mut r = Philox::new(2026, 0);
    let mut shapes: Vec<(usize, Vec<usize>)> = vec![
        (1, vec![1]),
        (1, vec![26_010]),
        (3, vec![255, 1, 257]),
        (256, vec![26_010]),
        (7, vec![100_003, 5, 9000]),
        (2, vec![3_000_017]),
    ];
    for _ in 0..10 {
        let b = int_in(&mut r, 1, 70);
        let s = int_in(&mut r, 1, 6);
        shapes.push((b, (0..s).map(|_| int_in(&mut r, 1, 20_000)).collect()));
    }
    for (case, (b, sizes)) in shapes.into_iter().enumerate() {
        let layout = Layout::from_sizes(&sizes).unwrap();
        let p = layout.num_params();
        let g32 = uniform(b * p, 0.05, case as u64);
        for per_layer in [false, true] {
            let clipping = if per_layer {
                Clipping::PerLayer((0..sizes.len()).map(|k| 0.3 + k as f32).collect())
            } else {
                Clipping::Flat(1.0)
            };
            gpu_case(&dev, &g32, b, &layout, &clipping);
            if case % 3 == 0 {
                let gb: Vec<bf16> = g32.iter().map(|&x| bf16::from_f32(x)).collect();
                gpu_case(&dev, &gb, b, &layout, &clipping);
                let gh: Vec<f16> = g32.iter().map(|&x| f16::from_f32(x)).collect();
                gpu_case(&dev, &gh, b, &layout, &clipping);
            }
        }
    }
}

fn gpu_case<T: GradElement>(dev: &Device, g: &[T], b: usize, layout: &Layout, c: &Clipping) {
    let p = layout.num_params();
    let s = layout.num_segments();
    let ctx = format!("{} B={b} sizes={:?} {c:?}", T::NAME, layout.sizes());
    // CPU reference.
    let cpu = Device::Cpu;
    let gc = Buffer::from_slice(&cpu, g).unwrap();
    let mut wc = ClipWorkspace::new(&cpu, b, layout).unwrap();
    let mut sc = Buffer::from_slice(&cpu, &vec![0.25f32; p]).unwrap();
    ops::clip_and_accumulate(&gc, b, layout, c, &mut wc, &mut sc).unwrap();
    // GPU.
    let gg = Buffer::from_slice(dev, g).unwrap();
    let mut wg = ClipWorkspace::new(dev, b, layout).unwrap();
    let mut sg = Buffer::from_slice(dev, &vec![0.25f32; p]).unwrap();
    ops::clip_and_accumulate(&gg, b, layout, c, &mut wg, &mut sg).unwrap();
    let (nc, ng) = (wc.norms.to_vec().unwrap(), wg.norms.to_vec().unwrap());
    for i in 0..b {
        assert_relative_eq!(nc[i], ng[i], max_relative = 1e-5);
    }
    let (snc, sng) = (
        wc.seg_norms.to_vec().unwrap(),
        wg.seg_norms.to_vec().unwrap(),
    );
    for i in 0..b * s {
        assert_relative_eq!(snc[i], sng[i], max_relative = 1e-5, epsilon = 1e-12);
    }
    // Magnitude of the terms, for a tolerance relative to what was summed.
    let (fc, _) = (wc.factors.to_vec().unwrap(), ());
    let nf = fc.len() / b.max(1);
    let mut mag = vec![0.25f32; p];
    for i in 0..b {
        for k in 0..s {
            let f = fc[i * nf + if nf == 1 { 0 } else { k }];
            for j in layout.segment(k) {
                mag[j] += (f * g[i * p + j].to_f32()).abs();
            }
        }
    }
    let (vc, vg) = (sc.to_vec().unwrap(), sg.to_vec().unwrap());
    for j in 0..p {
        assert!(
            (vc[j] - vg[j]).abs() <= 1e-5 * (1.0 + mag[j]),
            "{ctx}: sum[{j}] cpu {} gpu {}",
            vc[j],
            vg[j]
        );
    }
    // GPU determinism: same bits on a second run.
    let mut sg2 = Buffer::from_slice(dev, &vec![0.25f32; p]).unwrap();
    ops::clip_and_accumulate(&gg, b, layout, c, &mut wg, &mut sg2).unwrap();
    let v2 = sg2.to_vec().unwrap();
    assert!(
        v2.iter().zip(&vg).all(|(a, b)| a.to_bits() == b.to_bits()),
        "{ctx}: GPU sum not deterministic"
    );
}

#[test]
fn gpu_rejects_nan_and_handles_empty_batch() {
    let Some(dev) = gpu("gpu_rejects_nan_and_handles_empty_batch") else {
        return;
    };
    let layout = Layout::flat(5);
    let mut ws = ClipWorkspace::new(&dev, 2, &layout).unwrap();
    let mut sum = Buffer::zeros(&dev, 5).unwrap();
    let g = Buffer::from_slice(
        &dev,
        &[1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, f32::NAN, 0.0, 0.0],
    )
    .unwrap();
    let e = ops::clip_and_accumulate(&g, 2, &layout, &Clipping::Flat(1.0), &mut ws, &mut sum)
        .unwrap_err();
    assert!(
        matches!(e, Error::NonFinite { .. }) && e.to_string().contains("row 1"),
        "{e}"
    );
    let empty = Buffer::<f32>::zeros(&dev, 0).unwrap();
    ops::clip_and_accumulate(&empty, 0, &layout, &Clipping::Flat(1.0), &mut ws, &mut sum).unwrap();
    assert_eq!(sum.to_vec().unwrap(), vec![0.0; 5]);
}

/// A buffer sized for the largest physical batch serves smaller ones: only the first `batch`
/// rows are read.
#[test]
fn reads_only_the_first_batch_rows() {
    let (p, layout) = (6, Layout::flat(6));
    let g = uniform(3 * p, 1.0, 4);
    let want = cpu_clip_sum(&g[..2 * p], 2, &layout, &Clipping::Flat(0.7));
    let dev = Device::Cpu;
    let mut big = g.clone();
    big[2 * p] = f32::NAN; // row 2 is never read
    let buf = Buffer::from_slice(&dev, &big).unwrap();
    let mut ws = ClipWorkspace::new(&dev, 3, &layout).unwrap();
    let mut sum = Buffer::zeros(&dev, p).unwrap();
    ops::clip_and_accumulate(&buf, 2, &layout, &Clipping::Flat(0.7), &mut ws, &mut sum).unwrap();
    assert_eq!(sum.to_vec().unwrap(), want);
}

/// Per-example L1 clipping (`ops::clip_l1_and_accumulate`): rows under C pass unchanged, rows
/// over C are scaled to L1 norm ≤ C (never above, whatever the rounding) and ≥ C·(1 − 1e-5),
/// the sum is the sum of the clipped rows, the returned norms are the rows' L1 norms; bad
/// inputs are errors that leave the sum unchanged.
#[test]
fn l1_clipping() {
    use dpsgd::cpu::philox::Philox;
    use dpsgd::rng::RandomBits;
    let dev = dpsgd::Device::Cpu;
    let (b, p) = (6, 70_001);
    let mut r = Philox::new(12, 0);
    let mut rows: Vec<f32> = (0..b * p).map(|_| r.next_f64() as f32 - 0.5).collect();
    // Row 0 tiny (under C), row 1 exactly zero.
    for v in &mut rows[..p] {
        *v *= 1e-6;
    }
    rows[p..2 * p].iter_mut().for_each(|v| *v = 0.0);
    let c = 100.0f32;
    let g = dpsgd::Buffer::from_slice(&dev, &rows).unwrap();
    let mut sum = dpsgd::Buffer::zeros(&dev, p).unwrap();
    let norms = dpsgd::ops::clip_l1_and_accumulate(&g, b, c, &mut sum).unwrap();
    let mut want = vec![0f64; p];
    for i in 0..b {
        let row = &rows[i * p..(i + 1) * p];
        let n: f64 = row.iter().map(|v| v.abs() as f64).sum();
        assert!((norms[i] as f64 - n).abs() <= 1e-6 * n.max(1e-30));
        let f = if n <= c as f64 { 1.0 } else { c as f64 / n };
        let clipped: f64 = row.iter().map(|v| (v.abs() as f64 * f) as f32 as f64).sum();
        if n > c as f64 {
            // What the kernel multiplies: f32 factor times each value.
            let f32f = (c as f64 / (n * (1.0 + 2f64.powi(-20)))) as f32;
            let l1: f64 = row.iter().map(|v| (f32f * v).abs() as f64).sum();
            assert!(l1 <= c as f64, "row {i}: clipped L1 {l1} > C");
            assert!(l1 >= c as f64 * (1.0 - 1e-5), "row {i}: {l1}");
        } else {
            assert!(clipped <= c as f64);
        }
        for (w, v) in want.iter_mut().zip(row) {
            *w += f * *v as f64;
        }
    }
    for (a, w) in sum.to_vec().unwrap().iter().zip(&want) {
        assert!(
            (*a as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{a} vs {w}"
        );
    }
    // Errors leave the sum unchanged.
    let before = sum.to_vec().unwrap();
    for bad_c in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            dpsgd::ops::clip_l1_and_accumulate(&g, b, bad_c, &mut sum),
            Err(dpsgd::Error::InvalidParameter { .. })
        ));
    }
    assert!(matches!(
        dpsgd::ops::clip_l1_and_accumulate(&g, b + 1, c, &mut sum),
        Err(dpsgd::Error::Shape { .. })
    ));
    let mut nan = rows.clone();
    nan[3 * p + 5] = f32::NAN;
    let gn = dpsgd::Buffer::from_slice(&dev, &nan).unwrap();
    assert!(matches!(
        dpsgd::ops::clip_l1_and_accumulate(&gn, b, c, &mut sum),
        Err(dpsgd::Error::NonFinite { .. })
    ));
    assert_eq!(sum.to_vec().unwrap(), before);
}
