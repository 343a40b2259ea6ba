//! `dpsgd train` and `dpsgd sweep`.

use clap::{Args, ValueEnum};
use dpsgd::accounting::Method;
use dpsgd::cpu::scatter::ScatterParams;
use dpsgd::data::DatasetKind;
use dpsgd::engine::NoiseSpec;
use dpsgd::mechanisms::feature_stats::{scatter_clip_bounds, FeatureStatsConfig};
use dpsgd::train::{
    write_atomic, DataSource, EpochMetrics, InputNorm, LrSchedule, ModelKind, OptimizerKind,
    TrainConfig, Trainer,
};
use dpsgd::{Device, Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

/// Datasets.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DatasetArg {
    /// MNIST (run scripts/fetch-mnist first).
    Mnist,
    /// Fashion-MNIST (Debian's dataset-fashion-mnist; scripts/fetch-fashion-mnist).
    FashionMnist,
    /// Generated data (no download; for smoke tests).
    Synthetic,
}

/// Models.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModelArg {
    /// Opacus's SampleConvNet (ReLU).
    SampleConvnet,
    /// SampleConvNet with Tanh (tempered sigmoid).
    TanhConvnet,
    /// ScatterNet features (Kymatio's J=2, L=8; cached) + GroupNorm + linear (Tramèr & Boneh 2021).
    ScatterLinear,
    /// ScatterNet features + GroupNorm + Tramèr & Boneh's small Tanh CNN.
    ScatterCnn,
}

/// Optimizers.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OptimArg {
    /// SGD (with --momentum).
    Sgd,
    /// Adam.
    Adam,
}

/// Accountants.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AccountantArg {
    /// Rényi DP (Opacus's default).
    Rdp,
    /// Privacy random variables (tightest; an upper bound).
    Prv,
}

/// Flags shared by `train` and `sweep`.
#[derive(Clone, Debug, Args)]
pub struct CommonArgs {
    /// Dataset.
    #[arg(long, value_enum, default_value = "mnist")]
    pub dataset: DatasetArg,
    /// Folder of the IDX files (default: data/mnist, or /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Model.
    #[arg(long, value_enum, default_value = "tanh-convnet")]
    pub model: ModelArg,
    /// δ of (ε, δ)-DP.
    #[arg(long, default_value_t = 1e-5)]
    pub delta: f64,
    /// Epochs (an epoch is round(1/q) Poisson-sampled steps).
    #[arg(long, default_value_t = 40)]
    pub epochs: u64,
    /// Expected (logical) batch size q·N.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Largest physical batch; larger lots are processed in several passes. The default holds
    /// a whole Poisson lot of the default batch size (256 ± 16) in one pass.
    #[arg(long, default_value_t = 512)]
    pub physical_batch: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 2.0)]
    pub lr: f32,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "sgd")]
    pub optimizer: OptimArg,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f32,
    /// Clipping bound C.
    #[arg(long, default_value_t = 0.1)]
    pub max_grad_norm: f32,
    /// Accountant for calibration and the budget (both are reported).
    #[arg(long, value_enum, default_value = "rdp")]
    pub accountant: AccountantArg,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Seed (init, sampling, noise). Without it: secure mode (OS seed, never printed or saved).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Hold out this many training examples and report validation accuracy (for tuning).
    #[arg(long, default_value_t = 0)]
    pub validation: usize,
    /// Learning-rate schedule over the planned steps.
    #[arg(long, value_enum, default_value = "constant")]
    pub lr_schedule: ScheduleArg,
    /// Evaluate and save an exponential moving average of the parameters with this decay
    /// (e.g. 0.999); free in privacy (post-processing of the noisy iterates).
    #[arg(long)]
    pub ema_decay: Option<f32>,
    /// Augmentation multiplicity K (De et al. 2022): each sampled example's gradient is the
    /// mean over K randomly shifted copies (±2 pixels; plus left-right flips on Fashion-MNIST),
    /// clipped once, so ε is unchanged. On the CPU only; costs K passes per example (scattering models: with --augmult-views)
    #[arg(long, default_value_t = 1)]
    pub augmult: usize,
    /// Scattering models: precompute (and cache) the features of V augmented views per
    /// training image (view 0 the image, the others shifted by up to 2 pixels, plus flips on
    /// Fashion-MNIST; a public fixed stream), and draw each example's --augmult K copies among
    /// them (V ≥ K). 0: the plain features. Memory: V × 0.95 GB on MNIST
    #[arg(long, default_value_t = 0)]
    pub augmult_views: usize,
    /// Train this many independent runs of each setting and report the final accuracy as mean
    /// ± standard deviation (and min/max) over them: seeds s, s+1, … with --seed s, else a
    /// fresh secure key per run. Each run goes to its own `repeat-K/` folder.
    #[arg(long, default_value_t = 1)]
    pub repeats: u32,
    /// How the scattering models normalise their features: `groupnorm` (a GroupNorm layer, per
    /// example, free) or `private` (per-channel mean and variance of the training features
    /// released with Gaussian noise, Tramèr & Boneh 2021; its ε is composed with DP-SGD's and
    /// comes out of --epsilon).
    #[arg(long, value_enum, default_value = "groupnorm")]
    pub input_norm: InputNormArg,
    /// With --input-norm private: the statistics' noise multiplier σ_n (noise σ_n·C on each
    /// clipped sum). 8 is Tramèr & Boneh's.
    #[arg(long, default_value_t = 8.0)]
    pub norm_noise: f64,
    /// With --input-norm private: the L2 clip bound of an example's vector of channel means.
    /// Default: Fashion-MNIST (and synthetic) 2.5166, the bound that no image with pixels in
    /// [0, 1] can exceed, computed from the scattering filters (it depends on no data); MNIST
    /// 0.8389, a third of it rounded up, chosen on MNIST's validation split (a tuning choice;
    /// README). Fix any other value before seeing the data.
    #[arg(long)]
    pub norm_clip_mean: Option<f64>,
    /// With --input-norm private: the L2 clip bound of an example's vector of channel mean
    /// squares (default: Fashion-MNIST 1.2892, data-independent; MNIST 0.4298, a third of it
    /// rounded up; as --norm-clip-mean).
    #[arg(long)]
    pub norm_clip_sq: Option<f64>,
}

/// Input normalisations of the scattering models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputNormArg {
    /// A GroupNorm layer (27 groups) in the model: per example, no privacy cost.
    Groupnorm,
    /// Privately released per-channel statistics (--norm-noise, --norm-clip-mean, --norm-clip-sq).
    Private,
}

/// Mean ± standard deviation (n − 1 in the denominator), min and max of the final accuracies
/// of repeated runs.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one run).
    pub std: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Number of runs.
    pub n: usize,
}

impl Summary {
    /// The summary of `xs` (at least one value).
    pub fn of(xs: &[f64]) -> Result<Summary> {
        if xs.is_empty() {
            return Err(Error::invalid("--repeats", 0, ">= 1"));
        }
        let n = xs.len();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Ok(Summary {
            mean,
            std: var.sqrt(),
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n,
        })
    }

    /// `98.01 ± 0.12% (min 97.85, max 98.17, 5 runs)` for accuracies in [0, 1].
    pub fn percent(&self) -> String {
        if self.n == 1 {
            return format!("{:.2}%", 100.0 * self.mean);
        }
        format!(
            "{:.2} ± {:.2}% (min {:.2}, max {:.2}, {} runs)",
            100.0 * self.mean,
            100.0 * self.std,
            100.0 * self.min,
            100.0 * self.max,
            self.n
        )
    }
}

/// Learning-rate schedules.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScheduleArg {
    /// Constant.
    Constant,
    /// Cosine decay to 0 over the run.
    Cosine,
}

/// `dpsgd train`.
#[derive(Clone, Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Target ε: σ is calibrated so the run ends at ε ≤ this (default 3 when no σ is given).
    #[arg(long, conflicts_with_all = ["noise_multiplier", "non_private"])]
    pub epsilon: Option<f64>,
    /// Fixed noise multiplier σ (ε is reported, not bounded).
    #[arg(long, conflicts_with = "non_private")]
    pub noise_multiplier: Option<f64>,
    /// Train without clipping or noise (the non-private reference).
    #[arg(long)]
    pub non_private: bool,
    /// Output folder (metrics.jsonl, config.json, model.safetensors, plots, checkpoint).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
}

/// `dpsgd sweep`.
#[derive(Clone, Debug, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Target ε values, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2,3,8")]
    pub epsilons: Vec<f64>,
    /// Also train the non-private reference.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub non_private: bool,
    /// Output folder.
    #[arg(long, default_value = "runs/sweep")]
    pub out: PathBuf,
}

/// MNIST's default `(--norm-clip-mean, --norm-clip-sq)`: the data-independent bounds
/// ([`scatter_clip_bounds`], 2.5166 / 1.2892) divided by 3 and rounded up to four digits, chosen
/// on the validation split among the multiples 1, 1/3 and 1/10 of them (BENCHMARKS.md, "fourth
/// round").
pub(crate) const MNIST_NORM_CLIP: (f64, f64) = (0.8389, 0.4298);

pub(crate) fn config(c: &CommonArgs, noise: Option<NoiseSpec>) -> Result<TrainConfig> {
    Ok(TrainConfig {
        data: match c.dataset {
            DatasetArg::Mnist => DataSource::Idx {
                kind: DatasetKind::Mnist,
                dir: c.data_dir.clone(),
            },
            DatasetArg::FashionMnist => DataSource::Idx {
                kind: DatasetKind::FashionMnist,
                dir: c.data_dir.clone(),
            },
            DatasetArg::Synthetic => DataSource::Synthetic {
                train: 4000,
                test: 1000,
            },
        },
        model: match c.model {
            ModelArg::SampleConvnet => ModelKind::SampleConvnet,
            ModelArg::TanhConvnet => ModelKind::TanhConvnet,
            ModelArg::ScatterLinear => ModelKind::ScatterLinear,
            ModelArg::ScatterCnn => ModelKind::ScatterCnn,
        },
        noise,
        delta: c.delta,
        epochs: c.epochs,
        batch_size: c.batch_size,
        physical_batch: c.physical_batch,
        lr: c.lr,
        optimizer: match c.optimizer {
            OptimArg::Sgd => OptimizerKind::Sgd {
                momentum: c.momentum,
            },
            OptimArg::Adam => OptimizerKind::Adam,
        },
        max_grad_norm: c.max_grad_norm,
        accountant: match c.accountant {
            AccountantArg::Rdp => Method::Rdp,
            AccountantArg::Prv => Method::Prv,
        },
        seed: c.seed,
        validation: c.validation,
        lr_schedule: match c.lr_schedule {
            ScheduleArg::Constant => LrSchedule::Constant,
            ScheduleArg::Cosine => LrSchedule::Cosine,
        },
        ema_decay: c.ema_decay,
        augmult: c.augmult,
        augmult_views: c.augmult_views,
        input_norm: match c.input_norm {
            InputNormArg::Groupnorm => InputNorm::GroupNorm,
            InputNormArg::Private => {
                // Defaults chosen without the test set (README, "Private feature
                // normalisation"): Fashion-MNIST the bounds no image with pixels in [0, 1] can
                // exceed (data-independent); MNIST a third of them, rounded up, chosen on the
                // validation split among ×1, ×1/3, ×1/10 (a tuning choice).
                let (da, db) = match c.dataset {
                    DatasetArg::Mnist => MNIST_NORM_CLIP,
                    _ => scatter_clip_bounds(ScatterParams::MNIST, 1)?,
                };
                let (ca, cb) = (c.norm_clip_mean.unwrap_or(da), c.norm_clip_sq.unwrap_or(db));
                InputNorm::Private(FeatureStatsConfig {
                    noise_multiplier: c.norm_noise,
                    mean_clip: ca,
                    sq_clip: cb,
                })
            }
        },
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs `dpsgd train`; returns the final metrics.
pub fn train(a: TrainArgs) -> Result<Vec<EpochMetrics>> {
    check_repeats(&a.common)?;
    let noise = if a.non_private {
        None
    } else {
        Some(match (a.epsilon, a.noise_multiplier) {
            (_, Some(s)) => NoiseSpec::NoiseMultiplier(s),
            (Some(e), None) => NoiseSpec::TargetEpsilon(e),
            (None, None) => NoiseSpec::TargetEpsilon(3.0),
        })
    };
    let cfg = config(&a.common, noise)?;
    let out = a.out.clone().unwrap_or_else(|| {
        let data = format!("{:?}", a.common.dataset).to_lowercase();
        PathBuf::from("runs").join(match noise {
            None => format!("{data}-non-private"),
            Some(NoiseSpec::TargetEpsilon(e)) => format!("{data}-eps{e}"),
            Some(NoiseSpec::NoiseMultiplier(s)) => format!("{data}-sigma{s}"),
        })
    });
    if a.common.repeats <= 1 {
        return run(cfg, &a.common.device, &out, a.resume);
    }
    let (summary, runs) = repeat(&cfg, &a.common, &out, a.resume)?;
    let last = runs.last().and_then(|m| m.last().cloned());
    println!(
        "{} runs: final {} accuracy {}{}",
        runs.len(),
        last.as_ref().map_or("test", |m| m.eval_split.as_str()),
        summary.percent(),
        last.as_ref().map_or("", not_covered)
    );
    Ok(last.into_iter().collect())
}

/// `common.repeats` runs of `cfg` into `out/repeat-K/` (with `resume`, each from its checkpoint
/// if it has one; without, a checkpoint there is an error):
/// seeds s, s+1, … when `cfg` has a seed, fresh secure keys otherwise. Writes
/// `out/repeats.json` (every run's final figures and the summary) and returns the summary of
/// the final accuracies and every run's metrics.
fn repeat(
    cfg: &TrainConfig,
    common: &CommonArgs,
    out: &Path,
    resume: bool,
) -> Result<(Summary, Vec<Vec<EpochMetrics>>)> {
    let n = common.repeats.max(1) as u64;
    let mut runs = Vec::new();
    let mut rows = Vec::new();
    for k in 0..n {
        let mut c = cfg.clone();
        c.seed = cfg.seed.map(|s| s.wrapping_add(k));
        let dir = out.join(format!("repeat-{k}"));
        println!("run {}/{n} ({})", k + 1, dir.display());
        let m = run(
            c.clone(),
            &common.device,
            &dir,
            resume && dir.join("checkpoint.safetensors").exists(),
        )?;
        let last = m
            .last()
            .cloned()
            .ok_or_else(|| Error::invalid("--epochs", 0, ">= 1"))?;
        rows.push(serde_json::json!({"dir": dir, "seed": c.seed, "accuracy": last.eval_accuracy, "eval_split": last.eval_split, "epsilon_rdp": last.epsilon_rdp, "epsilon_prv": last.epsilon_prv}));
        runs.push(m);
    }
    let acc: Vec<f64> = runs
        .iter()
        .filter_map(|m| m.last().map(|l| l.eval_accuracy))
        .collect();
    let summary = Summary::of(&acc)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let json = serde_json::json!({"runs": rows, "accuracy": summary});
    write_atomic(
        &out.join("repeats.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    Ok((summary, runs))
}

fn run(cfg: TrainConfig, device: &str, out: &Path, resume: bool) -> Result<Vec<EpochMetrics>> {
    let device = Device::from_name(device)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let ckpt = out.join("checkpoint.safetensors");
    if ckpt.exists() && !resume {
        return Err(Error::invalid(
            "--out",
            out.display(),
            "a folder without a checkpoint (pass --resume to continue that run, or choose another --out)",
        ));
    }
    let mut t = Trainer::new(cfg.clone(), &device)?;
    if resume && ckpt.exists() {
        t.load_checkpoint(out)?;
        println!("resumed {} after epoch {}", out.display(), t.epochs_done());
        // The checkpoint's record is the durable one: a crash right after a checkpoint leaves
        // its epoch out of metrics.jsonl, so rewrite that from the checkpoint.
        write_metrics(out, t.metrics())?;
    }
    let cfg_path = out.join("config.json");
    write_atomic(&cfg_path, serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    println!(
        "training {:?} on {:?} with {} on {}: {} epochs × {} steps, expected batch {}{}",
        cfg.model,
        cfg.data,
        match t.engine() {
            Some(e) => format!(
                "DP-SGD (σ = {:.4}, C = {}, δ = {})",
                e.noise_multiplier(),
                cfg.max_grad_norm,
                cfg.delta
            ),
            None => "non-private SGD".to_string(),
        },
        device.describe(),
        cfg.epochs,
        t.steps_per_epoch(),
        cfg.batch_size,
        if cfg.seed.is_none() {
            ", secure mode"
        } else {
            ""
        }
    );
    if let InputNorm::Private(fs) = &cfg.input_norm {
        let alone = match t.engine() {
            Some(_) => format!(
                "ε of the statistics alone {:.3} (RDP, δ = {}); included in every ε below",
                dpsgd::accounting::epsilon(
                    dpsgd::accounting::Method::Rdp,
                    &fs.history()?,
                    cfg.delta
                )?,
                cfg.delta
            ),
            None => "exact (non-private run)".to_string(),
        };
        println!(
            "input normalisation: private per-channel statistics (σ_n = {}, clip {} / {}), {alone}",
            fs.noise_multiplier, fs.mean_clip, fs.sq_clip
        );
    }
    if cfg.validation > 0 {
        println!(
            "validation: {} held-out training examples — their loss and accuracy are private data, not covered by ε",
            cfg.validation
        );
    }
    while t.epochs_done() < cfg.epochs {
        let e = t.epochs_done() + 1;
        let bar = ProgressBar::new(t.steps_per_epoch());
        bar.set_style(
            ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} steps {elapsed}")
                .map_err(|e| Error::invalid("progress template", e, "valid"))?
                .progress_chars("=> "),
        );
        bar.set_message(format!("{e}/{}", cfg.epochs));
        // The lot size the callback receives is private (a count of sampled examples): only
        // the step count is shown.
        let m = t.train_epoch(|_, _| bar.inc(1))?;
        bar.finish_and_clear();
        // Durable before released: the checkpoint, with the accountant's record of this epoch,
        // is saved first; only then is the epoch written to metrics.jsonl and printed. A crash
        // in between leaves an accounted epoch unprinted, never a printed epoch unaccounted
        // (a secure-mode resume redoes an uncheckpointed epoch with fresh noise).
        t.save_checkpoint(out)?;
        write_metrics(out, t.metrics())?;
        println!("{}", epoch_line(&m, cfg.epochs));
        if let Err(err) = super::plot::plot_run(out, t.metrics()) {
            eprintln!("warning: {err}");
        }
    }
    t.save_model(out.join("model.safetensors"))?;
    if let Some(m) = t.metrics().last() {
        println!(
            "done: {} accuracy {:.2}%{}{}; wrote {}",
            m.eval_split,
            100.0 * m.eval_accuracy,
            not_covered(m),
            match (m.epsilon_rdp, m.epsilon_prv) {
                (Some(r), Some(p)) =>
                    format!(" at ε = {r:.3} (RDP) / {p:.3} (PRV), δ = {}", cfg.delta),
                _ => " (non-private)".to_string(),
            },
            out.display()
        );
    }
    Ok(t.metrics().to_vec())
}

/// Writes `metrics.jsonl` (one JSON object per epoch) atomically.
fn write_metrics(out: &Path, metrics: &[EpochMetrics]) -> Result<()> {
    let jsonl: String = metrics
        .iter()
        .map(|m| serde_json::to_string(m).map(|s| s + "\n"))
        .collect::<std::result::Result<_, _>>()?;
    write_atomic(&out.join("metrics.jsonl"), jsonl.as_bytes())
}

/// " (not covered by ε)" after figures computed from held-out training data.
fn not_covered(m: &EpochMetrics) -> &'static str {
    if m.eval_private_data {
        " (not covered by ε)"
    } else {
        ""
    }
}

/// The line printed after an epoch. The training loss appears only in non-private runs (a
/// private run does not compute it); validation figures are marked as not covered by ε.
fn epoch_line(m: &EpochMetrics, epochs: u64) -> String {
    let train = m
        .train_loss
        .map_or(String::new(), |l| format!("  train loss {l:.4}"));
    let eps = match (m.epsilon_rdp, m.epsilon_prv) {
        (Some(r), Some(p)) => format!("  ε {r:.3} (RDP) / {p:.3} (PRV)"),
        _ => String::new(),
    };
    format!(
        "epoch {:>3}/{epochs}{train}  {s} loss {:.4}  {s} acc {:.2}%{}{eps}  {:.1} s",
        m.epoch,
        m.eval_loss,
        100.0 * m.eval_accuracy,
        not_covered(m),
        m.train_seconds,
        s = m.eval_split,
    )
}

/// Runs `dpsgd sweep`.
pub fn sweep(a: SweepArgs) -> Result<()> {
    check_repeats(&a.common)?;
    for &e in &a.epsilons {
        if !(e.is_finite() && e > 0.0) {
            return Err(Error::invalid("--epsilons", e, "finite and > 0"));
        }
    }
    let mut points = Vec::new();
    let mut rows = Vec::new();
    // Every run of the sweep evaluates on the same split (the flags are shared).
    let split = if a.common.validation > 0 {
        "validation"
    } else {
        "test"
    };
    for &e in &a.epsilons {
        let cfg = config(&a.common, Some(NoiseSpec::TargetEpsilon(e)))?;
        let (acc, runs) = sweep_point(&cfg, &a.common, &a.out.join(format!("eps-{e}")))?;
        let last = runs
            .last()
            .and_then(|m| m.last())
            .cloned()
            .ok_or_else(|| Error::invalid("--epochs", 0, ">= 1"))?;
        points.push((e, acc));
        rows.push(serde_json::json!({"target_epsilon": e, "epsilon_rdp": last.epsilon_rdp, "epsilon_prv": last.epsilon_prv, "accuracy": acc.mean, "accuracy_summary": acc, "eval_split": last.eval_split, "eval_private_data": last.eval_private_data, "noise_multiplier": last.noise_multiplier}));
    }
    let baseline = if a.non_private {
        let (acc, _) = sweep_point(
            &config(&a.common, None)?,
            &a.common,
            &a.out.join("non-private"),
        )?;
        Some(acc)
    } else {
        None
    };
    let summary = serde_json::json!({"points": rows, "non_private_accuracy": baseline.map(|b| b.mean), "non_private_summary": baseline, "repeats": a.common.repeats, "eval_split": split, "eval_private_data": a.common.validation > 0});
    write_atomic(
        &a.out.join("sweep.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    let png = a.out.join("accuracy_vs_epsilon.png");
    let sweep_points: Vec<super::plot::SweepPoint> = points
        .iter()
        .map(|(e, a)| super::plot::SweepPoint {
            epsilon: *e,
            mean: a.mean,
            std: a.std,
            runs: a.n,
        })
        .collect();
    super::plot::plot_sweep(&png, &sweep_points, baseline.map(|b| b.mean), split)?;
    println!(
        "sweep: {} points; wrote {} and sweep.json",
        points.len(),
        png.display()
    );
    let note = if a.common.validation > 0 {
        " (held-out training data: not covered by ε)"
    } else {
        ""
    };
    for (e, acc) in &points {
        println!("  ε = {e}: {split} accuracy {}{note}", acc.percent());
    }
    if let Some(b) = baseline {
        println!("  non-private: {split} accuracy {}", b.percent());
    }
    Ok(())
}

fn check_repeats(c: &CommonArgs) -> Result<()> {
    if c.repeats == 0 {
        return Err(Error::invalid("--repeats", 0, ">= 1"));
    }
    Ok(())
}

/// One point of a sweep: a single run into `dir` (resumed if it has a checkpoint), or
/// `--repeats` runs into `dir/repeat-K/`.
fn sweep_point(
    cfg: &TrainConfig,
    common: &CommonArgs,
    dir: &Path,
) -> Result<(Summary, Vec<Vec<EpochMetrics>>)> {
    if common.repeats <= 1 {
        let m = run(
            cfg.clone(),
            &common.device,
            dir,
            dir.join("checkpoint.safetensors").exists(),
        )?;
        let acc = m
            .last()
            .map(|l| l.eval_accuracy)
            .ok_or_else(|| Error::invalid("--epochs", 0, ">= 1"))?;
        return Ok((Summary::of(&[acc])?, vec![m]));
    }
    repeat(cfg, common, dir, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnist_default_clip_is_a_third_of_the_data_independent_bounds_rounded_up() {
        let (ca, cb) = scatter_clip_bounds(ScatterParams::MNIST, 1).unwrap();
        let (ma, mb) = MNIST_NORM_CLIP;
        assert!(
            ma >= ca / 3.0 && ma - ca / 3.0 < 1e-4,
            "{ma} vs {}",
            ca / 3.0
        );
        assert!(
            mb >= cb / 3.0 && mb - cb / 3.0 < 1e-4,
            "{mb} vs {}",
            cb / 3.0
        );
    }
}
