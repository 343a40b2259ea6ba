//! DP-DCGAN on MNIST / Fashion-MNIST: the semantics of Opacus's `examples/dcgan.py`, written
//! against dpsgd's public API only (two `Sequential`s, two Adam optimizers, the privacy engine,
//! input gradients through the discriminator).
//!
//! # What runs
//! - Data: one class (default `--target-digit 8`, as the original) or `--all-digits`, of MNIST
//!   or `--dataset fashion-mnist`, pixels mapped to [−1, 1] (`Normalize((0.5,), (0.5,))`), and
//!   resized bilinearly (`transforms.Resize`, half-pixel centres) to `--image-size` 32 or 64.
//! - Models: [`dpsgd::nn::models::dcgan_generator`] / `dcgan_discriminator` (ConvTranspose2d +
//!   GroupNorm + ReLU ending in Tanh, nz = 100; Conv2d + LeakyReLU(0.2) + GroupNorm), DCGAN's
//!   N(0, 0.02) initialisation ([`dpsgd::nn::models::dcgan_init`]). D outputs a logit and the
//!   loss is `BCEWithLogits` — the original's `Sigmoid` + `BCELoss` in one numerically stable
//!   step (same values, same gradients); `D(x)` and `D(G(z))` are reported after the sigmoid.
//! - Optimizers: Adam(lr 2e-4, β = (0.5, 0.999)) for both.
//! - Each step: a Poisson lot L of the real data (rate q = B/N, B = `--batch-size`), B fresh
//!   latents z (a fixed, public count), D's update from its real half (DP-SGD) and its fake
//!   half (below), then G's update through the updated D on the same fakes (target "real").
//!
//! # Privacy: how the fake half is combined, and why that is valid
//! Write D's step t as
//!
//! ```text
//! ĝ_t = ( Σ_{i∈L_t} clip_C(∇ℓ(D_{t−1}; x_i, 1)) + N(0, σ²C²·I) + Σ_{j<B} ∇ℓ(D_{t−1}; G_{t−1}(z_{t,j}), 0) ) / B
//!                  ^ real half: clipped, noised            ^ fake half: not clipped, not noised
//! ```
//!
//! then `D_t = Adam(D_{t−1}, ĝ_t)` and `G_t = Adam(G_{t−1}, ∇_G ℓ(D_t; G_{t−1}(z_t), 1))`.
//! The original instead sums real_i and fake_i of the same index before clipping, and draws
//! as many fakes as the realised lot has examples. We clip only the real examples and add the
//! fake half un-clipped and noise-free, with a fixed count B. The claim: the run releases
//! `(D_1, G_1, …, D_T, G_T)` with the (ε, δ) of T Poisson-subsampled Gaussian mechanisms of
//! rate q and noise multiplier σ (Abadi et al., "Deep Learning with Differential Privacy",
//! CCS 2016; RDP of the subsampled Gaussian: Mironov, Talwar & Zhang 2019), which is what the
//! engine's accountant charges. The argument:
//!
//! 1. Let `h_{t−1} = (D_0, G_0, …, D_{t−1}, G_{t−1})` be what is released before step t.
//!    `D_0`, `G_0` are drawn from the `ModelInit` key, independent of the data.
//! 2. The fake half `F_t` is a function of `D_{t−1}`, `G_{t−1}` (both in `h_{t−1}`) and of
//!    `z_t`, drawn from the `Latent` key's stream t, independent of the data; its count B is
//!    a constant. **G's state is itself a post-processing of earlier releases**: by induction,
//!    `G_{t−1}` was computed from `D_{t−1}`, `G_{t−2}` and `z_{t−1}` only — the G step never
//!    reads a real image, and nothing of the lot (not even its size) reaches it. So given
//!    `h_{t−1}`, `F_t` is a data-independent shift.
//! 3. The real half `S_t = Σ_{i∈L_t} clip_C(·)` has add/remove sensitivity C (one example adds
//!    one clipped term), so `S_t + N(0, σ²C²I)` is the subsampled Gaussian mechanism (q, σ).
//!    Adding `F_t(h_{t−1}, z_t)` is a bijection chosen from public information, which leaves
//!    every Rényi divergence between neighbouring datasets' output distributions unchanged
//!    (post-processing, in both directions). Dividing by the constant B, Adam, and G's step
//!    are post-processing too.
//! 4. Each step is chosen adaptively from `h_{t−1}`; RDP composes adaptively (Mironov, "Rényi
//!    Differential Privacy", CSF 2017, Prop. 1), so the T steps cost what the accountant sums.
//!
//! Why this over the original: the privacy cost is the same (same q, σ, T) but the real
//! examples get the whole clipping budget C instead of sharing it with a public term. The
//! original draws as many fakes as the lot has examples; that is sound there because each fake
//! is clipped together with its real partner (one more example brings one more clipped pair,
//! still sensitivity C). Un-clipped fakes must not depend on the lot at all, so their count is
//! the constant B here. The fake half being un-clipped is safe exactly because of (2); it would
//! not be if the fakes were conditioned on real data.
//!
//! # What leaves a private run
//! - Covered by ε: `netD.safetensors`, `netG.safetensors`, the Adam moments, every
//!   `fake_samples_epoch_NNN.png` (G on fixed public noise), and the per-epoch metrics that
//!   are functions of the released models and public noise only: `loss_g`, `loss_d_fake`,
//!   `d_g_z1` (D(G(z)) before D's step), `d_g_z2` (after), ε.
//! - Withheld: `loss_d` (= errD_real + errD_fake) and `d_x` (= D(x), the mean output on the
//!   real lot) are computed from private data with no noise. In a private run they are printed
//!   as `withheld` and written as `null`; `--release-private-metrics` prints and writes them,
//!   labelled `not_covered_by_epsilon` in `metrics.jsonl` and `[not covered by ε]` in the bar.
//! - `real_samples.png`: in a private run it shows images of the **test** split (same class),
//!   never training images; with `--disable-dp` the first training images.
//! - `checkpoint.json` outside `--secure-rng` holds the engine's noise seed (so `--resume` can
//!   continue bit-exactly): whoever has it can subtract the noise. Release only the models
//!   and pictures, or run with `--secure-rng` (no seed is saved; a resumed secure run draws
//!   a fresh key and is not bit-exact).
//!
//! # Outputs (`--out DIR`)
//! `real_samples.png`, `fake_samples_epoch_NNN.png` (8×8 grid of G on 64 fixed latents, each
//! epoch), `metrics.jsonl` (one JSON object per epoch), `netG.safetensors` /
//! `netD.safetensors` (PyTorch `nn.Sequential` names; at 64×64 the indices of `dcgan.py`'s
//! `Generator.main` / `Discriminator.main`), `optim.safetensors` and `checkpoint.json` for
//! `--resume` (which continues bit-exactly on the CPU with the same thread count).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use dpsgd::accounting::Method;
use dpsgd::data::{Dataset, DatasetKind, Split};
use dpsgd::engine::{EngineState, NoiseSpec, PrivacyConfig, PrivacyEngine};
use dpsgd::nn::models::{self, DcganConfig};
use dpsgd::nn::{Grads, Loss, Reduction, Sequential, Workspace};
use dpsgd::ops::Clipping;
use dpsgd::optim::{AdamConfig, NoisyStep};
use dpsgd::rng::{Purpose, RandomBits, RunKeys};
use dpsgd::sampling::PoissonSampler;
use dpsgd::{Buffer, Device, Error, NoiseKey, Result};
use serde::{Deserialize, Serialize};

/// The dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum DataArg {
    /// MNIST (`data/mnist`).
    Mnist,
    /// Fashion-MNIST (`/usr/share/datasets/fashion-mnist`).
    FashionMnist,
}

/// Command line (defaults: the CPU preset; `dcgan.py`'s are `--image-size 64 --ngf 128
/// --ndf 128 --epochs 25`).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "dp_dcgan",
    about = "DP-DCGAN (Opacus's dcgan.py) on MNIST / Fashion-MNIST with dpsgd",
    allow_negative_numbers = true
)]
pub struct Args {
    /// Dataset.
    #[arg(long, value_enum, default_value = "mnist")]
    pub dataset: DataArg,
    /// Folder of the IDX files (default: the dataset's usual folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Train on this class only (0–9), as the original.
    #[arg(long, default_value_t = 8)]
    pub target_digit: u32,
    /// Train on all ten classes instead of one.
    #[arg(long)]
    pub all_digits: bool,
    /// Image side: 28 (native), 32 or 64 (the original's; bilinear resize).
    #[arg(long, default_value_t = 28)]
    pub image_size: usize,
    /// Generator width (the original: 128).
    #[arg(long, default_value_t = 32)]
    pub ngf: usize,
    /// Discriminator width (the original: 128).
    #[arg(long, default_value_t = 32)]
    pub ndf: usize,
    /// Latent size.
    #[arg(long, default_value_t = 100)]
    pub nz: usize,
    /// GroupNorm groups (must divide every normalised width).
    #[arg(long, default_value_t = 8)]
    pub groups: usize,
    /// Expected lot size B (Poisson rate q = B/N) and the number of fakes per step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Epochs (round(1/q) steps each; the original's 25).
    #[arg(long, default_value_t = 25)]
    pub epochs: u64,
    /// Stop after this many steps in all (a checkpoint is written; `--resume` continues).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Adam learning rate (both models).
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f32,
    /// Adam β₁ (both models; β₂ = 0.999).
    #[arg(long, default_value_t = 0.5)]
    pub beta1: f32,
    /// Noise multiplier σ (default 1.0 when neither --sigma nor --epsilon is given).
    #[arg(long, conflicts_with = "epsilon")]
    pub sigma: Option<f64>,
    /// Target ε: σ is calibrated for all planned epochs (RDP).
    #[arg(long)]
    pub epsilon: Option<f64>,
    /// Per-sample clipping bound C of the real examples' gradients.
    #[arg(short = 'c', long = "max-per-sample-grad-norm", default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// δ.
    #[arg(long, default_value_t = 1e-5)]
    pub delta: f64,
    /// Train D without privacy (no clipping, no noise, no ε).
    #[arg(long)]
    pub disable_dp: bool,
    /// Secure mode: OS-seeded ChaCha20 keys for sampling and noise, nothing secret saved.
    #[arg(long)]
    pub secure_rng: bool,
    /// Seed of every stream (ignored with --secure-rng).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder.
    #[arg(long, default_value = "dcgan-out")]
    pub out: PathBuf,
    /// Continue the run checkpointed in --out.
    #[arg(long)]
    pub resume: bool,
    /// Print and save loss_D and D(x) in a private run (labelled: not covered by ε).
    #[arg(long)]
    pub release_private_metrics: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Samples in `gen_data.safetensors` at the end of the run (28×28, labelled with the
    /// target class, for `gan_eval`; 0 or `--all-digits`: none, G is unconditional).
    #[arg(long, default_value_t = 10_000)]
    pub gen_samples: usize,
}

/// What a run ends with.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Steps taken in all (this and earlier sessions).
    pub steps: u64,
    /// ε spent (None with --disable-dp).
    pub epsilon: Option<f64>,
    /// δ.
    pub delta: f64,
    /// σ.
    pub sigma: Option<f64>,
    /// Seconds per step in this session (None when it took no step, e.g. a resume of a
    /// finished run that only writes `gen_data`).
    pub seconds_per_step: Option<f64>,
}

impl Summary {
    /// One line for the terminal.
    pub fn line(&self) -> String {
        let speed = self
            .seconds_per_step
            .map_or("no step in this session".to_string(), |s| {
                format!("{s:.3} s/step")
            });
        match (self.epsilon, self.sigma) {
            (Some(e), Some(s)) => format!(
                "done: {} steps, ε = {e:.3} (δ = {}, σ = {s:.4}, RDP), {speed}",
                self.steps, self.delta
            ),
            _ => format!(
                "done: {} steps, no privacy (--disable-dp), {speed}",
                self.steps
            ),
        }
    }
}

/// The settings a checkpoint must match to be resumed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RunConfig {
    dataset: DataArg,
    target: Option<u32>,
    model: DcganConfig,
    batch_size: usize,
    lr: f32,
    beta1: f32,
    sigma: Option<f64>,
    epsilon: Option<f64>,
    max_grad_norm: f32,
    delta: f64,
    disable_dp: bool,
    secure: bool,
    seed: Option<u64>,
    epochs: u64,
}

/// Running sums of one epoch's metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct EpochAcc {
    n: u64,
    loss_g: f64,
    loss_d_fake: f64,
    d_g_z1: f64,
    d_g_z2: f64,
    /// Sums of private quantities: kept only when they are released (non-private run or
    /// --release-private-metrics).
    loss_d: f64,
    d_x: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    config: RunConfig,
    step: u64,
    sampler_position: u64,
    engine: Option<EngineState>,
    acc: EpochAcc,
}

/// One step's reported values (the private ones only when computed for release).
#[derive(Clone, Copy, Debug, Default)]
pub struct StepStats {
    /// errD_fake: BCE of D on the fakes vs "fake", mean (public).
    pub loss_d_fake: f64,
    /// errG: BCE of the updated D on the fakes vs "real", mean (public).
    pub loss_g: f64,
    /// Mean D(G(z)) before D's step (public).
    pub d_g_z1: f64,
    /// Mean D(G(z)) after D's step (public).
    pub d_g_z2: f64,
    /// errD_real: BCE of D on the lot vs "real", mean over the lot (private).
    pub loss_d_real: f64,
    /// Mean D(x) over the lot (private).
    pub d_x: f64,
}

fn sigmoid(x: f32) -> f64 {
    1.0 / (1.0 + (-(x as f64)).exp())
}

/// Bilinear resize of one `[h, w]` image to `[oh, ow]` with PyTorch's `align_corners=False`
/// (half-pixel centres, edge clamping), as `transforms.Resize` on an upscale.
pub fn resize_bilinear(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let coord = |o: usize, n_in: usize, n_out: usize| -> (usize, usize, f32) {
        let s = ((o as f32 + 0.5) * n_in as f32 / n_out as f32 - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        (i0, i1, s - i0 as f32)
    };
    let mut out = vec![0f32; oh * ow];
    for y in 0..oh {
        let (y0, y1, fy) = coord(y, h, oh);
        for x in 0..ow {
            let (x0, x1, fx) = coord(x, w, ow);
            let a = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
            let b = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
            out[y * ow + x] = a * (1.0 - fy) + b * fy;
        }
    }
    out
}

/// The class `args` selects: None with `--all-digits`.
fn target(args: &Args) -> Option<u32> {
    (!args.all_digits).then_some(args.target_digit)
}

/// Checks every argument (before any data is read or anything drawn).
pub fn validate(args: &Args) -> Result<DcganConfig> {
    if !args.all_digits && args.target_digit > 9 {
        return Err(Error::invalid(
            "--target-digit",
            args.target_digit,
            "a class in 0..=9 (or --all-digits)",
        ));
    }
    if !matches!(args.image_size, 28 | 32 | 64) {
        return Err(Error::invalid(
            "--image-size",
            args.image_size,
            "28, 32 or 64 (the sizes the DCGAN models are built for)",
        ));
    }
    let cfg = DcganConfig {
        image_size: args.image_size,
        channels: 1,
        nz: args.nz,
        ngf: args.ngf,
        ndf: args.ndf,
        groups: args.groups,
    };
    // The builders check the image size (28, 32, 64), the widths and the groups.
    models::dcgan_generator_builder(&cfg)
        .and_then(|b| b.build_zeroed(&Device::Cpu))
        .map_err(|e| {
            Error::invalid(
                "--ngf/--nz/--groups",
                e,
                "a generator that builds: --groups dividing 2·ngf and 4·ngf",
            )
        })?;
    models::dcgan_discriminator_builder(&cfg)
        .and_then(|b| b.build_zeroed(&Device::Cpu))
        .map_err(|e| {
            Error::invalid(
                "model (--ndf/--groups)",
                e,
                "a discriminator that builds: --groups dividing 2·ndf",
            )
        })?;
    if args.batch_size == 0 {
        return Err(Error::invalid("--batch-size", 0, ">= 1"));
    }
    if args.epochs == 0 {
        return Err(Error::invalid("--epochs", 0, ">= 1"));
    }
    if let Some(s) = args.sigma {
        if !(s.is_finite() && s >= 0.0) {
            return Err(Error::invalid("--sigma", s, "finite and >= 0"));
        }
    }
    if let Some(e) = args.epsilon {
        if !(e.is_finite() && e > 0.0) {
            return Err(Error::invalid("--epsilon", e, "finite and > 0"));
        }
    }
    if !(args.max_grad_norm.is_finite() && args.max_grad_norm > 0.0) {
        return Err(Error::invalid(
            "--max-per-sample-grad-norm",
            args.max_grad_norm,
            "finite and > 0",
        ));
    }
    if !(args.delta > 0.0 && args.delta < 1.0) {
        return Err(Error::invalid("--delta", args.delta, "in (0, 1)"));
    }
    let mut adam = AdamConfig::new(args.lr);
    adam.beta1 = args.beta1;
    adam.validate()?;
    Ok(cfg)
}

/// Loads the selected class (or all) of `split`, in [−1, 1], resized to `size`.
pub fn load_images(args: &Args, split: Split, size: usize) -> Result<(Vec<f32>, usize)> {
    let kind = match args.dataset {
        DataArg::Mnist => DatasetKind::Mnist,
        DataArg::FashionMnist => DatasetKind::FashionMnist,
    };
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| kind.default_dir().to_path_buf());
    let ds = Dataset::load(kind, &dir, split)?;
    let (mean, std) = kind.normalization();
    let per = ds.example_len();
    let (h, w) = (ds.height(), ds.width());
    let mut out = Vec::new();
    let mut n = 0;
    for (i, &label) in ds.labels().iter().enumerate() {
        if target(args).is_some_and(|t| t != label) {
            continue;
        }
        // Back to p/255, then to [−1, 1] as Normalize((0.5,), (0.5,)).
        let img: Vec<f32> = ds.images()[i * per..(i + 1) * per]
            .iter()
            .map(|&x| ((x * std + mean) * 2.0 - 1.0).clamp(-1.0, 1.0))
            .collect();
        if size == h && size == w {
            out.extend_from_slice(&img);
        } else {
            out.extend(resize_bilinear(&img, h, w, size, size));
        }
        n += 1;
    }
    if n == 0 {
        return Err(Error::invalid(
            "--target-digit",
            args.target_digit,
            format!("a class present in {}", dir.display()),
        ));
    }
    Ok((out, n))
}

/// The models, optimizer state and workspaces of one run.
pub struct Gan {
    /// Generator.
    pub g: Sequential,
    /// Discriminator.
    pub d: Sequential,
    ws_g: Workspace,
    ws_fake: Workspace,
    ws_real: Workspace,
    m_g: Buffer<f32>,
    v_g: Buffer<f32>,
    m_d: Buffer<f32>,
    v_d: Buffer<f32>,
    /// Per-step gradients, kept between steps (no allocation per step): D's update, its fake
    /// half, G's.
    grad_d: Buffer<f32>,
    fake_sum: Buffer<f32>,
    grad_g: Buffer<f32>,
    /// Adam steps taken by G and by D (equal: one each per step).
    pub t: u64,
    adam: AdamConfig,
    /// Fakes per step.
    pub batch: usize,
    /// Largest physical batch of real examples.
    phys: usize,
}

/// The values of a CPU buffer (this example runs on the CPU).
fn cpu_mut(b: &mut Buffer<f32>) -> Result<&mut [f32]> {
    b.as_mut_slice()
        .ok_or_else(|| Error::shape("dp_dcgan", "gradients on the CPU"))
}

/// Real examples per physical batch (a lot larger than this is split).
const PHYS_PER_BATCH: usize = 2;

impl Gan {
    /// Models initialised with DCGAN's N(0, 0.02) from the run's `ModelInit` key.
    pub fn new(cfg: &DcganConfig, batch: usize, adam: AdamConfig, keys: &RunKeys) -> Result<Self> {
        let dev = Device::Cpu;
        let mut g = models::dcgan_generator_builder(cfg)?.build_zeroed(&dev)?;
        let mut d = models::dcgan_discriminator_builder(cfg)?.build_zeroed(&dev)?;
        let init = keys.key(Purpose::ModelInit);
        models::dcgan_init(&mut g, &mut init.rng(0))?;
        models::dcgan_init(&mut d, &mut init.rng(1))?;
        let phys = (PHYS_PER_BATCH * batch).max(1);
        // G and D-on-fakes take summed gradients (or none), not per-sample ones: layer-major,
        // each kernel gets the whole batch and runs it as a few large GEMMs. The depth-first
        // schedule's cache-sized groups are 2 examples for G (its activations are large), so
        // each group re-packed G's 627k-value first weight. Measured (BENCHMARKS.md, "CPU speed
        // of the DP-DCGAN step"): 0.145 → 0.124 s/step on one thread. The real lot keeps the
        // depth-first schedule, whose fused clipping needs it.
        let mut ws_g = g.workspace(batch)?;
        let mut ws_fake = d.workspace(batch)?;
        ws_g.set_depth_first(false);
        ws_fake.set_depth_first(false);
        Ok(Gan {
            ws_g,
            ws_fake,
            ws_real: d.workspace(phys)?,
            m_g: Buffer::zeros(&dev, g.num_params())?,
            v_g: Buffer::zeros(&dev, g.num_params())?,
            m_d: Buffer::zeros(&dev, d.num_params())?,
            v_d: Buffer::zeros(&dev, d.num_params())?,
            grad_d: Buffer::zeros(&dev, d.num_params())?,
            fake_sum: Buffer::zeros(&dev, d.num_params())?,
            grad_g: Buffer::zeros(&dev, g.num_params())?,
            t: 0,
            adam,
            batch,
            phys,
            g,
            d,
        })
    }

    /// G's output on `z` (`n × nz` values), in [−1, 1], in batches of at most B (the last
    /// batch's activations stay in G's workspace for [`Gan::step`]'s backward).
    pub fn generate(&mut self, z: &[f32]) -> Result<Vec<f32>> {
        let nz = self.g.input_shape()[0];
        let mut out = Vec::new();
        for chunk in z.chunks(self.batch * nz) {
            self.g.forward(&mut self.ws_g, chunk)?;
            out.extend_from_slice(self.ws_g.output());
        }
        Ok(out)
    }

    /// D's update gradient of one step (what Adam is given): with an engine,
    /// `(Σ_{lot} clip_C(∇ real_i) + N(0, σ²C²) + Σ_j ∇ fake_j) / E` (E = q·N, the engine's
    /// expected lot size) — the real half clipped and noised by the engine, the fake half
    /// added un-clipped and noise-free (see the module docs for why that is valid); without,
    /// `(Σ ∇ real_i + Σ ∇ fake_j) / B`. `real` holds the lot's images, `fake` B generated
    /// ones. With `private_stats` the lot's D(x) and errD_real are computed (they are private:
    /// the caller must not release them unless it says they are not covered by ε). Returns
    /// the stats and, with an engine, ε after the step.
    pub fn d_gradient(
        &mut self,
        engine: Option<&mut PrivacyEngine>,
        real: &[f32],
        fake: &[f32],
        private_stats: bool,
        out: &mut Buffer<f32>,
    ) -> Result<(StepStats, Option<f64>)> {
        let per: usize = self.d.input_shape().iter().product();
        let nf = fake.len() / per;
        let nr = real.len() / per;
        let mut st = StepStats::default();
        // Fake half: a function of D_{t−1}, G_{t−1} and public latents only.
        let zeros = vec![0f32; nf];
        self.d.forward(&mut self.ws_fake, fake)?;
        st.loss_d_fake = self.d.loss(
            &mut self.ws_fake,
            Loss::BceWithLogits(&zeros),
            Reduction::Sum,
        )? / nf as f64;
        st.d_g_z1 = self
            .ws_fake
            .output()
            .iter()
            .map(|&o| sigmoid(o))
            .sum::<f64>()
            / nf as f64;
        self.d.backward(
            &mut self.ws_fake,
            Grads::Sum {
                grad: &mut self.fake_sum,
                accumulate: false,
            },
            false,
        )?;
        // Real half, in physical batches.
        let mut real_loss = 0.0;
        let mut d_x = 0.0;
        let (divisor, eps) = match engine {
            Some(engine) => {
                for chunk in real.chunks(self.phys * per) {
                    let ones = vec![1f32; chunk.len() / per];
                    real_loss += engine.accumulate_batch(
                        &self.d,
                        &mut self.ws_real,
                        chunk,
                        Loss::BceWithLogits(&ones),
                    )?;
                    if private_stats {
                        d_x += self
                            .ws_real
                            .output()
                            .iter()
                            .map(|&o| sigmoid(o))
                            .sum::<f64>();
                    }
                }
                let e = engine.noisy_gradient(out)?;
                (engine.config().expected_batch_size(), Some(e))
            }
            None => {
                out.fill_zero()?;
                for chunk in real.chunks(self.phys * per) {
                    let ones = vec![1f32; chunk.len() / per];
                    real_loss += self.d.forward_backward(
                        &mut self.ws_real,
                        chunk,
                        Loss::BceWithLogits(&ones),
                        Reduction::Sum,
                        Grads::Sum {
                            grad: out,
                            accumulate: true,
                        },
                        false,
                    )?;
                    d_x += self
                        .ws_real
                        .output()
                        .iter()
                        .map(|&o| sigmoid(o))
                        .sum::<f64>();
                }
                let inv = 1.0 / self.batch as f64;
                cpu_mut(out)?
                    .iter_mut()
                    .for_each(|x| *x = (*x as f64 * inv) as f32);
                (self.batch as f64, None)
            }
        };
        if private_stats || eps.is_none() {
            st.loss_d_real = if nr > 0 { real_loss / nr as f64 } else { 0.0 };
            st.d_x = if nr > 0 { d_x / nr as f64 } else { 0.0 };
        }
        let f = self
            .fake_sum
            .as_slice()
            .ok_or_else(|| Error::shape("dp_dcgan", "gradients on the CPU"))?;
        for (gi, fi) in cpu_mut(out)?.iter_mut().zip(f) {
            *gi = (*gi as f64 + *fi as f64 / divisor) as f32;
        }
        Ok((st, eps))
    }

    /// One full step: D's update from `real` (the lot) and the fakes G makes from `z`, then
    /// G's update through the updated D on the same fakes.
    pub fn step(
        &mut self,
        engine: Option<&mut PrivacyEngine>,
        real: &[f32],
        z: &[f32],
        private_stats: bool,
    ) -> Result<(StepStats, Option<f64>)> {
        let fake = self.generate(z)?;
        // Every value of `grad_d` is overwritten (by the engine's noisy gradient, or zeroed
        // first without one).
        let mut grad_d = std::mem::replace(&mut self.grad_d, Buffer::from_vec(Vec::new()));
        let res = self.d_gradient(engine, real, &fake, private_stats, &mut grad_d);
        self.grad_d = grad_d;
        let (mut st, eps) = res?;
        self.t += 1;
        // A plain Adam step on a gradient already formed: the fused kernel with no noise and
        // divisor 1 (the key is never read when the noise is 0).
        let plain = NoisyStep {
            noise_std: 0.0,
            expected_batch_size: 1.0,
            key: NoiseKey::from_parts(0, 0),
        };
        dpsgd::ops::noisy_adam_step(
            self.d.params_mut(),
            &self.grad_d,
            &mut self.m_d,
            &mut self.v_d,
            self.t,
            &self.adam,
            &plain,
        )?;
        // G through the updated D (no parameter gradient for D), target "real".
        let nf = fake.len() / self.d.input_shape().iter().product::<usize>();
        let ones = vec![1f32; nf];
        self.d.forward(&mut self.ws_fake, &fake)?;
        st.loss_g = self.d.loss(
            &mut self.ws_fake,
            Loss::BceWithLogits(&ones),
            Reduction::Mean,
        )?;
        st.d_g_z2 = self
            .ws_fake
            .output()
            .iter()
            .map(|&o| sigmoid(o))
            .sum::<f64>()
            / nf as f64;
        self.d.backward(&mut self.ws_fake, Grads::None, true)?;
        let dy = self
            .ws_fake
            .input_grad()
            .ok_or_else(|| Error::shape("dp_dcgan", "no input gradient"))?;
        self.g.set_output_grad(&mut self.ws_g, dy)?;
        self.g.backward(
            &mut self.ws_g,
            Grads::Sum {
                grad: &mut self.grad_g,
                accumulate: false,
            },
            false,
        )?;
        dpsgd::ops::noisy_adam_step(
            self.g.params_mut(),
            &self.grad_g,
            &mut self.m_g,
            &mut self.v_g,
            self.t,
            &self.adam,
            &plain,
        )?;
        Ok((st, eps))
    }

    fn save_optim(&self, path: &Path) -> Result<()> {
        use safetensors::tensor::{Dtype, TensorView};
        let bufs = [
            ("m_g", self.m_g.to_vec()?),
            ("v_g", self.v_g.to_vec()?),
            ("m_d", self.m_d.to_vec()?),
            ("v_d", self.v_d.to_vec()?),
        ];
        let bytes: Vec<Vec<u8>> = bufs
            .iter()
            .map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let fmt = |e: safetensors::SafeTensorError| Error::Format {
            path: path.to_path_buf(),
            msg: e.to_string(),
        };
        let mut views = Vec::new();
        for ((name, v), b) in bufs.iter().zip(&bytes) {
            views.push((
                name.to_string(),
                TensorView::new(Dtype::F32, vec![v.len()], b).map_err(fmt)?,
            ));
        }
        safetensors::serialize_to_file(views, None, path).map_err(fmt)
    }

    fn load_optim(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |msg: String| Error::Format {
            path: path.to_path_buf(),
            msg,
        };
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let read = |name: &str, len: usize| -> Result<Buffer<f32>> {
            let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
            if t.dtype() != safetensors::tensor::Dtype::F32 || t.shape() != [len] {
                return Err(bad(format!("{name}: expected F32 [{len}]")));
            }
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Buffer::from_slice(&Device::Cpu, &v)
        };
        let (pg, pd) = (self.g.num_params(), self.d.num_params());
        self.m_g = read("m_g", pg)?;
        self.v_g = read("v_g", pg)?;
        self.m_d = read("m_d", pd)?;
        self.v_d = read("v_d", pd)?;
        Ok(())
    }
}

/// `n × nz` standard normals from stream `stream` of the run's `Latent` key.
pub fn latents(keys: &RunKeys, stream: u64, n: usize, nz: usize) -> Vec<f32> {
    let mut r = keys.key(Purpose::Latent).rng(stream);
    (0..n * nz).map(|_| r.next_normal_f64() as f32).collect()
}

/// The `Latent` stream of the fixed sample grid (steps use streams 0, 1, …).
const FIXED_NOISE_STREAM: u64 = 1 << 62;
/// Images in a sample grid.
const GRID: usize = 64;

/// The `Latent` stream of `gen_data`'s samples.
const GEN_STREAM: u64 = 1 << 61;

/// `n` samples of G (latents from [`GEN_STREAM`]), resized to 28×28 if needed, labelled
/// `label`, in [`dpsgd::data::labelled`]'s format.
fn write_gen_data(gan: &mut Gan, keys: &RunKeys, path: &Path, n: usize, label: u32) -> Result<()> {
    let nz = gan.g.input_shape()[0];
    let s = gan.g.output_shape()[1];
    let z = latents(keys, GEN_STREAM, n, nz);
    let mut images = Vec::with_capacity(n * 784);
    for img in gan.generate(&z)?.chunks(s * s) {
        if s == 28 {
            images.extend_from_slice(img);
        } else {
            images.extend(resize_bilinear(img, s, s, 28, 28));
        }
    }
    images.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
    dpsgd::data::save_labelled_images(path, &images, &vec![label; n], [1, 28, 28], 10)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("withheld".to_string(), |v| format!("{v:.4}"))
}

/// Runs the whole training (or the rest of it, with `--resume`).
pub fn run(args: &Args) -> Result<Summary> {
    let cfg = validate(args)?;
    let private = !args.disable_dp;
    let release_private = !private || args.release_private_metrics;
    let (train, n) = load_images(args, Split::Train, cfg.image_size)?;
    let per = cfg.image_size * cfg.image_size;
    if args.batch_size > n {
        return Err(Error::invalid(
            "--batch-size",
            args.batch_size,
            format!("<= the {n} training images of the selection"),
        ));
    }
    let keys = if args.secure_rng {
        RunKeys::secure()?
    } else {
        RunKeys::seeded(args.seed)
    };
    let q = args.batch_size as f64 / n as f64;
    let mut sampler = PoissonSampler::with_key(n, q, keys.key(Purpose::Sampling))?;
    let spe = sampler.steps_per_epoch();
    let planned = args.epochs * spe;
    let mut adam = AdamConfig::new(args.lr);
    adam.beta1 = args.beta1;
    let sigma_arg = if args.epsilon.is_none() {
        Some(args.sigma.unwrap_or(1.0))
    } else {
        None
    };
    let run_cfg = RunConfig {
        dataset: args.dataset,
        target: target(args),
        model: cfg,
        batch_size: args.batch_size,
        lr: args.lr,
        beta1: args.beta1,
        sigma: sigma_arg.filter(|_| private),
        epsilon: args.epsilon.filter(|_| private),
        max_grad_norm: args.max_grad_norm,
        delta: args.delta,
        disable_dp: args.disable_dp,
        secure: args.secure_rng,
        seed: (!args.secure_rng).then_some(args.seed),
        epochs: args.epochs,
    };
    let mut gan = Gan::new(&cfg, args.batch_size, adam, &keys)?;
    // The privacy configuration is validated (and σ calibrated) before anything is drawn.
    let mut engine = if private {
        let pc = PrivacyConfig {
            noise: match args.epsilon {
                Some(e) => NoiseSpec::TargetEpsilon(e),
                None => NoiseSpec::NoiseMultiplier(sigma_arg.unwrap_or(1.0)),
            },
            delta: args.delta,
            clipping: Clipping::Flat(args.max_grad_norm),
            sample_rate: q,
            dataset_size: n,
            planned_steps: planned,
            accountant: Method::Rdp,
        };
        Some(PrivacyEngine::with_keys(
            pc,
            gan.d.layout().clone(),
            &Device::Cpu,
            &keys,
        )?)
    } else {
        None
    };
    let out = &args.out;
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.clone(),
        source,
    })?;
    let ckpt_path = out.join("checkpoint.json");
    let mut step = 0u64;
    let mut acc = EpochAcc::default();
    if args.resume {
        let text = std::fs::read_to_string(&ckpt_path).map_err(|source| Error::Io {
            path: ckpt_path.clone(),
            source,
        })?;
        let ck: Checkpoint = serde_json::from_str(&text)?;
        if ck.config != run_cfg {
            return Err(Error::invalid(
                "--resume",
                format!("{:?}", ck.config),
                format!("the checkpoint's own settings (this run has {run_cfg:?})"),
            ));
        }
        gan.g.load_safetensors(out.join("netG.safetensors"))?;
        gan.d.load_safetensors(out.join("netD.safetensors"))?;
        gan.load_optim(&out.join("optim.safetensors"))?;
        gan.t = ck.step;
        step = ck.step;
        sampler.seek(ck.sampler_position);
        if let (Some(e), Some(s)) = (engine.as_mut(), ck.engine) {
            e.restore(s)?;
        }
        acc = ck.acc;
    }
    let metrics_path = out.join("metrics.jsonl");
    if !args.resume {
        write_atomic(&metrics_path, b"")?;
    }
    // real_samples.png: test images in a private run (never the private training images).
    {
        let (imgs, m) = if private {
            load_images(args, Split::Test, cfg.image_size)?
        } else {
            (train.clone(), n)
        };
        let k = m.min(GRID);
        dpsgd::data::grid::save_grid_png(
            &out.join("real_samples.png"),
            &imgs[..k * per],
            k,
            1,
            cfg.image_size,
            cfg.image_size,
            8,
            (-1.0, 1.0),
        )?;
    }
    let fixed = latents(&keys, FIXED_NOISE_STREAM, GRID, cfg.nz);
    let end = args.max_steps.map_or(planned, |m| m.min(planned)).max(step);
    let bar = if args.no_progress {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(spe);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:20}] {pos}/{len} {elapsed}")
                .expect("valid template"),
        );
        b
    };
    let t0 = Instant::now();
    let steps_at_start = step;
    let mut lot = Vec::new();
    let mut real = Vec::new();
    let mut eps = engine
        .as_ref()
        .map(|e| e.epsilon())
        .transpose()?
        .filter(|_| step > 0);
    let mut epoch_t0 = Instant::now();
    while step < end {
        let epoch = step / spe;
        sampler.sample_into(&mut lot);
        real.clear();
        for &i in &lot {
            real.extend_from_slice(&train[i * per..(i + 1) * per]);
        }
        let z = latents(&keys, step, args.batch_size, cfg.nz);
        let (st, e) = gan.step(engine.as_mut(), &real, &z, release_private)?;
        step += 1;
        if e.is_some() {
            eps = e;
        }
        acc.n += 1;
        acc.loss_g += st.loss_g;
        acc.loss_d_fake += st.loss_d_fake;
        acc.d_g_z1 += st.d_g_z1;
        acc.d_g_z2 += st.d_g_z2;
        if release_private {
            acc.loss_d += st.loss_d_real + st.loss_d_fake;
            acc.d_x += st.d_x;
        }
        // The original's description line; private values only when released.
        let (loss_d, d_x) = if release_private {
            (Some(st.loss_d_real + st.loss_d_fake), Some(st.d_x))
        } else {
            (None, None)
        };
        let mut msg = format!(
            "epoch: {epoch}, Loss_D: {} Loss_G: {:.4} D(x): {} D(G(z)): {:.4}/{:.4}",
            fmt_opt(loss_d),
            st.loss_g,
            fmt_opt(d_x),
            st.d_g_z1,
            st.d_g_z2
        );
        if let Some(e) = eps {
            if args.release_private_metrics {
                msg.push_str(" [Loss_D, D(x): not covered by ε]");
            }
            msg.push_str(&format!(" (ε = {e:.2}, δ = {})", args.delta));
        }
        bar.set_message(msg);
        bar.set_position(step - epoch * spe);
        let epoch_done = step % spe == 0;
        if epoch_done {
            let fake = gan.generate(&fixed)?;
            dpsgd::data::grid::save_grid_png(
                &out.join(format!("fake_samples_epoch_{epoch:03}.png")),
                &fake,
                GRID,
                1,
                cfg.image_size,
                cfg.image_size,
                8,
                (-1.0, 1.0),
            )?;
            let m = acc.n.max(1) as f64;
            let mut line = serde_json::json!({
                "epoch": epoch,
                "step": step,
                "loss_d": release_private.then_some(acc.loss_d / m),
                "loss_d_fake": acc.loss_d_fake / m,
                "loss_g": acc.loss_g / m,
                "d_x": release_private.then_some(acc.d_x / m),
                "d_g_z1": acc.d_g_z1 / m,
                "d_g_z2": acc.d_g_z2 / m,
                "epsilon": eps,
                "delta": private.then_some(args.delta),
                "sigma": engine.as_ref().map(|e| e.noise_multiplier()),
                "seconds": epoch_t0.elapsed().as_secs_f64(),
            });
            if private && args.release_private_metrics {
                line["not_covered_by_epsilon"] = serde_json::json!(["loss_d", "d_x"]);
            }
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&metrics_path)
                .map_err(|source| Error::Io {
                    path: metrics_path.clone(),
                    source,
                })?;
            use std::io::Write;
            writeln!(f, "{line}").map_err(|source| Error::Io {
                path: metrics_path.clone(),
                source,
            })?;
            acc = EpochAcc::default();
            epoch_t0 = Instant::now();
            bar.println(format!("epoch {epoch}: {line}"));
        }
        if epoch_done || step == end {
            gan.g.save_safetensors(out.join("netG.safetensors"))?;
            gan.d.save_safetensors(out.join("netD.safetensors"))?;
            gan.save_optim(&out.join("optim.safetensors"))?;
            let ck = Checkpoint {
                version: 1,
                config: run_cfg.clone(),
                step,
                sampler_position: sampler.position(),
                engine: engine.as_ref().map(|e| e.state()),
                acc: acc.clone(),
            };
            write_atomic(&ckpt_path, serde_json::to_string(&ck)?.as_bytes())?;
        }
    }
    bar.finish_and_clear();
    if let (Some(t), true) = (target(args), args.gen_samples > 0 && step == planned) {
        write_gen_data(
            &mut gan,
            &keys,
            &out.join("gen_data.safetensors"),
            args.gen_samples,
            t,
        )?;
    }
    let done = step - steps_at_start;
    Ok(Summary {
        steps: step,
        epsilon: eps,
        delta: args.delta,
        sigma: engine.as_ref().map(|e| e.noise_multiplier()),
        seconds_per_step: (done > 0).then(|| t0.elapsed().as_secs_f64() / done as f64),
    })
}
