//! dpsgd's privacy engine driving a [candle](https://github.com/huggingface/candle) model: DP-SGD
//! on MNIST with a 784–128–10 ReLU MLP, on the CPU.
//!
//! Who does what:
//! - **candle** (`candle-core`, `candle-nn` 0.11.1, pinned) holds the model — two
//!   `candle_nn::Linear` layers over `candle_core::Var`s — runs its forward pass and its
//!   backward pass (autograd), and applies the update with its own optimizer
//!   (`candle_nn::AdamW`, fed the noised gradient through a `GradStore`).
//! - **dpsgd** (the lean library, `default-features = false`) loads MNIST
//!   (`dpsgd::data::Dataset`), keys every random stream from one `dpsgd::rng::RunKeys` (the
//!   initial weights, the Poisson sampling of the lots, the gradient noise), samples the lots
//!   (`PoissonSampler`), and does the private part in `PrivacyEngine`: clips each example's
//!   gradient, sums the lot, adds Gaussian noise, divides by the expected lot size, and
//!   accounts ε (calibrating σ so that ε stays within the target over the planned steps,
//!   reporting it under RDP and PRV).
//!
//! Per-sample gradients in candle: candle has no `vmap`, and its `backward` keeps the
//! gradients of variables only, so each layer's pre-activation output gets a zero "probe"
//! `Var` of shape `[B, out]` added to it: the gradient of the *summed* loss with respect to
//! the probe is each example's `dL_i/dz_i`, one row per example. A `Linear` layer's
//! per-sample gradients are then `dz_i ⊗ x_i` for the weight and `dz_i` for the bias
//! (Goodfellow, "Efficient Per-Example Gradient Computations", 2015) — one backward per
//! physical batch instead of one per example (the test below checks them against one
//! backward per example). The rows are laid out in the engine's `Layout` order (`fc1.weight`,
//! `fc1.bias`, `fc2.weight`, `fc2.bias`, PyTorch's), copied out of candle as one `[B, P]`
//! slice (`flatten_all` + `to_vec1`) and handed to `PrivacyEngine::accumulate` as a CPU
//! `Buffer` without a further copy (`Buffer::from_vec`).
//!
//! Privacy: the lots are Poisson-sampled with rate q (what the accountant assumes); nothing
//! computed from a lot (its loss, its size, its un-noised sum) is printed — only ε and the
//! accuracy on the public test set. Without `--seed` the run is in secure mode (a 256-bit key
//! from the operating system, ChaCha20 streams, never printed); `--seed S` makes it
//! reproducible (Philox streams; for experiments, not for releasing a model).
//!
//! Run from the repository root (MNIST in `data/mnist`, `scripts/fetch-mnist`):
//!
//! ```text
//! cargo run --release --manifest-path examples/candle-embed/Cargo.toml -- [--steps N] [--seed S]
//!     [--epsilon E] [--lr LR] [--data DIR | --synthetic N]
//! ```
//!
//! `--synthetic N` trains on N examples of dpsgd's synthetic MNIST-shaped data instead (no
//! download; what `scripts/check-candle-example` uses when MNIST is absent).
//!
//! On the GPU: candle 0.11.1's `cuda` feature is built on cudarc 0.19.10, the release dpsgd's
//! `cuda` feature uses, so in one build cargo would pick a single cudarc, and candle's
//! `CudaStorage::as_cuda_slice::<f32>()` is a `cudarc::driver::CudaSlice<f32>`, the type
//! dpsgd's CUDA `Buffer` wraps. Handing it over without a copy is still not possible with
//! these versions (from reading their sources; this crate is built without CUDA): (1) the two
//! crates enable conflicting cudarc features — candle `dynamic-linking` and
//! `cuda-version-from-build-system`, dpsgd `dynamic-loading` and `cuda-13000` — and cudarc's
//! build script refuses `dynamic-linking` together with `dynamic-loading`, so a crate with
//! both `cuda` features does not build; (2) dpsgd's public API cannot wrap a foreign
//! `CudaSlice` in a `Buffer` (`Buffer::from_slice` copies from the host; the storage is
//! private), so it would need a constructor or an `accumulate` over a `CudaView`, and an
//! ordering between the streams: candle works on a stream of its own (`new_stream`, non-
//! blocking), dpsgd on the default stream of the same primary context. Today the way across
//! is through host memory, as here.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device as CandleDevice, Module, Tensor, Var, D};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW};
use dpsgd::accounting::Method;
use dpsgd::data::{Dataset, Split, DEFAULT_MNIST_DIR};
use dpsgd::engine::{NoiseSpec, PrivacyConfig, PrivacyEngine};
use dpsgd::ops::Clipping;
use dpsgd::rng::{Purpose, RandomBits, RunKeys};
use dpsgd::sampling::PoissonSampler;
use dpsgd::{Buffer, Device, Layout};
use std::time::Instant;

const IN: usize = 28 * 28;
const HIDDEN: usize = 128;
const CLASSES: usize = 10;
/// Expected lot size q·N.
const LOT: f64 = 256.0;
/// Examples per `accumulate` call (a lot is cut into physical batches of at most this many).
const PHYSICAL_BATCH: usize = 64;
const DELTA: f64 = 1e-5;
const CLIP: f32 = 1.0;

struct Args {
    steps: u64,
    seed: Option<u64>,
    epsilon: f64,
    lr: f64,
    data: String,
    synthetic: Option<usize>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        steps: 500,
        seed: None,
        epsilon: 3.0,
        lr: 2e-3,
        data: DEFAULT_MNIST_DIR.to_string(),
        synthetic: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--steps" => a.steps = value()?.parse().context("--steps")?,
            "--seed" => a.seed = Some(value()?.parse().context("--seed")?),
            "--epsilon" => a.epsilon = value()?.parse().context("--epsilon")?,
            "--lr" => a.lr = value()?.parse().context("--lr")?,
            "--data" => a.data = value()?,
            "--synthetic" => a.synthetic = Some(value()?.parse().context("--synthetic")?),
            "-h" | "--help" => {
                println!(
                    "usage: candle-embed [--steps N] [--seed S] [--epsilon E] [--lr LR] \
                     [--data DIR | --synthetic N]"
                );
                std::process::exit(0);
            }
            _ => bail!("unknown argument {flag} (try --help)"),
        }
    }
    if a.steps == 0 {
        bail!("--steps must be >= 1");
    }
    Ok(a)
}

/// The candle model: `fc1` (784 → 128), ReLU, `fc2` (128 → 10), over `Var`s that the optimizer
/// updates in place (the `Linear`s share their storage).
struct Mlp {
    vars: Vec<Var>, // fc1.weight, fc1.bias, fc2.weight, fc2.bias: the engine's Layout order
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    /// PyTorch's `nn.Linear` initialisation, U(−1/√fan_in, 1/√fan_in), drawn from the run's
    /// `ModelInit` stream.
    fn new(rng: &mut impl RandomBits, dev: &CandleDevice) -> Result<Self> {
        let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n)
                .map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32)
                .collect()
        };
        let w1 = Var::from_vec(uniform(HIDDEN * IN, IN), (HIDDEN, IN), dev)?;
        let b1 = Var::from_vec(uniform(HIDDEN, IN), HIDDEN, dev)?;
        let w2 = Var::from_vec(uniform(CLASSES * HIDDEN, HIDDEN), (CLASSES, HIDDEN), dev)?;
        let b2 = Var::from_vec(uniform(CLASSES, HIDDEN), CLASSES, dev)?;
        let fc1 = Linear::new(w1.as_tensor().clone(), Some(b1.as_tensor().clone()));
        let fc2 = Linear::new(w2.as_tensor().clone(), Some(b2.as_tensor().clone()));
        Ok(Mlp {
            vars: vec![w1, b1, w2, b2],
            fc1,
            fc2,
        })
    }

    /// The parameter tensors' sizes, in order: the engine's `Layout`.
    fn sizes(&self) -> Vec<usize> {
        self.vars.iter().map(|v| v.elem_count()).collect()
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.fc2.forward(&self.fc1.forward(x)?.relu()?)?)
    }

    /// The per-sample gradients of the cross-entropy loss of a batch (`x`: `[B, 784]`, `y`:
    /// `[B]` u32) as a `[B, P]` tensor whose rows follow [`Mlp::sizes`]. One backward pass:
    /// zero probes on the pre-activations give each example's `dL_i/dz_i` (module docs).
    fn per_sample_grads(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        let dev = x.device();
        let probe1 = Var::zeros((b, HIDDEN), DType::F32, dev)?;
        let probe2 = Var::zeros((b, CLASSES), DType::F32, dev)?;
        let h = (self.fc1.forward(x)? + probe1.as_tensor())?.relu()?;
        let z2 = (self.fc2.forward(&h)? + probe2.as_tensor())?;
        let loss = summed_cross_entropy(&z2, y)?;
        let grads = loss.backward()?;
        let dz1 = grads.get(&probe1).context("no gradient for probe 1")?; // [B, 128]
        let dz2 = grads.get(&probe2).context("no gradient for probe 2")?; // [B, 10]
        let outer = |dz: &Tensor, a: &Tensor| -> Result<Tensor> {
            // [B, out, 1] * [B, 1, in] → [B, out, in] → [B, out·in] (row-major = the weight's).
            Ok(dz
                .unsqueeze(2)?
                .broadcast_mul(&a.unsqueeze(1)?)?
                .flatten_from(1)?)
        };
        let h = h.detach();
        Ok(Tensor::cat(
            &[&outer(dz1, x)?, dz1, &outer(dz2, &h)?, dz2],
            1,
        )?)
    }

    /// Accuracy on `data`, in batches of 1000.
    fn accuracy(&self, data: &Dataset, dev: &CandleDevice) -> Result<f64> {
        let mut correct = 0usize;
        let n = data.len();
        for start in (0..n).step_by(1000) {
            let end = (start + 1000).min(n);
            let x =
                Tensor::from_slice(&data.images()[start * IN..end * IN], (end - start, IN), dev)?;
            let pred = self.forward(&x)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            correct += pred
                .iter()
                .zip(&data.labels()[start..end])
                .filter(|(p, l)| p == l)
                .count();
        }
        Ok(correct as f64 / n as f64)
    }
}

/// Σ_i −log softmax(z_i)[y_i] (summed, not averaged: each example's gradient is its own).
fn summed_cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(lsm.gather(&y.unsqueeze(1)?, 1)?.sum_all()?.neg()?)
}

fn load(args: &Args) -> Result<(Dataset, Dataset, &'static str)> {
    if let Some(n) = args.synthetic {
        // Public synthetic data (fixed data seeds, not the run's keys).
        let train = Dataset::synthetic(n, 1)?;
        let test = Dataset::synthetic(2000, 2)?;
        return Ok((train, test, "synthetic"));
    }
    let train = Dataset::mnist(&args.data, Split::Train)
        .with_context(|| format!("loading MNIST from {} (or pass --synthetic N)", args.data))?;
    let test = Dataset::mnist(&args.data, Split::Test)?;
    Ok((train, test, "MNIST"))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let (train, test, name) = load(&args)?;
    if train.example_len() != IN || train.classes() != CLASSES {
        bail!("expected 1×28×28 images in 10 classes");
    }
    let n = train.len();
    let q = (LOT / n as f64).min(1.0);

    let keys = RunKeys::from_seed(args.seed)?;
    let cdev = CandleDevice::Cpu;
    let model = Mlp::new(&mut keys.key(Purpose::ModelInit).rng(0), &cdev)?;
    let layout = Layout::from_sizes(&model.sizes())?;
    let p = layout.num_params();
    let cfg = PrivacyConfig {
        noise: NoiseSpec::TargetEpsilon(args.epsilon),
        delta: DELTA,
        clipping: Clipping::Flat(CLIP),
        sample_rate: q,
        dataset_size: n,
        planned_steps: args.steps,
        accountant: Method::Rdp,
    };
    let device = Device::Cpu;
    let mut engine = PrivacyEngine::with_keys(cfg, layout, &device, &keys)?;
    let mut sampler = PoissonSampler::with_key(n, q, keys.key(Purpose::Sampling))?;
    let mut opt = AdamW::new(
        model.vars.clone(),
        ParamsAdamW {
            lr: args.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;

    println!(
        "candle {IN}-{HIDDEN}-{CLASSES} MLP (P = {p}) on {name} (N = {n}, {} test); dpsgd: \
         q = {q:.5} (expected lot {LOT}), C = {CLIP}, σ = {:.3} for ε = {} at δ = {DELTA} \
         over {} steps; {}",
        test.len(),
        engine.noise_multiplier(),
        args.epsilon,
        args.steps,
        if keys.is_secure() {
            "secure mode (OS key, ChaCha20)".to_string()
        } else {
            format!(
                "seeded ({}; reproducible, not for release)",
                args.seed.unwrap_or(0)
            )
        }
    );

    let mut lot = Vec::new();
    let mut xs = vec![0f32; PHYSICAL_BATCH * IN];
    let mut ys = vec![0u32; PHYSICAL_BATCH];
    let mut noisy = Buffer::<f32>::zeros(&device, p)?;
    let every = (args.steps / 10).max(1);
    let (mut t_grads, mut t_engine) = (0f64, 0f64);
    let start = Instant::now();
    for step in 1..=args.steps {
        sampler.sample_into(&mut lot);
        for chunk in lot.chunks(PHYSICAL_BATCH) {
            let b = chunk.len();
            train.gather(chunk, &mut xs[..b * IN], &mut ys[..b])?;
            let t0 = Instant::now();
            let x = Tensor::from_slice(&xs[..b * IN], (b, IN), &cdev)?;
            let y = Tensor::from_slice(&ys[..b], b, &cdev)?;
            let rows = model
                .per_sample_grads(&x, &y)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let t1 = Instant::now();
            engine.accumulate(&Buffer::from_vec(rows), b)?;
            t_grads += (t1 - t0).as_secs_f64();
            t_engine += t1.elapsed().as_secs_f64();
        }
        // Clip-sum + noise + accounting → the noised mean gradient, in the Layout's order.
        let t0 = Instant::now();
        engine.noisy_gradient(&mut noisy)?;
        t_engine += t0.elapsed().as_secs_f64();
        let g = noisy.as_slice().context("the engine is on the CPU")?;
        let mut store = GradStore::default();
        for (s, var) in model.vars.iter().enumerate() {
            let seg = &g[engine.layout().segment(s)];
            store.insert(
                var.as_tensor(),
                Tensor::from_slice(seg, var.shape(), &cdev)?,
            );
        }
        opt.step(&store)?; // candle-nn's optimizer on dpsgd's noised gradient
        if step % every == 0 || step == args.steps {
            println!(
                "step {step:>5}/{}  ε = {:.3} (RDP) / {:.3} (PRV)  test accuracy {:.2}%  [{:.0} s]",
                args.steps,
                engine.epsilon_with(Method::Rdp)?,
                engine.epsilon_with(Method::Prv)?,
                100.0 * model.accuracy(&test, &cdev)?,
                start.elapsed().as_secs_f64()
            );
        }
    }
    let s = args.steps as f64;
    println!(
        "per step: {:.1} ms per-sample gradients in candle, {:.1} ms clip + noise + accounting \
         in dpsgd (ε = {:.3} at δ = {DELTA}, RDP)",
        1e3 * t_grads / s,
        1e3 * t_engine / s,
        engine.epsilon()?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe trick's rows equal one candle backward per example.
    #[test]
    fn per_sample_rows_match_one_backward_per_example() -> Result<()> {
        let dev = CandleDevice::Cpu;
        let model = Mlp::new(&mut RunKeys::seeded(3).key(Purpose::ModelInit).rng(0), &dev)?;
        let data = Dataset::synthetic(5, 4)?;
        let x = Tensor::from_slice(data.images(), (5, IN), &dev)?;
        let y = Tensor::from_slice(data.labels(), 5, &dev)?;
        let rows = model.per_sample_grads(&x, &y)?.to_vec2::<f32>()?;
        let p: usize = model.sizes().iter().sum();
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.len(), p);
            let xi = x.narrow(0, i, 1)?;
            let yi = y.narrow(0, i, 1)?;
            let grads = summed_cross_entropy(&model.forward(&xi)?, &yi)?.backward()?;
            let mut want = Vec::with_capacity(p);
            for v in &model.vars {
                let g = grads.get(v.as_tensor()).context("no gradient")?;
                want.extend(g.flatten_all()?.to_vec1::<f32>()?);
            }
            let err = row
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-5, "example {i}: max |difference| {err}");
            assert!(want.iter().any(|&w| w.abs() > 1e-3), "trivial gradient");
        }
        Ok(())
    }
}
