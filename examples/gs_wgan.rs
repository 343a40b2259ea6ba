//! GS-WGAN (Chen, Orekondy, Fritz, NeurIPS 2020) on MNIST / Fashion-MNIST, on dpsgd's public
//! API: `K` conditional discriminators, each on its own disjoint `1/K` of the training set and
//! warm-started without privacy (they are never released); a conditional generator trained
//! only through the **sanitised** gradient of its images (`dpsgd::ops::sanitize_rows`: each
//! row clipped to `C/B` and noised with std `2(C/B)σ`); WGAN-GP critics
//! (`Sequential::input_grad_param_grad`, `nn::gradient_penalty`); ε from
//! `dpsgd::accounting::gs_wgan`.
//!
//! **Where this differs from the authors' `main.py`, and why.** Their code draws one
//! discriminator per iteration for all `B` rows and trains that same discriminator; the
//! paper's ε assumes independent rows and is not valid for that code (see
//! `dpsgd::accounting::gs_wgan`). Here every generated row draws its own discriminator
//! (`Purpose::DiscriminatorChoice`), and the discriminator trained at an iteration is drawn
//! from a separate, data-independent stream, so the per-row analysis holds. Architecture: the
//! generator is DCGAN-like (ConvTranspose2d stacks; the authors' pixel norm is not a dpsgd
//! layer and is left out); the discriminator is the authors' DCGAN discriminator without
//! spectral norm (the gradient penalty alone constrains it), its class projection written as a
//! Linear layer with one output per class (`D(x, y) = out[y]`, the projection
//! `w·h + e_y·h` with per-class bias). Real minibatches are drawn uniformly with replacement
//! from the discriminator's partition; partition of training example `i` is `i mod K`.
//!
//! Outputs in `--out`: `samples_NNNNNN.png` (EMA generator, row = class), `samples_raw_NNNNNN.png`
//! (the generator's own weights), at the end
//! `class_C.png` (10×10 per class) and `gen_data.safetensors` (`images` [N,1,28,28] f32 in
//! [−1, 1], `labels` [N] **i64**), `metrics.jsonl`, `checkpoint.safetensors` (`--resume`).
//!
//! **Not covered by ε, never release:** `checkpoint.safetensors` holds the discriminators (and
//! their Adam moments), which are functions of the private data without noise, and in a seeded
//! run the seed (whoever has it can regenerate the noise; a secure run saves no key and a
//! resumed one draws fresh keys); the
//! Wasserstein estimate and the gradient-penalty term in the log and `metrics.jsonl` are
//! computed from private data. Only the
//! generator (and its EMA), its samples and `gen_data.safetensors` are covered.
//!
//! **`--disable-dp` (no privacy).** A plain conditional WGAN-GP control: the generator's
//! gradient comes from the discriminator just trained, unclipped and un-noised, and ε = ∞ (the
//! run says so on stderr; `metrics.jsonl` has `"epsilon": null`). It is how the GAN itself is
//! checked: with `--discriminators 1 --pretrain-iterations 0` the Wasserstein estimate falls
//! (≈ 18 → 5 over 7 000 iterations) with the penalty term below 1, and the samples turn from a
//! flat image into strokes and digit shapes within 2 000–4 000 iterations (BENCHMARKS.md).
//!
//! **Cheap discriminators (`--preset cpu`).** A discriminator with few critic steps has input
//! gradients of norm ≪ 1, far below the clip bound `C/B`, and the noise (per-pixel std
//! `2(C/B)σ`) swamps them; the paper trains every discriminator 2 000 iterations first, and
//! with the `1/K` amplification a valid ε needs `K` in the hundreds: with the conv critic
//! that is days of CPU. The CPU preset therefore uses a small MLP critic (`--critic mlp`,
//! ≈ 0.1 M multiply-adds per image; the discriminators are never released, so their
//! architecture does not touch privacy), warm-starts all `K = 1000` of them in parallel
//! against a fixed pool of the initial generator's samples (`--pretrain-fakes`, no
//! generator forward per critic step), and trains two discriminators per iteration
//! (`--critics-per-iteration`, drawn from the data-independent critic stream). Warm-starting
//! against the initial generator's grey samples alone (`initial`) teaches every critic
//! "darker is more real": the generator turns black within a few hundred iterations, even
//! without noise, and the stale critics never pull it back; dimming each pool sample by a
//! random factor (`initial-dimmed`, fakes from black to grey, still data-independent) gives
//! critics that push the generator toward digit-shaped mass instead (without noise, K = 50).
//!
//! **Why the private CPU preset still learns nothing.** The MLP critic is a good critic: the
//! non-private control (`--disable-dp --discriminators 1 --pretrain-iterations 0`) draws
//! class-conditional digits within 2 000 iterations (≈ 2 minutes). With `K = 1000` each
//! critic gets only `2 · 5 · T/K` = 30 steps in the whole private phase, so the generator is
//! steered by critics that have only seen the warm start's fakes; it leaves that region
//! (turning black, centre first) within 1 000–1 500 iterations and they never pull it back.
//! The paper avoids this by warm-starting each critic 2 000 iterations with its own
//! throw-away generator (`--pretrain-fakes own`), so that every critic has seen a generator
//! go from noise to digits: ≈ 100 s per critic here even with the MLP critic, ≈ a day for
//! `K = 1000`. BENCHMARKS.md, "GS-WGAN, private CPU preset", has the runs.
//!
//! **Refresh rounds (`--refresh-every N --refresh-steps S`).** Every `N` generator iterations
//! **all** `K` discriminators take `S` critic steps, in parallel, against one pool of 2 560
//! samples of the current generator, so that no critic is more than `N` generator steps
//! behind. Privacy is unchanged: discriminator `k` still sees only partition `k`, the released
//! generator and randomness from the data-independent critic stream (`Purpose::Sampling`,
//! streams `(1 << 50) | (r << 20) | k` and `(1 << 51) | r` for round `r`), on a schedule fixed
//! by the flags, which is what `dpsgd::accounting::gs_wgan` assumes. `--critic-batch-size`
//! sets the critics' batch apart from `B` (the critics are never released: no effect on ε), so
//! that `B` can grow without making every critic step dearer. Refresh rounds did **not** make
//! a private CPU run learn (BENCHMARKS.md, "GS-WGAN, issue 12, seventh round"): noise-free
//! diagnostics show that the private code path learns with one critic trained every step,
//! fails as soon as each of `K` critics gets only a `1/K` share of that training, and learns
//! again with 10 critics when every one is trained every step (`--critics-per-iteration 10`):
//! `K × 5` critic steps per iteration, which at the `K` a useful ε needs is hours here.
//!
//! **On a GPU (`--device cuda`, a build with `--features cuda`; `--preset gpu`).** The same
//! code runs with the models on the GPU: every forward and backward, WGAN-GP's double backward
//! (`Sequential::input_grad_param_grad`'s CUDA path) and the sanitisation (`ops::sanitize_rows`,
//! the same noise stream as on the CPU) run there, and every random stream has the same
//! `Purpose` on both devices, so a GPU run differs from the CPU run only by f32 summation
//! order. What stays on the host, and its cost per critic step: the K critics' weights and
//! Adam moments (`State::d_all/d_m/d_v`, `3·K·P_D` floats: 1.2 GB for K = 1000 MLP critics,
//! 12.8 GB for conv critics at model_dim 64) — the critic's weights are copied in, its weights
//! and gradient copied out and Adam runs on the host (3 copies of `P_D` floats: 0.4 MB each
//! for the MLP critic, 4.3 MB for the conv critic at model_dim 64); the penalty's `∂P/∂u`
//! (`nn::gradient_penalty`, on the host: `B × 784` floats each way); and each critic step
//! allocates its workspace. The generator's Adam and EMA run on the host too (once per
//! iteration). The warm start and refresh rounds train the K critics one after another on the
//! GPU (the CPU runs them in parallel). Moving the critics' state and Adam onto the GPU
//! (`ops::noisy_adam_step` has a CUDA path) is the next speed step once a GPU run shows where
//! the time goes.
//!
//! Samples: `samples_NNNNNN.png` is the weight average (`--ema-decay`, paper 0.999; it starts
//! as the plain mean of the iterates, so for the first `≈ 1/(1 − β)` iterations it still
//! holds the untrained start and looks darker and flatter than the generator),
//! `samples_raw_NNNNNN.png` the generator itself. Both are covered by ε (post-processing).
//!
//! ```text
//! cargo run --release --example gs_wgan -- --preset cpu --out runs/gswgan
//! cargo run --release --features cuda --example gs_wgan -- --preset gpu --device cuda \
//!     --out runs/gswgan-gpu                                            # needs a GPU
//! cargo run --release --example gs_wgan -- --disable-dp --discriminators 1 \
//!     --pretrain-iterations 0 --iterations 7000 --out runs/control     # NOT private
//! ```

use clap::{Parser, ValueEnum};
use dpsgd::accounting::gs_wgan::{
    noise_std, paper_epsilon, DiscriminatorSampling, GsWganAccountant,
};
use dpsgd::data::{Dataset, DatasetKind, Split};
use dpsgd::nn::{gradient_penalty, Grads, Sequential};
use dpsgd::optim::{AdamConfig, NoisyStep};
use dpsgd::rng::{Purpose, RandomBits, RunKeys, StreamKey};
use dpsgd::{ops, Buffer, Device, Error, NoiseKey, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::io::Write;
use std::path::{Path, PathBuf};

const CLASSES: usize = 10;
const IMG: usize = 784;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Preset {
    /// Cheap discriminators for 2 CPU cores: K = 1000 MLP critics warm-started 100 critic steps
    /// each against dimmed samples of the initial generator, two trained per iteration; the
    /// conv generator (model_dim 16); T = 3 000, σ = 0.6, lr_g 2e-4, EMA 0.995: ε = 9.83 at
    /// δ = 1e-5, ≈ 20 minutes here (loaded). It still shows **no learning** (the generator turns
    /// black: its critics are stale; module docs, BENCHMARKS.md "GS-WGAN, private CPU preset").
    Cpu,
    /// The paper's setting (K = 1000, 2 000 pretraining iterations each, 20 000 iterations,
    /// model_dim 64): days of CPU time; with `--device cuda` the paper's run on a GPU (an
    /// estimate of its time is in README's GS-WGAN section; not run yet).
    Paper,
    /// For a GPU (`--device cuda`): `--preset cpu`'s privacy budget (K = 1000, σ = 0.6, B = 32,
    /// T = 3 000: ε = 9.83 at δ = 1e-5) with **every** critic trained 5 steps every generator
    /// iteration (refresh rounds `--refresh-every 1 --refresh-steps 5`, the schedule under which
    /// the noise-free diagnostics learn), lr_g 1e-4. 5 000 critic steps per iteration: hours
    /// on a GPU (an estimate, README), weeks here. Written and CPU-verified, not yet run on a
    /// GPU: whether it learns is not known.
    Gpu,
}

/// Where the models train (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    /// The CPU (all cores, rayon).
    Cpu,
    /// CUDA GPU 0 (needs a build with `--features cuda`).
    Cuda,
}

/// The discriminators' architecture (never released: it does not touch privacy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Critic {
    /// The authors' DCGAN discriminator (conv 5×5 stride 2 ×3, ReLU), without spectral norm.
    Conv,
    /// A small MLP: 784 → `--critic-hidden` → LeakyReLU(0.2) → 10 (`D(x, y) = out[y]`),
    /// ≈ 100 k multiply-adds per image at 128 hidden units: cheap enough to warm-start
    /// hundreds of discriminators for hundreds of critic steps each on a CPU.
    Mlp,
}

/// The generator's architecture (released, but public: it does not touch privacy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Gen {
    /// DCGAN-like ConvTranspose2d stack (`--model-dim` channels), as the example had.
    Conv,
    /// An MLP: `z + 10` → 256 → ReLU → 512 → ReLU → 784 → Sigmoid (≈ 0.54 M multiply-adds
    /// per image against the conv stack's ≈ 1.3 M at model_dim 16).
    Mlp,
}

/// What a discriminator is warm-started against (each on its own partition, no privacy: the
/// discriminators are never released).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PretrainFakes {
    /// As the authors' `pretrain.py`: a throw-away generator per discriminator, trained with
    /// it (one generator step per `critic_iters` critic steps) and discarded.
    Own,
    /// The fixed initial generator (the one the private phase starts from): no generator
    /// steps, so each warm-start iteration costs only its critic steps; the critic learns to
    /// tell its partition's digits from the untrained generator's output, whose gradient is
    /// what the generator needs first.
    Initial,
    /// As `initial`, each sample dimmed by a factor drawn uniformly from [0, 1] (fakes from
    /// black to the initial generator's grey: data-independent).
    InitialDimmed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Latent {
    Bernoulli,
    Normal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Data {
    Mnist,
    FashionMnist,
}

#[derive(Parser, Debug, Clone)]
#[command(about = "GS-WGAN: a differentially private conditional generator (Chen et al. 2020)")]
pub struct Args {
    /// Settings preset; the flags below override it.
    #[arg(long, value_enum, default_value = "cpu")]
    preset: Preset,
    /// Where the generator and the critics train. `cuda` needs a build with `--features cuda`
    /// (an error otherwise, never a silent fallback to the CPU). Noise and every random stream
    /// are the same on both devices; the results differ only by the order of f32 sums.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: Data,
    /// Folder of the IDX files (default: the dataset's usual place).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use only the first N training examples (tests, quick runs).
    #[arg(long)]
    train_subset: Option<usize>,
    /// Number of discriminators K (disjoint partitions).
    #[arg(long)]
    discriminators: Option<usize>,
    /// Non-private warm-start iterations per discriminator.
    #[arg(long)]
    pretrain_iterations: Option<u64>,
    /// Generator iterations T.
    #[arg(long)]
    iterations: Option<u64>,
    /// Channels multiplier of both networks (paper 64).
    #[arg(long)]
    model_dim: Option<usize>,
    /// Generated images (rows) per generator iteration, B: the accountant composes `B · T`
    /// rows, and each row is clipped to `C/B`.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Real (and fake) images per critic step (default: `--batch-size`). The discriminators
    /// are never released, so this does not touch ε; it lets B grow without making every
    /// critic step (warm start, refresh rounds) dearer.
    #[arg(long)]
    critic_batch_size: Option<usize>,
    #[arg(long, default_value_t = 5)]
    critic_iters: usize,
    /// Discriminators trained per generator iteration (each `critic_iters` steps; drawn from
    /// the data-independent critic stream; preset: cpu 2, paper 1).
    #[arg(long)]
    critics_per_iteration: Option<usize>,
    #[arg(long, default_value_t = 10)]
    z_dim: usize,
    #[arg(long, value_enum, default_value = "bernoulli")]
    latent: Latent,
    /// Noise multiplier σ: noise std / (2 · clip) (preset: cpu 1.07·…, paper 1.07).
    #[arg(long)]
    sigma: Option<f64>,
    /// Per-image clipping bound C of the generator gradient (clipped to C/B after the mean).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    #[arg(long, default_value_t = 10.0)]
    lambda_gp: f64,
    #[arg(long, default_value_t = 0.001)]
    lambda_eps: f64,
    /// Adam learning rate of the discriminators (and of the generator unless `--lr-g`).
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    /// Adam learning rate of the generator (preset: paper = `--lr`).
    #[arg(long)]
    lr_g: Option<f32>,
    /// The discriminators' architecture (preset: cpu mlp, paper conv).
    #[arg(long, value_enum)]
    critic: Option<Critic>,
    /// The generator's architecture (preset: cpu mlp, paper conv).
    #[arg(long, value_enum)]
    generator: Option<Gen>,
    /// Hidden units of the MLP critic.
    #[arg(long, default_value_t = 128)]
    critic_hidden: usize,
    /// Refresh rounds: every N generator iterations **all** K discriminators take
    /// `--refresh-steps` critic steps (in parallel) against a pool of the current generator's
    /// samples, so that no critic is left with only the warm start's fakes (0, both presets:
    /// off). Data-independent schedule and randomness, the released generator only: ε is
    /// unchanged. With it the private CPU runs still learn nothing (BENCHMARKS.md, seventh
    /// round).
    #[arg(long)]
    refresh_every: Option<u64>,
    /// Critic steps per discriminator in each refresh round (needed with `--refresh-every`).
    #[arg(long)]
    refresh_steps: Option<u64>,
    /// What the discriminators are warm-started against (preset: cpu initial, paper own).
    #[arg(long, value_enum)]
    pretrain_fakes: Option<PretrainFakes>,
    /// Seeded (reproducible) run; without it, secure mode (ChaCha20, OS entropy).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value = "runs/gs_wgan")]
    out: PathBuf,
    /// Log / sample every N iterations.
    #[arg(long, default_value_t = 100)]
    log_every: u64,
    /// Write the checkpoint every N iterations (and at the end).
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// Samples written by gen_data at the end (0: none).
    #[arg(long, default_value_t = 60_000)]
    gen_samples: usize,
    /// Continue from `out/checkpoint.safetensors`.
    #[arg(long)]
    resume: bool,
    /// **No privacy**: a plain (non-private) conditional WGAN-GP control. The generator's
    /// gradient comes from the discriminator just trained, without clipping or noise, and no ε
    /// is reported (ε = ∞). For checking that the GAN learns; never for private data.
    #[arg(long)]
    disable_dp: bool,
    /// Decay β of the generator's weight average used for sampling (paper 0.999). The average
    /// starts as the plain mean of the iterates (`min(1 − 1/(t+1), β)`), so it spans about
    /// `1/(1 − β)` iterations: with β = 0.999 a run of a few thousand iterations samples an
    /// average that still holds the untrained start. 0 samples the last iterate.
    #[arg(long)]
    ema_decay: Option<f64>,
}

/// The resolved configuration.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Config {
    dataset: String,
    n: usize,
    k: usize,
    pretrain: u64,
    iterations: u64,
    md: usize,
    b: usize,
    critic: usize,
    z: usize,
    bernoulli: bool,
    sigma: f64,
    clip: f64,
    delta: f64,
    lambda_gp: f64,
    lambda_eps: f64,
    lr: f32,
    seed: Option<u64>,
    /// `--disable-dp`: no clipping, no noise, ε = ∞.
    #[serde(default)]
    disable_dp: bool,
    #[serde(default = "paper_ema")]
    ema_decay: f64,
    /// The generator's learning rate (absent in older checkpoints: `lr`).
    #[serde(default)]
    lr_g: Option<f32>,
    /// `"conv"` (absent in older checkpoints) or `"mlp"`.
    #[serde(default = "conv_critic")]
    critic_arch: String,
    /// Hidden units of the MLP critic (0 for the conv critic).
    #[serde(default)]
    critic_hidden: usize,
    /// Warm start against a throw-away generator per discriminator (`"own"`, the paper's and
    /// older checkpoints') or the fixed initial generator (`"initial"`).
    #[serde(default = "own_fakes")]
    pretrain_fakes: String,
    /// `"conv"` (absent in older checkpoints) or `"mlp"`.
    #[serde(default = "conv_critic")]
    gen_arch: String,
    /// Discriminators trained per iteration (absent in older checkpoints: 1).
    #[serde(default = "one")]
    critics_per_iteration: usize,
    /// Images per critic step (absent in older checkpoints: 0, meaning `b`).
    #[serde(default)]
    critic_b: usize,
    /// Refresh rounds every N iterations (0: none; absent in older checkpoints: 0).
    #[serde(default)]
    refresh_every: u64,
    /// Critic steps per discriminator per refresh round (absent in older checkpoints: 0).
    #[serde(default)]
    refresh_steps: u64,
}

fn one() -> usize {
    1
}

fn paper_ema() -> f64 {
    0.999
}

fn conv_critic() -> String {
    "conv".into()
}

fn own_fakes() -> String {
    "own".into()
}

impl Config {
    fn g_lr(&self) -> f32 {
        self.lr_g.unwrap_or(self.lr)
    }

    /// Images per critic step.
    fn d_batch(&self) -> usize {
        if self.critic_b == 0 {
            self.b
        } else {
            self.critic_b
        }
    }
}

/// The conditional generator: input `[z + 10, 1, 1]` (latent code, one-hot label), output a
/// `[1, 28, 28]` image in [0, 1].
pub fn generator(dev: &Device, z: usize, md: usize, seed: u64) -> Result<Sequential> {
    Sequential::builder(&[z + CLASSES, 1, 1])
        .conv_transpose2d(4 * md, 4, 1, 0, true) // [4md, 4, 4]
        .relu()
        .conv_transpose2d(2 * md, 4, 1, 0, true) // [2md, 7, 7]
        .relu()
        .conv_transpose2d(md, 5, 1, 0, true) // [md, 11, 11]
        .relu()
        .conv_transpose2d(1, 8, 2, 0, true) // [1, 28, 28]
        .sigmoid()
        .build(dev, seed)
}

/// The generator `cfg` asks for (`--generator`), with initial weights from `seed`.
pub fn gen_model(dev: &Device, cfg: &Config, seed: u64) -> Result<Sequential> {
    if cfg.gen_arch == "mlp" {
        mlp_generator(dev, cfg.z, seed)
    } else {
        generator(dev, cfg.z, cfg.md, seed)
    }
}

/// The conditional MLP generator: input `[z + 10]` (latent code, one-hot label) → 256 → ReLU →
/// 512 → ReLU → 784 → Sigmoid, an image in [0, 1] (row-major 28×28).
pub fn mlp_generator(dev: &Device, z: usize, seed: u64) -> Result<Sequential> {
    Sequential::builder(&[z + CLASSES])
        .linear(256, true)
        .relu()
        .linear(512, true)
        .relu()
        .linear(IMG, true)
        .sigmoid()
        .build(dev, seed)
}

/// The critic `cfg` asks for (`--critic`), with initial weights from `seed`.
pub fn critic(dev: &Device, cfg: &Config, seed: u64) -> Result<Sequential> {
    if cfg.critic_arch == "mlp" {
        mlp_discriminator(dev, cfg.critic_hidden, seed)
    } else {
        discriminator(dev, cfg.md, seed)
    }
}

/// The small conditional MLP critic: `[1, 28, 28]` → flatten → Linear(784, `hidden`) →
/// LeakyReLU(0.2) → Linear(`hidden`, 10), `D(x, y) = out[y]` (the label enters as the
/// output's class selector, as in the conv critic's projection head). Piecewise linear, so
/// WGAN-GP's double backward (`Sequential::input_grad_param_grad`) covers it.
pub fn mlp_discriminator(dev: &Device, hidden: usize, seed: u64) -> Result<Sequential> {
    Sequential::builder(&[1, 28, 28])
        .flatten()
        .linear(hidden, true)
        .leaky_relu(0.2)
        .linear(CLASSES, true)
        .build(dev, seed)
}

/// The conditional conv critic: one output per class, `D(x, y) = out[y]`.
pub fn discriminator(dev: &Device, md: usize, seed: u64) -> Result<Sequential> {
    Sequential::builder(&[1, 28, 28])
        .conv2d(md, 5, 2, 2, true) // 14
        .relu()
        .conv2d(2 * md, 5, 2, 2, true) // 7
        .relu()
        .conv2d(4 * md, 5, 2, 2, true) // 4
        .relu()
        .flatten()
        .linear(CLASSES, true)
        .build(dev, seed)
}

fn invalid(name: &'static str, v: impl std::fmt::Display, what: &str) -> Error {
    Error::invalid(name, v, what.to_string())
}

/// A preset's settings (flags override each).
struct PresetValues {
    k: usize,
    pretrain: u64,
    iterations: u64,
    md: usize,
    sigma: f64,
    critic: Critic,
    gen: Gen,
    fakes: PretrainFakes,
    critics: usize,
    lr_g: f32,
    ema: f64,
    refresh_every: u64,
    refresh_steps: u64,
}

/// The settings `a` resolves to (its preset, overridden by its flags), validated.
pub fn resolve(a: &Args, n_total: usize) -> Result<Config> {
    let p = match a.preset {
        Preset::Cpu => PresetValues {
            k: 1000,
            pretrain: 20,
            iterations: 3000,
            md: 16,
            sigma: 0.6,
            critic: Critic::Mlp,
            gen: Gen::Conv,
            fakes: PretrainFakes::InitialDimmed,
            critics: 2,
            lr_g: 2e-4,
            ema: 0.995,
            refresh_every: 0,
            refresh_steps: 0,
        },
        Preset::Gpu => PresetValues {
            k: 1000,
            pretrain: 20,
            iterations: 3000,
            md: 16,
            sigma: 0.6,
            critic: Critic::Mlp,
            gen: Gen::Conv,
            fakes: PretrainFakes::InitialDimmed,
            critics: 1,
            lr_g: 1e-4,
            ema: 0.995,
            refresh_every: 1,
            refresh_steps: 5,
        },
        Preset::Paper => PresetValues {
            k: 1000,
            pretrain: 2000,
            iterations: 20_000,
            md: 64,
            sigma: 1.07,
            critic: Critic::Conv,
            gen: Gen::Conv,
            fakes: PretrainFakes::Own,
            critics: 1,
            lr_g: a.lr,
            ema: 0.999,
            refresh_every: 0,
            refresh_steps: 0,
        },
    };
    let (k, pre, it, md) = (p.k, p.pretrain, p.iterations, p.md);
    let arch = a.critic.unwrap_or(p.critic);
    let n = a.train_subset.unwrap_or(n_total).min(n_total);
    let k = a.discriminators.unwrap_or(k);
    let c = Config {
        dataset: format!("{:?}", a.dataset),
        n,
        k,
        pretrain: a.pretrain_iterations.unwrap_or(pre),
        iterations: a.iterations.unwrap_or(it),
        md: a.model_dim.unwrap_or(md),
        b: a.batch_size,
        critic: a.critic_iters,
        z: a.z_dim,
        bernoulli: a.latent == Latent::Bernoulli,
        sigma: a.sigma.unwrap_or(p.sigma),
        clip: a.clip,
        delta: a.delta,
        lambda_gp: a.lambda_gp,
        lambda_eps: a.lambda_eps,
        lr: a.lr,
        seed: a.seed,
        disable_dp: a.disable_dp,
        ema_decay: a.ema_decay.unwrap_or(p.ema),
        lr_g: Some(a.lr_g.unwrap_or(p.lr_g)),
        critic_arch: match arch {
            Critic::Conv => "conv",
            Critic::Mlp => "mlp",
        }
        .into(),
        critic_hidden: if arch == Critic::Mlp {
            a.critic_hidden
        } else {
            0
        },
        critics_per_iteration: a.critics_per_iteration.unwrap_or(p.critics),
        // 0: the same as `b` (as older checkpoints, which lack the field, read it).
        critic_b: a.critic_batch_size.unwrap_or(0),
        refresh_every: a.refresh_every.unwrap_or(p.refresh_every),
        refresh_steps: a.refresh_steps.unwrap_or(p.refresh_steps),
        gen_arch: match a.generator.unwrap_or(p.gen) {
            Gen::Conv => "conv",
            Gen::Mlp => "mlp",
        }
        .into(),
        pretrain_fakes: match a.pretrain_fakes.unwrap_or(p.fakes) {
            PretrainFakes::Own => "own",
            PretrainFakes::Initial => "initial",
            PretrainFakes::InitialDimmed => "initial-dimmed",
        }
        .into(),
    };
    if arch == Critic::Mlp && c.critic_hidden == 0 {
        return Err(invalid("critic_hidden", 0, ">= 1"));
    }
    AdamConfig::new(c.g_lr()).validate()?;
    if !(0.0..1.0).contains(&c.ema_decay) {
        return Err(invalid("ema_decay", c.ema_decay, "in [0, 1)"));
    }
    if c.k == 0 || c.k > c.n {
        return Err(invalid(
            "discriminators",
            c.k,
            "in 1..=training examples (each needs a non-empty partition)",
        ));
    }
    if c.md == 0
        || c.b == 0
        || a.critic_batch_size == Some(0)
        || c.critic == 0
        || c.z == 0
        || c.critics_per_iteration == 0
    {
        return Err(invalid(
            "model_dim/batch_size/critic_batch_size/critic_iters/z_dim/critics_per_iteration",
            "0",
            ">= 1",
        ));
    }
    if c.refresh_every > 0 {
        // Refresh round r's random streams are `(1 << 50) | (r << 20) | k` (discriminator k)
        // and `(1 << 51) | r` (its pool): distinct from each other and from the warm start's
        // and the iterations' streams while k < 2^20 and r < 2^29.
        if c.refresh_steps == 0 {
            return Err(invalid(
                "refresh_steps",
                0,
                ">= 1 when --refresh-every is set (or --refresh-every 0 for no refresh rounds)",
            ));
        }
        if c.k >= 1 << 20 || c.iterations.checked_div(c.refresh_every).unwrap_or(0) >= 1 << 29 {
            return Err(invalid(
                "refresh_every",
                c.refresh_every,
                "at most 2^29 refresh rounds and fewer than 2^20 discriminators",
            ));
        }
    }
    if !(c.clip.is_finite() && c.clip > 0.0) {
        return Err(invalid("clip", c.clip, "finite and > 0"));
    }
    if !(c.lambda_gp.is_finite()
        && c.lambda_gp >= 0.0
        && c.lambda_eps.is_finite()
        && c.lambda_eps >= 0.0)
    {
        return Err(invalid(
            "lambda_gp/lambda_eps",
            c.lambda_gp,
            "finite and >= 0",
        ));
    }
    AdamConfig::new(c.lr).validate()?;
    // σ and δ are validated by the accountant, before anything is trained.
    GsWganAccountant::new(
        c.k as u64,
        c.sigma,
        c.b as u64,
        DiscriminatorSampling::IndependentPerRow,
    )?;
    if !(c.delta > 0.0 && c.delta < 1.0) {
        return Err(invalid("delta", c.delta, "in (0, 1)"));
    }
    Ok(c)
}

/// The run's state: everything `--resume` needs.
struct State {
    g_ema: Vec<f32>,
    g_m: Vec<f32>,
    g_v: Vec<f32>,
    /// All discriminators' weights and Adam moments, one buffer each (`K × P_D`).
    d_all: Vec<f32>,
    d_m: Vec<f32>,
    d_v: Vec<f32>,
    /// Adam steps taken per discriminator.
    d_steps: Vec<u64>,
    g_steps: u64,
    iteration: u64,
}

/// Writes the latent codes + one-hot labels of `labels` into `out` (`[B, z + 10]`).
fn latent(rng: &mut impl RandomBits, cfg: &Config, labels: &[u32], out: &mut Vec<f32>) {
    out.clear();
    for &y in labels {
        for _ in 0..cfg.z {
            out.push(if cfg.bernoulli {
                (rng.next_u32() & 1) as f32
            } else {
                rng.next_normal_f64() as f32
            });
        }
        for c in 0..CLASSES {
            out.push(if c == y as usize { 1.0 } else { 0.0 });
        }
    }
}

fn onehot(labels: &[u32], scale: &[f32]) -> Vec<f32> {
    let mut v = vec![0f32; labels.len() * CLASSES];
    for (i, &y) in labels.iter().enumerate() {
        v[i * CLASSES + y as usize] = scale[i];
    }
    v
}

fn adam_step(
    params: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    t: u64,
    lr: f32,
) -> Result<()> {
    let mut cfg = AdamConfig::new(lr);
    cfg.beta1 = 0.5;
    cfg.beta2 = 0.9;
    // No noise: these are post-processing / never-released updates (NoisyStep with std 0).
    let plain = NoisyStep {
        noise_std: 0.0,
        expected_batch_size: 1.0,
        key: NoiseKey::from_parts(0, 0),
    };
    dpsgd::cpu::optim::noisy_adam_step(params, grad, m, v, t, &cfg, &plain)
}

/// One WGAN-GP critic step of `d` (its weights loaded) on a real batch, against `g`: writes
/// the critic loss's gradient to `grad` and returns (the Wasserstein estimate
/// `mean D(x, y) − mean D(G(z), y)`, the gradient penalty term, the whole critic loss
/// `−mean D(x, y) + λ_ε mean D(x, y)² + mean D(G(z), y) + GP`).
#[allow(clippy::too_many_arguments)]
pub fn critic_step(
    cfg: &Config,
    d: &Sequential,
    g: &Sequential,
    real: &[f32],
    labels: &[u32],
    rng: &mut impl RandomBits,
    grad: &mut Buffer<f32>,
) -> Result<(f64, f64, f64)> {
    let b = labels.len();
    let mut zin = Vec::new();
    latent(rng, cfg, labels, &mut zin);
    let mut gws = g.workspace(b)?;
    g.forward(&mut gws, &zin)?;
    let fake = gws.output_vec()?;
    critic_step_on(cfg, d, &fake, real, labels, rng, grad)
}

/// [`critic_step`] against given fake images `fake` (`[B, 784]`, generated with `labels`).
pub fn critic_step_on(
    cfg: &Config,
    d: &Sequential,
    fake: &[f32],
    real: &[f32],
    labels: &[u32],
    rng: &mut impl RandomBits,
    grad: &mut Buffer<f32>,
) -> Result<(f64, f64, f64)> {
    let b = labels.len();
    let bf = b as f32;
    let mut ws = d.workspace(b)?;
    // Real: −mean D(x, y) + λ_ε · mean D(x, y)².
    d.forward(&mut ws, real)?;
    let out = ws.output_vec()?;
    let dr: Vec<f32> = labels
        .iter()
        .enumerate()
        .map(|(i, &y)| out[i * CLASSES + y as usize])
        .collect();
    let scale: Vec<f32> = dr
        .iter()
        .map(|&s| -1.0 / bf + (cfg.lambda_eps as f32) * 2.0 * s / bf)
        .collect();
    d.set_output_grad(&mut ws, &onehot(labels, &scale))?;
    d.backward(
        &mut ws,
        Grads::Sum {
            grad,
            accumulate: false,
        },
        false,
    )?;
    // Fake: + mean D(G(z), y).
    d.forward(&mut ws, fake)?;
    let out = ws.output_vec()?;
    let df: Vec<f32> = labels
        .iter()
        .enumerate()
        .map(|(i, &y)| out[i * CLASSES + y as usize])
        .collect();
    d.set_output_grad(&mut ws, &onehot(labels, &vec![1.0 / bf; b]))?;
    d.backward(
        &mut ws,
        Grads::Sum {
            grad,
            accumulate: true,
        },
        false,
    )?;
    // Gradient penalty at x̂ = αx + (1 − α)x̃ (Gulrajani et al. 2017).
    let mut xh = vec![0f32; b * IMG];
    for i in 0..b {
        let a = rng.next_f64() as f32;
        for j in 0..IMG {
            xh[i * IMG + j] = a * real[i * IMG + j] + (1.0 - a) * fake[i * IMG + j];
        }
    }
    let sel = onehot(labels, &vec![1.0; b]);
    d.forward(&mut ws, &xh)?;
    d.set_output_grad(&mut ws, &sel)?;
    d.backward(&mut ws, Grads::None, true)?;
    let u = ws
        .input_grad_vec()?
        .ok_or_else(|| invalid("input_grad", "none", "an input gradient"))?;
    let mut v = vec![0f32; u.len()];
    let gp = gradient_penalty(&u, b, cfg.lambda_gp, &mut v)?;
    d.input_grad_param_grad(&xh, &sel, &v, grad, true)?;
    let w: f64 = dr.iter().zip(&df).map(|(r, f)| (r - f) as f64).sum::<f64>() / b as f64;
    let sq: f64 = dr.iter().map(|&r| (r as f64) * (r as f64)).sum::<f64>() / b as f64;
    Ok((w, gp, -w + cfg.lambda_eps * sq + gp))
}

fn ema_update(ema: &mut [f32], p: &[f32], step: u64, decay: f64) {
    let a = (1.0 - 1.0 / (step as f64 + 1.0)).min(decay) as f32;
    for (e, &x) in ema.iter_mut().zip(p) {
        *e = a * *e + (1.0 - a) * x;
    }
}

fn load_d(d: &mut Sequential, st: &State, k: usize) -> Result<()> {
    let p = d.num_params();
    d.params_mut()
        .copy_from_slice(&st.d_all[k * p..(k + 1) * p])
}

/// Trains discriminator `k` (its weights in `st`) for one critic step and stores it back.
#[allow(clippy::too_many_arguments)]
fn train_d(
    cfg: &Config,
    d: &mut Sequential,
    g: &Sequential,
    st: &mut State,
    k: usize,
    data: &Parts,
    rng: &mut impl RandomBits,
    grad: &mut Buffer<f32>,
) -> Result<(f64, f64)> {
    let p = d.num_params();
    let r = k * p..(k + 1) * p;
    let (w, m, v) = (
        &mut st.d_all[r.clone()],
        &mut st.d_m[r.clone()],
        &mut st.d_v[r],
    );
    critic_update(
        cfg,
        d,
        &Fakes::Generator(g),
        (w, m, v),
        &mut st.d_steps[k],
        k,
        data,
        rng,
        grad,
    )
}

/// Where a critic step's fake images come from.
enum Fakes<'a> {
    /// Fresh samples of this generator.
    Generator(&'a Sequential),
    /// A pool of the fixed initial generator's samples, `per_class` per class (class-major
    /// rows), drawn uniformly within the batch label's class: the warm start's `initial`
    /// mode, which so skips a generator forward per critic step.
    Pool { images: &'a [f32], per_class: usize },
}

/// One critic step of discriminator `k`, whose weights and Adam moments are `wmv` and step
/// count `steps`: loads it into `d`, steps, stores it back.
#[allow(clippy::too_many_arguments)]
fn critic_update(
    cfg: &Config,
    d: &mut Sequential,
    fakes: &Fakes<'_>,
    wmv: (&mut [f32], &mut [f32], &mut [f32]),
    steps: &mut u64,
    k: usize,
    data: &Parts,
    rng: &mut impl RandomBits,
    grad: &mut Buffer<f32>,
) -> Result<(f64, f64)> {
    let (w, m, v) = wmv;
    d.params_mut().copy_from_slice(w)?;
    let (real, labels) = data.batch(k, cfg.d_batch(), rng);
    let (wd, gp, _) = match fakes {
        Fakes::Generator(g) => critic_step(cfg, d, g, &real, &labels, rng, grad)?,
        Fakes::Pool { images, per_class } => {
            let mut fake = Vec::with_capacity(labels.len() * IMG);
            for &y in &labels {
                let i = y as usize * per_class + rng.next_below(*per_class as u64) as usize;
                fake.extend_from_slice(&images[i * IMG..(i + 1) * IMG]);
            }
            critic_step_on(cfg, d, &fake, &real, &labels, rng, grad)?
        }
    };
    *steps += 1;
    let mut params = d.params().to_vec()?;
    adam_step(&mut params, &grad.to_vec()?, m, v, *steps, cfg.lr)?;
    w.copy_from_slice(&params);
    Ok((wd, gp))
}

/// The non-private warm start of all `K` discriminators (in parallel; module docs): each
/// runs `pretrain × critic_iters` critic steps on its own partition against the generator
/// with initial weights `g0` — kept fixed (`initial`) or trained alongside with one step per
/// `critic_iters` critic steps and then discarded (`own`, the authors' `pretrain.py`). Every
/// discriminator's Adam state is reset afterwards (fresh for the private phase). On a GPU
/// (`dev`) the discriminators train one after another (each on the GPU), with the same streams.
fn warm_start(
    dev: &Device,
    cfg: &Config,
    g0: &[f32],
    st: &mut State,
    parts: &Parts,
    omega: StreamKey,
) -> Result<()> {
    use rayon::prelude::*;
    let dp = st.d_all.len() / cfg.k;
    let own = cfg.pretrain_fakes == "own";
    // `initial`: one pool of the fixed initial generator's samples for all discriminators
    // (data-independent; its own stream).
    let per_class = 256;
    let pool = if own || cfg.pretrain == 0 {
        Vec::new()
    } else {
        let mut g = gen_model(dev, cfg, 0)?;
        let mut pool = sample(&mut g, g0, cfg, per_class, omega, 1 << 41)?.0;
        if cfg.pretrain_fakes == "initial-dimmed" {
            // Each sample times a factor drawn uniformly from [0, 1]: fakes from black to the
            // initial generator's grey, the range a generator crosses first (data-independent).
            let mut r = omega.rng((1 << 41) + 1);
            for img in pool.chunks_exact_mut(IMG) {
                let f = r.next_f64() as f32;
                img.iter_mut().for_each(|x| *x *= f);
            }
        }
        pool
    };
    let body = |k: usize, w: &mut [f32], m: &mut [f32], v: &mut [f32]| -> Result<()> {
        let mut g = gen_model(dev, cfg, 0)?;
        g.params_mut().copy_from_slice(g0)?;
        let mut d = critic(dev, cfg, 0)?;
        let mut grad = Buffer::<f32>::zeros(dev, dp)?;
        let gp = g0.len();
        let (mut gm, mut gv) = if own {
            (vec![0f32; gp], vec![0f32; gp])
        } else {
            (Vec::new(), Vec::new())
        };
        let mut steps = 0;
        let mut rng = omega.rng((1 << 40) | k as u64);
        for it in 0..cfg.pretrain {
            for _ in 0..cfg.critic {
                let fakes = if own {
                    Fakes::Generator(&g)
                } else {
                    Fakes::Pool {
                        images: &pool,
                        per_class,
                    }
                };
                critic_update(
                    cfg,
                    &mut d,
                    &fakes,
                    (&mut *w, &mut *m, &mut *v),
                    &mut steps,
                    k,
                    parts,
                    &mut rng,
                    &mut grad,
                )?;
            }
            if own {
                d.params_mut().copy_from_slice(w)?;
                let (gg, _) = generator_grad(cfg, &mut g, &d, &mut rng, None)?;
                let mut p = g.params().to_vec()?;
                adam_step(&mut p, &gg, &mut gm, &mut gv, it + 1, cfg.g_lr())?;
                g.params_mut().copy_from_slice(&p)?;
            }
        }
        Ok(())
    };
    if dev.is_cuda() {
        // One GPU stream: the discriminators one after another.
        st.d_all
            .chunks_mut(dp)
            .zip(st.d_m.chunks_mut(dp))
            .zip(st.d_v.chunks_mut(dp))
            .enumerate()
            .try_for_each(|(k, ((w, m), v))| body(k, w, m, v))
    } else {
        st.d_all
            .par_chunks_mut(dp)
            .zip(st.d_m.par_chunks_mut(dp))
            .zip(st.d_v.par_chunks_mut(dp))
            .enumerate()
            .try_for_each(|(k, ((w, m), v))| body(k, w, m, v))
    }
}

/// Refresh round `round` (module docs): every discriminator takes `cfg.refresh_steps` critic
/// steps on its own partition against one pool of the current generator's samples (weights
/// `g_now`, the generator just released), in parallel, continuing its Adam state. Everything
/// but partition `k` that discriminator `k` sees is the released generator and randomness
/// from the data-independent critic stream `omega` (round `r`: pool `(1 << 51) | r`,
/// discriminator `k`: `(1 << 50) | (r << 20) | k`), and the rounds fall on fixed iterations,
/// so the accountant's assumptions hold as for the per-iteration critic steps. On a GPU (`dev`)
/// the discriminators train one after another, with the same streams.
fn refresh_round(
    dev: &Device,
    cfg: &Config,
    g_now: &[f32],
    st: &mut State,
    parts: &Parts,
    omega: StreamKey,
    round: u64,
) -> Result<()> {
    use rayon::prelude::*;
    let dp = st.d_all.len() / cfg.k;
    let per_class = 256;
    let mut g = gen_model(dev, cfg, 0)?;
    let pool = sample(&mut g, g_now, cfg, per_class, omega, (1 << 51) | round)?.0;
    let body =
        |k: usize, w: &mut [f32], m: &mut [f32], v: &mut [f32], steps: &mut u64| -> Result<()> {
            let mut d = critic(dev, cfg, 0)?;
            let mut grad = Buffer::<f32>::zeros(dev, dp)?;
            let mut rng = omega.rng((1 << 50) | (round << 20) | k as u64);
            let fakes = Fakes::Pool {
                images: &pool,
                per_class,
            };
            for _ in 0..cfg.refresh_steps {
                critic_update(
                    cfg,
                    &mut d,
                    &fakes,
                    (&mut *w, &mut *m, &mut *v),
                    steps,
                    k,
                    parts,
                    &mut rng,
                    &mut grad,
                )?;
            }
            Ok(())
        };
    if dev.is_cuda() {
        // One GPU stream: the discriminators one after another.
        st.d_all
            .chunks_mut(dp)
            .zip(st.d_m.chunks_mut(dp))
            .zip(st.d_v.chunks_mut(dp))
            .zip(st.d_steps.iter_mut())
            .enumerate()
            .try_for_each(|(k, (((w, m), v), steps))| body(k, w, m, v, steps))
    } else {
        st.d_all
            .par_chunks_mut(dp)
            .zip(st.d_m.par_chunks_mut(dp))
            .zip(st.d_v.par_chunks_mut(dp))
            .zip(st.d_steps.par_iter_mut())
            .enumerate()
            .try_for_each(|(k, (((w, m), v), steps))| body(k, w, m, v, steps))
    }
}

/// The training set split into K partitions (example i → partition i mod K), pixels in [0, 1].
struct Parts {
    images: Vec<f32>,
    labels: Vec<u32>,
    k: usize,
    n: usize,
}

impl Parts {
    fn batch(&self, k: usize, b: usize, rng: &mut impl RandomBits) -> (Vec<f32>, Vec<u32>) {
        let size = (self.n - k).div_ceil(self.k);
        let mut x = Vec::with_capacity(b * IMG);
        let mut y = Vec::with_capacity(b);
        for _ in 0..b {
            let i = k + self.k * rng.next_below(size as u64) as usize;
            x.extend_from_slice(&self.images[i * IMG..(i + 1) * IMG]);
            y.push(self.labels[i]);
        }
        (x, y)
    }
}

fn tensor_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn save_tensors(
    path: &Path,
    items: &[(&str, Vec<usize>, Dtype, Vec<u8>)],
    meta: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let fmt = |e: String| Error::Format {
        path: path.to_path_buf(),
        msg: e,
    };
    let mut views = Vec::new();
    for (name, shape, dt, b) in items {
        views.push((
            name.to_string(),
            TensorView::new(*dt, shape.clone(), b).map_err(|e| fmt(e.to_string()))?,
        ));
    }
    let tmp = path.with_extension("tmp");
    safetensors::serialize_to_file(views, meta, &tmp).map_err(|e| fmt(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn save_checkpoint(path: &Path, cfg: &Config, st: &State, g: &Sequential) -> Result<()> {
    let u64s = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let items = vec![
        (
            "g",
            vec![g.num_params()],
            Dtype::F32,
            tensor_bytes(&g.params().to_vec()?),
        ),
        (
            "g_ema",
            vec![st.g_ema.len()],
            Dtype::F32,
            tensor_bytes(&st.g_ema),
        ),
        ("g_m", vec![st.g_m.len()], Dtype::F32, tensor_bytes(&st.g_m)),
        ("g_v", vec![st.g_v.len()], Dtype::F32, tensor_bytes(&st.g_v)),
        (
            "d_all",
            vec![st.d_all.len()],
            Dtype::F32,
            tensor_bytes(&st.d_all),
        ),
        ("d_m", vec![st.d_m.len()], Dtype::F32, tensor_bytes(&st.d_m)),
        ("d_v", vec![st.d_v.len()], Dtype::F32, tensor_bytes(&st.d_v)),
        (
            "d_steps",
            vec![st.d_steps.len()],
            Dtype::U64,
            u64s(&st.d_steps),
        ),
    ];
    let mut meta = std::collections::HashMap::new();
    meta.insert(
        "config".into(),
        serde_json::to_string(cfg).map_err(|e| invalid("config", e, "serialisable"))?,
    );
    meta.insert("iteration".into(), st.iteration.to_string());
    meta.insert("g_steps".into(), st.g_steps.to_string());
    save_tensors(path, &items, Some(meta))
}

fn load_checkpoint(path: &Path, cfg: &Config, st: &mut State, gm: &mut Sequential) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let fmt = |m: String| Error::Format {
        path: path.to_path_buf(),
        msg: m,
    };
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| fmt(e.to_string()))?;
    let md = meta
        .metadata()
        .clone()
        .ok_or_else(|| fmt("no metadata".into()))?;
    let saved: Config =
        serde_json::from_str(md.get("config").ok_or_else(|| fmt("no config".into()))?)
            .map_err(|e| fmt(e.to_string()))?;
    let mut want = cfg.clone();
    want.iterations = saved.iterations;
    if saved != want {
        return Err(fmt(format!("the checkpoint was made with other settings: {saved:?}; resume with the same flags (only --iterations may grow)")));
    }
    let num = |k: &str| {
        md.get(k)
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| fmt(format!("bad {k}")))
    };
    st.iteration = num("iteration")?;
    st.g_steps = num("g_steps")?;
    let t = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fmt(e.to_string()))?;
    let f32s = |name: &str, len: usize| -> Result<Vec<f32>> {
        let v = t.tensor(name).map_err(|e| fmt(e.to_string()))?;
        if v.dtype() != Dtype::F32 || v.data().len() != 4 * len {
            return Err(fmt(format!("tensor {name} has the wrong type or size")));
        }
        Ok(v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let gp = gm.num_params();
    let g = f32s("g", gp)?;
    gm.params_mut().copy_from_slice(&g)?;
    st.g_ema = f32s("g_ema", gp)?;
    st.g_m = f32s("g_m", gp)?;
    st.g_v = f32s("g_v", gp)?;
    let dl = st.d_all.len();
    st.d_all = f32s("d_all", dl)?;
    st.d_m = f32s("d_m", dl)?;
    st.d_v = f32s("d_v", dl)?;
    let v = t.tensor("d_steps").map_err(|e| fmt(e.to_string()))?;
    if v.dtype() != Dtype::U64 || v.data().len() != 8 * cfg.k {
        return Err(fmt("d_steps has the wrong type or size".into()));
    }
    st.d_steps = v
        .data()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    Ok(())
}

/// `n` samples per class from the generator with weights `params` (rows: class-major).
fn sample(
    g: &mut Sequential,
    params: &[f32],
    cfg: &Config,
    per_class: usize,
    key: StreamKey,
    stream: u64,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let saved = g.params().to_vec()?;
    g.params_mut().copy_from_slice(params)?;
    let labels: Vec<u32> = (0..CLASSES as u32)
        .flat_map(|c| std::iter::repeat_n(c, per_class))
        .collect();
    let mut rng = key.rng(stream);
    let mut out = Vec::with_capacity(labels.len() * IMG);
    let chunk = 500;
    let mut ws = g.workspace(chunk.min(labels.len()).max(1))?;
    let mut zin = Vec::new();
    for ys in labels.chunks(chunk) {
        latent(&mut rng, cfg, ys, &mut zin);
        g.forward(&mut ws, &zin)?;
        out.extend_from_slice(&ws.output_vec()?);
    }
    g.params_mut().copy_from_slice(&saved)?;
    Ok((out, labels))
}

/// The device `--device` names. `cuda` in a build without the `cuda` feature is a typed error
/// that says to rebuild (never a silent fallback to the CPU).
fn open_device(d: DeviceArg) -> Result<Device> {
    match d {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda if cfg!(feature = "cuda") => Device::cuda(0),
        DeviceArg::Cuda => Err(Error::invalid(
            "device",
            "cuda",
            "cpu in this build: the example was built without the `cuda` feature; rebuild with \
             `cargo run --release --features cuda --example gs_wgan -- --device cuda …` (after \
             `eval \"$(scripts/install-cuda-toolchain --env)\"`), or stage it for a GPU machine \
             with `../shared/gpu/stage --example gs_wgan`"
                .to_string(),
        )),
    }
}

pub fn run(a: Args) -> Result<()> {
    // First: a device that cannot be opened is an error before anything is read or written.
    let dev = open_device(a.device)?;
    let kind = match a.dataset {
        Data::Mnist => DatasetKind::Mnist,
        Data::FashionMnist => DatasetKind::FashionMnist,
    };
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| kind.default_dir().to_path_buf());
    let train = Dataset::load(kind, &dir, Split::Train)?;
    if (train.channels(), train.height(), train.width()) != (1, 28, 28) {
        return Err(invalid("dataset", "images", "1×28×28 images"));
    }
    let cfg = resolve(&a, train.len())?;
    let acc = GsWganAccountant::new(
        cfg.k as u64,
        cfg.sigma,
        cfg.b as u64,
        DiscriminatorSampling::IndependentPerRow,
    )?;
    let keys = RunKeys::from_seed(cfg.seed)?;
    let eps_final = acc.epsilon_charged(cfg.iterations, cfg.delta, IMG as u64, keys.generator())?;
    std::fs::create_dir_all(&a.out).map_err(|source| Error::Io {
        path: a.out.clone(),
        source,
    })?;
    let (mean, std) = kind.normalization();
    let parts = Parts {
        images: train.images()[..cfg.n * IMG]
            .iter()
            .map(|&x| x * std + mean)
            .collect(),
        labels: train.labels()[..cfg.n].to_vec(),
        k: cfg.k,
        n: cfg.n,
    };
    if cfg.disable_dp {
        eprintln!(
            "!!! --disable-dp: NO PRIVACY. The generator is trained on unclipped, un-noised \
             gradients of the discriminator just trained (a plain conditional WGAN-GP): ε = ∞. \
             Nothing this run writes may be released as private. !!!"
        );
    } else {
        eprintln!(
            "GS-WGAN: {} n={} K={} B={} T={} σ={} C={} → ε = {:.3} at δ = {} (independent per-row draws; \
             dpsgd::accounting::gs_wgan). [Paper's accounting for the same settings, for comparison only: {:.3}]",
            cfg.dataset, cfg.n, cfg.k, cfg.b, cfg.iterations, cfg.sigma, cfg.clip, eps_final.epsilon, cfg.delta,
            paper_epsilon(cfg.k as u64, cfg.sigma, cfg.b as u64, cfg.iterations, cfg.delta)?
        );
    }
    eprintln!("device: {}", dev.describe());
    let init = keys.key(Purpose::ModelInit);
    let mut g = gen_model(&dev, &cfg, init.rng(0).next_u64())?;
    let mut d = critic(&dev, &cfg, init.rng(1).next_u64())?;
    let (gp, dp) = (g.num_params(), d.num_params());
    let mut st = State {
        g_ema: g.params().to_vec()?,
        g_m: vec![0.0; gp],
        g_v: vec![0.0; gp],
        d_all: vec![0.0; cfg.k * dp],
        d_m: vec![0.0; cfg.k * dp],
        d_v: vec![0.0; cfg.k * dp],
        d_steps: vec![0; cfg.k],
        g_steps: 0,
        iteration: 0,
    };
    for k in 0..cfg.k {
        let dk = critic(&dev, &cfg, init.rng(2 + k as u64).next_u64())?;
        st.d_all[k * dp..(k + 1) * dp].copy_from_slice(&dk.params().to_vec()?);
    }
    let ckpt = a.out.join("checkpoint.safetensors");
    let mut dgrad = Buffer::<f32>::zeros(&dev, dp)?;
    let omega = keys.key(Purpose::Sampling);
    if a.resume {
        load_checkpoint(&ckpt, &cfg, &mut st, &mut g)?;
        eprintln!("resumed at iteration {}", st.iteration);
    } else {
        // Non-private warm start: discriminator k on partition k only, against a throw-away
        // generator (`own`) or the fixed initial one (`initial`); never released, a function of
        // partition k and data-independent randomness. The discriminators are independent, so
        // they train in parallel (rayon), each with its own models and random stream: the
        // result does not depend on the number of threads.
        let g0 = g.params().to_vec()?;
        let tw = std::time::Instant::now();
        warm_start(&dev, &cfg, &g0, &mut st, &parts, omega)?;
        if cfg.pretrain > 0 {
            eprintln!(
                "warm start: {} discriminators × {} critic steps ({} critic, fakes: {}) in {:.0} s",
                cfg.k,
                cfg.pretrain * cfg.critic as u64,
                cfg.critic_arch,
                match cfg.pretrain_fakes.as_str() {
                    "own" => "a throw-away generator each",
                    "initial" => "the initial generator's samples",
                    _ => "the initial generator's samples, dimmed",
                },
                tw.elapsed().as_secs_f64()
            );
        }
        // Fresh Adam state for the private phase.
        st.d_steps.iter_mut().for_each(|s| *s = 0);
        st.d_m.iter_mut().for_each(|x| *x = 0.0);
        st.d_v.iter_mut().for_each(|x| *x = 0.0);
    }
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(a.out.join("metrics.jsonl"))
        .map_err(|source| Error::Io {
            path: a.out.join("metrics.jsonl"),
            source,
        })?;
    let choice = keys.key(Purpose::DiscriminatorChoice);
    let noise = keys.key(Purpose::GeneratorGradientNoise);
    let sample_key = keys.key(Purpose::SyntheticData);
    let t0 = std::time::Instant::now();
    let start = st.iteration;
    while st.iteration < cfg.iterations {
        let t = st.iteration;
        // Critic: a discriminator drawn from ω (independent of the rows' draws below).
        let mut rng = omega.rng(t);
        let (mut w, mut gpen) = (0.0, 0.0);
        let mut j = 0;
        for _ in 0..cfg.critics_per_iteration {
            j = rng.next_below(cfg.k as u64) as usize;
            for _ in 0..cfg.critic {
                (w, gpen) = train_d(&cfg, &mut d, &g, &mut st, j, &parts, &mut rng, &mut dgrad)?;
            }
        }
        let gg = if cfg.disable_dp {
            // No privacy: the discriminator just trained, unclipped, no noise.
            load_d(&mut d, &st, j)?;
            generator_grad(&cfg, &mut g, &d, &mut rng, None)?.0
        } else {
            // Generator: every row draws its own discriminator (secret), sanitised gradient.
            let mut crng = choice.rng(t);
            let ks: Vec<usize> = (0..cfg.b)
                .map(|_| crng.next_below(cfg.k as u64) as usize)
                .collect();
            let key = NoiseKey::for_step_with(noise, t, 0)?;
            generator_grad(&cfg, &mut g, &d, &mut rng, Some((&ks, &st.d_all, key)))?.0
        };
        st.g_steps += 1;
        let mut p = g.params().to_vec()?;
        adam_step(
            &mut p,
            &gg,
            &mut st.g_m,
            &mut st.g_v,
            st.g_steps,
            cfg.g_lr(),
        )?;
        g.params_mut().copy_from_slice(&p)?;
        ema_update(&mut st.g_ema, &p, t, cfg.ema_decay);
        st.iteration += 1;
        // (Also after the last iteration, so that a run resumed with more iterations is the
        // same as a straight one.)
        if cfg.refresh_every > 0 && st.iteration % cfg.refresh_every == 0 {
            let round = st.iteration / cfg.refresh_every;
            refresh_round(&dev, &cfg, &p, &mut st, &parts, omega, round)?;
        }
        if st.iteration % a.log_every == 0 || st.iteration == cfg.iterations {
            let eps = if cfg.disable_dp {
                f64::INFINITY
            } else {
                acc.epsilon_charged(st.iteration, cfg.delta, IMG as u64, keys.generator())?
                    .epsilon
            };
            let secs = t0.elapsed().as_secs_f64() / (st.iteration - start) as f64;
            let line = serde_json::json!({
                "iteration": st.iteration,
                // JSON has no ∞: null under --disable-dp (no privacy).
                "epsilon": eps.is_finite().then_some(eps),
                "no_privacy_disable_dp": cfg.disable_dp,
                "delta": cfg.delta,
                "sec_per_iteration": secs,
                "wasserstein_estimate_not_covered_by_epsilon": w,
                "gradient_penalty_not_covered_by_epsilon": gpen,
            });
            writeln!(metrics, "{line}").map_err(|source| Error::Io {
                path: a.out.join("metrics.jsonl"),
                source,
            })?;
            eprintln!(
                "iter {:>6}  ε {:.3}  {:.2} s/it  (W estimate {:.3}, GP {:.4}: not covered by ε)",
                st.iteration, eps, secs, w, gpen
            );
            // The averaged generator, and the raw one too: the EMA lags the iterates.
            for (name, w) in [("samples", &st.g_ema.clone()), ("samples_raw", &p)] {
                let (x, _) = sample(&mut g, w, &cfg, 10, sample_key, 0)?;
                dpsgd::data::grid::save_grid_png(
                    &a.out.join(format!("{name}_{:06}.png", st.iteration)),
                    &x,
                    100,
                    1,
                    28,
                    28,
                    10,
                    (0.0, 1.0),
                )?;
            }
        }
        if st.iteration % a.checkpoint_every.max(1) == 0 {
            save_checkpoint(&ckpt, &cfg, &st, &g)?;
        }
    }
    save_checkpoint(&ckpt, &cfg, &st, &g)?;
    let ema = st.g_ema.clone();
    let (all, _) = sample(&mut g, &ema, &cfg, 100, sample_key, 1)?;
    for c in 0..CLASSES {
        let x = &all[c * 100 * IMG..(c + 1) * 100 * IMG];
        dpsgd::data::grid::save_grid_png(
            &a.out.join(format!("class_{c}.png")),
            x,
            100.min(x.len() / IMG),
            1,
            28,
            28,
            10,
            (0.0, 1.0),
        )?;
    }
    if a.gen_samples > 0 {
        let per = a.gen_samples.div_ceil(CLASSES);
        let (x, y) = sample(&mut g, &ema, &cfg, per, sample_key, 100)?;
        let n = y.len();
        let x: Vec<f32> = x.iter().map(|v| 2.0 * v - 1.0).collect();
        let yb: Vec<u8> = y.iter().flat_map(|&l| (l as i64).to_le_bytes()).collect();
        save_tensors(
            &a.out.join("gen_data.safetensors"),
            &[
                ("images", vec![n, 1, 28, 28], Dtype::F32, tensor_bytes(&x)),
                ("labels", vec![n], Dtype::I64, yb),
            ],
            None,
        )?;
    }
    if cfg.disable_dp {
        println!(
            "done: {} iterations, ε = ∞ (--disable-dp: NO PRIVACY)",
            st.iteration
        );
    } else {
        let eps = acc.epsilon_charged(st.iteration, cfg.delta, IMG as u64, keys.generator())?;
        println!(
            "done: {} iterations, ε = {:.4} at δ = {} (order {})",
            st.iteration, eps.epsilon, cfg.delta, eps.order
        );
    }
    Ok(())
}

/// The generator's gradient. Private (`rows` given): each row's image gradient comes from its
/// own discriminator, and the `[B, 784]` matrix is sanitised (`ops::sanitize_rows`, clip C/B,
/// noise std 2(C/B)σ) before it enters G. Warm start and `--disable-dp` (`None`): `d` for all
/// rows, no clipping. Returns the gradient and, for `None`, the generator loss
/// `−mean_i D(G(z_i, y_i), y_i)` (NaN for the private path: that value is never computed, it
/// would not be covered by ε).
pub fn generator_grad(
    cfg: &Config,
    g: &mut Sequential,
    d: &Sequential,
    rng: &mut impl RandomBits,
    rows: Option<(&[usize], &[f32], NoiseKey)>,
) -> Result<(Vec<f32>, f64)> {
    let b = cfg.b;
    let labels: Vec<u32> = (0..b)
        .map(|_| rng.next_below(CLASSES as u64) as u32)
        .collect();
    let mut zin = Vec::new();
    latent(rng, cfg, &labels, &mut zin);
    let mut gws = g.workspace(b)?;
    g.forward(&mut gws, &zin)?;
    let fake = gws.output_vec()?;
    let mut u = vec![0f32; b * IMG];
    let sel = |ys: &[u32]| onehot(ys, &vec![-1.0 / b as f32; ys.len()]);
    let mut loss = f64::NAN;
    match rows {
        None => {
            let mut ws = d.workspace(b)?;
            d.forward(&mut ws, &fake)?;
            let out = ws.output_vec()?;
            loss = -labels
                .iter()
                .enumerate()
                .map(|(i, &y)| out[i * CLASSES + y as usize] as f64)
                .sum::<f64>()
                / b as f64;
            d.set_output_grad(&mut ws, &sel(&labels))?;
            d.backward(&mut ws, Grads::None, true)?;
            u.copy_from_slice(&ws.input_grad_vec()?.unwrap_or_default());
        }
        Some((ks, d_all, key)) => {
            let dp = d.num_params();
            let mut dk = critic(d.device(), cfg, 0)?;
            let mut ws = dk.workspace(1)?;
            for (i, &k) in ks.iter().enumerate() {
                dk.params_mut()
                    .copy_from_slice(&d_all[k * dp..(k + 1) * dp])?;
                dk.forward(&mut ws, &fake[i * IMG..(i + 1) * IMG])?;
                dk.set_output_grad(&mut ws, &sel(&labels[i..i + 1]))?;
                dk.backward(&mut ws, Grads::None, true)?;
                u[i * IMG..(i + 1) * IMG]
                    .copy_from_slice(&ws.input_grad_vec()?.unwrap_or_default());
            }
            // Sanitised where the critics ran (`ops::sanitize_rows` has a CUDA path; its
            // noise is the same stream on both devices).
            let mut buf = Buffer::from_slice(d.device(), &u)?;
            let c = cfg.clip / b as f64;
            ops::sanitize_rows(&mut buf, b, c as f32, noise_std(c, cfg.sigma), key)?;
            u = buf.to_vec()?;
        }
    }
    g.set_output_grad(&mut gws, &u)?;
    let mut grad = Buffer::<f32>::zeros(g.device(), g.num_params())?;
    g.backward(
        &mut gws,
        Grads::Sum {
            grad: &mut grad,
            accumulate: false,
        },
        false,
    )?;
    Ok((grad.to_vec()?, loss))
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
