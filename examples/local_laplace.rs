//! The "noised local gradients" experiment (issue 13): the PyTorch MNIST example's network
//! trained by a server whose local copy computes each batch's gradient and sends it with
//! Laplace noise — first **as it was run** (no DP guarantee), then **corrected** (per-example
//! L1 clipping, Poisson sampling, Laplace noise scaled to the clipping bound, total ε from the
//! PLD accountant of the subsampled Laplace mechanism), then DP-SGD with Gaussian noise at the
//! same total ε on the same network.
//!
//! ```text
//! cargo run --release --example local_laplace -- --quick --json local_laplace.json
//! cargo run --release --example local_laplace -- --epochs 14            # the full sweep
//! ```
//!
//! Everything here is the library's public API: `nn::models::pytorch_mnist_net` (with its
//! Dropout layers, masks from the `Purpose::Dropout` key), `optim::Adadelta` + `optim::StepLr`,
//! `ops::add_laplace`, `ops::clip_l1_and_accumulate`, `accounting::epsilon_pld_laplace`,
//! `engine::PrivacyEngine`, `sampling::PoissonSampler`. CPU only (Dropout, Adadelta and L1
//! clipping have no GPU twin yet).
//!
//! What each part guarantees is printed at the start of the run and stored in the JSON.

use clap::Parser;
use dpsgd::accounting::{epsilon_pld_laplace, LaplaceEntry, Method, PldOptions};
use dpsgd::data::{Dataset, Split};
use dpsgd::engine::{NoiseSpec, PrivacyConfig, PrivacyEngine};
use dpsgd::nn::{models, DropoutMode, Grads, Loss, Reduction, Sequential, Workspace};
use dpsgd::optim::{Adadelta, AdadeltaConfig, StepLr};
use dpsgd::rng::{Purpose, RandomBits, RunKeys};
use dpsgd::sampling::PoissonSampler;
use dpsgd::{ops, Buffer, Clipping, Device, Error, NoiseKey, Result};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::style::RGBColor;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[allow(dead_code)]
#[path = "../src/cli/plot.rs"]
mod plot;

#[derive(Parser, Debug)]
#[command(about = "The noised-local-gradients experiment of issue 13 (as run, and corrected)")]
struct Args {
    /// MNIST folder (the idx files).
    #[arg(long, default_value = "data/mnist")]
    data: PathBuf,
    /// A short run: 2 000 training and 1 000 test images, 2 epochs, ε ∈ {0.1, 0.5, 1.0} as run,
    /// total ε ∈ {1, 4, 16} corrected (under 20 minutes on 2 cores).
    #[arg(long)]
    quick: bool,
    /// Epochs (default 14, as the original; 2 with --quick).
    #[arg(long)]
    epochs: Option<u64>,
    /// Use the first N training images (default all; 2 000 with --quick).
    #[arg(long)]
    train_subset: Option<usize>,
    /// Use the first N test images (default all; 1 000 with --quick).
    #[arg(long)]
    test_subset: Option<usize>,
    /// The as-run per-step ε values, comma-separated (default 0.1,0.2,…,1.0).
    #[arg(long, value_delimiter = ',')]
    eps: Option<Vec<f64>>,
    /// The corrected variants' total ε values (default 0.5,1,2,4,8).
    #[arg(long, value_delimiter = ',')]
    total_eps: Option<Vec<f64>>,
    /// Per-example L1 clipping bound of the corrected Laplace variant.
    #[arg(long, default_value_t = 1.0)]
    l1_clip: f64,
    /// Per-example L2 clipping bound of the Gaussian DP-SGD variant.
    #[arg(long, default_value_t = 1.0)]
    l2_clip: f64,
    /// δ of the corrected variants.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Batch size (as run), and the expected lot size q·N of the corrected variants.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seed of the run's keys (model init, shuffles, dropout, sampling, noise).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Folder for the PNG plots.
    #[arg(long, default_value = "docs/results/local-laplace")]
    out: PathBuf,
    /// Write every figure to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Skip the as-run part.
    #[arg(long)]
    skip_as_run: bool,
    /// Skip the corrected (DP) part.
    #[arg(long)]
    skip_corrected: bool,
}

/// One training run's record.
#[derive(Serialize, Clone, Debug)]
struct RunRecord {
    /// "no-dp", "as-run", "as-run-sqrt-m", "laplace-dp", "gaussian-dp".
    kind: String,
    /// As run: the per-step ε of the Laplace(Δ/ε) noise; corrected: the total ε.
    epsilon: Option<f64>,
    /// The Laplace scale per coordinate (as run) or the noise multiplier (b/C or σ).
    noise: Option<f64>,
    /// Test accuracy after each epoch.
    accuracy: Vec<f64>,
    seconds: f64,
    /// What this run guarantees.
    guarantee: String,
}

#[derive(Serialize)]
struct Report {
    command: String,
    train_examples: usize,
    test_examples: usize,
    epochs: u64,
    batch: usize,
    parameter_tensors: usize,
    parameters: usize,
    statements: Vec<String>,
    runs: Vec<RunRecord>,
}

const AS_RUN_STATEMENT: &str = "AS RUN there is NO differential-privacy guarantee: the gradient is not clipped, so Δ = 1 is not a bound on how much one example changes it (the Laplace scale Δ/ε is calibrated to a sensitivity nobody enforced), and a fresh ε is spent at every step on the same examples (even with a true Δ, T steps would compose to T·ε, not ε).";

fn check_eps(name: &'static str, v: &[f64]) -> Result<()> {
    if v.is_empty() {
        return Err(Error::invalid(name, "an empty list", "at least one ε"));
    }
    for &e in v {
        if !(e.is_finite() && e > 0.0) {
            return Err(Error::invalid(
                name,
                e,
                "every ε finite and > 0 (ε ≤ 0 is no privacy parameter)",
            ));
        }
    }
    Ok(())
}

/// Test accuracy of `model` (dropout off).
fn evaluate(model: &Sequential, ws: &mut Workspace, test: &Dataset) -> Result<f64> {
    ws.set_dropout(DropoutMode::Eval);
    let per = test.example_len();
    let b = ws.max_batch();
    let mut correct = 0usize;
    let n = test.len();
    let mut i = 0;
    while i < n {
        let j = (i + b).min(n);
        model.forward_slice(ws, &test.images()[i * per..j * per])?;
        let out = ws.output();
        for (k, row) in out.chunks_exact(10).enumerate() {
            let arg = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |a, (c, &v)| if v > a.1 { (c, v) } else { a },
                )
                .0;
            if arg as u32 == test.labels()[i + k] {
                correct += 1;
            }
        }
        i = j;
    }
    Ok(correct as f64 / n as f64)
}

fn bar(len: u64, msg: String) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:28} [{bar:30}] {pos}/{len} steps {elapsed_precise} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

/// A progress line: above the bar on a terminal, else on stderr (the bar is hidden when
/// stderr is not a terminal).
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{} {line}", pb.message());
    } else {
        pb.println(line);
    }
}

struct Ctx<'a> {
    train: &'a Dataset,
    test: &'a Dataset,
    keys: RunKeys,
    epochs: u64,
    batch: usize,
    init_seed: u64,
}

/// The original training: shuffled batches of 64, mean NLL, the batch gradient computed by the
/// local copy, Laplace(0, scale) added to every element (scale 0: no noise), Adadelta with
/// StepLR(γ 0.7) per epoch.
fn train_as_run(ctx: &Ctx<'_>, scale: f64, label: String) -> Result<(Vec<f64>, f64)> {
    let t0 = Instant::now();
    let mut model = models::pytorch_mnist_net(&Device::Cpu, ctx.init_seed)?;
    let p = model.num_params();
    let mut ws = model.workspace(ctx.batch)?;
    let mut ws_eval = model.workspace(250)?;
    let mut opt = Adadelta::new(AdadeltaConfig::new(1.0), p)?;
    let sched = StepLr::new(1.0, 0.7, 1)?;
    let n = ctx.train.len();
    let per = ctx.train.example_len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut shuffle = ctx.keys.key(Purpose::Shuffle).rng(0);
    let noise_key = ctx.keys.key(Purpose::GradientNoise);
    let drop_key = ctx.keys.key(Purpose::Dropout);
    let mut grad = Buffer::zeros(&Device::Cpu, p)?;
    let (mut x, mut y) = (vec![0f32; ctx.batch * per], vec![0u32; ctx.batch]);
    let steps_per_epoch = n.div_ceil(ctx.batch) as u64;
    let pb = bar(ctx.epochs * steps_per_epoch, label);
    let mut acc = Vec::new();
    let mut step = 0u64;
    for epoch in 0..ctx.epochs {
        opt.config.lr = sched.lr(epoch) as f32;
        for i in (1..n).rev() {
            order.swap(i, shuffle.next_below(i as u64 + 1) as usize);
        }
        for chunk in order.chunks(ctx.batch) {
            let b = chunk.len();
            ctx.train.gather(chunk, &mut x[..b * per], &mut y[..b])?;
            ws.set_dropout(DropoutMode::Train {
                key: drop_key,
                step,
                first_example: 0,
            });
            model.forward_slice(&mut ws, &x[..b * per])?;
            model.loss(&mut ws, Loss::CrossEntropy(&y[..b]), Reduction::Mean)?;
            model.backward(
                &mut ws,
                Grads::Sum {
                    grad: &mut grad,
                    accumulate: false,
                },
                false,
            )?;
            if scale > 0.0 {
                ops::add_laplace(
                    &mut grad,
                    scale,
                    NoiseKey::for_step_with(noise_key, step, 0)?,
                )?;
            }
            opt.step_buffers(model.params_mut(), &grad)?;
            step += 1;
            pb.inc(1);
        }
        acc.push(evaluate(&model, &mut ws_eval, ctx.test)?);
        say(
            &pb,
            format!(
                "  epoch {:2}: test accuracy {:.2}%",
                epoch + 1,
                100.0 * acc[acc.len() - 1]
            ),
        );
    }
    pb.finish_and_clear();
    Ok((acc, t0.elapsed().as_secs_f64()))
}

/// Which corrected variant.
#[derive(Clone, Copy)]
enum Dp {
    /// Per-example L1 clipping at C, Laplace(0, b·C) on the clipped sum.
    Laplace { c: f64, b: f64 },
    /// The library's PrivacyEngine: L2 clipping at C, Gaussian noise calibrated to the total ε.
    Gaussian { c: f64, eps: f64, delta: f64 },
}

fn no_engine() -> Error {
    Error::invalid("engine", "none", "a PrivacyEngine for the Gaussian variant")
}

/// Micro-batch of the per-example gradients.
const MICRO: usize = 16;

/// A corrected run: Poisson-sampled lots (rate q = batch/N), each example's gradient clipped,
/// noise on the clipped sum, divided by the expected lot size q·N, Adadelta + StepLR on the
/// noised mean. Returns the accuracies, the seconds and (Gaussian) σ.
fn train_dp(ctx: &Ctx<'_>, dp: Dp, label: String) -> Result<(Vec<f64>, f64, f64)> {
    let t0 = Instant::now();
    let mut model = models::pytorch_mnist_net(&Device::Cpu, ctx.init_seed)?;
    let p = model.num_params();
    let n = ctx.train.len();
    let per = ctx.train.example_len();
    let q = ctx.batch as f64 / n as f64;
    let mut sampler = PoissonSampler::with_key(n, q, ctx.keys.key(Purpose::Sampling))?;
    let steps_per_epoch = sampler.steps_per_epoch();
    let steps = ctx.epochs * steps_per_epoch;
    let mut ws = model.workspace(MICRO)?;
    let mut ws_eval = model.workspace(250)?;
    let mut opt = Adadelta::new(AdadeltaConfig::new(1.0), p)?;
    let sched = StepLr::new(1.0, 0.7, 1)?;
    let noise_key = ctx.keys.key(Purpose::GradientNoise);
    let drop_key = ctx.keys.key(Purpose::Dropout);
    let mut engine = match dp {
        Dp::Gaussian { c, eps, delta } => Some(PrivacyEngine::with_keys(
            PrivacyConfig {
                noise: NoiseSpec::TargetEpsilon(eps),
                delta,
                clipping: Clipping::Flat(c as f32),
                sample_rate: q,
                dataset_size: n,
                planned_steps: steps,
                accountant: Method::Prv,
            },
            model.layout().clone(),
            &Device::Cpu,
            &ctx.keys,
        )?),
        Dp::Laplace { .. } => None,
    };
    let sigma = engine.as_ref().map_or(0.0, |e| e.noise_multiplier());
    let mut rows = Buffer::zeros(&Device::Cpu, MICRO * p)?;
    let mut sum = Buffer::zeros(&Device::Cpu, p)?;
    let mut lot = Vec::new();
    let (mut x, mut y) = (vec![0f32; MICRO * per], vec![0u32; MICRO]);
    let pb = bar(steps, label);
    let mut acc = Vec::new();
    for step in 0..steps {
        let epoch = step / steps_per_epoch;
        opt.config.lr = sched.lr(epoch) as f32;
        sampler.sample_into(&mut lot);
        if let Some(s) = sum.as_mut_slice() {
            s.fill(0.0);
        }
        for (k, chunk) in lot.chunks(MICRO).enumerate() {
            let b = chunk.len();
            ctx.train.gather(chunk, &mut x[..b * per], &mut y[..b])?;
            ws.set_dropout(DropoutMode::Train {
                key: drop_key,
                step,
                first_example: (k * MICRO) as u64,
            });
            match (&mut engine, dp) {
                (Some(e), _) => {
                    e.accumulate_batch(
                        &model,
                        &mut ws,
                        &x[..b * per],
                        Loss::CrossEntropy(&y[..b]),
                    )?;
                }
                (None, Dp::Laplace { c, .. }) => {
                    model.forward_slice(&mut ws, &x[..b * per])?;
                    model.loss(&mut ws, Loss::CrossEntropy(&y[..b]), Reduction::Sum)?;
                    model.backward(&mut ws, Grads::PerSample(&mut rows), false)?;
                    ops::clip_l1_and_accumulate(&rows, b, c as f32, &mut sum)?;
                }
                (None, Dp::Gaussian { .. }) => return Err(no_engine()),
            }
        }
        match (&mut engine, dp) {
            (Some(e), _) => {
                e.noisy_gradient(&mut sum)?;
            }
            (None, Dp::Laplace { c, b }) => {
                ops::add_laplace(
                    &mut sum,
                    b * c,
                    NoiseKey::for_step_with(noise_key, step, 0)?,
                )?;
                let inv = (1.0 / (q * n as f64)) as f32;
                if let Some(s) = sum.as_mut_slice() {
                    s.iter_mut().for_each(|v| *v *= inv);
                }
            }
            (None, Dp::Gaussian { .. }) => return Err(no_engine()),
        }
        opt.step_buffers(model.params_mut(), &sum)?;
        pb.inc(1);
        if (step + 1) % steps_per_epoch == 0 {
            acc.push(evaluate(&model, &mut ws_eval, ctx.test)?);
            say(
                &pb,
                format!(
                    "  epoch {:2}: test accuracy {:.2}%",
                    epoch + 1,
                    100.0 * acc[acc.len() - 1]
                ),
            );
        }
    }
    pb.finish_and_clear();
    Ok((acc, t0.elapsed().as_secs_f64(), sigma))
}

/// The smallest Laplace noise multiplier b (scale / L1 bound) whose total ε over `steps`
/// subsampled steps is ≤ `target` at δ (PLD accountant, an upper bound): bisection on ln b.
fn calibrate_laplace(target: f64, q: f64, steps: u64, delta: f64) -> Result<(f64, f64)> {
    let opts = PldOptions::default();
    let eps = |b: f64| -> Result<f64> {
        Ok(epsilon_pld_laplace(&[LaplaceEntry::new(b, q, steps)?], delta, &opts)?.epsilon)
    };
    let (mut lo, mut hi) = (1e-3f64, 1.0f64);
    while eps(hi)? > target {
        lo = hi;
        hi *= 4.0;
        if hi > 1e9 {
            return Err(Error::invalid(
                "total_eps",
                target,
                "reachable with b ≤ 1e9",
            ));
        }
    }
    for _ in 0..40 {
        let mid = (lo * hi).sqrt();
        if eps(mid)? > target {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi / lo < 1.0 + 1e-4 {
            break;
        }
    }
    Ok((hi, eps(hi)?))
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    // Every input is checked before anything runs.
    let quick = args.quick;
    let epochs = args.epochs.unwrap_or(if quick { 2 } else { 14 });
    if epochs == 0 {
        return Err(Error::invalid("epochs", 0, ">= 1"));
    }
    let eps_list = args.eps.clone().unwrap_or_else(|| {
        if quick {
            vec![0.1, 0.5, 1.0]
        } else {
            (1..=10).map(|i| i as f64 / 10.0).collect()
        }
    });
    let total_list = args.total_eps.clone().unwrap_or_else(|| {
        if quick {
            vec![1.0, 4.0, 16.0]
        } else {
            vec![0.5, 1.0, 2.0, 4.0, 8.0]
        }
    });
    check_eps("eps", &eps_list)?;
    check_eps("total_eps", &total_list)?;
    for (name, c) in [("l1_clip", args.l1_clip), ("l2_clip", args.l2_clip)] {
        if !(c.is_finite() && c > 0.0) {
            return Err(Error::invalid(name, c, "a finite clipping bound > 0"));
        }
    }
    if !(args.delta > 0.0 && args.delta < 1.0) {
        return Err(Error::invalid("delta", args.delta, "in (0, 1)"));
    }
    if args.batch == 0 {
        return Err(Error::invalid("batch", 0, ">= 1"));
    }
    let train_full = Dataset::mnist(&args.data, Split::Train)?;
    let test_full = Dataset::mnist(&args.data, Split::Test)?;
    let take = |d: &Dataset, k: Option<usize>, name: &'static str| -> Result<Dataset> {
        match k {
            None => d.subset(&(0..d.len()).collect::<Vec<_>>()),
            Some(k) if k == 0 || k > d.len() => {
                Err(Error::invalid(name, k, format!("in 1..={}", d.len())))
            }
            Some(k) => d.subset(&(0..k).collect::<Vec<_>>()),
        }
    };
    let train = take(
        &train_full,
        args.train_subset.or(quick.then_some(2000)),
        "train_subset",
    )?;
    let test = take(
        &test_full,
        args.test_subset.or(quick.then_some(1000)),
        "test_subset",
    )?;
    if args.batch > train.len() {
        return Err(Error::invalid(
            "batch",
            args.batch,
            format!("<= the training examples ({})", train.len()),
        ));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| Error::Io {
        path: args.out.clone(),
        source: e,
    })?;

    let keys = RunKeys::seeded(args.seed);
    let probe = models::pytorch_mnist_net(&Device::Cpu, 0)?;
    let m = probe.param_info().len();
    let ctx = Ctx {
        train: &train,
        test: &test,
        init_seed: keys.key(Purpose::ModelInit).derive_u64(),
        keys,
        epochs,
        batch: args.batch,
    };
    let n = train.len();
    let q = args.batch as f64 / n as f64;
    let dp_steps = epochs * ((1.0 / q).round() as u64).max(1);
    let mut statements = vec![AS_RUN_STATEMENT.to_string()];
    statements.push(format!(
        "CORRECTED (Laplace): per-example L1 clipping at C = {}, Poisson sampling q = {:.5}, Laplace(0, b·C) on every coordinate of the clipped sum; total ε over all {dp_steps} steps at δ = {} from the PLD accountant of the subsampled Laplace mechanism (add/remove neighbours; sensitivity C in L1; a pessimistic, upper-bound discretisation). Assumes the single-coordinate shift is the worst case (checked numerically, tests/accounting.rs). Seeded (Philox) noise: the guarantee assumes a secret seed; use secure mode for a release.",
        args.l1_clip, q, args.delta
    ));
    statements.push(format!(
        "CORRECTED (Gaussian): DP-SGD with the library's PrivacyEngine, per-example L2 clipping at C = {}, the same q and steps, σ calibrated to the same total ε at δ = {} with the PLD accountant.",
        args.l2_clip, args.delta
    ));
    println!("noised local gradients: PyTorch MNIST net ({} parameters in m = {m} tensors), {} training / {} test images, {epochs} epochs, batch {}", probe.num_params(), n, test.len(), args.batch);
    for s in &statements {
        println!("\n{s}");
    }
    println!();

    let mut runs: Vec<RunRecord> = Vec::new();
    if !args.skip_as_run {
        println!("== as run (no DP guarantee) ==");
        let (acc, secs) = train_as_run(&ctx, 0.0, "no noise".into())?;
        println!(
            "no noise: final test accuracy {:.2}% ({secs:.0} s)",
            100.0 * acc[acc.len() - 1]
        );
        runs.push(RunRecord {
            kind: "no-dp".into(),
            epsilon: None,
            noise: None,
            accuracy: acc,
            seconds: secs,
            guarantee: "none (non-private)".into(),
        });
        for sqrt_m in [false, true] {
            for &e in &eps_list {
                let scale = 1.0 / e / if sqrt_m { (m as f64).sqrt() } else { 1.0 };
                let kind = if sqrt_m { "as-run-sqrt-m" } else { "as-run" };
                let (acc, secs) = train_as_run(&ctx, scale, format!("{kind} ε={e}"))?;
                println!(
                    "{kind:14} ε = {e:4}: Laplace scale {scale:.4}, final test accuracy {:.2}% ({secs:.0} s)",
                    100.0 * acc[acc.len() - 1]
                );
                runs.push(RunRecord {
                    kind: kind.into(),
                    epsilon: Some(e),
                    noise: Some(scale),
                    accuracy: acc,
                    seconds: secs,
                    guarantee: "none: unclipped gradient (Δ = 1 not a bound), ε spent at every step".into(),
                });
            }
        }
    }
    if !args.skip_corrected {
        println!("\n== corrected: DP at a total ε (δ = {}) ==", args.delta);
        for &e in &total_list {
            let (b, got) = calibrate_laplace(e, q, dp_steps, args.delta)?;
            let (acc, secs, _) = train_dp(
                &ctx,
                Dp::Laplace { c: args.l1_clip, b },
                format!("laplace-dp ε={e}"),
            )?;
            println!(
                "laplace-dp  total ε = {e:5} (PLD: {got:.3}): b/C = {b:.4}, final test accuracy {:.2}% ({secs:.0} s)",
                100.0 * acc[acc.len() - 1]
            );
            runs.push(RunRecord {
                kind: "laplace-dp".into(),
                epsilon: Some(e),
                noise: Some(b),
                accuracy: acc,
                seconds: secs,
                guarantee: format!(
                    "({got:.3}, {})-DP, add/remove one example (PLD, upper bound)",
                    args.delta
                ),
            });
            let (acc, secs, sigma) = train_dp(
                &ctx,
                Dp::Gaussian {
                    c: args.l2_clip,
                    eps: e,
                    delta: args.delta,
                },
                format!("gaussian-dp ε={e}"),
            )?;
            println!(
                "gaussian-dp total ε = {e:5}: σ = {sigma:.4}, final test accuracy {:.2}% ({secs:.0} s)",
                100.0 * acc[acc.len() - 1]
            );
            runs.push(RunRecord {
                kind: "gaussian-dp".into(),
                epsilon: Some(e),
                noise: Some(sigma),
                accuracy: acc,
                seconds: secs,
                guarantee: format!(
                    "(≤ {e}, {})-DP, add/remove one example (PrivacyEngine, PLD)",
                    args.delta
                ),
            });
        }
    }

    // Plots.
    let last = |r: &RunRecord| r.accuracy.last().copied().unwrap_or(f64::NAN);
    let series_of = |kind: &str| -> Vec<(f64, f64)> {
        runs.iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| r.epsilon.map(|e| (e, 100.0 * last(r))))
            .collect()
    };
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let grey = RGBColor(120, 120, 120);
    let mut pngs = Vec::new();
    if !args.skip_as_run {
        let base = runs
            .iter()
            .find(|r| r.kind == "no-dp")
            .map(last)
            .unwrap_or(f64::NAN);
        let (e0, e1) = eps_list
            .iter()
            .fold((f64::MAX, f64::MIN), |a, &e| (a.0.min(e), a.1.max(e)));
        let path = args.out.join("as_run_accuracy_vs_eps.png");
        plot::line_chart(
            &path,
            "As run (NO DP guarantee): accuracy vs per-step ε",
            "ε of Laplace(Δ/ε), Δ = 1 (not a bound)",
            "test accuracy (%)",
            &[
                plot::Series {
                    label: "Laplace(1/ε)",
                    points: series_of("as-run"),
                    color: blue,
                },
                plot::Series {
                    label: "Laplace(1/ε)/√m",
                    points: series_of("as-run-sqrt-m"),
                    color: orange,
                },
                plot::Series {
                    label: "no noise",
                    points: vec![(e0, 100.0 * base), (e1, 100.0 * base)],
                    color: grey,
                },
            ],
        )?;
        pngs.push(path);
        // With-DP vs without-DP curves over epochs (the original's other figures): the
        // no-noise run and the largest-ε noised runs.
        let emax = e1;
        let curve = |r: Option<&RunRecord>| -> Vec<(f64, f64)> {
            r.map(|r| {
                r.accuracy
                    .iter()
                    .enumerate()
                    .map(|(i, a)| ((i + 1) as f64, 100.0 * a))
                    .collect()
            })
            .unwrap_or_default()
        };
        let find = |k: &str| runs.iter().find(|r| r.kind == k && r.epsilon == Some(emax));
        let lab1 = format!("Laplace(1/ε), ε = {emax}");
        let lab2 = format!("Laplace(1/ε)/√m, ε = {emax}");
        let path = args.out.join("as_run_accuracy_per_epoch.png");
        plot::line_chart(
            &path,
            "As run (NO DP guarantee): with vs without noise",
            "epoch",
            "test accuracy (%)",
            &[
                plot::Series {
                    label: "no noise",
                    points: curve(runs.iter().find(|r| r.kind == "no-dp")),
                    color: grey,
                },
                plot::Series {
                    label: &lab1,
                    points: curve(find("as-run")),
                    color: blue,
                },
                plot::Series {
                    label: &lab2,
                    points: curve(find("as-run-sqrt-m")),
                    color: orange,
                },
            ],
        )?;
        pngs.push(path);
    }
    if !args.skip_corrected {
        let path = args.out.join("corrected_accuracy_vs_total_eps.png");
        plot::line_chart(
            &path,
            "Corrected: accuracy vs total ε (δ = 1e-5)",
            "total ε over all steps (PLD)",
            "test accuracy (%)",
            &[
                plot::Series {
                    label: "Laplace, L1 clipping",
                    points: series_of("laplace-dp"),
                    color: blue,
                },
                plot::Series {
                    label: "Gaussian DP-SGD, L2 clipping",
                    points: series_of("gaussian-dp"),
                    color: orange,
                },
            ],
        )?;
        pngs.push(path);
    }
    for p in &pngs {
        println!("wrote {}", p.display());
    }
    if let Some(path) = &args.json {
        let report = Report {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            train_examples: n,
            test_examples: test.len(),
            epochs,
            batch: args.batch,
            parameter_tensors: m,
            parameters: probe.num_params(),
            statements,
            runs,
        };
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::invalid("json", e.to_string(), "serialisable results"))?;
        std::fs::write(path, text).map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
