//! `ops::sanitize_rows` (GS-WGAN's per-row clip + noise) against an f64 reference, its noise's
//! distribution (fixed seeds, critical values at p ≈ 1e-6), and bad input.

use dpsgd::{ops, Buffer, Device, NoiseKey};

mod common;

/// Deterministic test rows with a wide range of norms (some below the bound, most above).
fn rows(batch: usize, d: usize) -> Vec<f32> {
    (0..batch * d)
        .map(|k| {
            let (i, j) = (k / d, k % d);
            let scale = 10f32.powi(i as i32 % 5 - 3);
            scale * (((j * 7919 + i * 104_729) % 1000) as f32 / 500.0 - 1.0)
        })
        .collect()
}

#[test]
fn clipping_matches_f64_reference() {
    let (b, d, c) = (12, 784, 1.0f32 / 32.0);
    let x = rows(b, d);
    let mut buf = Buffer::from_slice(&Device::Cpu, &x).unwrap();
    ops::sanitize_rows(&mut buf, b, c, 0.0, NoiseKey::for_step(1, 0, 0).unwrap()).unwrap();
    let got = buf.to_vec().unwrap();
    let mut clipped_some = false;
    for i in 0..b {
        let row = &x[i * d..(i + 1) * d];
        let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let f = (c as f64 / (norm + 1e-6)).min(1.0);
        clipped_some |= f < 1.0;
        let mut out_norm = 0f64;
        for j in 0..d {
            let want = row[j] as f64 * f;
            let g = got[i * d + j] as f64;
            out_norm += g * g;
            assert!(
                (g - want).abs() <= 1e-6 * want.abs() + 1e-12,
                "row {i} col {j}: {g} vs {want}"
            );
        }
        assert!(out_norm.sqrt() <= c as f64 * (1.0 + 1e-5), "row {i}");
    }
    assert!(clipped_some);
}

#[test]
fn noise_is_added_to_the_clipped_rows() {
    let (b, d, c, std) = (8, 300, 0.5f32, 0.3f64);
    let x = rows(b, d);
    let key = NoiseKey::for_step(99, 3, 0).unwrap();
    let mut clipped = Buffer::from_slice(&Device::Cpu, &x).unwrap();
    ops::sanitize_rows(&mut clipped, b, c, 0.0, key).unwrap();
    let mut noise = Buffer::<f32>::zeros(&Device::Cpu, b * d).unwrap();
    ops::add_gaussian(&mut noise, std, key).unwrap();
    let mut buf = Buffer::from_slice(&Device::Cpu, &x).unwrap();
    ops::sanitize_rows(&mut buf, b, c, std, key).unwrap();
    let (got, cl, nz) = (
        buf.to_vec().unwrap(),
        clipped.to_vec().unwrap(),
        noise.to_vec().unwrap(),
    );
    for k in 0..b * d {
        let want = cl[k] as f64 + nz[k] as f64;
        assert!((got[k] as f64 - want).abs() <= 1e-6, "{k}");
    }
}

/// Rows of norm ≫ C: after sanitising, each row is (clipped row) + noise; the noise must be
/// N(0, std²) per element, independent across rows.
#[test]
fn noise_distribution() {
    let (b, d, c, std) = (64, 784, 1.0f32 / 32.0, 2.0 / 32.0 * 1.07);
    let x = rows(b, d);
    let key = NoiseKey::for_step(2024, 17, 0).unwrap();
    let mut clipped = Buffer::from_slice(&Device::Cpu, &x).unwrap();
    ops::sanitize_rows(&mut clipped, b, c, 0.0, key).unwrap();
    let mut buf = Buffer::from_slice(&Device::Cpu, &x).unwrap();
    ops::sanitize_rows(&mut buf, b, c, std, key).unwrap();
    let (got, cl) = (buf.to_vec().unwrap(), clipped.to_vec().unwrap());
    let z: Vec<f64> = got
        .iter()
        .zip(&cl)
        .map(|(&g, &c)| (g as f64 - c as f64) / std)
        .collect();
    let n = z.len() as f64;
    // Two-sided critical value of the normal at p = 1e-6.
    let crit = 4.892;
    let mean = z.iter().sum::<f64>() / n;
    assert!((mean * n.sqrt()).abs() < crit, "mean {mean}");
    // Σ z² ~ χ²(n) ≈ N(n, 2n).
    let ss: f64 = z.iter().map(|v| v * v).sum();
    assert!(
        ((ss - n) / (2.0 * n).sqrt()).abs() < crit,
        "sum of squares {ss} for n = {n}"
    );
    // Rows independent: the correlation of consecutive rows' noise over all pairs ~ N(0, 1/m).
    let m = ((b - 1) * d) as f64;
    let cross: f64 = (0..b - 1)
        .flat_map(|i| (0..d).map(move |j| (i, j)))
        .map(|(i, j)| z[i * d + j] * z[(i + 1) * d + j])
        .sum();
    assert!(
        (cross / m.sqrt()).abs() < crit,
        "row correlation {}",
        cross / m
    );
    // A different stream gives different noise.
    let mut other = Buffer::from_slice(&Device::Cpu, &x).unwrap();
    ops::sanitize_rows(
        &mut other,
        b,
        c,
        std,
        NoiseKey::for_step(2024, 18, 0).unwrap(),
    )
    .unwrap();
    assert_ne!(other.to_vec().unwrap(), got);
}

#[test]
fn bad_input_is_an_error_before_noise() {
    let x = rows(2, 4);
    let key = NoiseKey::for_step(1, 0, 0).unwrap();
    for (batch, clip, std) in [
        (2, 0.0, 1.0),
        (2, f32::NAN, 1.0),
        (2, 1.0, -1.0),
        (2, 1.0, f64::INFINITY),
        (3, 1.0, 1.0),
    ] {
        let mut buf = Buffer::from_slice(&Device::Cpu, &x).unwrap();
        assert!(ops::sanitize_rows(&mut buf, batch, clip, std, key).is_err());
        assert_eq!(buf.to_vec().unwrap(), x, "input modified on error");
    }
    let mut buf = Buffer::from_slice(&Device::Cpu, &x).unwrap();
    let f = Buffer::from_slice(&Device::Cpu, &[1.0f32]).unwrap();
    assert!(ops::scale_rows(&mut buf, 2, &f).is_err());
}

/// The CUDA path (`dpsgd_scale_rows` + the clip and noise kernels) against the CPU twin.
/// Skips without a GPU (fails with `DPSGD_REQUIRE_GPU=1`).
#[test]
fn gpu_matches_cpu() {
    let Some(gpu) = common::gpu("sanitize_rows::gpu_matches_cpu") else {
        return;
    };
    let (b, d, c, std) = (33, 784, 1.0f32 / 32.0, 0.07);
    let x = rows(b, d);
    let key = NoiseKey::for_step(5, 9, 0).unwrap();
    let mut cpu = Buffer::from_slice(&Device::Cpu, &x).unwrap();
    ops::sanitize_rows(&mut cpu, b, c, std, key).unwrap();
    let mut dev = Buffer::from_slice(&gpu, &x).unwrap();
    ops::sanitize_rows(&mut dev, b, c, std, key).unwrap();
    let (g, h) = (dev.to_vec().unwrap(), cpu.to_vec().unwrap());
    for k in 0..g.len() {
        assert!(
            (g[k] - h[k]).abs() <= 1e-6 * h[k].abs().max(1e-3),
            "{k}: {} vs {}",
            g[k],
            h[k]
        );
    }
}
