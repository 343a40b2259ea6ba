//! The DP-SGD trainer behind `dpsgd train`: a Sequential model, a dataset, Poisson sampling,
//! per-sample gradients, the [`PrivacyEngine`], epochs with evaluation, metrics and atomic
//! checkpoints that resume bit for bit on the CPU. Library API: it needs no `cli` feature (the
//! binary's progress bars and plots live in `src/cli/` and hook in through
//! [`Trainer::train_epoch`]'s per-step callback and [`Trainer::metrics`]).
//!
//! One step (Abadi et al. 2016, Algorithm 1): sample a lot with rate q ([`PoissonSampler`]);
//! split it into physical batches of at most `physical_batch` examples (Opacus's
//! BatchMemoryManager: memory does not grow with the lot); for each, forward, per-example
//! cross-entropy (sum reduction, so each row of the `[B, P]` matrix is one example's own
//! gradient), per-sample gradients, clip-and-accumulate; then one fused noisy optimizer step.

use crate::accounting::Method;
use crate::cpu::loss::Reduction;
use crate::data::scatter::{scatter_dataset_cached_on, scatter_dataset_on, ScatterParams};
use crate::data::{Dataset, DatasetKind, Split};
use crate::engine::{EngineState, NoiseSpec, PrivacyConfig, PrivacyEngine};
use crate::mechanisms::feature_stats::{
    clipped_channel_sums, private_channel_stats, ChannelStats, FeatureStatsConfig,
};
use crate::nn::{models, Grads, Loss, Sequential, Workspace};
use crate::ops::Clipping;
use crate::optim::{AdamConfig, SgdConfig};
use crate::rng::{Purpose, RunKeys};
use crate::sampling::PoissonSampler;
use crate::{Buffer, Device, Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which data to train on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataSource {
    /// MNIST or Fashion-MNIST from IDX files in `dir` (`None`: the dataset's default folder).
    Idx {
        /// Which dataset.
        kind: DatasetKind,
        /// Where its IDX files are.
        dir: Option<PathBuf>,
    },
    /// Generated, learnable data (tests, demos): `train` and `test` examples.
    Synthetic {
        /// Training examples.
        train: usize,
        /// Test examples.
        test: usize,
    },
}

/// The model to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Opacus's MNIST `SampleConvNet` (ReLU).
    SampleConvnet,
    /// The same with Tanh (tempered sigmoid, Papernot et al. 2021).
    TanhConvnet,
    /// GroupNorm then one linear layer on ScatterNet features (Tramèr & Boneh 2021,
    /// `ScatterLinear`): [`models::scatter_linear_builder`]. Trains on the images' scattering
    /// features ([`crate::data::scatter`]), computed once and cached.
    ScatterLinear,
    /// Tramèr & Boneh's small Tanh CNN on ScatterNet features:
    /// [`models::scatter_cnn_builder`].
    ScatterCnn,
}

impl ModelKind {
    /// The model's layers, not yet built: `.build(device, seed)` for a fresh model, or
    /// `.build_zeroed(device)` to load a trained one into (e.g. the `model.safetensors` a run
    /// saves) without an initialisation seed.
    pub fn builder(&self) -> crate::nn::SequentialBuilder {
        match self {
            ModelKind::SampleConvnet | ModelKind::TanhConvnet => {
                models::sample_conv_net_builder(matches!(self, ModelKind::TanhConvnet))
            }
            ModelKind::ScatterLinear => {
                models::scatter_linear_builder(SCATTER_CHANNELS, SCATTER_GROUPS)
            }
            ModelKind::ScatterCnn => models::scatter_cnn_builder(SCATTER_CHANNELS, SCATTER_GROUPS),
        }
    }

    /// The model's layers for an input normalisation: with [`InputNorm::Private`] a
    /// scattering model has no GroupNorm layer (its inputs are standardised with the released
    /// statistics before it: [`models::scatter_linear_plain_builder`]); otherwise
    /// [`ModelKind::builder`].
    pub fn builder_for(&self, norm: &InputNorm) -> crate::nn::SequentialBuilder {
        match (self, norm) {
            (ModelKind::ScatterLinear, InputNorm::Private(_)) => {
                models::scatter_linear_plain_builder(SCATTER_CHANNELS)
            }
            (ModelKind::ScatterCnn, InputNorm::Private(_)) => {
                models::scatter_cnn_plain_builder(SCATTER_CHANNELS)
            }
            _ => self.builder(),
        }
    }

    /// Whether the model trains on ScatterNet features rather than pixels.
    pub fn uses_scattering(&self) -> bool {
        matches!(self, ModelKind::ScatterLinear | ModelKind::ScatterCnn)
    }
}

/// How a scattering model's input features are normalised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputNorm {
    /// A GroupNorm layer in the model (per example: no privacy cost). The pixel models ignore
    /// it (they have their own fixed normalisation).
    #[default]
    GroupNorm,
    /// Per-channel mean and variance of the training features, released privately
    /// ([`crate::mechanisms::feature_stats`], Tramèr & Boneh 2021's "data normalisation"),
    /// the features standardised with them, and no GroupNorm layer. Its cost is composed with
    /// DP-SGD's in the run's accountant (every ε reported includes it) and, with a target ε,
    /// comes out of the target when σ is calibrated. Scattering models only. The statistics
    /// are part of the released model: saved beside it ([`input_norm_path`]).
    Private(FeatureStatsConfig),
}

/// Where [`Trainer::save_model`] writes a privately normalised model's statistics, beside the
/// model file: `model.safetensors` → `model.input_norm.safetensors`.
pub fn input_norm_path(model_path: &Path) -> PathBuf {
    let stem = model_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    model_path.with_file_name(format!("{stem}.input_norm.safetensors"))
}

/// Loads a model saved by [`Trainer::save_model`] for inference: its parameters and, for
/// [`InputNorm::Private`], the released statistics saved beside it (to apply with
/// [`ChannelStats::standardize`] to the features before [`Sequential::forward_slice`]).
pub fn load_saved_model(
    model_path: &Path,
    model: ModelKind,
    norm: &InputNorm,
    device: &Device,
) -> Result<(Sequential, Option<ChannelStats>)> {
    let mut m = model.builder_for(norm).build_zeroed(device)?;
    m.load_safetensors(model_path)?;
    let stats = match norm {
        InputNorm::GroupNorm => None,
        InputNorm::Private(_) => Some(ChannelStats::load(input_norm_path(model_path))?.0),
    };
    Ok((m, stats))
}

/// Channels of the scattering features of a one-channel 28 × 28 image
/// ([`ScatterParams::MNIST`]: J = 2, L = 8).
const SCATTER_CHANNELS: usize = 81;
/// GroupNorm groups on the 81 scattering channels: 27, Tramèr & Boneh's setting for the
/// GroupNorm variants (`--num_groups=27` in their README).
const SCATTER_GROUPS: usize = 27;

/// The environment variable naming the folder of the scattering-feature cache
/// ([`crate::data::scatter::scatter_dataset_cached`]); unset: [`DEFAULT_FEATURE_CACHE`];
/// `off`: no cache (the features are computed in memory on every run).
pub const FEATURE_CACHE_ENV: &str = "DPSGD_FEATURE_CACHE";
/// The default folder of the scattering-feature cache, relative to the working directory.
pub const DEFAULT_FEATURE_CACHE: &str = ".cache/dpsgd-features";

/// The scattering features of `ds` (pixels in [0, 1]), through the cache when one is set,
/// computed on `device` on a miss (the CUDA kernel on a GPU).
fn scatter_features(ds: &Dataset, cache: bool, device: &Device) -> Result<Dataset> {
    let params = ScatterParams::MNIST;
    let dir = std::env::var(FEATURE_CACHE_ENV).unwrap_or_else(|_| DEFAULT_FEATURE_CACHE.into());
    if !cache || dir == "off" || dir.is_empty() {
        return scatter_dataset_on(ds, params, device);
    }
    let (d, _) = scatter_dataset_cached_on(ds, params, Path::new(&dir), device)?;
    Ok(d)
}

/// Train and test sets of a data source: normalised pixels, or for a scattering model the
/// ScatterNet features of the [0, 1] pixels (Tramèr & Boneh feed Kymatio torchvision's
/// `ToTensor()` output, no normalisation).
pub fn load_data(data: &DataSource, model: ModelKind) -> Result<(Dataset, Dataset)> {
    load_data_on(data, model, &Device::Cpu)
}

/// [`load_data`] with the scattering features (when not cached) computed on `device`: the CPU,
/// or the CUDA scattering kernel on a GPU (a typed error if it fails, never a fallback). The
/// trainer passes its own device.
pub fn load_data_on(
    data: &DataSource,
    model: ModelKind,
    device: &Device,
) -> Result<(Dataset, Dataset)> {
    let scatter = model.uses_scattering();
    let (train, test) = match data {
        DataSource::Idx { kind, dir } => {
            let dir = dir
                .clone()
                .unwrap_or_else(|| kind.default_dir().to_path_buf());
            let load = if scatter {
                Dataset::load_unit_range
            } else {
                Dataset::load
            };
            (
                load(*kind, &dir, Split::Train)?,
                load(*kind, &dir, Split::Test)?,
            )
        }
        DataSource::Synthetic { train, test } => (
            Dataset::synthetic(*train, 1)?,
            Dataset::synthetic(*test, 2)?,
        ),
    };
    if !scatter {
        return Ok((train, test));
    }
    let cache = matches!(data, DataSource::Idx { .. });
    Ok((
        scatter_features(&train, cache, device)?,
        scatter_features(&test, cache, device)?,
    ))
}

/// The optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// SGD with momentum (0 = plain SGD).
    Sgd {
        /// Momentum.
        momentum: f32,
    },
    /// Adam with PyTorch's defaults.
    Adam,
}

/// Everything that defines a training run (saved as `config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The data.
    pub data: DataSource,
    /// The model.
    pub model: ModelKind,
    /// Noise multiplier or target ε; `None` = non-private training (no clipping, no noise).
    pub noise: Option<NoiseSpec>,
    /// δ.
    pub delta: f64,
    /// Epochs (an epoch is round(1/q) Poisson steps).
    pub epochs: u64,
    /// Expected lot size q·N.
    pub batch_size: usize,
    /// Largest physical batch (memory bound); lots are split into passes of at most this many.
    pub physical_batch: usize,
    /// Learning rate.
    pub lr: f32,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Clipping bound C.
    pub max_grad_norm: f32,
    /// Accountant used for the budget and calibration.
    pub accountant: Method,
    /// Seed for initialisation, sampling and noise; `None` = secure mode (OS seed, never
    /// printed or saved).
    pub seed: Option<u64>,
    /// Hold out this many training examples as a validation set (evaluated instead of the test
    /// set; for honest hyperparameter tuning).
    pub validation: usize,
    /// Learning-rate schedule over the planned steps.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Exponential moving average of the parameters, with this decay β (`None`: off). The
    /// model evaluated, reported and saved is then the average, not the last iterate.
    ///
    /// # Privacy
    /// No cost: the average is a function of the released noisy iterates θ_1 … θ_T, so it is
    /// post-processing of what the accountant already counts (Dwork & Roth 2014, Prop. 2.1).
    /// Averaging the DP-SGD iterates averages out part of their noise; De, Berrada, Hayes,
    /// Smith & Balle (2022), "Unlocking high-accuracy differentially private image
    /// classification through scale", §3, use it the same way. The decay of step t is
    /// min(β, (1 + t)/(10 + t)) (a warm-up, as TensorFlow's `ExponentialMovingAverage` with
    /// `num_updates`), so early averages are not dominated by the initialisation.
    #[serde(default)]
    pub ema_decay: Option<f32>,
    /// Augmentation multiplicity K (De, Berrada, Hayes, Smith & Balle 2022, §3.1;
    /// [`crate::augment`]): each sampled example's gradient is the mean over K randomly
    /// augmented copies of it ([`crate::augment::Augmentation::for_dataset`]: shifts of up to
    /// 2 pixels; horizontal flips for Fashion-MNIST only), averaged *before* clipping, so an
    /// example's influence stays ≤ C and ε is that of K = 1. 1 (the default): no augmentation,
    /// the plain path. K > 1 costs K forward/backward passes per example and runs on the CPU
    /// only. A pixel model shifts its copies on the fly; a scattering model draws its K copies
    /// among the `augmult_views` precomputed views of each image (below).
    #[serde(default = "one")]
    pub augmult: usize,
    /// Scattering models: V, the augmented views per training image whose features are
    /// computed once and cached ([`crate::data::scatter::ViewSpec`]: view 0 the image itself,
    /// views 1 .. V − 1 shifted by up to 2 pixels — and, on Fashion-MNIST, flipped — drawn
    /// from a public fixed stream). Each step then averages every sampled example's gradient
    /// over K = `augmult` of its V views, drawn without replacement from the run's
    /// [`Purpose::Augmentation`] stream, before clipping. 0 (the default): no views (the plain
    /// features). Needs V ≥ K; memory: V × 0.95 GB for MNIST's training set.
    #[serde(default)]
    pub augmult_views: usize,
    /// How a scattering model's features are normalised (default: GroupNorm in the model).
    #[serde(default)]
    pub input_norm: InputNorm,
}

fn one() -> usize {
    1
}

/// The seed of the public stream of the scattering views ([`TrainConfig::augmult_views`]):
/// fixed, so that one cache serves every run.
pub const VIEW_SEED: u64 = 0x7669_6577;

/// The scattering views of the training images of `data` ([`TrainConfig::augmult_views`]):
/// `n · V` rows, row `i·V + v` view v of training image i (before any validation split),
/// computed on `device` when not cached.
fn load_views(data: &DataSource, views: usize, device: &Device) -> Result<Dataset> {
    let (pixels, kind, cache) = match data {
        DataSource::Idx { kind, dir } => {
            let dir = dir
                .clone()
                .unwrap_or_else(|| kind.default_dir().to_path_buf());
            (
                Dataset::load_unit_range(*kind, &dir, Split::Train)?,
                Some(*kind),
                true,
            )
        }
        DataSource::Synthetic { train, .. } => (Dataset::synthetic(*train, 1)?, None, false),
    };
    let spec = crate::data::scatter::ViewSpec {
        views,
        augmentation: match kind {
            Some(k) => crate::augment::Augmentation::for_dataset(k),
            None => crate::augment::Augmentation {
                max_shift: 2,
                hflip: false,
            },
        },
        seed: VIEW_SEED,
    };
    let params = ScatterParams::MNIST;
    let dir = std::env::var(FEATURE_CACHE_ENV).unwrap_or_else(|_| DEFAULT_FEATURE_CACHE.into());
    if !cache || dir == "off" || dir.is_empty() {
        return crate::data::scatter::scatter_views_on(&pixels, params, spec, device);
    }
    let (d, _) = crate::data::scatter::scatter_views_cached_on(
        &pixels,
        params,
        spec,
        Path::new(&dir),
        device,
    )?;
    Ok(d)
}

/// A scattering model's precomputed views ([`TrainConfig::augmult_views`]).
struct Views {
    /// `n_all · V` rows (every training image, before the validation split).
    bank: Dataset,
    v: usize,
    /// The original index of each training example (after the split).
    orig: Vec<usize>,
    /// Scratch: the bank rows of one physical batch.
    idx: Vec<usize>,
}

/// Learning-rate schedule: the rate of step t (0-based) of T planned steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// lr throughout.
    #[default]
    Constant,
    /// lr · (1 + cos(π t / T)) / 2: large steps early, small (noise-averaging) steps late.
    Cosine,
}

impl LrSchedule {
    /// The factor for step `t` of `total`.
    pub fn factor(self, t: u64, total: u64) -> f32 {
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine => {
                let x = (t.min(total) as f64) / (total.max(1) as f64);
                (0.5 * (1.0 + (std::f64::consts::PI * x).cos())) as f32
            }
        }
    }
}

impl TrainConfig {
    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid("epochs", 0, ">= 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size", 0, ">= 1"));
        }
        if self.physical_batch == 0 {
            return Err(Error::invalid("physical_batch", 0, ">= 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("lr", self.lr, "finite and > 0"));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return Err(Error::invalid(
                "max_grad_norm",
                self.max_grad_norm,
                "finite and > 0",
            ));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(Error::invalid("delta", self.delta, "in (0, 1)"));
        }
        if let OptimizerKind::Sgd { momentum } = self.optimizer {
            if !(0.0..1.0).contains(&momentum) {
                return Err(Error::invalid("momentum", momentum, "in [0, 1)"));
            }
        }
        if let Some(b) = self.ema_decay {
            if !(b > 0.0 && b < 1.0) {
                return Err(Error::invalid("ema_decay", b, "in (0, 1)"));
            }
        }
        crate::augment::check_augmult(self.augmult)?;
        if let InputNorm::Private(fs) = &self.input_norm {
            if !self.model.uses_scattering() {
                return Err(Error::invalid(
                    "input_norm",
                    "private",
                    "groupnorm for a pixel model (private feature statistics are for the scattering models: scatter-linear, scatter-cnn)",
                ));
            }
            fs.validate()?;
        }
        if self.model.uses_scattering() {
            if self.augmult > 1 && self.augmult_views < self.augmult {
                return Err(Error::invalid(
                    "augmult_views",
                    self.augmult_views,
                    format!(
                        ">= augmult ({}) for a scattering model: its K copies are drawn among V precomputed views per image (--augmult-views V)",
                        self.augmult
                    ),
                ));
            }
            if self.augmult_views > 0 {
                crate::data::scatter::ViewSpec {
                    views: self.augmult_views,
                    augmentation: crate::augment::Augmentation::for_dataset(
                        crate::data::DatasetKind::Mnist,
                    ),
                    seed: VIEW_SEED,
                }
                .validate()?;
            }
        } else if self.augmult_views > 0 {
            return Err(Error::invalid(
                "augmult_views",
                self.augmult_views,
                "0 for a pixel model (its copies are shifted on the fly; precomputed views are for the scattering models)",
            ));
        }
        Ok(())
    }
}

/// One epoch's figures (a line of `metrics.jsonl`).
///
/// # Privacy
/// What a private run may release is the model, ε and figures computed from public data. The
/// test set is public data by convention (as in Abadi et al. 2016 and Opacus), so test-set loss
/// and accuracy are released freely. Nothing else here is computed from the training data,
/// except:
/// - the evaluation figures when `eval_split` is `"validation"`: the validation set is held-out
///   *training* examples, so those figures are private data released outside the guarantee
///   (not covered by ε); `eval_private_data` is then `true`;
/// - `train_seconds`, a wall time, which grows with the sampled lot sizes (a timing side
///   channel, as in every DP-SGD implementation; not covered by ε).
///
/// The mean training loss is a function of the private data with unbounded sensitivity, so a
/// private run does not compute it at all: `train_loss` is `None` there (and absent from
/// `metrics.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: u64,
    /// Steps taken so far.
    pub steps: u64,
    /// Mean training loss over the examples of this epoch's lots: only in a non-private run
    /// (`None` in a private one, where it would be private data outside the accountant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Mean loss on the evaluation set.
    pub eval_loss: f64,
    /// Accuracy on the evaluation set (test, or validation when held out).
    pub eval_accuracy: f64,
    /// `"test"` or `"validation"`.
    pub eval_split: String,
    /// `true` when the evaluation set is held-out training data (`eval_split` is
    /// `"validation"`): `eval_loss` and `eval_accuracy` are then computed from private data and
    /// are not covered by ε. `false` for the test set (public data by convention).
    #[serde(default)]
    pub eval_private_data: bool,
    /// ε so far by the RDP accountant (δ of the run); `None` when non-private.
    pub epsilon_rdp: Option<f64>,
    /// ε so far by the PRV accountant (upper bound); `None` when non-private.
    pub epsilon_prv: Option<f64>,
    /// σ.
    pub noise_multiplier: Option<f64>,
    /// Wall time of the epoch's training steps (s).
    pub train_seconds: f64,
}

/// Checkpoint metadata (JSON inside the safetensors header).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CheckpointState {
    config: TrainConfig,
    epochs_done: u64,
    engine: Option<EngineState>,
    /// The sampler's stream position (seeded runs; 0 and unused in secure mode, whose
    /// resumed run samples with a fresh key).
    sampler_position: u64,
    adam_t: u64,
    #[serde(default)]
    steps_taken: u64,
    metrics: Vec<EpochMetrics>,
}

const CHECKPOINT: &str = "checkpoint.safetensors";

/// A training run. See the module docs.
pub struct Trainer {
    cfg: TrainConfig,
    device: Device,
    model: Sequential,
    ws: Workspace,
    grad: Buffer<f32>,
    engine: Option<PrivacyEngine>,
    sampler: PoissonSampler,
    m1: Buffer<f32>,
    m2: Buffer<f32>,
    adam_t: u64,
    steps_taken: u64,
    /// The parameters' moving average (empty when `ema_decay` is `None`), on the host.
    ema: Vec<f32>,
    train: Dataset,
    eval: Dataset,
    eval_split: &'static str,
    epochs_done: u64,
    metrics: Vec<EpochMetrics>,
    lot: Vec<usize>,
    xb: Vec<f32>,
    yb: Vec<u32>,
    /// The augmented copies of a physical batch (empty when `augmult` is 1).
    xa: Vec<f32>,
    ya: Vec<u32>,
    augmentation: crate::augment::Augmentation,
    /// The key of the augmentation draws (stream = the step); secret like every run key.
    aug_key: crate::rng::StreamKey,
    /// The released feature statistics ([`InputNorm::Private`]): every gathered batch is
    /// standardised with them.
    norm: Option<ChannelStats>,
    /// A scattering model's precomputed views (`augmult_views` > 0).
    views: Option<Views>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.cfg)
            .field("epochs_done", &self.epochs_done)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Loads the data, builds the model and the engine (calibrating σ for a target ε).
    pub fn new(cfg: TrainConfig, device: &Device) -> Result<Self> {
        cfg.validate()?;
        if cfg.augmult > 1 && device.is_cuda() {
            return Err(Error::invalid(
                "augmult",
                cfg.augmult,
                "1 on a CUDA device (averaging each example's K copies before clipping runs on the host): use --device cpu, or --augmult 1",
            ));
        }
        // Scattering features are computed on the run's device (the CUDA kernel on a GPU).
        let (train, test) = load_data_on(&cfg.data, cfg.model, device)?;
        // One master key per run; each purpose (initialisation, sampling, noise) gets its own
        // derived key, so no two share a stream (crate::rng).
        let keys = RunKeys::from_seed(cfg.seed)?;
        let seed = keys.key(Purpose::ModelInit).derive_u64();
        let views = if cfg.augmult_views > 0 {
            let bank = load_views(&cfg.data, cfg.augmult_views, device)?;
            let orig = if cfg.validation > 0 {
                train.split_validation_indices(cfg.validation, 0x5eed)?.0
            } else {
                (0..train.len()).collect()
            };
            Some(Views {
                bank,
                v: cfg.augmult_views,
                orig,
                idx: Vec::new(),
            })
        } else {
            None
        };
        let (train, eval, eval_split) = if cfg.validation > 0 {
            let (tr, va) = train.split_validation(cfg.validation, 0x5eed)?;
            (tr, va, "validation")
        } else {
            (train, test, "test")
        };
        let n = train.len();
        if cfg.batch_size > n {
            return Err(Error::invalid(
                "batch_size",
                cfg.batch_size,
                format!("<= the training set size {n}"),
            ));
        }
        let q = cfg.batch_size as f64 / n as f64;
        let model = cfg.model.builder_for(&cfg.input_norm).build(device, seed)?;
        let p = model.num_params();
        // With augmentation multiplicity K a physical batch holds ⌊physical / K⌋ examples (at
        // least one), K rows each.
        let k = cfg.augmult;
        let physical = examples_per_pass(cfg.physical_batch, k);
        let ws = model.workspace(physical * k)?;
        let sampler = PoissonSampler::with_key(n, q, keys.key(Purpose::Sampling))?;
        let steps_per_epoch = sampler.steps_per_epoch();
        // Private feature statistics: their accounting entries start the engine's accountant
        // (and its calibration) before anything is drawn; the release itself comes after.
        let (prior, prior_mass) = match (&cfg.input_norm, cfg.noise) {
            (InputNorm::Private(fs), Some(_)) => (
                fs.history()?,
                FeatureStatsConfig::truncation_mass(train.channels(), keys.generator()),
            ),
            _ => (Vec::new(), 0.0),
        };
        let engine = match cfg.noise {
            None => None,
            Some(noise) => {
                let pc = PrivacyConfig {
                    noise,
                    delta: cfg.delta,
                    clipping: Clipping::Flat(cfg.max_grad_norm),
                    sample_rate: q,
                    dataset_size: n,
                    planned_steps: steps_per_epoch * cfg.epochs,
                    accountant: cfg.accountant,
                };
                Some(PrivacyEngine::with_keys_after(
                    pc,
                    model.layout().clone(),
                    device,
                    &keys,
                    &prior,
                    prior_mass,
                )?)
            }
        };
        let spatial = train.height() * train.width();
        let norm = match (&cfg.input_norm, cfg.noise) {
            (InputNorm::GroupNorm, _) => None,
            (InputNorm::Private(fs), Some(_)) => Some(private_channel_stats(
                train.images(),
                n,
                train.channels(),
                spatial,
                fs,
                keys.key(Purpose::FeatureStats),
            )?),
            // A non-private reference: the exact (clipped) statistics.
            (InputNorm::Private(fs), None) => {
                let (a, b) =
                    clipped_channel_sums(train.images(), n, train.channels(), spatial, fs)?;
                Some(ChannelStats::from_sums(&a, &b, n))
            }
        };
        let m_len = match cfg.optimizer {
            OptimizerKind::Sgd { momentum } if momentum > 0.0 => p,
            OptimizerKind::Adam => p,
            _ => 0,
        };
        let v_len = if matches!(cfg.optimizer, OptimizerKind::Adam) {
            p
        } else {
            0
        };
        let ex = train.example_len();
        let augmentation = match &cfg.data {
            DataSource::Idx { kind, .. } => crate::augment::Augmentation::for_dataset(*kind),
            DataSource::Synthetic { .. } => crate::augment::Augmentation {
                max_shift: 2,
                hflip: false,
            },
        };
        let ema = match cfg.ema_decay {
            Some(_) => model.params().to_vec()?,
            None => Vec::new(),
        };
        Ok(Trainer {
            ema,
            grad: Buffer::zeros(device, p)?,
            m1: Buffer::zeros(device, m_len)?,
            m2: Buffer::zeros(device, v_len)?,
            adam_t: 0,
            steps_taken: 0,
            device: device.clone(),
            model,
            ws,
            engine,
            sampler,
            eval_split,
            train,
            eval,
            epochs_done: 0,
            metrics: Vec::new(),
            lot: Vec::with_capacity(n),
            xb: vec![0.0; physical * ex],
            yb: vec![0; physical],
            xa: vec![
                0.0;
                if k > 1 || views.is_some() {
                    physical * k * ex
                } else {
                    0
                }
            ],
            ya: vec![
                0;
                if k > 1 || views.is_some() {
                    physical * k
                } else {
                    0
                }
            ],
            views,
            augmentation,
            aug_key: keys.key(Purpose::Augmentation),
            norm,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The model.
    pub fn model(&self) -> &Sequential {
        &self.model
    }

    /// The engine (`None` when non-private).
    pub fn engine(&self) -> Option<&PrivacyEngine> {
        self.engine.as_ref()
    }

    /// Epochs completed.
    pub fn epochs_done(&self) -> u64 {
        self.epochs_done
    }

    /// Metrics of the completed epochs.
    pub fn metrics(&self) -> &[EpochMetrics] {
        &self.metrics
    }

    /// Steps per epoch: round(1/q).
    pub fn steps_per_epoch(&self) -> u64 {
        self.sampler.steps_per_epoch()
    }

    /// Trains one epoch; `on_step(step_in_epoch, lot_size)` is called after every step.
    ///
    /// # Privacy
    /// In a private run `lot_size` is private: with Poisson sampling it counts the training
    /// examples the step sampled, and the accountant does not cover it. Use it for progress or
    /// memory bookkeeping inside the process; do not print, log or save it. The returned
    /// [`EpochMetrics`] has no training loss in a private run (see its docs).
    pub fn train_epoch(&mut self, mut on_step: impl FnMut(u64, usize)) -> Result<EpochMetrics> {
        let t0 = Instant::now();
        // (summed loss, examples): non-private runs only — a private run never aggregates it.
        let mut train = self.engine.is_none().then_some((0f64, 0usize));
        for s in 0..self.steps_per_epoch() {
            let (l, n) = self.step()?;
            if let (Some((sum, seen)), Some(l)) = (&mut train, l) {
                *sum += l;
                *seen += n;
            }
            on_step(s + 1, n);
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        let (eval_loss, eval_accuracy) = self.evaluate()?;
        self.epochs_done += 1;
        let (epsilon_rdp, epsilon_prv, noise_multiplier) = match &self.engine {
            None => (None, None, None),
            Some(e) => (
                Some(e.epsilon_with(Method::Rdp)?),
                Some(e.epsilon_with(Method::Prv)?),
                Some(e.noise_multiplier()),
            ),
        };
        let m = EpochMetrics {
            epoch: self.epochs_done,
            steps: self
                .engine
                .as_ref()
                .map_or(self.epochs_done * self.steps_per_epoch(), |e| e.steps()),
            train_loss: train.map(|(sum, seen)| sum / seen.max(1) as f64),
            eval_loss,
            eval_accuracy,
            eval_split: self.eval_split.to_string(),
            eval_private_data: self.cfg.validation > 0,
            epsilon_rdp,
            epsilon_prv,
            noise_multiplier,
            train_seconds,
        };
        self.metrics.push(m.clone());
        Ok(m)
    }

    /// One step: sample a lot, per-sample gradients in physical batches, clip, noise, update.
    /// Returns (summed loss over the lot, lot size); the loss only in a non-private run (`None`
    /// in a private one: it is not kept, see [`EpochMetrics`]).
    fn step(&mut self) -> Result<(Option<f64>, usize)> {
        self.sampler.sample_into(&mut self.lot);
        let lot = std::mem::take(&mut self.lot);
        let r = self.step_on(&lot);
        self.lot = lot;
        r
    }

    fn step_on(&mut self, lot: &[usize]) -> Result<(Option<f64>, usize)> {
        let ex = self.train.example_len();
        let mut loss_sum = self.engine.is_none().then_some(0f64);
        if self.engine.is_none() {
            self.grad.fill_zero()?;
        }
        let k = self.cfg.augmult;
        let shape = (
            self.train.channels(),
            self.train.height(),
            self.train.width(),
        );
        // The augmentation draws of this step: stream = the step's index (resumes exactly).
        let mut aug_rng = self.aug_key.rng(self.steps_taken);
        for chunk in lot.chunks(examples_per_pass(self.cfg.physical_batch, k)) {
            let b = chunk.len();
            if self.views.is_none() {
                self.train
                    .gather(chunk, &mut self.xb[..b * ex], &mut self.yb[..b])?;
                if let Some(s) = &self.norm {
                    s.standardize(&mut self.xb[..b * ex], shape.1 * shape.2)?;
                }
            }
            let (x, y) = if let Some(vw) = &mut self.views {
                // K of the example's V views, drawn without replacement (partial
                // Fisher–Yates on the run's augmentation stream), example-major.
                vw.idx.clear();
                let mut pick = [0usize; crate::data::scatter::MAX_VIEWS];
                for &i in chunk {
                    for (u, p) in pick[..vw.v].iter_mut().enumerate() {
                        *p = u;
                    }
                    for j in 0..k {
                        let r =
                            j + crate::rng::RandomBits::next_below(&mut aug_rng, (vw.v - j) as u64)
                                as usize;
                        pick.swap(j, r);
                        vw.idx.push(vw.orig[i] * vw.v + pick[j]);
                    }
                }
                vw.bank
                    .gather(&vw.idx, &mut self.xa[..b * k * ex], &mut self.ya[..b * k])?;
                if let Some(s) = &self.norm {
                    s.standardize(&mut self.xa[..b * k * ex], shape.1 * shape.2)?;
                }
                (&self.xa[..b * k * ex], &self.ya[..b * k])
            } else if k > 1 {
                self.augmentation.fill_copies(
                    &self.xb[..b * ex],
                    &self.yb[..b],
                    k,
                    shape,
                    &mut aug_rng,
                    &mut self.xa[..b * k * ex],
                    &mut self.ya[..b * k],
                )?;
                (&self.xa[..b * k * ex], &self.ya[..b * k])
            } else {
                (&self.xb[..b * ex], &self.yb[..b])
            };
            let target = Loss::CrossEntropy(y);
            // Forward, loss and backward in one pass; per-sample gradients clipped into the
            // lot's sum as they are computed (on the CPU: no [B, P] matrix). With K > 1 the
            // engine averages each example's K copies before clipping.
            let r = match &mut self.engine {
                Some(engine) if k > 1 || self.views.is_some() => {
                    engine.accumulate_augmented(&self.model, &mut self.ws, x, target, k)
                }
                Some(engine) => engine.accumulate_batch(&self.model, &mut self.ws, x, target),
                None => self.model.forward_backward(
                    &mut self.ws,
                    x,
                    target,
                    Reduction::Sum,
                    Grads::Sum {
                        grad: &mut self.grad,
                        accumulate: true,
                    },
                    false,
                ),
            };
            let step = self.global_step();
            let l = match r {
                Ok(l) if l.is_finite() => l,
                Ok(l) => Err(Error::NonFinite {
                    what: "training loss",
                    detail: format!("loss {l} at step {step}; the last checkpoint is kept — lower the learning rate"),
                })?,
                Err(Error::NonFinite { what, detail }) => Err(Error::NonFinite {
                    what,
                    detail: format!("{detail} at step {step}; the last checkpoint is kept — lower the learning rate"),
                })?,
                Err(e) => return Err(e),
            };
            if let Some(sum) = &mut loss_sum {
                *sum += l;
            }
        }
        // Non-private: the mean over the lot's b·K rows.
        self.update(lot.len() * k)?;
        self.update_ema()?;
        Ok((loss_sum.map(|l| l / k as f64), lot.len()))
    }

    fn global_step(&self) -> u64 {
        self.engine.as_ref().map_or(0, |e| e.steps())
    }

    fn update(&mut self, lot: usize) -> Result<()> {
        let total = self.cfg.epochs * self.steps_per_epoch();
        let lr = self.cfg.lr * self.cfg.lr_schedule.factor(self.steps_taken, total);
        self.steps_taken += 1;
        let params = self.model.params_mut();
        match (&mut self.engine, self.cfg.optimizer) {
            (Some(e), OptimizerKind::Sgd { momentum }) => {
                let m = (momentum > 0.0).then_some(&mut self.m1);
                e.step_sgd(params, m, &SgdConfig::new(lr).momentum(momentum))
            }
            (Some(e), OptimizerKind::Adam) => {
                self.adam_t += 1;
                e.step_adam(
                    params,
                    &mut self.m1,
                    &mut self.m2,
                    self.adam_t,
                    &AdamConfig::new(lr),
                )
            }
            (None, opt) => {
                // Non-private reference: the mean gradient of the lot, no clipping, no noise.
                let noisy = crate::NoisyStep {
                    noise_std: 0.0,
                    expected_batch_size: lot.max(1) as f64,
                    key: crate::NoiseKey::from_parts(0, 0),
                };
                match opt {
                    OptimizerKind::Sgd { momentum } => {
                        let m = (momentum > 0.0).then_some(&mut self.m1);
                        crate::ops::noisy_sgd_step(
                            params,
                            &self.grad,
                            m,
                            &SgdConfig::new(lr).momentum(momentum),
                            &noisy,
                        )
                    }
                    OptimizerKind::Adam => {
                        self.adam_t += 1;
                        crate::ops::noisy_adam_step(
                            params,
                            &self.grad,
                            &mut self.m1,
                            &mut self.m2,
                            self.adam_t,
                            &AdamConfig::new(lr),
                            &noisy,
                        )
                    }
                }
            }
        }
    }

    /// ema ← b·ema + (1 − b)·θ with b = min(β, (1 + t)/(10 + t)), t = steps taken.
    fn update_ema(&mut self) -> Result<()> {
        let Some(beta) = self.cfg.ema_decay else {
            return Ok(());
        };
        let t = self.steps_taken as f64;
        let b = (beta as f64).min((1.0 + t) / (10.0 + t)) as f32;
        let params = self.model.params();
        // A CUDA model's parameters come to the host (P floats per step).
        let copied;
        let theta = match params.as_slice() {
            Some(p) => p,
            None => {
                copied = params.to_vec()?;
                &copied
            }
        };
        for (e, p) in self.ema.iter_mut().zip(theta) {
            *e = b * *e + (1.0 - b) * *p;
        }
        Ok(())
    }

    /// Exchanges the model's parameters with the moving average (no-op without one): called in
    /// pairs around evaluation and saving.
    fn swap_ema(&mut self) -> Result<()> {
        if self.ema.is_empty() {
            return Ok(());
        }
        let params = self.model.params_mut();
        match params.as_mut_slice() {
            Some(p) => p.swap_with_slice(&mut self.ema),
            None => {
                let cur = params.to_vec()?;
                params.copy_from_slice(&self.ema)?;
                self.ema.copy_from_slice(&cur);
            }
        }
        Ok(())
    }

    /// The model to keep: the moving average of the parameters when `ema_decay` is set, else
    /// the last iterate, written as safetensors with PyTorch's names (see
    /// [`Sequential::save_safetensors`]).
    pub fn save_model(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if let (Some(s), InputNorm::Private(fs)) = (&self.norm, &self.cfg.input_norm) {
            s.save(input_norm_path(path), fs)?;
        }
        self.swap_ema()?;
        let r = self.model.save_safetensors(path);
        self.swap_ema()?;
        r
    }

    /// The released feature statistics the inputs are standardised with
    /// ([`InputNorm::Private`]; `None` otherwise).
    pub fn input_norm_stats(&self) -> Option<&ChannelStats> {
        self.norm.as_ref()
    }

    /// Mean loss and accuracy on the evaluation set, of the moving average of the parameters
    /// when `ema_decay` is set (else of the current ones).
    pub fn evaluate(&mut self) -> Result<(f64, f64)> {
        self.swap_ema()?;
        let r = self.evaluate_current();
        self.swap_ema()?;
        r
    }

    fn evaluate_current(&mut self) -> Result<(f64, f64)> {
        let ex = self.eval.example_len();
        let n = self.eval.len();
        let classes = self.eval.classes();
        let (mut loss, mut correct) = (0f64, 0usize);
        let idx: Vec<usize> = (0..n).collect();
        // The batch buffers hold one physical pass of examples (fewer with augmult > 1).
        for chunk in idx.chunks(examples_per_pass(self.cfg.physical_batch, self.cfg.augmult)) {
            let b = chunk.len();
            self.eval
                .gather(chunk, &mut self.xb[..b * ex], &mut self.yb[..b])?;
            if let Some(s) = &self.norm {
                s.standardize(
                    &mut self.xb[..b * ex],
                    self.eval.height() * self.eval.width(),
                )?;
            }
            self.model.forward_slice(&mut self.ws, &self.xb[..b * ex])?;
            let out = self.ws.output_vec()?;
            for (row, &y) in out.chunks(classes).zip(&self.yb[..b]) {
                let am = row
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |acc, (k, &v)| if v > acc.1 { (k, v) } else { acc },
                    )
                    .0;
                correct += (am as u32 == y) as usize;
            }
            loss += self.model.loss(
                &mut self.ws,
                Loss::CrossEntropy(&self.yb[..b]),
                Reduction::Sum,
            )?;
        }
        Ok((loss / n.max(1) as f64, correct as f64 / n.max(1) as f64))
    }

    /// Writes `dir/checkpoint.safetensors` atomically (temp file + rename): parameters,
    /// optimizer state, accountant, step counter, sampler stream, metrics. In secure mode the
    /// seeds are not written.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let state = CheckpointState {
            config: self.cfg.clone(),
            epochs_done: self.epochs_done,
            engine: self.engine.as_ref().map(|e| e.state()),
            sampler_position: if self.cfg.seed.is_some() {
                self.sampler.position()
            } else {
                0
            },
            adam_t: self.adam_t,
            steps_taken: self.steps_taken,
            metrics: self.metrics.clone(),
        };
        let mut meta = HashMap::new();
        meta.insert(
            "dpsgd_checkpoint".to_string(),
            serde_json::to_string(&state)?,
        );
        if self.cfg.seed.is_none() {
            // Secure mode: no key material is stored (the engine's state has no seed, the
            // sampler's position is not kept); a resumed run draws fresh keys.
            meta.insert("secure".to_string(), "true".to_string());
        }
        let ema = Buffer::from_vec(self.ema.clone());
        let (nm, nv) = self.norm.as_ref().map_or((Vec::new(), Vec::new()), |s| {
            (s.mean.clone(), s.var.clone())
        });
        let (nm, nv) = (Buffer::from_vec(nm), Buffer::from_vec(nv));
        let tensors = [
            ("params", self.model.params()),
            ("m1", &self.m1),
            ("m2", &self.m2),
            ("ema", &ema),
            ("norm_mean", &nm),
            ("norm_var", &nv),
        ];
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, b)| {
                let v = b.to_vec()?;
                Ok((
                    n.to_string(),
                    vec![v.len()],
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ))
            })
            .collect::<Result<_>>()?;
        let path = dir.join(CHECKPOINT);
        let fmt = |msg: String| Error::Format {
            path: path.clone(),
            msg,
        };
        let views = bytes
            .iter()
            .map(|(n, s, b)| {
                Ok((
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| fmt(e.to_string()))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let data = safetensors::serialize(views, Some(meta)).map_err(|e| fmt(e.to_string()))?;
        write_atomic(&path, &data)
    }

    /// Restores a checkpoint written by [`Trainer::save_checkpoint`] for the same configuration.
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(CHECKPOINT);
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let fmt = |msg: String| Error::Format {
            path: path.clone(),
            msg,
        };
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| fmt(format!("not a checkpoint: {e}")))?;
        let meta = header
            .metadata()
            .as_ref()
            .ok_or_else(|| fmt("no dpsgd metadata".into()))?;
        let json = meta
            .get("dpsgd_checkpoint")
            .ok_or_else(|| fmt("no dpsgd_checkpoint metadata".into()))?;
        let state: CheckpointState =
            serde_json::from_str(json).map_err(|e| fmt(format!("bad checkpoint state: {e}")))?;
        if state.config != self.cfg {
            return Err(fmt("the checkpoint was written by a run with another configuration (see its config.json); use a new --out or the same flags".into()));
        }
        let st = SafeTensors::deserialize(&bytes).map_err(|e| fmt(e.to_string()))?;
        let read = |name: &str, len: usize| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|_| fmt(format!("missing tensor {name}")))?;
            if t.dtype() != Dtype::F32 || t.shape() != [len] {
                return Err(fmt(format!("tensor {name} has the wrong type or shape")));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let p = read("params", self.model.num_params())?;
        let m1 = read("m1", self.m1.len())?;
        let m2 = read("m2", self.m2.len())?;
        let ema = if self.ema.is_empty() {
            Vec::new()
        } else {
            read("ema", self.ema.len())?
        };
        // The released statistics the checkpointed parameters were trained with (a secure-mode
        // resume drew fresh ones in `new`; those are never used or released).
        let norm = match &self.norm {
            Some(s) => {
                let c = s.channels();
                let loaded = ChannelStats {
                    mean: read("norm_mean", c)?,
                    var: read("norm_var", c)?,
                };
                loaded.validate().map_err(|e| fmt(e.to_string()))?;
                Some(loaded)
            }
            None => None,
        };
        if p.iter()
            .chain(&m1)
            .chain(&m2)
            .chain(&ema)
            .any(|x| !x.is_finite())
        {
            return Err(fmt("non-finite values in the checkpoint".into()));
        }
        match (&mut self.engine, state.engine) {
            (Some(e), Some(s)) => e.restore(s)?,
            (None, None) => {}
            _ => return Err(fmt("private/non-private mismatch".into())),
        }
        self.model.params_mut().copy_from_slice(&p)?;
        self.m1.copy_from_slice(&m1)?;
        self.m2.copy_from_slice(&m2)?;
        self.ema.copy_from_slice(&ema);
        if norm.is_some() {
            self.norm = norm;
        }
        if meta.get("secure").is_none() {
            self.sampler.seek(state.sampler_position);
        } else {
            // Secure mode: fresh keys for sampling too (the engine drew its own in restore).
            self.sampler = PoissonSampler::secure(self.sampler.len(), self.sampler.sample_rate())?;
        }
        self.adam_t = state.adam_t;
        self.steps_taken = state.steps_taken;
        self.epochs_done = state.epochs_done;
        self.metrics = state.metrics;
        for m in &mut self.metrics {
            // Checkpoints written before these fields: a private one may hold the training
            // loss, and none says whether the evaluation set was private.
            if self.engine.is_some() {
                m.train_loss = None;
            }
            m.eval_private_data = self.cfg.validation > 0;
        }
        Ok(())
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// Examples per physical pass with augmentation multiplicity `k`: ⌊physical / k⌋, at least 1.
fn examples_per_pass(physical: usize, k: usize) -> usize {
    (physical / k.max(1)).max(1)
}

/// Writes `data` to `path` via a temporary file in the same folder, fsync and a rename, so a
/// crash leaves either the old file or the new one.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    crate::atomic::write_with(path, |w| w.write_all(data))
}

#[cfg(test)]
mod secret_tests {
    use super::*;
    use crate::engine::NoiseSpec;

    fn holds(hay: &[u8], words: &[u32; 8]) -> Option<String> {
        let text = String::from_utf8_lossy(hay).to_lowercase();
        for pair in words.windows(2) {
            let le: Vec<u8> = pair.iter().flat_map(|w| w.to_le_bytes()).collect();
            if hay.windows(8).any(|w| w == le) {
                return Some(format!("bytes of {pair:x?}"));
            }
        }
        for w in words.iter().filter(|&&w| w > 0xffff) {
            if text.contains(&w.to_string()) || text.contains(&format!("{w:08x}")) {
                return Some(format!("text of {w}"));
            }
        }
        None
    }

    /// A secure-mode checkpoint holds neither the noise key nor the sampler's key (as bytes,
    /// decimal or hex), nor does the trainer's `Debug`; a resumed secure run draws fresh keys
    /// for both.
    #[test]
    fn secure_checkpoint_holds_no_key_and_resume_draws_fresh_keys() {
        let cfg = TrainConfig {
            data: DataSource::Synthetic {
                train: 300,
                test: 100,
            },
            model: ModelKind::TanhConvnet,
            noise: Some(NoiseSpec::NoiseMultiplier(1.0)),
            delta: 1e-5,
            epochs: 1,
            batch_size: 30,
            physical_batch: 30,
            lr: 1.0,
            optimizer: OptimizerKind::Sgd { momentum: 0.0 },
            max_grad_norm: 1.0,
            accountant: Method::Rdp,
            seed: None,
            validation: 0,
            lr_schedule: LrSchedule::Constant,
            ema_decay: None,
            augmult: 1,
            augmult_views: 0,
            input_norm: InputNorm::GroupNorm,
        };
        let dir = std::env::temp_dir().join(format!("dpsgd-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = Trainer::new(cfg.clone(), &Device::Cpu).unwrap();
        t.train_epoch(|_, _| {}).unwrap();
        t.save_checkpoint(&dir).unwrap();
        let bytes = std::fs::read(dir.join(CHECKPOINT)).unwrap();
        let noise = t.engine.as_ref().unwrap().noise_key_words();
        let sampler = t.sampler.key_words();
        let debug = format!("{t:?} {:?} {:?}", t.engine, t.sampler);
        for words in [noise, sampler] {
            assert_eq!(holds(&bytes, &words), None, "checkpoint");
            assert_eq!(holds(debug.as_bytes(), &words), None, "Debug: {debug}");
        }
        let mut r = Trainer::new(cfg, &Device::Cpu).unwrap();
        r.load_checkpoint(&dir).unwrap();
        assert_eq!(
            r.engine.as_ref().unwrap().steps(),
            t.engine.as_ref().unwrap().steps()
        );
        assert_ne!(r.engine.as_ref().unwrap().noise_key_words(), noise);
        assert_ne!(r.sampler.key_words(), sampler);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
