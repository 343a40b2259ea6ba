//! Gaussian and Laplace noise on the CPU from the Philox4x32-10 stream that cuRAND's device
//! API produces: the reference twins of `kernels/noise.cu`.
//!
//! Element j of a tensor takes lane j % 4 of Philox block j / 4 of the key's subsequence, so
//! for the same [`NoiseKey`] the CPU and GPU use bit-identical 32-bit outputs
//! ([`philox_bits`]); the floats agree to the accuracy of `logf`/`sinf`/`cosf` (≤ a few ulp).
//!
//! - Gaussian: cuRAND's Box–Muller (`_curand_box_muller`): for a pair (x, y) of 32-bit outputs,
//!   u = x·2⁻³² + 2⁻³³ ∈ (0, 1], v = (y·2⁻³² + 2⁻³³)·2π, and
//!   (z₀, z₁) = √(−2 ln u)·(sin v, cos v). |z| ≤ √(−2 ln 2⁻³³) ≈ 6.77 (the tail beyond is cut,
//!   as in cuRAND).
//! - Laplace: inverse CDF of the exponential with a random sign: the top bit of x is the sign,
//!   u = (x mod 2³¹)·2⁻³¹ + 2⁻³² ∈ (0, 1], and z = ±(−ln u) ~ Laplace(0, 1), |z| ≤ 22.2.
//!
//! These are floating-point samplers: fine for DP-SGD's noise (whose analysis assumes real
//! Gaussians, like Opacus), but not hardened against floating-point attacks (Mironov 2012); for
//! releasing query answers use the discrete samplers of the mechanisms module.

use crate::cpu::philox::block;
use crate::error::check_non_negative;
use crate::{NoiseKey, Result};
use rayon::prelude::*;

/// cuRAND's `CURAND_2POW32_INV`.
pub const POW2_M32: f32 = 2.328_306_4e-10;
/// cuRAND's `CURAND_2POW32_INV_2PI` (computed in f32 as cuRAND does).
pub const POW2_M32_2PI: f32 = POW2_M32 * 6.283_185_5;
const POW2_M31: f32 = 4.656_613e-10;

/// Elements per parallel task (a multiple of 4, so tasks own whole Philox blocks).
const TASK: usize = 16 * 1024;

/// cuRAND's Box–Muller on one pair of 32-bit outputs (see the module docs).
#[inline]
pub fn box_muller(x: u32, y: u32) -> (f32, f32) {
    // x·2⁻³² is exact, so u equals the GPU's __fmaf_rn result bit for bit; v may differ from it
    // by one rounding (≤ 1 ulp). Plain multiply-add: `mul_add` is a libm call on targets built
    // without the `fma` feature, and this is the inner loop of every noise draw.
    let u = (x as f32) * POW2_M32 + POW2_M32 * 0.5;
    let v = (y as f32) * POW2_M32_2PI + POW2_M32_2PI * 0.5;
    let s = (-2.0f32 * u.ln()).sqrt();
    (v.sin() * s, v.cos() * s)
}

/// The four standard normals of Philox block `b` of `key`'s stream.
#[inline]
pub fn normal4(key: NoiseKey, b: u64) -> [f32; 4] {
    let x = block(key.seed, key.subsequence, b);
    let (z0, z1) = box_muller(x[0], x[1]);
    let (z2, z3) = box_muller(x[2], x[3]);
    [z0, z1, z2, z3]
}

/// A standard Laplace from one 32-bit output (see the module docs).
#[inline]
pub fn laplace1(x: u32) -> f32 {
    let u = ((x & 0x7fff_ffff) as f32) * POW2_M31 + POW2_M31 * 0.5;
    let e = -u.ln();
    if x & 0x8000_0000 != 0 {
        -e
    } else {
        e
    }
}

fn for_blocks(out: &mut [f32], f: impl Fn(u64, &mut [f32]) + Sync) {
    out.par_chunks_mut(TASK).enumerate().for_each(|(t, chunk)| {
        let b0 = (t * TASK / 4) as u64;
        for (k, quad) in chunk.chunks_mut(4).enumerate() {
            f(b0 + k as u64, quad);
        }
    });
}

/// `out[j]` = the j-th 32-bit output of `key`'s stream (cuRAND's `curand()` sequence after
/// `curand_init(seed, subsequence, 0)`).
pub fn philox_bits(out: &mut [u32], key: NoiseKey) -> Result<()> {
    out.par_chunks_mut(TASK).enumerate().for_each(|(t, chunk)| {
        let b0 = (t * TASK / 4) as u64;
        for (k, quad) in chunk.chunks_mut(4).enumerate() {
            let x = block(key.seed, key.subsequence, b0 + k as u64);
            quad.copy_from_slice(&x[..quad.len()]);
        }
    });
    Ok(())
}

/// `out[j] += std · ξ_j`, ξ_j ~ N(0, 1) from `key`'s stream. `std` must be finite and ≥ 0
/// (checked before any noise is drawn).
pub fn add_gaussian(out: &mut [f32], std: f32, key: NoiseKey) -> Result<()> {
    check_non_negative("std", std as f64)?;
    for_blocks(out, |b, quad| {
        let z = normal4(key, b);
        for (o, zi) in quad.iter_mut().zip(z) {
            *o += std * zi;
        }
    });
    Ok(())
}

/// `out[j] += scale · ℓ_j`, ℓ_j ~ Laplace(0, 1) from `key`'s stream. `scale` must be finite
/// and ≥ 0 (checked before any noise is drawn).
pub fn add_laplace(out: &mut [f32], scale: f32, key: NoiseKey) -> Result<()> {
    check_non_negative("scale", scale as f64)?;
    for_blocks(out, |b, quad| {
        let x = block(key.seed, key.subsequence, b);
        for (o, xi) in quad.iter_mut().zip(x) {
            *o += scale * laplace1(xi);
        }
    });
    Ok(())
}
