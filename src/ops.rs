//! The four operations of a DP-SGD step on device buffers, dispatched to the CPU backend
//! ([`crate::cpu`]) or the CUDA backend (`crate::cuda`, feature `cuda`). Both backends have the
//! same semantics; see the CPU twins for the exact formulas:
//!
//! 1. [`per_sample_norms`] — ‖g_i‖₂ overall and per segment ([`crate::cpu::clip::per_sample_norms`]);
//! 2. [`clip_factors`] — `min(1, C / (‖g_i‖ + 1e-6))` ([`crate::cpu::clip::clip_factors`]);
//! 3. [`clip_accumulate`] — `sum += Σ_i f_i·g_i`, fused ([`crate::cpu::clip::clip_accumulate`]);
//! 4. noise ([`add_gaussian`], [`add_laplace`]) and the fused noisy optimizer steps
//!    ([`noisy_sgd_step`], [`noisy_adam_step`]; [`crate::cpu::optim`]).
//!
//! [`clip_and_accumulate`] chains 1–3 with a reusable [`ClipWorkspace`]. [`sanitize_rows`]
//! clips each row of a matrix in place ([`scale_rows`]) and noises every row (GS-WGAN).
//!
//! Reference: Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang, "Deep Learning with
//! Differential Privacy", CCS 2016, Algorithm 1.

use crate::buffer::Storage;
use crate::check;
use crate::optim::{AdamConfig, NoisyStep, SgdConfig};
use crate::{cpu, Buffer, Device, Error, GradElement, Layout, NoiseKey, Result};

macro_rules! mismatch {
    ($op:expr) => {
        Error::DeviceMismatch {
            op: $op,
            msg: "the buffers live on different devices".into(),
        }
    };
}

/// The length of `grads` the ops read: the first `batch` rows when the buffer holds more (a
/// buffer sized for the largest physical batch), else all of it (and the twins report the
/// mismatch).
fn rows_len(glen: usize, batch: usize, layout: &Layout) -> usize {
    match batch.checked_mul(layout.num_params()) {
        Some(need) if need <= glen => need,
        _ => glen,
    }
}

/// Per-sample L2 norms (`norms`: `[batch]`) and per-segment norms (`seg_norms`: `[batch, S]`).
/// `grads` holds at least `batch` rows of P; the first `batch` are read. Errors on shape
/// mismatch and on non-finite gradients (naming the row).
pub fn per_sample_norms<T: GradElement>(
    grads: &Buffer<T>,
    batch: usize,
    layout: &Layout,
    norms: &mut Buffer<f32>,
    seg_norms: &mut Buffer<f32>,
) -> Result<()> {
    let glen = rows_len(grads.len(), batch, layout);
    match (&grads.storage, &mut norms.storage, &mut seg_norms.storage) {
        (Storage::Cpu(g), Storage::Cpu(n), Storage::Cpu(s)) => {
            cpu::clip::per_sample_norms(&g[..glen], batch, layout, n, s)
        }
        #[cfg(feature = "cuda")]
        (Storage::Cuda(g, d, _), Storage::Cuda(n, _, nl), Storage::Cuda(s, _, sl)) => {
            crate::cuda::clip::per_sample_norms(
                &d.inner,
                &g.slice(0..glen),
                batch,
                layout,
                &mut n.slice_mut(0..*nl),
                &mut s.slice_mut(0..*sl),
            )
        }
        _ => Err(mismatch!("per_sample_norms")),
    }
}

/// Clip factors `min(1, C_s / (norm + 1e-6))` for `[B, S]` norms and S bounds.
pub fn clip_factors(
    norms: &Buffer<f32>,
    max_norms: &[f32],
    factors: &mut Buffer<f32>,
) -> Result<()> {
    match (&norms.storage, &mut factors.storage) {
        (Storage::Cpu(n), Storage::Cpu(f)) => cpu::clip::clip_factors(n, max_norms, f),
        #[cfg(feature = "cuda")]
        (Storage::Cuda(n, d, nl), Storage::Cuda(f, _, fl)) => crate::cuda::clip::clip_factors(
            &d.inner,
            &n.slice(0..*nl),
            max_norms,
            &mut f.slice_mut(0..*fl),
        ),
        _ => Err(mismatch!("clip_factors")),
    }
}

/// Fused clip-and-accumulate: `sum[j] += Σ_i factors[i, seg(j)] · g[i, j]` over the first
/// `batch` rows of `grads`.
pub fn clip_accumulate<T: GradElement>(
    grads: &Buffer<T>,
    batch: usize,
    layout: &Layout,
    factors: &Buffer<f32>,
    sum: &mut Buffer<f32>,
) -> Result<()> {
    let glen = rows_len(grads.len(), batch, layout);
    match (&grads.storage, &factors.storage, &mut sum.storage) {
        (Storage::Cpu(g), Storage::Cpu(f), Storage::Cpu(s)) => {
            cpu::clip::clip_accumulate(&g[..glen], batch, layout, f, s)
        }
        #[cfg(feature = "cuda")]
        (Storage::Cuda(g, d, _), Storage::Cuda(f, _, fl), Storage::Cuda(s, _, sl)) => {
            crate::cuda::clip::clip_accumulate(
                &d.inner,
                &g.slice(0..glen),
                batch,
                layout,
                &f.slice(0..*fl),
                &mut s.slice_mut(0..*sl),
            )
        }
        _ => Err(mismatch!("clip_accumulate")),
    }
}

/// Clips rows in place: `g[i, j] *= factors[i]` for the row-major `[batch, P]` matrix `g`
/// ([`crate::cpu::clip::scale_rows`]; CUDA kernel `dpsgd_scale_rows`).
pub fn scale_rows(g: &mut Buffer<f32>, batch: usize, factors: &Buffer<f32>) -> Result<()> {
    match (&mut g.storage, &factors.storage) {
        (Storage::Cpu(g), Storage::Cpu(f)) => cpu::clip::scale_rows(g, batch, f),
        #[cfg(feature = "cuda")]
        (Storage::Cuda(g, d, gl), Storage::Cuda(f, _, fl)) => crate::cuda::clip::scale_rows(
            &d.inner,
            &mut g.slice_mut(0..*gl),
            batch,
            &f.slice(0..*fl),
        ),
        _ => Err(mismatch!("scale_rows")),
    }
}

/// Sanitises a `[batch, D]` matrix of per-row gradients in place — GS-WGAN's gradient
/// sanitisation (Chen, Orekondy, Fritz, NeurIPS 2020, Algorithm 1), on the library's clip and
/// noise kernels: each row is clipped to L2 norm `clip` (factor `min(1, clip / (‖g_i‖ +
/// 1e-6))`, [`per_sample_norms`], [`clip_factors`], [`scale_rows`]) and then every element
/// gets independent Gaussian noise of standard deviation `noise_std` from `key`'s stream
/// ([`add_gaussian`]), so the rows' noises are independent.
///
/// With one private record able to replace a row's (clipped) gradient by any other vector of
/// norm ≤ `clip`, the per-row L2 sensitivity is `2 · clip`: use
/// [`crate::accounting::gs_wgan::noise_std`] for `noise_std` and
/// [`crate::accounting::gs_wgan`] for ε. `clip` (finite, > 0), `noise_std` (finite, ≥ 0) and
/// the shape are checked before any noise is drawn. Row norms are not returned: they are
/// computed from private data.
///
/// ```
/// use dpsgd::{ops, Buffer, Device, NoiseKey};
/// let dev = Device::Cpu;
/// // Two rows of D = 2: norm 0.5 (kept) and norm 5 (clipped to ≈ 1); no noise.
/// let mut rows = Buffer::from_slice(&dev, &[0.3f32, 0.4, 3.0, 4.0])?;
/// ops::sanitize_rows(&mut rows, 2, 1.0, 0.0, NoiseKey::for_step(7, 0, 0)?)?;
/// let r = rows.to_vec()?;
/// assert!((r[0] - 0.3).abs() < 1e-6 && (r[2] - 0.6).abs() < 1e-5);
/// # Ok::<(), dpsgd::Error>(())
/// ```
pub fn sanitize_rows(
    rows: &mut Buffer<f32>,
    batch: usize,
    clip: f32,
    noise_std: f64,
    key: NoiseKey,
) -> Result<()> {
    check::max_norms(std::slice::from_ref(&clip))?;
    crate::error::check_non_negative("noise_std", noise_std)?;
    let d = check::scale_rows_shapes(rows.len(), batch, batch)?;
    if batch == 0 {
        return Ok(());
    }
    if d == 0 {
        return Err(Error::shape("sanitize_rows", "rows of zero length"));
    }
    let dev = rows.device();
    let layout = Layout::flat(d);
    let mut norms = Buffer::<f32>::zeros(&dev, batch)?;
    let mut seg = Buffer::<f32>::zeros(&dev, batch)?;
    let mut factors = Buffer::<f32>::zeros(&dev, batch)?;
    per_sample_norms(rows, batch, &layout, &mut norms, &mut seg)?;
    clip_factors(&norms, std::slice::from_ref(&clip), &mut factors)?;
    scale_rows(rows, batch, &factors)?;
    if noise_std > 0.0 {
        add_gaussian(rows, noise_std, key)?;
    }
    Ok(())
}

/// `out[j]` = 32-bit word j of `key`'s stream, Philox or ChaCha20 (identical on every backend).
pub fn random_bits(out: &mut Buffer<u32>, key: NoiseKey) -> Result<()> {
    match &mut out.storage {
        Storage::Cpu(o) => cpu::noise::random_bits(o, key),
        #[cfg(feature = "cuda")]
        Storage::Cuda(o, d, n) => {
            crate::cuda::noise::random_bits(&d.inner, &mut o.slice_mut(0..*n), key)
        }
        #[cfg(not(feature = "cuda"))]
        Storage::Cuda(never, _) => match *never {},
    }
}

/// `out[j] += std · N(0,1)_j` from `key`'s stream (computed in f64, rounded once;
/// [`crate::noise`] for the samplers).
pub fn add_gaussian(out: &mut Buffer<f32>, std: f64, key: NoiseKey) -> Result<()> {
    match &mut out.storage {
        Storage::Cpu(o) => cpu::noise::add_gaussian(o, std, key),
        #[cfg(feature = "cuda")]
        Storage::Cuda(o, d, n) => {
            crate::cuda::noise::add_gaussian(&d.inner, &mut o.slice_mut(0..*n), std, key)
        }
        #[cfg(not(feature = "cuda"))]
        Storage::Cuda(never, _) => match *never {},
    }
}

/// `out[j] += scale · Laplace(0,1)_j` from `key`'s stream (computed in f64, rounded once).
pub fn add_laplace(out: &mut Buffer<f32>, scale: f64, key: NoiseKey) -> Result<()> {
    match &mut out.storage {
        Storage::Cpu(o) => cpu::noise::add_laplace(o, scale, key),
        #[cfg(feature = "cuda")]
        Storage::Cuda(o, d, n) => {
            crate::cuda::noise::add_laplace(&d.inner, &mut o.slice_mut(0..*n), scale, key)
        }
        #[cfg(not(feature = "cuda"))]
        Storage::Cuda(never, _) => match *never {},
    }
}

/// Fused noisy SGD step (formula: [`crate::cpu::optim`]).
pub fn noisy_sgd_step(
    params: &mut Buffer<f32>,
    grad_sum: &Buffer<f32>,
    momentum_buf: Option<&mut Buffer<f32>>,
    cfg: &SgdConfig,
    noisy: &NoisyStep,
) -> Result<()> {
    match (&mut params.storage, &grad_sum.storage) {
        (Storage::Cpu(p), Storage::Cpu(s)) => {
            let m = match momentum_buf {
                None => None,
                Some(b) => Some(
                    b.as_mut_slice()
                        .ok_or_else(|| mismatch!("noisy_sgd_step"))?,
                ),
            };
            cpu::optim::noisy_sgd_step(p, s, m, cfg, noisy)
        }
        #[cfg(feature = "cuda")]
        (Storage::Cuda(p, d, pl), Storage::Cuda(s, _, sl)) => {
            let mut m = match momentum_buf {
                None => None,
                Some(b) => Some(
                    b.cuda_view_mut()
                        .ok_or_else(|| mismatch!("noisy_sgd_step"))?,
                ),
            };
            crate::cuda::optim::noisy_sgd_step(
                &d.inner,
                &mut p.slice_mut(0..*pl),
                &s.slice(0..*sl),
                m.as_mut(),
                cfg,
                noisy,
            )
        }
        _ => Err(mismatch!("noisy_sgd_step")),
    }
}

/// The noised mean gradient `out = (grad_sum + σC·ξ) / E` (formula: [`crate::cpu::optim::noisy_mean`]).
pub fn noisy_mean(out: &mut Buffer<f32>, grad_sum: &Buffer<f32>, noisy: &NoisyStep) -> Result<()> {
    match (&mut out.storage, &grad_sum.storage) {
        (Storage::Cpu(o), Storage::Cpu(s)) => cpu::optim::noisy_mean(o, s, noisy),
        #[cfg(feature = "cuda")]
        (Storage::Cuda(o, d, ol), Storage::Cuda(s, _, sl)) => crate::cuda::optim::noisy_mean(
            &d.inner,
            &mut o.slice_mut(0..*ol),
            &s.slice(0..*sl),
            noisy,
        ),
        _ => Err(mismatch!("noisy_mean")),
    }
}

/// Fused noisy Adam/AdamW step; `t` is the 1-based step count (formula: [`crate::cpu::optim`]).
pub fn noisy_adam_step(
    params: &mut Buffer<f32>,
    grad_sum: &Buffer<f32>,
    m1: &mut Buffer<f32>,
    m2: &mut Buffer<f32>,
    t: u64,
    cfg: &AdamConfig,
    noisy: &NoisyStep,
) -> Result<()> {
    match (
        &mut params.storage,
        &grad_sum.storage,
        &mut m1.storage,
        &mut m2.storage,
    ) {
        (Storage::Cpu(p), Storage::Cpu(s), Storage::Cpu(a), Storage::Cpu(b)) => {
            cpu::optim::noisy_adam_step(p, s, a, b, t, cfg, noisy)
        }
        #[cfg(feature = "cuda")]
        (
            Storage::Cuda(p, d, pl),
            Storage::Cuda(s, _, sl),
            Storage::Cuda(a, _, al),
            Storage::Cuda(b, _, bl),
        ) => crate::cuda::optim::noisy_adam_step(
            &d.inner,
            &mut p.slice_mut(0..*pl),
            &s.slice(0..*sl),
            &mut a.slice_mut(0..*al),
            &mut b.slice_mut(0..*bl),
            t,
            cfg,
            noisy,
        ),
        _ => Err(mismatch!("noisy_adam_step")),
    }
}

/// How per-sample gradients are clipped.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Clipping {
    /// One bound C on each example's whole gradient.
    Flat(f32),
    /// One bound per segment (parameter tensor), Opacus's per-layer clipping. The overall norm
    /// of a clipped example is then at most √(Σ C_s²): use that as the sensitivity.
    PerLayer(Vec<f32>),
}

impl Clipping {
    /// The bounds, one per factor column (1 for flat clipping).
    pub fn bounds(&self) -> &[f32] {
        match self {
            Clipping::Flat(c) => std::slice::from_ref(c),
            Clipping::PerLayer(v) => v,
        }
    }

    /// The L2 sensitivity of the clipped sum to one example: C, or √(Σ C_s²) per layer.
    pub fn sensitivity(&self) -> f32 {
        self.bounds().iter().map(|c| c * c).sum::<f32>().sqrt()
    }
}

/// Reusable buffers for [`clip_and_accumulate`], sized for a maximum batch.
#[derive(Debug)]
pub struct ClipWorkspace {
    device: Device,
    max_batch: usize,
    segments: usize,
    /// `[max_batch]` overall norms of the last call.
    pub norms: Buffer<f32>,
    /// `[max_batch, S]` per-segment norms of the last call.
    pub seg_norms: Buffer<f32>,
    /// `[max_batch, F]` clip factors of the last call.
    pub factors: Buffer<f32>,
}

impl ClipWorkspace {
    /// Buffers for up to `max_batch` rows of a model with `layout`.
    pub fn new(device: &Device, max_batch: usize, layout: &Layout) -> Result<Self> {
        let s = layout.num_segments();
        Ok(ClipWorkspace {
            device: device.clone(),
            max_batch,
            segments: s,
            norms: Buffer::zeros(device, max_batch)?,
            seg_norms: Buffer::zeros(device, max_batch * s)?,
            factors: Buffer::zeros(device, max_batch * s)?,
        })
    }
}

/// Statistics of one [`clip_and_accumulate`] call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipStats {
    /// Rows processed.
    pub batch: usize,
}

/// Norms → factors → fused accumulate for a `[batch, P]` matrix: `sum += Σ_i clip(g_i)`.
/// Validates the clipping bounds before touching the data.
///
/// ```
/// use dpsgd::ops::{clip_and_accumulate, ClipWorkspace, Clipping};
/// use dpsgd::{Buffer, Device, Layout};
/// let dev = Device::Cpu;
/// let layout = Layout::flat(2);
/// // Two per-sample gradients: norm 0.5 (kept) and norm 5 (scaled to norm ≈ 1).
/// let rows = Buffer::from_slice(&dev, &[0.3f32, 0.4, 3.0, 4.0])?;
/// let mut ws = ClipWorkspace::new(&dev, 2, &layout)?;
/// let mut sum = Buffer::<f32>::zeros(&dev, 2)?;
/// clip_and_accumulate(&rows, 2, &layout, &Clipping::Flat(1.0), &mut ws, &mut sum)?;
/// let s = sum.to_vec()?;
/// assert!((s[0] - 0.9).abs() < 1e-5 && (s[1] - 1.2).abs() < 1e-5);
/// # Ok::<(), dpsgd::Error>(())
/// ```
pub fn clip_and_accumulate<T: GradElement>(
    grads: &Buffer<T>,
    batch: usize,
    layout: &Layout,
    clipping: &Clipping,
    ws: &mut ClipWorkspace,
    sum: &mut Buffer<f32>,
) -> Result<ClipStats> {
    let bounds = clipping.bounds();
    check::max_norms(bounds)?;
    if let Clipping::PerLayer(v) = clipping {
        if v.len() != layout.num_segments() {
            return Err(Error::shape(
                "clip_and_accumulate",
                format!(
                    "{} per-layer bounds for {} segments",
                    v.len(),
                    layout.num_segments()
                ),
            ));
        }
    }
    if batch > ws.max_batch
        || ws.segments != layout.num_segments()
        || !ws.device.same(&grads.device())
    {
        *ws = ClipWorkspace::new(&grads.device(), batch.max(ws.max_batch), layout)?;
    }
    let s = layout.num_segments();
    let nf = bounds.len();
    // Views of exactly the needed lengths.
    let mut norms = take(&mut ws.norms, batch)?;
    let mut seg = take(&mut ws.seg_norms, batch * s)?;
    let mut factors = take(&mut ws.factors, batch * nf)?;
    let r = (|| {
        per_sample_norms(grads, batch, layout, &mut norms, &mut seg)?;
        let src = if nf == 1 { &norms } else { &seg };
        clip_factors(src, bounds, &mut factors)?;
        clip_accumulate(grads, batch, layout, &factors, sum)
    })();
    put(&mut ws.norms, norms);
    put(&mut ws.seg_norms, seg);
    put(&mut ws.factors, factors);
    r.map(|()| ClipStats { batch })
}

/// Per-example **L1** clipping at `max_norm` = C and sum (the Laplace mechanism's analogue of
/// [`clip_and_accumulate`]): `sum += Σ_i min(1, C/‖g_i‖₁)·g_i` over the `batch` rows of the
/// `[batch, P]` matrix `grads`, with a rounding margin so that each clipped row's L1 norm is
/// ≤ C (see [`crate::cpu::clip::clip_l1_accumulate`]). Returns the rows' L1 norms before
/// clipping. CPU buffers only: the GPU twin is pending (an error on `Device::Cuda`).
pub fn clip_l1_and_accumulate(
    grads: &Buffer<f32>,
    batch: usize,
    max_norm: f32,
    sum: &mut Buffer<f32>,
) -> Result<Vec<f32>> {
    let pending = || {
        Error::invalid(
            "device",
            "Cuda",
            "CPU buffers: L1 clipping's GPU twin is pending",
        )
    };
    let rows = grads.as_slice().ok_or_else(pending)?;
    let s = sum.as_mut_slice().ok_or_else(pending)?;
    let p = s.len();
    let rows = rows.get(..batch * p).ok_or_else(|| {
        Error::shape(
            "clip_l1_and_accumulate",
            format!("grads has {} values, need {batch} × {p}", grads.len()),
        )
    })?;
    let mut norms = vec![0f32; batch];
    crate::cpu::clip::clip_l1_accumulate(rows, batch, max_norm, &mut norms, s)?;
    Ok(norms)
}

// Buffers of the exact length: CPU vectors are truncated/extended in place (no reallocation
// past the first call); GPU buffers are re-allocated only when the length changes.
fn take(b: &mut Buffer<f32>, len: usize) -> Result<Buffer<f32>> {
    let dev = b.device();
    let mut out = std::mem::replace(b, Buffer::from_vec(Vec::new()));
    if out.len() != len {
        match &mut out.storage {
            Storage::Cpu(v) => v.resize(len, 0.0),
            #[allow(unreachable_patterns)]
            _ => out = Buffer::zeros(&dev, len)?,
        }
    }
    Ok(out)
}

fn put(b: &mut Buffer<f32>, v: Buffer<f32>) {
    *b = v;
}
