//! Gaussian and Laplace noise on the CPU: the reference twins of `kernels/noise.cu` and the
//! samplers of `kernels/common.cuh`. See [`crate::noise`] for the element-to-bits layout, the
//! secure-mode hardening and the truncation bound.
//!
//! Every value is computed in f64 from 128 random bits and rounded once to f32:
//! - [`box_muller64`]: u = (w₀ + (w₁ mod 2¹¹ + ½)·2⁻¹¹)·2⁻⁶⁴ ∈ [2⁻⁷⁶, 1] (75 random bits for the
//!   radius), θ = 2π·⌊w₁/2¹¹⌋·2⁻⁵³ (53 bits for the angle), (z₀, z₁) = √(−2 ln u)·(cos θ, sin θ).
//! - [`laplace64`]: the top bit of w₁ is the sign, u = (w₀ + (w₁ mod 2⁵² + ½)·2⁻⁵²)·2⁻⁶⁴ ∈
//!   [2⁻¹¹⁷, 1], and the magnitude −ln u ~ Exp(1) (inverse CDF).
//!
//! The uniforms are computed with exact or correctly rounded IEEE operations, so CPU and GPU
//! agree on them bit for bit. The Gaussian's f64 `ln` and `sin`/`cos` are branch-free series
//! here (eight pairs at a time, so they vectorise; within 2 ulp of the standard library's,
//! tested) and CUDA's `log`/`sincos` on the GPU: they differ by a few f64 ulp, which the final
//! rounding to f32 almost always removes.

use crate::cpu::{chacha, philox};
use crate::error::check_non_negative;
use crate::rng::Generator;
use crate::{NoiseKey, Result};
use rayon::prelude::*;

/// 2⁻⁶⁴.
const TWO_M64: f64 = 1.0 / 18_446_744_073_709_551_616.0;
/// 2π·2⁻⁵³.
const TAU_2_M53: f64 = std::f64::consts::TAU / 9_007_199_254_740_992.0;

/// Elements per parallel task (a multiple of 16, so tasks own whole blocks of either
/// generator).
const TASK: usize = 4 * 1024;

/// A pair of independent standard normals from 128 random bits (module docs).
#[inline]
pub fn box_muller64(w0: u64, w1: u64) -> (f64, f64) {
    let mut z = [0.0; 16];
    let mut w = [0u64; 16];
    w[0] = w0;
    w[1] = w1;
    box_muller8(&w, &mut z);
    (z[0], z[1])
}

/// 2⁵²: `from_bits(0x4330… | x) − 2⁵²` is `x as f64` for x < 2⁵² (exact, vectorisable).
const TWO52: f64 = 4_503_599_627_370_496.0;

/// `x as f64` for a 32-bit value, exactly, in a form that vectorises.
#[inline(always)]
fn u32_f64(x: u64) -> f64 {
    f64::from_bits(0x4330_0000_0000_0000 | (x & 0xffff_ffff)) - TWO52
}

/// `x as f64` (round to nearest), as the sum of its exact 32-bit halves: one rounding, so the
/// same value as the conversion instruction, in a form that vectorises.
#[inline(always)]
fn u64_f64(x: u64) -> f64 {
    u32_f64(x >> 32) * 4_294_967_296.0 + u32_f64(x)
}

/// ln x for normal x > 0: x = 2^e·m with m ∈ [√½, √2), ln m = 2·atanh(s), s = (m−1)/(m+1),
/// |s| ≤ 0.1716, by its series to s²³ (truncation < 10⁻¹⁹); e·ln 2 in two parts (fdlibm's
/// split). Branch-free, so that eight lanes vectorise; within 2 ulp of the correctly rounded
/// result.
#[inline(always)]
#[allow(clippy::excessive_precision)] // fdlibm's constants, as published
fn ln_f64(x: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
    let bits = x.to_bits();
    // The biased exponent as an f64 without an integer conversion (AVX2 has none for 64 bits).
    let mut e = u32_f64((bits >> 52) & 0x7ff) - 1023.0;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    let big = m > std::f64::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += if big { 1.0 } else { 0.0 };
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut p = 1.0 / 23.0;
    for k in [21.0, 19.0, 17.0, 15.0, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0] {
        p = p * s2 + 1.0 / k;
    }
    e * LN2_HI + (2.0 * s + (2.0 * s * s2 * p + e * LN2_LO))
}

/// (sin θ, cos θ) for θ ∈ [0, 2π]: θ − n·π/2 in three parts (fdlibm's π/2 split, exact for
/// n ≤ 4), then Taylor series to r¹⁵ and r¹⁶ on |r| ≤ π/4 (truncation < 10⁻¹⁶). Branch-free.
#[inline(always)]
#[allow(clippy::excessive_precision)] // fdlibm's constants, as published
fn sin_cos_f64(t: f64) -> (f64, f64) {
    const PIO2_1: f64 = 1.570_796_326_734_125_614_17;
    const PIO2_1T: f64 = 6.077_100_506_506_192_249_32e-11;
    let n = (t * std::f64::consts::FRAC_2_PI + 0.5).floor();
    let r = (t - n * PIO2_1) - n * PIO2_1T;
    let r2 = r * r;
    // sin r = r·(1 − r²/3! + r⁴/5! − …), cos r = 1 − r²/2! + r⁴/4! − …
    const S: [f64; 7] = [
        -1.0 / 6.0,
        1.0 / 120.0,
        -1.0 / 5_040.0,
        1.0 / 362_880.0,
        -1.0 / 39_916_800.0,
        1.0 / 6_227_020_800.0,
        -1.0 / 1_307_674_368_000.0,
    ];
    const C: [f64; 8] = [
        -1.0 / 2.0,
        1.0 / 24.0,
        -1.0 / 720.0,
        1.0 / 40_320.0,
        -1.0 / 3_628_800.0,
        1.0 / 479_001_600.0,
        -1.0 / 87_178_291_200.0,
        1.0 / 20_922_789_888_000.0,
    ];
    let mut ps = S[6];
    for &c in S[..6].iter().rev() {
        ps = ps * r2 + c;
    }
    let sn = r + r * r2 * ps;
    let mut pc = C[7];
    for &c in C[..7].iter().rev() {
        pc = pc * r2 + c;
    }
    let cs = 1.0 + r2 * pc;
    // n mod 4 in f64 (n ∈ {0, …, 4}; no integer conversion, so the lanes stay vectorised).
    let q = n - 4.0 * (n * 0.25).floor();
    let odd = q == 1.0 || q == 3.0;
    let (a, b) = if odd { (cs, sn) } else { (sn, cs) };
    // θ = n·π/2 + r: sin θ = (sin r, cos r, −sin r, −cos r), cos θ = (cos r, −sin r, −cos r,
    // sin r) for n mod 4 = 0, 1, 2, 3.
    let sa = if q >= 2.0 { -1.0 } else { 1.0 };
    let sb = if q == 1.0 || q == 2.0 { -1.0 } else { 1.0 };
    (sa * a, sb * b)
}

/// Eight Box–Muller pairs at once: `w[2i], w[2i+1]` → `z[2i], z[2i+1]` ([`box_muller64`]'s
/// formula; the lanes vectorise).
#[inline(always)]
fn box_muller8(w: &[u64; 16], z: &mut [f64; 16]) {
    const TWO_M11: f64 = 1.0 / 2048.0;
    for i in 0..8 {
        let (w0, w1) = (w[2 * i], w[2 * i + 1]);
        let u = (u64_f64(w0) + (u32_f64(w1 & 0x7ff) + 0.5) * TWO_M11) * TWO_M64;
        let r = (-2.0 * ln_f64(u)).max(0.0).sqrt();
        let t = u64_f64(w1 >> 11) * TAU_2_M53;
        let (s, c) = sin_cos_f64(t);
        z[2 * i] = r * c;
        z[2 * i + 1] = r * s;
    }
}

/// A standard Laplace from 128 random bits (module docs).
#[inline]
pub fn laplace64(w0: u64, w1: u64) -> f64 {
    let u = (w0 as f64 + ((w1 & ((1 << 52) - 1)) as f64 + 0.5) * (1.0 / 4_503_599_627_370_496.0))
        * TWO_M64;
    let e = -u.ln();
    if w1 >> 63 != 0 {
        -e
    } else {
        e
    }
}

#[inline(always)]
fn pair64(lo: u32, hi: u32) -> u64 {
    lo as u64 | (hi as u64) << 32
}

/// The normals of the sixteen elements `16·g .. 16·g + 16` of `key`'s Gaussian noise (element
/// pair k from Philox block k, or the Holohan–Braghin sum of four normals from ChaCha20
/// block k; [`crate::noise`]).
#[inline(always)] // into the dispatched `normals`: its AVX2 clone then covers the Box–Muller
pub fn normal16(key: &NoiseKey, g: u64) -> [f64; 16] {
    let mut z = [0.0; 16];
    let mut w = [0u64; 16];
    match key.generator() {
        Generator::Philox => {
            let b = philox::blocks8(key.philox_seed(), key.stream(), 8 * g);
            for (k, x) in b.iter().enumerate() {
                w[2 * k] = pair64(x[0], x[1]);
                w[2 * k + 1] = pair64(x[2], x[3]);
            }
            box_muller8(&w, &mut z);
        }
        Generator::ChaCha20 => {
            let mut words = [0u32; 128];
            chacha::fill(key.words(), key.stream(), 8 * g, &mut words);
            z = holohan16(&words);
        }
    }
    z
}

/// The sixteen secure-mode normals of eight ChaCha20 blocks (`words`: 128 words): block k's
/// four Box–Muller pairs summed in order and halved into elements 2k, 2k + 1 (call i of the
/// vectorised Box–Muller takes pair i of all eight blocks).
#[inline(always)]
fn holohan16(words: &[u32]) -> [f64; 16] {
    let mut w = [0u64; 16];
    let mut acc = [0.0; 16];
    for i in 0..4 {
        for (k, x) in words.chunks_exact(16).take(8).enumerate() {
            w[2 * k] = pair64(x[4 * i], x[4 * i + 1]);
            w[2 * k + 1] = pair64(x[4 * i + 2], x[4 * i + 3]);
        }
        let mut zi = [0.0; 16];
        box_muller8(&w, &mut zi);
        for (a, v) in acc.iter_mut().zip(zi) {
            *a += v;
        }
    }
    acc.map(|a| a * 0.5)
}

/// Elements per run of [`normals`] (sixteen groups: one keystream call for ChaCha20).
pub(crate) const RUN: usize = 256;

/// The normals of elements `16·g .. 16·g + z.len()` (z.len() ≤ 256): what [`normal16`]
/// gives group by group, with ChaCha20's keystream generated in one call for the whole run.
#[cfg_attr(
    not(feature = "baseline-cpu"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
pub fn normals(key: &NoiseKey, g: u64, z: &mut [f64]) {
    match key.generator() {
        Generator::Philox => {
            for (i, c) in z.chunks_mut(16).enumerate() {
                let n = normal16(key, g + i as u64);
                c.copy_from_slice(&n[..c.len()]);
            }
        }
        Generator::ChaCha20 => {
            let groups = z.len().div_ceil(16);
            let mut words = [0u32; 8 * RUN];
            let words = &mut words[..128 * groups];
            chacha::fill(key.words(), key.stream(), 8 * g, words);
            for (c, wg) in z.chunks_mut(16).zip(words.chunks_exact(128)) {
                let n = holohan16(wg);
                c.copy_from_slice(&n[..c.len()]);
            }
        }
    }
}

/// The standard Laplace values of the four elements `4·q .. 4·q + 4` of `key`'s Laplace noise
/// (element k from the 128 bits of Philox block k, or of words 4·(k mod 4) .. of ChaCha20 block
/// ⌊k/4⌋).
#[inline]
pub fn laplace4(key: &NoiseKey, q: u64) -> [f64; 4] {
    match key.generator() {
        Generator::Philox => std::array::from_fn(|i| {
            let x = philox::block(key.philox_seed(), key.stream(), 4 * q + i as u64);
            laplace64(pair64(x[0], x[1]), pair64(x[2], x[3]))
        }),
        Generator::ChaCha20 => {
            let x = chacha::block(key.words(), key.stream(), q);
            std::array::from_fn(|i| {
                laplace64(
                    pair64(x[4 * i], x[4 * i + 1]),
                    pair64(x[4 * i + 2], x[4 * i + 3]),
                )
            })
        }
    }
}

/// Runs `f(g, chunk)` over `out` in chunks of `n` elements (a multiple of 16; g = the index
/// of the chunk's first 16-element group), in parallel.
pub(crate) fn for_groups<T: Send>(out: &mut [T], n: usize, f: impl Fn(u64, &mut [T]) + Sync) {
    out.par_chunks_mut(TASK).enumerate().for_each(|(t, chunk)| {
        let g0 = (t * TASK / 16) as u64;
        for (k, c) in chunk.chunks_mut(n).enumerate() {
            f(g0 + (k * n / 16) as u64, c);
        }
    });
}

/// `out[j]` = the j-th 32-bit word of `key`'s stream (Philox: cuRAND's `curand()` sequence
/// after `curand_init(seed, subsequence, 0)`; ChaCha20: word j mod 16 of block ⌊j/16⌋).
pub fn random_bits(out: &mut [u32], key: NoiseKey) -> Result<()> {
    // 128 words per piece: eight Philox blocks ×4 words… ×4, or eight ChaCha20 blocks.
    out.par_chunks_mut(TASK).enumerate().for_each(|(t, chunk)| {
        let w0 = (t * TASK) as u64;
        for (k, c) in chunk.chunks_mut(128).enumerate() {
            let first = w0 + 128 * k as u64;
            match key.generator() {
                Generator::Philox => {
                    for (i, q) in c.chunks_mut(32).enumerate() {
                        let b = philox::blocks8(
                            key.philox_seed(),
                            key.stream(),
                            first / 4 + 8 * i as u64,
                        );
                        for (o, x) in q.chunks_mut(4).zip(b) {
                            o.copy_from_slice(&x[..o.len()]);
                        }
                    }
                }
                Generator::ChaCha20 => chacha::fill(key.words(), key.stream(), first / 16, c),
            }
        }
    });
    Ok(())
}

/// `out[j] += std · ξ_j` computed in f64 and rounded once, ξ_j ~ N(0, 1) from `key`'s stream.
/// `std` must be finite and ≥ 0 (checked before any noise is drawn).
pub fn add_gaussian(out: &mut [f32], std: f64, key: NoiseKey) -> Result<()> {
    check_non_negative("std", std)?;
    for_groups(out, RUN, |g, c| {
        let mut z = [0.0; RUN];
        normals(&key, g, &mut z[..c.len()]);
        for (o, zi) in c.iter_mut().zip(z) {
            *o = (*o as f64 + std * zi) as f32;
        }
    });
    Ok(())
}

/// `out[j] += scale · ℓ_j` computed in f64 and rounded once, ℓ_j ~ Laplace(0, 1) from `key`'s
/// stream. `scale` must be finite and ≥ 0 (checked before any noise is drawn).
pub fn add_laplace(out: &mut [f32], scale: f64, key: NoiseKey) -> Result<()> {
    check_non_negative("scale", scale)?;
    for_groups(out, 16, |g, c| {
        for (i, q) in c.chunks_mut(4).enumerate() {
            let l = laplace4(&key, 4 * g + i as u64);
            for (o, li) in q.iter_mut().zip(l) {
                *o = (*o as f64 + scale * li) as f32;
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::philox::Philox;

    /// The vectorisable ln, sin/cos and u64 → f64 agree with the standard library's: ln to 2 ulp
    /// (4.5·10⁻¹⁶ relative, or absolute near 1), sin/cos to 3.5·10⁻¹⁶ absolute, the
    /// conversions exactly — over the samplers' whole domains, their ends included.
    #[test]
    fn fast_math_matches_std() {
        let mut r = Philox::new(5, 5);
        let mut us = vec![2f64.powi(-76), 2f64.powi(-64), 0.5, 1.0 - 1e-16, 1.0];
        let mut ts = vec![
            0.0,
            std::f64::consts::FRAC_PI_4,
            std::f64::consts::PI,
            std::f64::consts::TAU,
        ];
        for _ in 0..200_000 {
            let w = r.next_u64();
            assert_eq!(u64_f64(w), w as f64);
            assert_eq!(u64_f64(w >> 11), (w >> 11) as f64);
            let e = (r.next_u32() % 77) as i32;
            us.push((w >> 11) as f64 * 2f64.powi(-53 - e) + 2f64.powi(-76));
            ts.push((w >> 11) as f64 * TAU_2_M53);
        }
        for u in us {
            let (a, b) = (ln_f64(u), u.ln());
            assert!(
                (a - b).abs() <= 4.5e-16 * b.abs().max(1.0),
                "ln({u}) = {a} vs {b}"
            );
        }
        for t in ts {
            let (s, c) = sin_cos_f64(t);
            assert!(
                (s - t.sin()).abs() <= 3.5e-16,
                "sin({t}) = {s} vs {}",
                t.sin()
            );
            assert!(
                (c - t.cos()).abs() <= 3.5e-16,
                "cos({t}) = {c} vs {}",
                t.cos()
            );
        }
    }
}
