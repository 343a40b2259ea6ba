//! The 2-D scattering transform of Mallat ("Group Invariant Scattering", CPAM 2012; Bruna &
//! Mallat, "Invariant Scattering Convolution Networks", TPAMI 2013) as Kymatio 0.3.0 computes
//! it (`kymatio.numpy.Scattering2D(J, shape, L, max_order=2)`; Andreux et al., "Kymatio:
//! Scattering Transforms in Python", JMLR 2020): the fixed ScatterNet front end of Tramèr &
//! Boneh, "Differentially Private Learning Needs Better Features (or Much More Data)", ICLR
//! 2021.
//!
//! For an `M × N` image `x` (per input channel):
//! - `S0 = x ⋆ φ_J`, `S1[λ] = |x ⋆ ψ_λ| ⋆ φ_J` for the `J·L` wavelets λ = (j, θ), and
//!   `S2[λ1, λ2] = ||x ⋆ ψ_λ1| ⋆ ψ_λ2| ⋆ φ_J` for j2 > j1: `1 + J·L + L²·J(J−1)/2` channels
//!   (81 for J = 2, L = 8), each subsampled by 2^J to `M/2^J × N/2^J` (7 × 7 for 28 × 28).
//! - As Kymatio: the image is reflect-padded to `M_p × N_p` (the next multiple of 2^J at least
//!   2^J beyond `M`, 36 × 36 for 28 × 28), every convolution is a product in the Fourier
//!   domain of the padded size, subsampling is a periodisation in Fourier (Kymatio's
//!   `subsample_fourier`), and the result is cropped by one coarse pixel on each side
//!   (`unpad`). The Morlet filters are built as Kymatio's `filter_bank` builds them, with the
//!   same single-precision roundings of the filter values; the transform itself runs in f64
//!   and is returned in f32. `tests/scatter.rs` checks it against Kymatio's own output
//!   (`scripts/gen-scatter-reference`).
//!
//! The transform is data-independent and fixed: applying it to private data costs no privacy
//! (it is part of the model's fixed input pipeline, a per-example map).

use crate::{Error, Result};
use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use std::f64::consts::PI;
use std::sync::Arc;

type C64 = Complex<f64>;

/// The parameters of a [`Scattering2d`] (second order, as Tramèr & Boneh use it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ScatterParams {
    /// Log2 of the scale: outputs are subsampled by 2^J.
    pub j: usize,
    /// Number of wavelet orientations.
    pub l: usize,
    /// Image height M.
    pub height: usize,
    /// Image width N.
    pub width: usize,
}

impl ScatterParams {
    /// Kymatio's `Scattering2D(J=2, shape=(28, 28), L=8)`, Tramèr & Boneh's MNIST front end.
    pub const MNIST: ScatterParams = ScatterParams {
        j: 2,
        l: 8,
        height: 28,
        width: 28,
    };

    /// Channels per input channel: `1 + J·L + L²·J(J−1)/2`.
    pub fn channels(&self) -> usize {
        1 + self.j * self.l + self.l * self.l * self.j * self.j.saturating_sub(1) / 2
    }

    /// Output spatial size `(M / 2^J, N / 2^J)`.
    pub fn out_hw(&self) -> (usize, usize) {
        (self.height >> self.j, self.width >> self.j)
    }

    fn check(&self) -> Result<()> {
        if self.j == 0 || self.j > 8 {
            return Err(Error::invalid("J", self.j, "in 1..=8"));
        }
        if self.l == 0 || self.l > 64 {
            return Err(Error::invalid("L", self.l, "in 1..=64"));
        }
        let s = 1usize << self.j;
        if self.height < s || self.width < s {
            return Err(Error::invalid(
                "image size",
                format!("{}×{}", self.height, self.width),
                format!("at least 2^J = {s} on each side (lower J)"),
            ));
        }
        Ok(())
    }

    /// Kymatio's `compute_padding`: `((M + 2^J) / 2^J + 1) · 2^J`.
    fn padded(&self) -> (usize, usize) {
        let s = 1usize << self.j;
        (
            ((self.height + s) / s + 1) * s,
            ((self.width + s) / s + 1) * s,
        )
    }
}

/// One wavelet ψ_{j,θ}: its Fourier transform at the resolutions 2^-res it is used at.
#[derive(Clone, Debug)]
struct Psi {
    j: usize,
    levels: Vec<Vec<f64>>,
}

/// FFT plans for one resolution (rows of length `n`, columns of length `m`).
#[derive(Clone)]
struct Plans {
    m: usize,
    n: usize,
    row_fwd: Arc<dyn Fft<f64>>,
    row_inv: Arc<dyn Fft<f64>>,
    col_fwd: Arc<dyn Fft<f64>>,
    col_inv: Arc<dyn Fft<f64>>,
}

/// A built scattering transform: the filter bank and the FFT plans (cheap to share between
/// threads; [`Scattering2d::transform`] runs the batch in parallel with rayon).
#[derive(Clone)]
pub struct Scattering2d {
    params: ScatterParams,
    mp: usize,
    np: usize,
    pad_top: usize,
    pad_left: usize,
    psi: Vec<Psi>,
    phi: Vec<Vec<f64>>,
    /// plans[res]: sizes (mp >> res, np >> res), res = 0..=J.
    plans: Vec<Plans>,
}

impl std::fmt::Debug for Scattering2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scattering2d")
            .field("params", &self.params)
            .field("padded", &(self.mp, self.np))
            .finish_non_exhaustive()
    }
}

/// Kymatio's `gabor_2d` with its roundings: the rotation in f32, each periodised term added in
/// f64 and stored in complex64, the normalisation in single precision.
fn gabor_2d(m: usize, n: usize, sigma: f64, theta: f64, xi: f64, slant: f64) -> Vec<C64> {
    let (c, s) = ((theta.cos() as f32) as f64, (theta.sin() as f32) as f64);
    let r = [[c, -s], [s, c]];
    let r_inv = [[c, s], [-s, c]];
    let d = [[1.0, 0.0], [0.0, slant * slant]];
    let mut dr = [[0.0f64; 2]; 2];
    for i in 0..2 {
        for k in 0..2 {
            dr[i][k] = d[i][0] * r_inv[0][k] + d[i][1] * r_inv[1][k];
        }
    }
    let mut curv = [[0.0f64; 2]; 2];
    for i in 0..2 {
        for k in 0..2 {
            curv[i][k] = (r[i][0] * dr[0][k] + r[i][1] * dr[1][k]) / (2.0 * sigma * sigma);
        }
    }
    let (ct, st) = (theta.cos(), theta.sin());
    let mut gab = vec![Complex::<f32>::new(0.0, 0.0); m * n];
    for ex in -2i64..=2 {
        for ey in -2i64..=2 {
            for a in 0..m {
                let xx = (a as i64 + ex * m as i64) as f64;
                for b in 0..n {
                    let yy = (b as i64 + ey * n as i64) as f64;
                    let re = -(curv[0][0] * (xx * xx)
                        + (curv[0][1] + curv[1][0]) * (xx * yy)
                        + curv[1][1] * (yy * yy));
                    let im = xx * xi * ct + yy * xi * st;
                    let t = C64::new(re, im).exp();
                    let g = &mut gab[a * n + b];
                    let sum = C64::new(g.re as f64, g.im as f64) + t;
                    *g = Complex::new(sum.re as f32, sum.im as f32);
                }
            }
        }
    }
    // Kymatio's normalisation uses 3.1415, not π: kept, so the filters match.
    #[allow(clippy::approx_constant)]
    let kymatio_pi = 3.1415;
    let norm = (2.0 * kymatio_pi * sigma * sigma / slant) as f32;
    gab.iter()
        .map(|g| C64::new((g.re / norm) as f64, (g.im / norm) as f64))
        .collect()
}

/// Kymatio's `morlet_2d`: a Gabor minus the multiple of its envelope that gives zero mean.
fn morlet_2d(m: usize, n: usize, sigma: f64, theta: f64, xi: f64, slant: f64) -> Vec<C64> {
    let wv = gabor_2d(m, n, sigma, theta, xi, slant);
    let env = gabor_2d(m, n, sigma, theta, 0.0, slant);
    let k = wv.iter().sum::<C64>() / env.iter().sum::<C64>();
    // Kymatio holds K and the filter in complex64.
    let k = C64::new(k.re as f32 as f64, k.im as f32 as f64);
    wv.iter()
        .zip(&env)
        .map(|(w, e)| {
            let v = w - k * e;
            C64::new(v.re as f32 as f64, v.im as f32 as f64)
        })
        .collect()
}

/// The real part of the 2-D DFT of `x` (`np.real(fft2(x))`), rounded to f32 as Kymatio keeps it.
fn real_fft2(x: &[C64], plans: &Plans) -> Vec<f32> {
    let mut buf = x.to_vec();
    fft2(&mut buf, plans, true, &mut Vec::new(), &mut Vec::new());
    buf.iter().map(|c| c.re as f32).collect()
}

/// Kymatio's `periodize_filter_fft`: the filter at resolution 2^-res (in f32, as Kymatio).
fn periodize(x: &[f32], m: usize, n: usize, res: usize) -> Vec<f32> {
    let p = 1usize << res;
    let (mm, nn) = (m / p, n / p);
    let len_x = (m as f64 * (1.0 - 2f64.powi(-(res as i32)))) as usize;
    let start_x = (m as f64 * 2f64.powi(-(res as i32) - 1)) as usize;
    let len_y = (n as f64 * (1.0 - 2f64.powi(-(res as i32)))) as usize;
    let start_y = (n as f64 * 2f64.powi(-(res as i32) - 1)) as usize;
    let masked = |a: usize, b: usize| -> f32 {
        if (start_x..start_x + len_x).contains(&a) || (start_y..start_y + len_y).contains(&b) {
            0.0
        } else {
            x[a * n + b]
        }
    };
    let mut crop = vec![0f32; mm * nn];
    for k in 0..mm {
        for l in 0..nn {
            let mut acc = 0f32;
            for i in 0..p {
                for j in 0..p {
                    acc += masked(k + i * mm, l + j * nn);
                }
            }
            crop[k * nn + l] = acc;
        }
    }
    crop
}

/// In-place 2-D FFT of a row-major `plans.m × plans.n` array (forward, or inverse without the
/// 1/(mn) factor).
fn fft2(data: &mut [C64], plans: &Plans, forward: bool, tr: &mut Vec<C64>, scratch: &mut Vec<C64>) {
    let (m, n) = (plans.m, plans.n);
    let (row, col) = if forward {
        (&plans.row_fwd, &plans.col_fwd)
    } else {
        (&plans.row_inv, &plans.col_inv)
    };
    let need = row
        .get_inplace_scratch_len()
        .max(col.get_inplace_scratch_len());
    if scratch.len() < need {
        scratch.resize(need, C64::new(0.0, 0.0));
    }
    row.process_with_scratch(
        &mut data[..m * n],
        &mut scratch[..row.get_inplace_scratch_len()],
    );
    tr.resize(m * n, C64::new(0.0, 0.0));
    for a in 0..m {
        for b in 0..n {
            tr[b * m + a] = data[a * n + b];
        }
    }
    col.process_with_scratch(
        &mut tr[..m * n],
        &mut scratch[..col.get_inplace_scratch_len()],
    );
    for a in 0..m {
        for b in 0..n {
            data[a * n + b] = tr[b * m + a];
        }
    }
}

/// Per-thread scratch of [`Scattering2d::transform`].
#[derive(Default)]
struct Work {
    u0: Vec<C64>,
    u1: Vec<C64>,
    u2: Vec<C64>,
    t: Vec<C64>,
    s: Vec<C64>,
    out: Vec<f64>,
    tr: Vec<C64>,
    scratch: Vec<C64>,
}

/// `out[a, b] = x[a, b] · f[a, b]` (a real filter).
fn mul_into(out: &mut Vec<C64>, x: &[C64], f: &[f64]) {
    out.clear();
    out.extend(x.iter().zip(f).map(|(v, &w)| v * w));
}

/// Kymatio's `subsample_fourier`: `out[a, b] = mean_{i,j < k} x[a + i·m/k, b + j·n/k]`.
fn subsample(out: &mut Vec<C64>, x: &[C64], m: usize, n: usize, k: usize) {
    let (mm, nn) = (m / k, n / k);
    out.clear();
    out.resize(mm * nn, C64::new(0.0, 0.0));
    let inv = 1.0 / (k * k) as f64;
    for a in 0..mm {
        for b in 0..nn {
            let mut acc = C64::new(0.0, 0.0);
            for i in 0..k {
                for j in 0..k {
                    acc += x[(a + i * mm) * n + b + j * nn];
                }
            }
            out[a * nn + b] = acc * inv;
        }
    }
}

impl Scattering2d {
    /// Builds the filter bank and the FFT plans; [`Error::InvalidParameter`] when J or L is out
    /// of range or the image is smaller than 2^J.
    pub fn new(params: ScatterParams) -> Result<Self> {
        params.check()?;
        let (mp, np) = params.padded();
        let (jj, l) = (params.j, params.l);
        let mut planner = FftPlanner::<f64>::new();
        let plans: Vec<Plans> = (0..=jj)
            .map(|res| {
                let (m, n) = (mp >> res, np >> res);
                Plans {
                    m,
                    n,
                    row_fwd: planner.plan_fft_forward(n),
                    row_inv: planner.plan_fft_inverse(n),
                    col_fwd: planner.plan_fft_forward(m),
                    col_inv: planner.plan_fft_inverse(m),
                }
            })
            .collect();
        let to_f64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
        let lf = l as f64;
        let theta0 = (lf - lf / 2.0 - 1.0).trunc();
        let mut psi = Vec::with_capacity(jj * l);
        for j in 0..jj {
            for t in 0..l {
                let sig = morlet_2d(
                    mp,
                    np,
                    0.8 * 2f64.powi(j as i32),
                    (theta0 - t as f64) * PI / lf,
                    3.0 / 4.0 * PI / 2f64.powi(j as i32),
                    4.0 / lf,
                );
                let f = real_fft2(&sig, &plans[0]);
                let nlev = (j + 1).min((jj.saturating_sub(1)).max(1));
                let levels = (0..nlev)
                    .map(|res| to_f64(periodize(&f, mp, np, res)))
                    .collect();
                psi.push(Psi { j, levels });
            }
        }
        let phi_sig = gabor_2d(mp, np, 0.8 * 2f64.powi(jj as i32 - 1), 0.0, 0.0, 1.0);
        let f = real_fft2(&phi_sig, &plans[0]);
        let phi = (0..jj)
            .map(|res| to_f64(periodize(&f, mp, np, res)))
            .collect();
        Ok(Scattering2d {
            params,
            mp,
            np,
            pad_top: (mp - params.height) / 2,
            pad_left: (np - params.width) / 2,
            psi,
            phi,
            plans,
        })
    }

    /// The parameters.
    pub fn params(&self) -> ScatterParams {
        self.params
    }

    /// Output values per input channel: `channels · (M/2^J) · (N/2^J)`.
    pub fn out_len(&self) -> usize {
        let (h, w) = self.params.out_hw();
        self.params.channels() * h * w
    }

    /// Reflect padding (numpy's `mode='reflect'`) of one image into `u0`, as complex.
    fn pad(&self, x: &[f32], u0: &mut Vec<C64>) {
        let (m, n) = (self.params.height as i64, self.params.width as i64);
        let refl = |mut s: i64, len: i64| -> usize {
            if len == 1 {
                return 0;
            }
            let period = 2 * (len - 1);
            s = s.rem_euclid(period);
            if s >= len {
                s = period - s;
            }
            s as usize
        };
        u0.clear();
        for a in 0..self.mp {
            let sa = refl(a as i64 - self.pad_top as i64, m);
            for b in 0..self.np {
                let sb = refl(b as i64 - self.pad_left as i64, n);
                u0.push(C64::new(x[sa * n as usize + sb] as f64, 0.0));
            }
        }
    }

    /// Inverse FFT of a coarse `(mp/2^J) × (np/2^J)` array, real part, `unpad`ded into `out`.
    fn finish(&self, s: &mut [C64], w: &mut Work, out: &mut [f64]) {
        let jj = self.params.j;
        let p = &self.plans[jj];
        fft2(s, p, false, &mut w.tr, &mut w.scratch);
        let inv = 1.0 / (p.m * p.n) as f64;
        let (h, wd) = self.params.out_hw();
        for a in 0..h {
            for b in 0..wd {
                out[a * wd + b] = s[(a + 1) * p.n + b + 1].re * inv;
            }
        }
    }

    /// `|ifft2(x)|` then `fft2` again, in place (the modulus non-linearity between layers).
    fn modulus_in_fourier(&self, x: &mut [C64], res: usize, w: &mut Work) {
        let p = &self.plans[res];
        fft2(x, p, false, &mut w.tr, &mut w.scratch);
        let inv = 1.0 / (p.m * p.n) as f64;
        for v in x.iter_mut() {
            *v = C64::new((*v * inv).norm(), 0.0);
        }
        fft2(x, p, true, &mut w.tr, &mut w.scratch);
    }

    /// The transform of one `M × N` image into `out` (`channels × M/2^J × N/2^J`).
    /// (In f64; [`Scattering2d::transform`] rounds to f32.)
    fn one(&self, x: &[f32], out: &mut [f64], w: &mut Work) {
        let jj = self.params.j;
        let l = self.params.l;
        let (h, wd) = self.params.out_hw();
        let hw = h * wd;
        let mut u0 = std::mem::take(&mut w.u0);
        let mut u1 = std::mem::take(&mut w.u1);
        let mut u2 = std::mem::take(&mut w.u2);
        let mut t = std::mem::take(&mut w.t);
        let mut s = std::mem::take(&mut w.s);
        self.pad(x, &mut u0);
        fft2(&mut u0, &self.plans[0], true, &mut w.tr, &mut w.scratch);
        // S0 = x ⋆ φ_J.
        mul_into(&mut t, &u0, &self.phi[0]);
        subsample(&mut s, &t, self.mp, self.np, 1 << jj);
        self.finish(&mut s, w, &mut out[..hw]);
        let mut ch2 = 1 + jj * l;
        for (n1, p1) in self.psi.iter().enumerate() {
            let j1 = p1.j;
            // U1 = |x ⋆ ψ_λ1| at resolution 2^-j1, in Fourier.
            mul_into(&mut t, &u0, &p1.levels[0]);
            if j1 > 0 {
                subsample(&mut u1, &t, self.mp, self.np, 1 << j1);
            } else {
                std::mem::swap(&mut u1, &mut t);
            }
            self.modulus_in_fourier(&mut u1, j1, w);
            let (m1, n1s) = (self.mp >> j1, self.np >> j1);
            // S1 = U1 ⋆ φ_J.
            mul_into(&mut t, &u1, &self.phi[j1]);
            subsample(&mut s, &t, m1, n1s, 1 << (jj - j1));
            self.finish(&mut s, w, &mut out[(1 + n1) * hw..(2 + n1) * hw]);
            // S2 = |U1 ⋆ ψ_λ2| ⋆ φ_J for j2 > j1.
            for p2 in self.psi.iter().filter(|p2| p2.j > j1) {
                let j2 = p2.j;
                mul_into(&mut t, &u1, &p2.levels[j1]);
                subsample(&mut u2, &t, m1, n1s, 1 << (j2 - j1));
                self.modulus_in_fourier(&mut u2, j2, w);
                mul_into(&mut t, &u2, &self.phi[j2]);
                subsample(&mut s, &t, self.mp >> j2, self.np >> j2, 1 << (jj - j2));
                self.finish(&mut s, w, &mut out[ch2 * hw..(ch2 + 1) * hw]);
                ch2 += 1;
            }
        }
        w.u0 = u0;
        w.u1 = u1;
        w.u2 = u2;
        w.t = t;
        w.s = s;
    }

    /// Data-independent bounds on the output: for every channel k, a number `B_k` such that
    /// `|S[k, s]| ≤ B_k` at every position s, for **every** image whose pixels lie in [0, 1]
    /// (the range the trainer feeds: `p/255`). Used to fix the clipping bounds of the private
    /// feature statistics without looking at any data
    /// ([`crate::mechanisms::feature_stats::scatter_clip_bounds`]).
    ///
    /// # Proof
    /// Follow [`Scattering2d::transform`] step by step (the same filters, resolutions and
    /// order). Reflect padding copies pixels, so the padded image is in [0, 1]. Each filtering
    /// is a circular convolution `z(u) = Σ_v g(u − v) y(v)` on its grid, with `g` the filter's
    /// spatial form (the inverse FFT of its Fourier values). For `y` real with `0 ≤ y ≤ c`,
    /// `Re z ∈ [−c·N_r, c·P_r]` and `Im z ∈ [−c·N_i, c·P_i]`, where `P_r`, `N_r` are the sums of
    /// the positive and negative parts of `Re g` (`P_i`, `N_i` of `Im g`), so
    /// `|z| ≤ c·√(max(P_r, N_r)² + max(P_i, N_i)²)` =: `c·β(g)`. Subsampling by periodisation in
    /// Fourier (`subsample`) is exactly the spatial subsampling `z(k·u)` (it picks entries), and
    /// cropping picks entries, so neither raises the bound; the modulus keeps `|z|` and makes it
    /// real and ≥ 0 again. The output is the real part of the last (low-pass) convolution:
    /// `|Re z| ≤ c·max(P_r, N_r)` =: `c·ρ(φ)`. Hence `B_0 = ρ(φ at resolution 0)`,
    /// `B_λ1 = ρ(φ_{j1})·β(ψ_λ1)`, `B_λ1,λ2 = ρ(φ_{j2})·β(ψ_λ2 at resolution j1)·β(ψ_λ1)`.
    /// Each bound is computed in f64 and enlarged by a relative 10⁻⁶ (far above the f64
    /// rounding of these sums and the f32 rounding of the features). The bound is for the
    /// exact transform; it is loose (it lets every channel reach its own worst case at once).
    /// Privacy never rests on it: the statistics clip every example whatever its norm.
    pub fn output_bounds(&self) -> Vec<f64> {
        let spatial = |f: &[f64], res: usize| -> Vec<C64> {
            let p = &self.plans[res];
            let mut g: Vec<C64> = f.iter().map(|&v| C64::new(v, 0.0)).collect();
            fft2(&mut g, p, false, &mut Vec::new(), &mut Vec::new());
            let inv = 1.0 / (p.m * p.n) as f64;
            g.iter().map(|v| v * inv).collect()
        };
        let pos_neg = |it: &mut dyn Iterator<Item = f64>| -> f64 {
            let (p, n) = it.fold(
                (0f64, 0f64),
                |(p, n), v| {
                    if v > 0.0 {
                        (p + v, n)
                    } else {
                        (p, n - v)
                    }
                },
            );
            p.max(n)
        };
        let rho = |f: &[f64], res: usize| -> f64 {
            let g = spatial(f, res);
            pos_neg(&mut g.iter().map(|v| v.re))
        };
        let beta = |f: &[f64], res: usize| -> f64 {
            let g = spatial(f, res);
            pos_neg(&mut g.iter().map(|v| v.re)).hypot(pos_neg(&mut g.iter().map(|v| v.im)))
        };
        let rho_phi: Vec<f64> = (0..self.phi.len()).map(|r| rho(&self.phi[r], r)).collect();
        let mut out = Vec::with_capacity(self.params.channels());
        out.push(rho_phi[0]);
        let beta1: Vec<f64> = self.psi.iter().map(|p| beta(&p.levels[0], 0)).collect();
        for (p1, b1) in self.psi.iter().zip(&beta1) {
            out.push(rho_phi[p1.j] * b1);
        }
        for (p1, b1) in self.psi.iter().zip(&beta1) {
            for p2 in self.psi.iter().filter(|p2| p2.j > p1.j) {
                out.push(rho_phi[p2.j] * beta(&p2.levels[p1.j], p1.j) * b1);
            }
        }
        debug_assert_eq!(out.len(), self.params.channels());
        out.into_iter().map(|b| b * (1.0 + 1e-6)).collect()
    }

    /// Checks a batch's lengths for [`Scattering2d::transform`] and its twins (`op` names the
    /// caller): `c ≥ 1`, `images` a whole number of `[c, M, N]` images, `out` exactly their
    /// features. Returns the number of image planes (examples × `c`).
    pub fn check_batch(
        &self,
        op: &'static str,
        images: usize,
        c: usize,
        out: usize,
    ) -> Result<usize> {
        let (m, n) = (self.params.height, self.params.width);
        if c == 0 {
            return Err(Error::invalid("channels", c, ">= 1"));
        }
        let inp = m * n;
        if images % (c * inp) != 0 {
            return Err(Error::shape(
                op,
                format!("{images} input values are not a whole number of [{c}, {m}, {n}] images"),
            ));
        }
        let count = images / inp;
        let ol = self.out_len();
        if out != count * ol {
            return Err(Error::shape(
                op,
                format!(
                    "out holds {out} values, {} needed ({count} image channels × {ol})",
                    count * ol
                ),
            ));
        }
        Ok(count)
    }

    /// The transform of a batch: `images` holds `n` examples of `[c, M, N]`; `out` receives
    /// `n` examples of `[c · K, M/2^J, N/2^J]` (K = [`ScatterParams::channels`]; input channel
    /// `ci`'s K channels first, as Kymatio's `(B, c, K, h, w)` viewed as `(B, c·K, h, w)`).
    /// Parallel over the images with rayon.
    ///
    /// The GPU twin is `dpsgd::cuda::scatter::CudaScattering2d::transform` (feature `cuda`),
    /// whose algorithm [`Scattering2d::transform_by_tables`] runs on the host.
    pub fn transform(&self, images: &[f32], c: usize, out: &mut [f32]) -> Result<()> {
        self.check_batch("Scattering2d::transform", images.len(), c, out.len())?;
        check_finite(images)?;
        let inp = self.params.height * self.params.width;
        let ol = self.out_len();
        images
            .par_chunks(inp)
            .zip(out.par_chunks_mut(ol))
            .for_each_init(Work::default, |w, (x, o)| {
                let mut o64 = std::mem::take(&mut w.out);
                o64.resize(ol, 0.0);
                self.one(x, &mut o64, w);
                for (d, v) in o.iter_mut().zip(&o64) {
                    *d = *v as f32;
                }
                w.out = o64;
            });
        Ok(())
    }

    /// [`Scattering2d::transform`] of one-channel images without the final f32 rounding (for
    /// the tests of the kernel's algorithm).
    #[cfg(test)]
    fn transform_f64(&self, images: &[f32]) -> Vec<f64> {
        let inp = self.params.height * self.params.width;
        let ol = self.out_len();
        let mut out = vec![0f64; images.len() / inp * ol];
        let mut w = Work::default();
        for (x, o) in images.chunks(inp).zip(out.chunks_mut(ol)) {
            self.one(x, o, &mut w);
        }
        out
    }

    /// [`Scattering2d::transform_by_tables`] without the final f32 rounding.
    #[cfg(test)]
    fn transform_by_tables_f64(&self, images: &[f32]) -> Vec<f64> {
        let t = self.kernel_tables();
        let inp = self.params.height * self.params.width;
        let ol = self.out_len();
        let mut out = vec![0f64; images.len() / inp * ol];
        let mut scratch = vec![[0f64; 2]; SCRATCH_PLANES * self.mp * self.np];
        for (x, o) in images.chunks(inp).zip(out.chunks_mut(ol)) {
            emu_scatter_one(&t, self.params, x, o, &mut scratch);
        }
        out
    }

    /// The tables the CUDA kernel (`kernels/scatter.cu`) reads: this transform's filters, the
    /// DFT twiddles and the offsets into both (see [`KernelTables`]).
    pub fn kernel_tables(&self) -> KernelTables {
        let (jj, l) = (self.params.j, self.params.l);
        debug_assert!(self.psi.iter().enumerate().all(|(i, p)| p.j == i / l));
        let mut offsets = vec![0u64; KernelTables::offsets_len(jj, l)];
        let mut filters = Vec::new();
        for (r, f) in self.phi.iter().enumerate() {
            offsets[r] = filters.len() as u64;
            filters.extend_from_slice(f);
        }
        for (lam, p) in self.psi.iter().enumerate() {
            for (r, f) in p.levels.iter().enumerate() {
                offsets[jj + lam * jj + r] = filters.len() as u64;
                filters.extend_from_slice(f);
            }
        }
        let mut twiddles = Vec::new();
        let base = jj + jj * l * jj;
        for r in 0..=jj {
            for (slot, len) in [(base + r, self.np >> r), (base + jj + 1 + r, self.mp >> r)] {
                offsets[slot] = twiddles.len() as u64;
                for k in 0..len {
                    let t = 2.0 * PI * k as f64 / len as f64;
                    twiddles.push(t.cos());
                    twiddles.push(t.sin());
                }
            }
        }
        KernelTables {
            j: jj,
            l,
            mp: self.mp,
            np: self.np,
            pad_top: self.pad_top,
            pad_left: self.pad_left,
            filters,
            twiddles,
            offsets,
        }
    }

    /// **The CUDA kernel's algorithm on the host**: the transform exactly as
    /// `kernels/scatter.cu` (`dpsgd_scatter`) computes it — the same [`KernelTables`], the same
    /// loops in the same order, each output element of a step summed by one thread in the
    /// order written here, every f64 operation a separately rounded `+`, `−`, `×` or `√` (the
    /// kernel uses `__dadd_rn`/`__dsub_rn`/`__dmul_rn`/`__dsqrt_rn`, so nvcc fuses nothing):
    /// the GPU is meant to give these very f32 values, bit for bit. Same signature, checks and
    /// output as [`Scattering2d::transform`] (which uses rustfft); the two agree in f64 to
    /// ~1e-15 of each channel's largest coefficient (the tests below allow 1e-12), so their f32
    /// outputs are almost all bit-identical (see [`crate::data::scatter`]'s Device section).
    /// DFTs are dense products with twiddle tables (the padded sizes, e.g. 36, are not
    /// powers of two), so this is several times slower than [`Scattering2d::transform`]; it
    /// exists to test the kernel's index arithmetic where no GPU is present.
    ///
    /// Keep it in lock-step with `kernels/scatter.cu`: each `emu_*` function below is the
    /// device function of the same name without the prefix.
    pub fn transform_by_tables(&self, images: &[f32], c: usize, out: &mut [f32]) -> Result<()> {
        self.check_batch(
            "Scattering2d::transform_by_tables",
            images.len(),
            c,
            out.len(),
        )?;
        check_finite(images)?;
        let t = self.kernel_tables();
        let inp = self.params.height * self.params.width;
        let ol = self.out_len();
        let plane = self.mp * self.np;
        images
            .par_chunks(inp)
            .zip(out.par_chunks_mut(ol))
            .for_each_init(
                || (vec![[0f64; 2]; SCRATCH_PLANES * plane], vec![0f64; ol]),
                |(scratch, o64), (x, o)| {
                    emu_scatter_one(&t, self.params, x, o64, scratch);
                    // The kernel rounds each output to f32 as it writes it.
                    for (d, v) in o.iter_mut().zip(o64.iter()) {
                        *d = *v as f32;
                    }
                },
            );
        Ok(())
    }
}

/// Error for the first non-finite input value.
fn check_finite(images: &[f32]) -> Result<()> {
    if let Some(i) = images.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: "scattering input",
            detail: format!("value {} at offset {i}", images[i]),
        });
    }
    Ok(())
}

/// Complex work planes per image of the kernel (`DPSGD_SCATTER_PLANES` in `kernels/dpsgd.h`),
/// each of `M_p · N_p` complex f64: U0, U1, U2, S and the DFT's work plane W.
pub const SCRATCH_PLANES: usize = 5;

/// What `kernels/scatter.cu` reads besides the images (built by
/// [`Scattering2d::kernel_tables`], uploaded once): all in f64, computed on the host.
///
/// - `filters`: φ at resolutions 0..J, then every wavelet ψ_λ (λ = j·L + θ, in
///   [`Scattering2d`]'s order) at each of its resolutions; real Fourier-domain values, row
///   major, `(M_p/2^r) × (N_p/2^r)` each.
/// - `twiddles`: for each resolution r = 0..=J, `(cos 2πk/n, sin 2πk/n)` for k < n, first
///   n = N_p/2^r (rows), then n = M_p/2^r (columns).
/// - `offsets` (in f64 elements): `[r]` φ at resolution r (r < J); `[J + λ·J + r]` ψ_λ at
///   resolution r; `[J + J·L·J + r]` the row table of resolution r; `[J + J·L·J + J + 1 + r]`
///   its column table (r ≤ J).
#[derive(Clone, Debug)]
pub struct KernelTables {
    /// J.
    pub j: usize,
    /// L.
    pub l: usize,
    /// Padded height M_p.
    pub mp: usize,
    /// Padded width N_p.
    pub np: usize,
    /// Rows of reflect padding above the image.
    pub pad_top: usize,
    /// Columns of reflect padding left of the image.
    pub pad_left: usize,
    /// The filters (see the type's docs).
    pub filters: Vec<f64>,
    /// The twiddle tables.
    pub twiddles: Vec<f64>,
    /// The offsets into both.
    pub offsets: Vec<u64>,
}

impl KernelTables {
    /// Length of `offsets` for (J, L).
    pub fn offsets_len(j: usize, l: usize) -> usize {
        j + j * l * j + 2 * (j + 1)
    }
    fn phi(&self, r: usize) -> &[f64] {
        &self.filters[self.offsets[r] as usize..]
    }
    fn psi(&self, lam: usize, r: usize) -> &[f64] {
        &self.filters[self.offsets[self.j + lam * self.j + r] as usize..]
    }
    fn tw_row(&self, r: usize) -> &[f64] {
        let base = self.j + self.j * self.l * self.j;
        &self.twiddles[self.offsets[base + r] as usize..]
    }
    fn tw_col(&self, r: usize) -> &[f64] {
        let base = self.j + self.j * self.l * self.j + self.j + 1;
        &self.twiddles[self.offsets[base + r] as usize..]
    }
}

// ---- The kernel's algorithm on the host (kernels/scatter.cu, loop for loop) ----
// The loops run over element indices `e` as the kernel's threads do (`e = threadIdx.x; e <
// total; e += blockDim.x`), hence `needless_range_loop` is allowed on them.

/// A complex f64 as the kernel's `double2`: `[re, im]`.
type Cx = [f64; 2];

/// kernels/scatter.cu `pad`: numpy's reflect padding of the `m × n` image into `u0`.
fn emu_pad(t: &KernelTables, m: usize, n: usize, x: &[f32], u0: &mut [Cx]) {
    for (e, u) in u0[..t.mp * t.np].iter_mut().enumerate() {
        let (a, b) = (e / t.np, e % t.np);
        let sa = emu_reflect(a as i64 - t.pad_top as i64, m as i64);
        let sb = emu_reflect(b as i64 - t.pad_left as i64, n as i64);
        *u = [x[sa * n + sb] as f64, 0.0];
    }
}

/// kernels/scatter.cu `reflect`.
fn emu_reflect(s: i64, len: i64) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len - 1);
    let mut s = s % period;
    if s < 0 {
        s += period;
    }
    if s >= len {
        s = period - s;
    }
    s as usize
}

/// kernels/scatter.cu `dft2`: the 2-D DFT of the `m × n` plane `x` in place (forward:
/// e^(−2πi·jk/n); inverse: e^(+2πi·jk/n), no 1/(mn)), rows into `w`, then columns back into
/// `x`. Each output is one sequential sum over j = 0..n−1 with the twiddle index j·k mod n.
#[allow(clippy::needless_range_loop)]
fn emu_dft2(
    x: &mut [Cx],
    w: &mut [Cx],
    m: usize,
    n: usize,
    trow: &[f64],
    tcol: &[f64],
    inverse: bool,
) {
    // Rows: w[a, k] = Σ_b x[a, b] · ω_n^(b·k).
    for e in 0..m * n {
        let (a, k) = (e / n, e % n);
        let (mut re, mut im) = (0f64, 0f64);
        let mut idx = 0usize;
        for b in 0..n {
            let c = trow[2 * idx];
            let s = if inverse {
                trow[2 * idx + 1]
            } else {
                -trow[2 * idx + 1]
            };
            let v = x[a * n + b];
            re += v[0] * c - v[1] * s;
            im += v[0] * s + v[1] * c;
            idx += k;
            if idx >= n {
                idx -= n;
            }
        }
        w[e] = [re, im];
    }
    // Columns: x[k, b] = Σ_a w[a, b] · ω_m^(a·k).
    for e in 0..m * n {
        let (k, b) = (e / n, e % n);
        let (mut re, mut im) = (0f64, 0f64);
        let mut idx = 0usize;
        for a in 0..m {
            let c = tcol[2 * idx];
            let s = if inverse {
                tcol[2 * idx + 1]
            } else {
                -tcol[2 * idx + 1]
            };
            let v = w[a * n + b];
            re += v[0] * c - v[1] * s;
            im += v[0] * s + v[1] * c;
            idx += k;
            if idx >= m {
                idx -= m;
            }
        }
        x[e] = [re, im];
    }
}

/// kernels/scatter.cu `filter_sub`: `dst[a, b] = (Σ_{i<k} Σ_{j<k} src[p] · f[p]) / k²` with
/// p = (a + i·m/k, b + j·n/k): the product with a real filter, then Kymatio's
/// `subsample_fourier` (k = 1: the product alone).
#[allow(clippy::needless_range_loop)]
fn emu_filter_sub(dst: &mut [Cx], src: &[Cx], f: &[f64], m: usize, n: usize, k: usize) {
    let (mm, nn) = (m / k, n / k);
    let inv = 1.0 / (k * k) as f64;
    for e in 0..mm * nn {
        let (a, b) = (e / nn, e % nn);
        let (mut re, mut im) = (0f64, 0f64);
        for i in 0..k {
            for j in 0..k {
                let p = (a + i * mm) * n + b + j * nn;
                re += src[p][0] * f[p];
                im += src[p][1] * f[p];
            }
        }
        dst[e] = [re * inv, im * inv];
    }
}

/// kernels/scatter.cu `modulus`: `fft2(|ifft2(x)|)` in place at resolution r.
fn emu_modulus(t: &KernelTables, x: &mut [Cx], w: &mut [Cx], r: usize) {
    let (m, n) = (t.mp >> r, t.np >> r);
    emu_dft2(x, w, m, n, t.tw_row(r), t.tw_col(r), true);
    let inv = 1.0 / (m * n) as f64;
    for v in x[..m * n].iter_mut() {
        let (re, im) = (v[0] * inv, v[1] * inv);
        *v = [(re * re + im * im).sqrt(), 0.0];
    }
    emu_dft2(x, w, m, n, t.tw_row(r), t.tw_col(r), false);
}

/// kernels/scatter.cu `finish`: inverse DFT of the coarse plane `s` (resolution J), real part
/// divided by its size, cropped by one coarse pixel on each side (`unpad`) into `out`.
/// (The kernel writes `(float)` of each value; the emulation keeps f64 and its caller rounds.)
#[allow(clippy::needless_range_loop)]
fn emu_finish(t: &KernelTables, s: &mut [Cx], w: &mut [Cx], oh: usize, ow: usize, out: &mut [f64]) {
    let (m, n) = (t.mp >> t.j, t.np >> t.j);
    emu_dft2(s, w, m, n, t.tw_row(t.j), t.tw_col(t.j), true);
    let inv = 1.0 / (m * n) as f64;
    for e in 0..oh * ow {
        let (a, b) = (e / ow, e % ow);
        out[e] = s[(a + 1) * n + b + 1][0] * inv;
    }
}

/// kernels/scatter.cu `dpsgd_scatter`, the body of its loop over image planes: one `M × N`
/// image into `out` (`K × M/2^J × N/2^J`), in `scratch` ([`SCRATCH_PLANES`] planes).
fn emu_scatter_one(
    t: &KernelTables,
    p: ScatterParams,
    x: &[f32],
    out: &mut [f64],
    scratch: &mut [Cx],
) {
    let (jj, l) = (t.j, t.l);
    let plane = t.mp * t.np;
    let (oh, ow) = p.out_hw();
    let hw = oh * ow;
    let (u0, rest) = scratch.split_at_mut(plane);
    let (u1, rest) = rest.split_at_mut(plane);
    let (u2, rest) = rest.split_at_mut(plane);
    let (s, rest) = rest.split_at_mut(plane);
    let (w, _) = rest.split_at_mut(plane);
    emu_pad(t, p.height, p.width, x, u0);
    emu_dft2(u0, w, t.mp, t.np, t.tw_row(0), t.tw_col(0), false);
    // S0 = x ⋆ φ_J.
    emu_filter_sub(s, u0, t.phi(0), t.mp, t.np, 1 << jj);
    emu_finish(t, s, w, oh, ow, &mut out[..hw]);
    let mut ch2 = 1 + jj * l;
    for n1 in 0..jj * l {
        let j1 = n1 / l;
        let (m1, nn1) = (t.mp >> j1, t.np >> j1);
        // U1 = |x ⋆ ψ_λ1| at resolution j1.
        emu_filter_sub(u1, u0, t.psi(n1, 0), t.mp, t.np, 1 << j1);
        emu_modulus(t, u1, w, j1);
        // S1 = U1 ⋆ φ_J.
        emu_filter_sub(s, u1, t.phi(j1), m1, nn1, 1 << (jj - j1));
        emu_finish(t, s, w, oh, ow, &mut out[(1 + n1) * hw..(2 + n1) * hw]);
        // S2 = |U1 ⋆ ψ_λ2| ⋆ φ_J for j2 > j1.
        for n2 in 0..jj * l {
            let j2 = n2 / l;
            if j2 <= j1 {
                continue;
            }
            emu_filter_sub(u2, u1, t.psi(n2, j1), m1, nn1, 1 << (j2 - j1));
            emu_modulus(t, u2, w, j2);
            emu_filter_sub(s, u2, t.phi(j2), t.mp >> j2, t.np >> j2, 1 << (jj - j2));
            emu_finish(t, s, w, oh, ow, &mut out[ch2 * hw..(ch2 + 1) * hw]);
            ch2 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_channel_count() {
        let p = ScatterParams::MNIST;
        assert_eq!(p.channels(), 81);
        assert_eq!(p.out_hw(), (7, 7));
        assert_eq!(p.padded(), (36, 36));
        let s = Scattering2d::new(p).unwrap();
        assert_eq!(s.out_len(), 81 * 49);
        assert_eq!(s.psi.len(), 16);
        assert!(s.psi.iter().all(|p| p.levels.len() == 1));
        assert_eq!(s.phi.len(), 2);
        assert_eq!(s.phi[1].len(), 18 * 18);
    }

    #[test]
    fn bad_parameters_are_typed_errors() {
        let mut p = ScatterParams::MNIST;
        p.height = 3;
        assert!(matches!(
            Scattering2d::new(p),
            Err(Error::InvalidParameter { .. })
        ));
        let s = Scattering2d::new(ScatterParams::MNIST).unwrap();
        let mut out = vec![0f32; s.out_len()];
        assert!(s.transform(&[0.0; 10], 1, &mut out).is_err());
        let mut x = vec![0f32; 28 * 28];
        x[5] = f32::NAN;
        assert!(matches!(
            s.transform(&x, 1, &mut out),
            Err(Error::NonFinite { .. })
        ));
    }

    /// Random images in [0, 1), `count` planes of `h × w`.
    fn random_images(count: usize, h: usize, w: usize, seed: u64) -> Vec<f32> {
        use crate::rng::RandomBits;
        let mut r = crate::cpu::philox::Philox::new(seed, 7);
        (0..count * h * w).map(|_| r.next_f64() as f32).collect()
    }

    /// Worst `|a − b|` over each output channel's largest `|b|` (channel = `hw` consecutive
    /// values; an element-wise relative error means nothing where coefficients are near zero).
    fn worst_channel_rel(a: &[f64], b: &[f64], hw: usize) -> f64 {
        a.chunks(hw)
            .zip(b.chunks(hw))
            .map(|(x, y)| {
                let scale = y.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
                x.iter()
                    .zip(y)
                    .fold(0f64, |m, (p, q)| m.max((p - q).abs() / scale))
            })
            .fold(0f64, f64::max)
    }

    /// The kernel's algorithm (`transform_by_tables`: dense DFTs by twiddle tables, the
    /// periodisation, the crop, as kernels/scatter.cu runs them) against the rustfft
    /// transform, in f64 before the f32 rounding: within 1e-12 of each channel's largest
    /// coefficient. Non-square sizes (a swapped M/N would fail them), J = 1, 2, 3 (J = 3 uses
    /// wavelets at two resolutions and three low-pass levels) and L = 4, 8.
    #[test]
    fn kernel_algorithm_matches_the_fft_transform_in_f64() {
        let cases = [
            (2, 8, 28, 28, 3),
            (2, 8, 32, 32, 2),
            (2, 8, 28, 32, 2),
            (1, 8, 28, 28, 2),
            (3, 4, 28, 36, 1),
            (2, 4, 17, 23, 2),
        ];
        for (i, &(j, l, h, w, count)) in cases.iter().enumerate() {
            let p = ScatterParams {
                j,
                l,
                height: h,
                width: w,
            };
            let s = Scattering2d::new(p).unwrap();
            let x = random_images(count, h, w, 100 + i as u64);
            let fft = s.transform_f64(&x);
            let emu = s.transform_by_tables_f64(&x);
            assert_eq!(fft.len(), emu.len());
            let (oh, ow) = p.out_hw();
            let worst = worst_channel_rel(&emu, &fft, oh * ow);
            eprintln!("{p:?}: worst error {worst:.2e} of the channel max");
            assert!(worst <= 1e-12, "{p:?}: worst {worst:e}");
        }
    }

    /// The same on Kymatio's reference inputs (MNIST, Fashion-MNIST and random images in
    /// tests/reference/scatter_kymatio.json), and the emulation's f32 outputs against
    /// Kymatio's within the tolerances tests/scatter.rs applies to the rustfft transform.
    #[test]
    fn kernel_algorithm_matches_on_kymatio_reference_inputs() {
        #[derive(serde::Deserialize)]
        struct Case {
            name: String,
            input: Vec<f64>,
            output: Vec<f64>,
        }
        #[derive(serde::Deserialize)]
        struct Reference {
            cases: Vec<Case>,
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/reference/scatter_kymatio.json");
        let r: Reference = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let s = Scattering2d::new(ScatterParams::MNIST).unwrap();
        for c in &r.cases {
            let x: Vec<f32> = c.input.iter().map(|&v| v as f32).collect();
            let fft = s.transform_f64(&x);
            let emu = s.transform_by_tables_f64(&x);
            let worst = worst_channel_rel(&emu, &fft, 49);
            eprintln!("{}: kernel algorithm vs rustfft {worst:.2e}", c.name);
            assert!(worst <= 1e-12, "{}: {worst:e}", c.name);
            let emu32: Vec<f64> = emu.iter().map(|&v| v as f32 as f64).collect();
            let worst_k = worst_channel_rel(&emu32, &c.output, 49);
            eprintln!(
                "{}: kernel algorithm (f32) vs Kymatio {worst_k:.2e}",
                c.name
            );
            assert!(worst_k <= 1e-5, "{}: {worst_k:e}", c.name);
        }
    }

    #[test]
    fn a_constant_image_has_only_the_low_pass_channel() {
        // Morlet wavelets have zero mean, so a constant image gives S1 = S2 = 0 and S0 = the
        // constant times φ's DC gain.
        let s = Scattering2d::new(ScatterParams::MNIST).unwrap();
        let x = vec![0.5f32; 28 * 28];
        let mut out = vec![0f32; s.out_len()];
        s.transform(&x, 1, &mut out).unwrap();
        let s0 = out[0];
        assert!(s0 > 0.1, "S0 = {s0}");
        assert!(out[..49].iter().all(|v| (v - s0).abs() < 1e-4 * s0));
        let rest = out[49..].iter().fold(0f32, |a, v| a.max(v.abs()));
        assert!(rest < 1e-3 * s0, "largest higher-order coefficient {rest}");
    }
}
