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
//! agree on them bit for bit; the f64 `ln`/`sin`/`cos` of glibc and CUDA differ by at most a
//! few ulp, which the final rounding to f32 almost always removes.

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
const TASK: usize = 16 * 1024;

/// A pair of independent standard normals from 128 random bits (module docs).
#[inline]
pub fn box_muller64(w0: u64, w1: u64) -> (f64, f64) {
    let u = (w0 as f64 + ((w1 & 0x7ff) as f64 + 0.5) * (1.0 / 2048.0)) * TWO_M64;
    let r = (-2.0 * u.ln()).max(0.0).sqrt();
    let (s, c) = ((w1 >> 11) as f64 * TAU_2_M53).sin_cos();
    (r * c, r * s)
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
#[inline]
pub fn normal16(key: &NoiseKey, g: u64) -> [f64; 16] {
    let mut z = [0.0; 16];
    match key.generator() {
        Generator::Philox => {
            let b = philox::blocks8(key.philox_seed(), key.stream(), 8 * g);
            for (k, x) in b.iter().enumerate() {
                let (a, c) = box_muller64(pair64(x[0], x[1]), pair64(x[2], x[3]));
                z[2 * k] = a;
                z[2 * k + 1] = c;
            }
        }
        Generator::ChaCha20 => {
            let b = chacha::blocks8(key.words(), key.stream(), 8 * g);
            for (k, x) in b.iter().enumerate() {
                let (mut a, mut c) = (0.0, 0.0);
                for i in 0..4 {
                    let (p, q) = box_muller64(
                        pair64(x[4 * i], x[4 * i + 1]),
                        pair64(x[4 * i + 2], x[4 * i + 3]),
                    );
                    a += p;
                    c += q;
                }
                z[2 * k] = a * 0.5;
                z[2 * k + 1] = c * 0.5;
            }
        }
    }
    z
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

/// Runs `f(g, chunk)` over `out` in groups of 16 elements (g = group index), in parallel.
pub(crate) fn for_groups16<T: Send>(out: &mut [T], f: impl Fn(u64, &mut [T]) + Sync) {
    out.par_chunks_mut(TASK).enumerate().for_each(|(t, chunk)| {
        let g0 = (t * TASK / 16) as u64;
        for (k, c) in chunk.chunks_mut(16).enumerate() {
            f(g0 + k as u64, c);
        }
    });
}

/// `out[j]` = the j-th 32-bit word of `key`'s stream (Philox: cuRAND's `curand()` sequence
/// after `curand_init(seed, subsequence, 0)`; ChaCha20: word j mod 16 of block ⌊j/16⌋).
pub fn random_bits(out: &mut [u32], key: NoiseKey) -> Result<()> {
    for_groups16(out, |g, c| match key.generator() {
        Generator::Philox => {
            for (i, q) in c.chunks_mut(4).enumerate() {
                let x = philox::block(key.philox_seed(), key.stream(), 4 * g + i as u64);
                q.copy_from_slice(&x[..q.len()]);
            }
        }
        Generator::ChaCha20 => {
            let x = chacha::block(key.words(), key.stream(), g);
            c.copy_from_slice(&x[..c.len()]);
        }
    });
    Ok(())
}

/// `out[j] += std · ξ_j` computed in f64 and rounded once, ξ_j ~ N(0, 1) from `key`'s stream.
/// `std` must be finite and ≥ 0 (checked before any noise is drawn).
pub fn add_gaussian(out: &mut [f32], std: f64, key: NoiseKey) -> Result<()> {
    check_non_negative("std", std)?;
    for_groups16(out, |g, c| {
        let z = normal16(&key, g);
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
    for_groups16(out, |g, c| {
        for (i, q) in c.chunks_mut(4).enumerate() {
            let l = laplace4(&key, 4 * g + i as u64);
            for (o, li) in q.iter_mut().zip(l) {
                *o = (*o as f64 + scale * li) as f32;
            }
        }
    });
    Ok(())
}
