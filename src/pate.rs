//! PATE end to end (Private Aggregation of Teacher Ensembles; Papernot et al. ICLR 2017 and
//! ICLR 2018): disjoint partitions of the private training set, one non-private teacher per
//! partition, the teachers' vote histograms on public examples, a noisy aggregator
//! ([`Aggregator`]: LNMax, GNMax or Confident-GNMax, from [`crate::mechanisms::pate`]) that
//! labels some of them, and the privacy analysis of the answers ([`PrivacyReport`]). The
//! student is then trained on the labelled public examples with [`fit`], or semi-supervised on
//! them and the unlabelled public images with [`fit_fixmatch`] (consistency training, Sohn et
//! al. 2020) — post-processing of the answers and public data, no privacy cost; several
//! students from their own streams ([`student_stream`]) can be averaged ([`ensemble_predict`]),
//! post-processing too. Tuning holds
//! out a random part of the public images ([`validation_split`]); [`save_teacher_predictions`]
//! caches a seed's (private) teacher predictions for student variants.
//!
//! # What the guarantee covers
//! Each private training example is in exactly one partition ([`partition`]), so changing one
//! example changes one teacher, hence at most one vote of each histogram: the sensitivity the
//! aggregators' analyses assume. Only the aggregator's answers (and what is computed from them
//! and from public data: the student, its accuracy) are covered by ε. The vote histograms,
//! the teachers themselves and anything computed from them (their agreement, the number of
//! queries Confident-GNMax answered, the data-dependent ε) are functions of the private data
//! and are **not** covered.
//!
//! Models are built on the CPU ([`Device::cpu`]); [`train_teachers`] runs one rayon task per
//! teacher (each task's layers may use rayon too).
//!
//! All randomness comes from [`RunKeys`]: [`Purpose::Shuffle`] for the partition and the
//! training order, [`Purpose::ModelInit`] for the weights, [`Purpose::Augmentation`] for the
//! image shifts and FixMatch's augmentations, [`Purpose::Mechanism`] for the aggregator's
//! noise (stream 0) and the smooth-sensitivity release's (stream 1); the validation split is
//! stream [`VALIDATION_STREAM`] of [`Purpose::Shuffle`].

use crate::cpu::loss::Reduction;
use crate::data::Dataset;
use crate::error::check_positive;
use crate::mechanisms::pate::{
    confident_gnmax, default_orders, gnmax, lnmax, lnmax_epsilon, rdp_to_epsilon,
    ConfidentGnmaxAccountant, GnmaxAccountant, LnmaxRdpAccountant,
};
use crate::mechanisms::pate_smooth::{gnss_rdp, SmoothRelease, SmoothSensitivity};
use crate::nn::{models, Grads, Loss, Sequential};
use crate::optim::AdamConfig;
use crate::rng::{Purpose, RandomBits, Rng, RunKeys};
use crate::train::ModelKind;
use crate::{Buffer, Device, Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The stream of [`Purpose::Shuffle`] / [`Purpose::ModelInit`] / [`Purpose::Augmentation`]
/// used by teacher `i` is `i + 1`; the student's is this one (stream 0 of `Shuffle` is the
/// partition).
pub const STUDENT_STREAM: u64 = 1 << 40;

/// Splits `0..n` into `k` disjoint parts of sizes ⌊n/k⌋ or ⌈n/k⌉ after a uniform shuffle
/// (stream 0 of [`Purpose::Shuffle`]). Errors when `k` is 0 or larger than `n`.
pub fn partition(n: usize, k: usize, keys: &RunKeys) -> Result<Vec<Vec<usize>>> {
    if k == 0 || k > n {
        return Err(Error::invalid(
            "teachers",
            k,
            format!("in 1..={n} (each teacher needs at least one training example)"),
        ));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    shuffle(&mut idx, &mut keys.key(Purpose::Shuffle).rng(0));
    let mut parts = vec![Vec::with_capacity(n / k + 1); k];
    for (j, i) in idx.into_iter().enumerate() {
        parts[j % k].push(i);
    }
    Ok(parts)
}

fn shuffle(v: &mut [usize], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.next_below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// Non-private training of one model (teachers and the student): Adam on the mean
/// cross-entropy of shuffled mini-batches, with optional random shifts of the images or a
/// random affine augmentation ([`crate::augment::RandomAffine`]; free for the teachers, which
/// train non-privately: each augmented image stays in its own teacher's partition).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    /// The model.
    pub model: ModelKind,
    /// Passes over the data.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f32,
    /// Shift each training image by up to this many pixels in each direction (0: off).
    pub max_shift: usize,
    /// A random affine augmentation of each training image (rotation, scaling, translation,
    /// Cutout; [`crate::augment::RandomAffine`]) applied instead of the shifts when set: pixel
    /// models only. `None` (the default): shifts only.
    #[serde(default)]
    pub affine: Option<crate::augment::RandomAffine>,
}

impl FitConfig {
    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid("epochs", 0, ">= 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size", 0, ">= 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("lr", self.lr, "finite and > 0"));
        }
        if self.max_shift > 8 {
            return Err(Error::invalid("max_shift", self.max_shift, "<= 8 pixels"));
        }
        if self.model.uses_scattering() && self.max_shift > 0 {
            return Err(Error::invalid(
                "max_shift",
                self.max_shift,
                "0 for a scattering model (its inputs are 7×7 feature maps, not pixels: pass --shift 0)",
            ));
        }
        if let Some(a) = &self.affine {
            a.validate()?;
            if self.model.uses_scattering() {
                return Err(Error::invalid(
                    "affine",
                    "set",
                    "off for a scattering model (its inputs are 7×7 feature maps, not pixels): use a pixel model or drop the affine augmentation",
                ));
            }
        }
        Ok(())
    }
}

/// Prediction batch size.
const PREDICT_BATCH: usize = 256;

/// Builds a fresh model of `kind` whose weights come from stream `stream` of
/// [`Purpose::ModelInit`]. The scattering models ([`ModelKind::ScatterLinear`],
/// [`ModelKind::ScatterCnn`]) take `[81, 7, 7]` ScatterNet features
/// ([`crate::train::load_data`] computes them), the others `[1, 28, 28]` pixels.
pub fn new_model(kind: ModelKind, keys: &RunKeys, stream: u64) -> Result<Sequential> {
    let seed = keys.key(Purpose::ModelInit).rng(stream).next_u64();
    let device = Device::cpu();
    match kind {
        ModelKind::SampleConvnet => models::sample_conv_net(&device, seed),
        ModelKind::TanhConvnet => models::sample_conv_net_tanh(&device, seed),
        ModelKind::ScatterLinear | ModelKind::ScatterCnn => kind.builder().build(&device, seed),
    }
}

/// Shifts a `[C, H, W]` image by (dy, dx), filling with the image's top-left value (the
/// background of MNIST-like images).
fn shift_image(src: &[f32], dst: &mut [f32], c: usize, h: usize, w: usize, dy: i64, dx: i64) {
    let fill = src.first().copied().unwrap_or(0.0);
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = (y as i64 - dy, x as i64 - dx);
                let v = if sy >= 0 && sy < h as i64 && sx >= 0 && sx < w as i64 {
                    src[ch * h * w + sy as usize * w + sx as usize]
                } else {
                    fill
                };
                dst[ch * h * w + y * w + x] = v;
            }
        }
    }
}

/// Trains `model` on `data` (non-privately) with `cfg`; `stream` selects the shuffling
/// ([`Purpose::Shuffle`]) and augmentation ([`Purpose::Augmentation`]) streams of `keys`.
///
/// # Privacy
/// None: this is ordinary training. In PATE it trains the teachers (whose outputs reach the
/// world only through a noisy aggregator) and the student (whose data is public, its labels
/// the aggregator's answers).
pub fn fit(
    model: &mut Sequential,
    data: &Dataset,
    cfg: &FitConfig,
    keys: &RunKeys,
    stream: u64,
) -> Result<()> {
    cfg.validate()?;
    if data.is_empty() {
        return Err(Error::invalid("training set", 0, "at least one example"));
    }
    let (c, h, w) = (data.channels(), data.height(), data.width());
    let ex = data.example_len();
    let b_max = cfg.batch_size.min(data.len());
    let mut ws = model.workspace(b_max)?;
    let p = model.num_params();
    let device = model.device().clone();
    let mut grad = Buffer::zeros(&device, p)?;
    let mut m1 = Buffer::zeros(&device, p)?;
    let mut m2 = Buffer::zeros(&device, p)?;
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut shuffle_rng = keys.key(Purpose::Shuffle).rng(stream);
    let mut aug_rng = keys.key(Purpose::Augmentation).rng(stream);
    let mut xb = vec![0f32; b_max * ex];
    let mut xs = vec![0f32; b_max * ex];
    let mut yb = vec![0u32; b_max];
    let adam = AdamConfig::new(cfg.lr);
    let mut t = 0u64;
    for _ in 0..cfg.epochs {
        shuffle(&mut order, &mut shuffle_rng);
        for chunk in order.chunks(b_max) {
            let b = chunk.len();
            data.gather(chunk, &mut xb[..b * ex], &mut yb[..b])?;
            let x = if let Some(aff) = &cfg.affine {
                for (src, dst) in xb[..b * ex].chunks(ex).zip(xs.chunks_mut(ex)) {
                    aff.apply(src, dst, (c, h, w), &mut aug_rng);
                }
                &xs[..b * ex]
            } else if cfg.max_shift > 0 {
                let span = 2 * cfg.max_shift as u64 + 1;
                for (src, dst) in xb[..b * ex].chunks(ex).zip(xs.chunks_mut(ex)) {
                    let dy = aug_rng.next_below(span) as i64 - cfg.max_shift as i64;
                    let dx = aug_rng.next_below(span) as i64 - cfg.max_shift as i64;
                    shift_image(src, dst, c, h, w, dy, dx);
                }
                &xs[..b * ex]
            } else {
                &xb[..b * ex]
            };
            let loss = model.forward_backward(
                &mut ws,
                x,
                Loss::CrossEntropy(&yb[..b]),
                Reduction::Sum,
                Grads::Sum {
                    grad: &mut grad,
                    accumulate: false,
                },
                false,
            )?;
            if !loss.is_finite() {
                return Err(Error::NonFinite {
                    what: "training loss",
                    detail: format!("loss {loss} at step {t}; lower the learning rate"),
                });
            }
            t += 1;
            // The mean gradient of the batch (no clipping, no noise).
            let step = crate::NoisyStep {
                noise_std: 0.0,
                expected_batch_size: b as f64,
                key: crate::NoiseKey::from_parts(0, 0),
            };
            crate::ops::noisy_adam_step(
                model.params_mut(),
                &grad,
                &mut m1,
                &mut m2,
                t,
                &adam,
                &step,
            )?;
        }
    }
    Ok(())
}

/// Predicted class and its softmax probability for each of the `images.len() / example_len`
/// examples.
pub fn predict(model: &Sequential, images: &[f32]) -> Result<Vec<(u32, f32)>> {
    let ex: usize = model.input_shape().iter().product();
    if ex == 0 || images.len() % ex != 0 {
        return Err(Error::shape(
            "pate::predict",
            format!(
                "{} values are not a whole number of {ex}-value examples",
                images.len()
            ),
        ));
    }
    let classes: usize = model.output_shape().iter().product();
    let mut ws = model.workspace(PREDICT_BATCH)?;
    let mut out = Vec::with_capacity(images.len() / ex);
    for chunk in images.chunks(PREDICT_BATCH * ex) {
        model.forward_slice(&mut ws, chunk)?;
        let logits = ws.output_vec()?;
        for row in logits.chunks(classes).take(chunk.len() / ex) {
            out.push(top_class(row));
        }
    }
    Ok(out)
}

/// The arg-max class of one row of logits and its softmax probability (the first maximum on
/// ties).
fn top_class(row: &[f32]) -> (u32, f32) {
    let (k, m) =
        row.iter().enumerate().fold(
            (0, f32::NEG_INFINITY),
            |a, (k, &v)| {
                if v > a.1 {
                    (k, v)
                } else {
                    a
                }
            },
        );
    let z: f32 = row.iter().map(|&v| (v - m).exp()).sum();
    (k as u32, 1.0 / z)
}

/// The softmax probabilities of each of the `images.len() / example_len` examples under
/// `model`, row by row (`[n, classes]`).
pub fn softmax_outputs(model: &Sequential, images: &[f32]) -> Result<Vec<f32>> {
    let ex: usize = model.input_shape().iter().product();
    if ex == 0 || images.len() % ex != 0 {
        return Err(Error::shape(
            "pate::softmax_outputs",
            format!(
                "{} values are not a whole number of {ex}-value examples",
                images.len()
            ),
        ));
    }
    let classes: usize = model.output_shape().iter().product();
    let mut ws = model.workspace(PREDICT_BATCH)?;
    let mut out = Vec::with_capacity(images.len() / ex * classes);
    for chunk in images.chunks(PREDICT_BATCH * ex) {
        model.forward_slice(&mut ws, chunk)?;
        let logits = ws.output_vec()?;
        for row in logits.chunks(classes).take(chunk.len() / ex) {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = row.iter().map(|&v| (v - m).exp()).sum();
            out.extend(row.iter().map(|&v| (v - m).exp() / z));
        }
    }
    Ok(out)
}

/// The most students [`ensemble_predict`] averages and `dpsgd pate --students` trains.
pub const MAX_STUDENTS: usize = 32;

/// The stream of student `j` of an ensemble of students (its [`Purpose::ModelInit`],
/// [`Purpose::Shuffle`] and [`Purpose::Augmentation`] streams; its consistency training, if
/// any, uses this + 100, and self-training rounds this + 1 + round): student 0 is
/// [`STUDENT_STREAM`], the single student's, so that an ensemble of one is that student; student
/// `j` is `STUDENT_STREAM + j · 2²⁰`, clear of the others' and of [`VALIDATION_STREAM`].
/// Errors when `j >= MAX_STUDENTS`.
pub fn student_stream(j: usize) -> Result<u64> {
    if j >= MAX_STUDENTS {
        return Err(Error::invalid(
            "student",
            j,
            format!("< {MAX_STUDENTS} (the largest ensemble of students)"),
        ));
    }
    Ok(STUDENT_STREAM + ((j as u64) << 20))
}

/// The prediction of an ensemble of models: the class with the largest softmax probability
/// averaged over `models` (the first on ties) and that average probability, for each of the
/// `images.len() / example_len` examples. An ensemble of one is [`predict`] of its model,
/// bit for bit.
///
/// # Privacy
/// In PATE, averaging students trained on the aggregator's answers and public images is
/// post-processing: no privacy cost beyond the answers'.
///
/// # Errors
/// No model, more than [`MAX_STUDENTS`], or models that differ in input or output shape.
pub fn ensemble_predict(models: &[Sequential], images: &[f32]) -> Result<Vec<(u32, f32)>> {
    let Some(first) = models.first() else {
        return Err(Error::invalid(
            "students",
            0,
            format!("in 1..={MAX_STUDENTS} models to average"),
        ));
    };
    if models.len() > MAX_STUDENTS {
        return Err(Error::invalid(
            "students",
            models.len(),
            format!("in 1..={MAX_STUDENTS} models to average"),
        ));
    }
    if models
        .iter()
        .any(|m| m.input_shape() != first.input_shape() || m.output_shape() != first.output_shape())
    {
        return Err(Error::shape(
            "pate::ensemble_predict",
            "the models differ in input or output shape",
        ));
    }
    if models.len() == 1 {
        return predict(first, images);
    }
    let classes: usize = first.output_shape().iter().product();
    let mut sum = softmax_outputs(first, images)?;
    for m in &models[1..] {
        for (a, p) in sum.iter_mut().zip(softmax_outputs(m, images)?) {
            *a += p;
        }
    }
    let n = models.len() as f32;
    Ok(sum
        .chunks(classes)
        .map(|row| {
            let (k, p) = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |a, (k, &v)| {
                        if v > a.1 {
                            (k, v)
                        } else {
                            a
                        }
                    },
                );
            (k as u32, p / n)
        })
        .collect())
}

/// Accuracy of predicted classes against labels (0 when empty).
pub fn accuracy(pred: &[u32], labels: &[u32]) -> f64 {
    if pred.is_empty() {
        return 0.0;
    }
    pred.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / pred.len() as f64
}

/// Trains one teacher per partition of `train` (in parallel, one rayon task per teacher;
/// `on_done` is called after each) and returns each teacher's predicted classes on `query`'s
/// images (`[K][query.len()]`). Teacher `i` trains on `parts[i]` with streams `i + 1`.
///
/// # Privacy
/// The returned predictions are functions of the private data (not covered by any ε); pass
/// them only to [`vote_histograms`] and an [`Aggregator`]; their accuracy on labelled public
/// data is a diagnostic of private models, not covered by ε either.
pub fn train_teachers(
    train: &Dataset,
    parts: &[Vec<usize>],
    query: &Dataset,
    cfg: &FitConfig,
    keys: &RunKeys,
    on_done: &(dyn Fn() + Sync),
) -> Result<Vec<Vec<u32>>> {
    cfg.validate()?;
    if train.example_len() != query.example_len() || train.classes() != query.classes() {
        return Err(Error::shape(
            "pate::train_teachers",
            "the training and query sets differ in image shape or classes",
        ));
    }
    parts
        .par_iter()
        .enumerate()
        .map(|(i, part)| {
            let data = train.subset(part)?;
            let stream = i as u64 + 1;
            let mut model = new_model(cfg.model, keys, stream)?;
            fit(&mut model, &data, cfg, keys, stream)?;
            let pred = predict(&model, query.images())?;
            on_done();
            Ok(pred.into_iter().map(|(k, _)| k).collect())
        })
        .collect()
}

/// The vote histogram of each query example: `hist[j][c]` = how many teachers predicted class
/// `c` for example `j`. `predictions` is `[K][n]` with classes `< classes`.
pub fn vote_histograms(predictions: &[Vec<u32>], classes: usize) -> Result<Vec<Vec<u64>>> {
    let n = predictions.first().map_or(0, Vec::len);
    let mut hist = vec![vec![0u64; classes]; n];
    for p in predictions {
        if p.len() != n {
            return Err(Error::shape(
                "pate::vote_histograms",
                "teachers predicted different numbers of examples",
            ));
        }
        for (h, &c) in hist.iter_mut().zip(p) {
            let slot = h
                .get_mut(c as usize)
                .ok_or_else(|| Error::invalid("prediction", c, format!("< classes = {classes}")))?;
            *slot += 1;
        }
    }
    Ok(hist)
}

/// The noisy aggregator.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "name")]
pub enum Aggregator {
    /// LNMax: Laplace noise of scale 1/γ (Papernot et al. 2017); each answer is 2γ-DP.
    Lnmax {
        /// γ (> 0).
        gamma: f64,
    },
    /// GNMax: Gaussian noise N(0, σ²) (Papernot et al. 2018, Section 4.1).
    Gnmax {
        /// σ (> 0).
        sigma: f64,
    },
    /// Confident-GNMax: answer only when the plurality plus N(0, σ₁²) reaches T, then GNMax
    /// with σ₂ (Papernot et al. 2018, Algorithm 1).
    ConfidentGnmax {
        /// T.
        threshold: f64,
        /// σ₁, the threshold's noise (> 0).
        sigma1: f64,
        /// σ₂, the GNMax noise (> 0).
        sigma2: f64,
    },
}

impl Aggregator {
    /// Checks the parameters (γ, σ, σ₁, σ₂ finite and > 0; T finite).
    pub fn validate(&self) -> Result<()> {
        let pos = |name: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(name, v, "finite and > 0"))
            }
        };
        match *self {
            Aggregator::Lnmax { gamma } => pos("gamma", gamma),
            Aggregator::Gnmax { sigma } => pos("sigma", sigma),
            Aggregator::ConfidentGnmax {
                threshold,
                sigma1,
                sigma2,
            } => {
                if !threshold.is_finite() {
                    return Err(Error::invalid("threshold", threshold, "finite"));
                }
                pos("sigma1", sigma1)?;
                pos("sigma2", sigma2)
            }
        }
    }
}

/// The privacy of a run of queries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivacyReport {
    /// δ.
    pub delta: f64,
    /// Queries asked.
    pub queries: u64,
    /// Queries answered (= `queries` except for Confident-GNMax, where it depends on the
    /// private votes and is not covered by ε).
    pub answered: u64,
    /// The data-independent ε: **the DP statement** (a function of the parameters and the
    /// number of queries asked only).
    pub epsilon_data_independent: f64,
    /// How it was computed.
    pub data_independent_method: String,
    /// The data-dependent ε (Papernot et al. 2018, Theorem 6): smaller when the teachers
    /// agree, but a function of the private votes — **not a DP statement** unless released
    /// through smooth sensitivity (Appendix B of the 2018 paper: `smooth_release`).
    pub epsilon_data_dependent: f64,
    /// The RDP order that gave the data-dependent ε.
    pub data_dependent_order: f64,
    /// The smooth-sensitivity release of the data-dependent ε
    /// ([`crate::mechanisms::pate_smooth`]), when asked for: a noisy estimate that may be
    /// published (its cost is included in `epsilon_data_independent`).
    pub smooth_release: Option<SmoothRelease>,
}

/// The parameters of the smooth-sensitivity release of the data-dependent ε
/// ([`crate::mechanisms::pate_smooth`]), fixed before the votes are seen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseConfig {
    /// The Rényi order λ of the released bound.
    pub order: f64,
    /// β of the smooth upper bound, in (0, 1/(2λ)).
    pub beta: f64,
    /// σ_ss: the GNSS noise in units of the smooth sensitivity.
    pub sigma_ss: f64,
}

impl ReleaseConfig {
    /// The authors' β = 0.49/λ with the given order and σ_ss.
    pub fn new(order: f64, sigma_ss: f64) -> Self {
        ReleaseConfig {
            order,
            beta: 0.49 / order,
            sigma_ss,
        }
    }
}

/// What an aggregation run produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregation {
    /// For each query in order: the aggregator's label, or `None` when Confident-GNMax did
    /// not answer.
    pub labels: Vec<Option<u32>>,
    /// Its privacy.
    pub privacy: PrivacyReport,
}

/// Answers the queries `votes` (one histogram per public example, all with the same number of
/// classes and teachers) with `agg`, its noise from stream 0 of [`Purpose::Mechanism`], and
/// accounts for them at `delta` over [`default_orders`].
///
/// - LNMax: data-independent ε = min(2γQ (pure DP, basic composition), the RDP bound of
///   Q answers of a 2γ-DP mechanism); data-dependent ε by Theorem 6 of the 2018 paper
///   ([`LnmaxRdpAccountant`]).
/// - GNMax: data-independent Q·λ/σ² RDP; data-dependent by Theorem 6 ([`GnmaxAccountant`]).
/// - Confident-GNMax: [`ConfidentGnmaxAccountant`] (data-independent: every query counted as
///   answered).
pub fn aggregate(
    votes: &[Vec<u64>],
    agg: Aggregator,
    delta: f64,
    keys: &RunKeys,
) -> Result<Aggregation> {
    aggregate_with_release(votes, agg, delta, None, keys)
}

/// [`aggregate`], and with `release` also the smooth-sensitivity release of the data-dependent
/// ε (GNMax and Confident-GNMax; [`crate::mechanisms::pate_smooth`]): its noise comes from
/// stream 1 of [`Purpose::Mechanism`], and its RDP cost ([`gnss_rdp`]) is composed into the
/// data-independent ε at every order below 1/(2β), so the DP statement covers the release.
/// The analysis's parameters are checked (and its conditions C5/C6) before any noise is drawn.
/// LNMax with a release is an error (no smooth-sensitivity analysis for it here).
pub fn aggregate_with_release(
    votes: &[Vec<u64>],
    agg: Aggregator,
    delta: f64,
    release: Option<ReleaseConfig>,
    keys: &RunKeys,
) -> Result<Aggregation> {
    agg.validate()?;
    crate::mechanisms::check_delta(delta)?;
    let teachers = votes.first().map_or(0, |v| v.iter().sum::<u64>() as usize);
    let classes = votes.first().map_or(0, |v| v.len());
    let mut smooth = match (release, agg) {
        (None, _) => None,
        (Some(_), Aggregator::Lnmax { .. }) => {
            return Err(Error::invalid(
                "release",
                "smooth-sensitivity release",
                "not requested with LNMax: the smooth-sensitivity analysis is implemented for GNMax and Confident-GNMax only",
            ))
        }
        (Some(r), Aggregator::Gnmax { sigma }) => {
            check_positive("sigma_ss", r.sigma_ss)?;
            Some(SmoothSensitivity::new(teachers, classes, sigma, None, r.order, r.beta)?)
        }
        (
            Some(r),
            Aggregator::ConfidentGnmax {
                threshold,
                sigma1,
                sigma2,
            },
        ) => {
            check_positive("sigma_ss", r.sigma_ss)?;
            Some(SmoothSensitivity::new(
                teachers,
                classes,
                sigma2,
                Some((threshold, sigma1)),
                r.order,
                r.beta,
            )?)
        }
    };
    let mut rng = keys.key(Purpose::Mechanism).rng(0);
    let orders = default_orders();
    let q = votes.len() as u64;
    let mut labels = Vec::with_capacity(votes.len());
    let privacy = match agg {
        Aggregator::Lnmax { gamma } => {
            let mut acc = LnmaxRdpAccountant::new(gamma, orders)?;
            for v in votes {
                labels.push(Some(lnmax(v, gamma, &mut rng)? as u32));
                acc.record(v)?;
            }
            let basic = lnmax_epsilon(gamma, q)?;
            let (rdp, _) = acc.epsilon_data_independent(delta)?;
            let (dd, order) = acc.epsilon_data_dependent(delta)?;
            PrivacyReport {
                delta,
                queries: q,
                answered: q,
                epsilon_data_independent: basic.min(rdp),
                data_independent_method: if basic <= rdp {
                    "basic composition of Q answers, each (2γ, 0)-DP".into()
                } else {
                    "RDP composition of Q answers of a 2γ-DP mechanism".into()
                },
                epsilon_data_dependent: dd.min(basic.min(rdp)),
                data_dependent_order: order,
                smooth_release: None,
            }
        }
        Aggregator::Gnmax { sigma } => {
            let mut acc = GnmaxAccountant::new(sigma, orders)?;
            for v in votes {
                labels.push(Some(gnmax(v, sigma, &mut rng)? as u32));
                acc.record(v)?;
                if let Some(s) = smooth.as_mut() {
                    s.record(v, true)?;
                }
            }
            let (di, _) = with_release(acc.orders(), &acc.rdp_data_independent(), release, delta)?;
            let (dd, order) = acc.epsilon_data_dependent(delta)?;
            PrivacyReport {
                delta,
                queries: q,
                answered: q,
                epsilon_data_independent: di,
                data_independent_method: format!(
                    "RDP: Q·λ/σ² (Proposition 8, Papernot et al. 2018){}",
                    release_note(release)
                ),
                epsilon_data_dependent: dd,
                data_dependent_order: order,
                smooth_release: None,
            }
        }
        Aggregator::ConfidentGnmax {
            threshold,
            sigma1,
            sigma2,
        } => {
            let mut acc = ConfidentGnmaxAccountant::new(threshold, sigma1, sigma2, orders)?;
            for v in votes {
                let a = confident_gnmax(v, threshold, sigma1, sigma2, &mut rng)?;
                acc.record(v, a.is_some())?;
                if let Some(s) = smooth.as_mut() {
                    s.record(v, a.is_some())?;
                }
                labels.push(a.map(|k| k as u32));
            }
            let (di, _) = with_release(acc.orders(), &acc.rdp_data_independent(), release, delta)?;
            let (dd, order) = acc.epsilon_data_dependent(delta)?;
            PrivacyReport {
                delta,
                queries: q,
                answered: acc.answered(),
                epsilon_data_independent: di,
                data_independent_method: format!(
                    "RDP: Q·(λ/(2σ₁²) + λ/σ₂²), every query counted as answered{}",
                    release_note(release)
                ),
                epsilon_data_dependent: dd,
                data_dependent_order: order,
                smooth_release: None,
            }
        }
    };
    let mut privacy = privacy;
    if let (Some(s), Some(r)) = (smooth.as_ref(), release) {
        let mut rng = keys.key(Purpose::Mechanism).rng(1);
        privacy.smooth_release = Some(s.release(r.sigma_ss, delta, &mut rng)?);
    }
    Ok(Aggregation { labels, privacy })
}

fn release_note(release: Option<ReleaseConfig>) -> String {
    match release {
        Some(r) => format!(
            ", plus the smooth-sensitivity release's GNSS cost (Theorem 23; order λ < 1/(2β) = {:.1})",
            0.5 / r.beta
        ),
        None => String::new(),
    }
}

/// (ε, order) of the data-independent RDP `rdp` over `orders`, plus the GNSS release's RDP at
/// each order where Theorem 23 applies (orders ≥ 1/(2β) are dropped) when there is a release.
fn with_release(
    orders: &[f64],
    rdp: &[f64],
    release: Option<ReleaseConfig>,
    delta: f64,
) -> Result<(f64, f64)> {
    let Some(r) = release else {
        return rdp_to_epsilon(orders, rdp, delta);
    };
    let (mut os, mut rs) = (Vec::new(), Vec::new());
    for (&a, &v) in orders.iter().zip(rdp) {
        if 2.0 * a * r.beta < 1.0 {
            os.push(a);
            rs.push(v + gnss_rdp(r.beta, r.sigma_ss, a)?);
        }
    }
    if os.is_empty() {
        return Err(Error::invalid(
            "beta",
            r.beta,
            "small enough that some RDP order >= 2 is below 1/(2*beta)",
        ));
    }
    rdp_to_epsilon(&os, &rs, delta)
}

/// A self-training round's pseudo-labels: the indices (into `pred`) whose confidence is at
/// least `min_confidence`, with their predicted classes. Post-processing of the student (no
/// privacy cost) when the student was trained on public data and the aggregator's answers.
pub fn confident_pseudo_labels(pred: &[(u32, f32)], min_confidence: f32) -> Vec<(usize, u32)> {
    pred.iter()
        .enumerate()
        .filter(|(_, (_, p))| *p >= min_confidence)
        .map(|(i, (k, _))| (i, *k))
        .collect()
}

/// The stream of [`Purpose::Shuffle`] that draws the validation split of the public images
/// ([`validation_split`]): distinct from the partition (0), the teachers' (`1..=K`) and the
/// student's ([`STUDENT_STREAM`] and the few after it).
pub const VALIDATION_STREAM: u64 = 1 << 41;

/// Splits the public images `0..public` into the images the run may use (queried,
/// self-labelled, unlabelled for consistency training) and a validation set of `validation`
/// of them, chosen uniformly at random by a shuffle on [`VALIDATION_STREAM`] of
/// [`Purpose::Shuffle`]; both lists ascending. The public images are public: choosing them
/// costs no privacy. With `validation` = 0 every public image is usable.
///
/// A random split, not the last images: the MNIST test set's blocks of 1 000 differ in
/// difficulty (its images 8 000–8 999 are much easier than 9 000–9 999, the student's test
/// set; BENCHMARKS.md), so a contiguous block misleads tuning.
pub fn validation_split(
    public: usize,
    validation: usize,
    keys: &RunKeys,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if validation >= public {
        return Err(Error::invalid(
            "validation",
            validation,
            format!("< the public set's {public} images (the rest is queried and self-labelled)"),
        ));
    }
    let mut idx: Vec<usize> = (0..public).collect();
    shuffle(
        &mut idx,
        &mut keys.key(Purpose::Shuffle).rng(VALIDATION_STREAM),
    );
    let mut val = idx[..validation].to_vec();
    let mut rest = idx[validation..].to_vec();
    val.sort_unstable();
    rest.sort_unstable();
    Ok((rest, val))
}

const PREDICTIONS_MAGIC: &[u8; 8] = b"DPSGDTP1";

/// Saves teachers' predictions (`[K][n]`, classes < 256) to `path` (atomically): a cache so
/// that student variants can reuse one seed's teachers. **Private**: the predictions are
/// functions of the teachers' training data, not covered by any ε — keep the file with the
/// private data, never publish it.
pub fn save_teacher_predictions(path: &std::path::Path, preds: &[Vec<u32>]) -> Result<()> {
    let n = preds.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(24 + preds.len() * n);
    out.extend_from_slice(PREDICTIONS_MAGIC);
    out.extend_from_slice(&(preds.len() as u64).to_le_bytes());
    out.extend_from_slice(&(n as u64).to_le_bytes());
    for p in preds {
        if p.len() != n {
            return Err(Error::shape(
                "pate::save_teacher_predictions",
                "teachers predicted different numbers of examples",
            ));
        }
        for &c in p {
            out.push(
                u8::try_from(c)
                    .map_err(|_| Error::invalid("prediction", c, "< 256 (one byte per class)"))?,
            );
        }
    }
    crate::train::write_atomic(path, &out)
}

/// Loads predictions written by [`save_teacher_predictions`]; `Ok(None)` when `path` does not
/// exist, an error when it exists but is not `teachers` × `n` predictions (a corrupt or
/// foreign file: delete it).
pub fn load_teacher_predictions(
    path: &std::path::Path,
    teachers: usize,
    n: usize,
) -> Result<Option<Vec<Vec<u32>>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let bad = |what: String| {
        Error::invalid(
            "teacher cache",
            path.display(),
            format!("a teacher-prediction file ({what}; delete it to retrain)"),
        )
    };
    if bytes.len() < 24 || &bytes[..8] != PREDICTIONS_MAGIC {
        return Err(bad("bad header".into()));
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[i..i + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (k, m) = (word(8), word(16));
    if k != teachers || m != n || bytes.len() != 24 + k * m {
        return Err(bad(format!(
            "holds {k} × {m} predictions in {} bytes, expected {teachers} × {n}",
            bytes.len()
        )));
    }
    Ok(Some(
        bytes[24..]
            .chunks(n.max(1))
            .take(k)
            .map(|c| c.iter().map(|&v| u32::from(v)).collect())
            .collect(),
    ))
}

/// Consistency training of the student (FixMatch: Sohn et al., "FixMatch: Simplifying
/// Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020, Algorithm 1):
/// each step takes `batch_size` labelled examples (the aggregator's answers) under the weak
/// augmentation (random shifts of up to `weak_shift` pixels) and `mu · batch_size` unlabelled
/// public images; the model labels each unlabelled image's weakly augmented view, and where
/// its softmax probability is at least `threshold` it learns that label on a strongly
/// augmented view ([`crate::augment::RandomAffine`]). Loss:
/// `mean_B CE(labelled) + lambda · (1/(mu·B)) Σ 1[max p ≥ τ] CE(strong view, pseudo-label)`,
/// minimised with Adam, optionally with the paper's cosine learning-rate decay
/// (lr·cos(7πt/(16T))) and an exponential moving average of the weights as the result.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FixMatchConfig {
    /// The model (a pixel model: the augmentations act on images).
    pub model: ModelKind,
    /// Optimizer steps.
    pub steps: usize,
    /// Labelled examples per step (B).
    pub batch_size: usize,
    /// Unlabelled images per step, as a multiple of B (μ).
    pub mu: usize,
    /// Confidence threshold τ of a pseudo-label, in (0, 1].
    pub threshold: f32,
    /// Weight λ of the unlabelled loss (≥ 0).
    pub lambda: f32,
    /// Adam's learning rate.
    pub lr: f32,
    /// The weak augmentation: shifts of up to this many pixels.
    pub weak_shift: usize,
    /// The strong augmentation.
    pub strong: crate::augment::RandomAffine,
    /// FixMatch's cosine decay of the learning rate: lr·cos(7πt/(16T)) at step t of T.
    pub cosine_lr: bool,
    /// Return the exponential moving average of the weights with this decay β (in (0, 1)),
    /// updated after every step t with min(β, (1 + t)/(10 + t)) as the trainer's
    /// `ema_decay`, instead of the last iterate.
    pub ema_decay: Option<f32>,
}

impl FixMatchConfig {
    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        if self.model.uses_scattering() {
            return Err(Error::invalid(
                "model",
                format!("{:?}", self.model),
                "a pixel model (sample-convnet or tanh-convnet): consistency training augments images",
            ));
        }
        if self.steps == 0 {
            return Err(Error::invalid("steps", 0, ">= 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size", 0, ">= 1"));
        }
        if self.mu == 0 || self.mu > 64 {
            return Err(Error::invalid("mu", self.mu, "in 1..=64"));
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(Error::invalid("threshold", self.threshold, "in (0, 1]"));
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(Error::invalid("lambda", self.lambda, "finite and >= 0"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("lr", self.lr, "finite and > 0"));
        }
        if let Some(d) = self.ema_decay {
            if !(d > 0.0 && d < 1.0) {
                return Err(Error::invalid("ema_decay", d, "in (0, 1)"));
            }
        }
        if self.weak_shift > crate::augment::MAX_SHIFT {
            return Err(Error::invalid(
                "weak_shift",
                self.weak_shift,
                format!("<= {} pixels", crate::augment::MAX_SHIFT),
            ));
        }
        self.strong.validate()
    }
}

/// What [`fit_fixmatch`] did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FixMatchStats {
    /// Unlabelled images seen (μ·B per step).
    pub unlabelled_seen: u64,
    /// Of those, the ones whose pseudo-label passed the threshold (and were trained on).
    pub pseudo_labelled: u64,
    /// The share of pseudo-labelled images over the last tenth of the steps.
    pub mask_rate_final: f64,
}

/// Trains `model` by consistency training ([`FixMatchConfig`]) on the labelled set
/// `labelled` and the unlabelled images `unlabelled` (`[n, c·h·w]`, the same image shape).
/// `stream` selects the [`Purpose::Shuffle`] and [`Purpose::Augmentation`] streams.
///
/// # Privacy
/// In PATE this is post-processing: the labels are the aggregator's answers (covered by ε) and
/// the images are public; the pseudo-labels are computed by the student from those alone. No
/// privacy cost beyond the answers'.
pub fn fit_fixmatch(
    model: &mut Sequential,
    labelled: &Dataset,
    unlabelled: &[f32],
    cfg: &FixMatchConfig,
    keys: &RunKeys,
    stream: u64,
) -> Result<FixMatchStats> {
    cfg.validate()?;
    let ex = labelled.example_len();
    let (c, h, w) = (labelled.channels(), labelled.height(), labelled.width());
    let in_len: usize = model.input_shape().iter().product();
    if labelled.is_empty() || ex != in_len {
        return Err(Error::invalid(
            "labelled set",
            labelled.len(),
            format!("at least one example of the model's input size {in_len}"),
        ));
    }
    if unlabelled.is_empty() || unlabelled.len() % ex != 0 {
        return Err(Error::shape(
            "pate::fit_fixmatch",
            format!(
                "{} unlabelled values are not a non-empty whole number of {ex}-value images",
                unlabelled.len()
            ),
        ));
    }
    let n_u = unlabelled.len() / ex;
    let classes: usize = model.output_shape().iter().product();
    let b = cfg.batch_size.min(labelled.len());
    let bu = cfg.mu * cfg.batch_size;
    let mut ws_l = model.workspace(b)?;
    let mut ws_u = model.workspace(bu)?;
    let p = model.num_params();
    let device = model.device().clone();
    let mut grad = Buffer::zeros(&device, p)?;
    let mut grad_u = Buffer::zeros(&device, p)?;
    let mut m1 = Buffer::zeros(&device, p)?;
    let mut m2 = Buffer::zeros(&device, p)?;
    let mut shuffle_rng = keys.key(Purpose::Shuffle).rng(stream);
    let mut aug_rng = keys.key(Purpose::Augmentation).rng(stream);
    let weak = crate::augment::Augmentation {
        max_shift: cfg.weak_shift,
        hflip: false,
    };
    let mut adam = AdamConfig::new(cfg.lr);
    let mut ema = match cfg.ema_decay {
        Some(_) => Some(model.params().to_vec()?),
        None => None,
    };
    let mut order_l: Vec<usize> = (0..labelled.len()).collect();
    let mut order_u: Vec<usize> = (0..n_u).collect();
    let (mut pos_l, mut pos_u) = (order_l.len(), order_u.len());
    let take = |order: &mut Vec<usize>, pos: &mut usize, k: usize, rng: &mut Rng| {
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            if *pos == order.len() {
                shuffle(order, rng);
                *pos = 0;
            }
            out.push(order[*pos]);
            *pos += 1;
        }
        out
    };
    let mut xl = vec![0f32; b * ex];
    let mut xa = vec![0f32; b * ex];
    let mut yl = vec![0u32; b];
    let mut xw = vec![0f32; bu * ex];
    let mut xs = vec![0f32; bu * ex];
    let mut ys = Vec::with_capacity(bu);
    let mut stats = FixMatchStats::default();
    let tail_from = cfg.steps - cfg.steps.div_ceil(10);
    let (mut tail_seen, mut tail_kept) = (0u64, 0u64);
    for t in 1..=cfg.steps as u64 {
        // Labelled: weak view, mean cross-entropy.
        let idx = take(&mut order_l, &mut pos_l, b, &mut shuffle_rng);
        labelled.gather(&idx, &mut xl, &mut yl)?;
        for (src, dst) in xl.chunks(ex).zip(xa.chunks_mut(ex)) {
            weak.apply(src, dst, (c, h, w), &mut aug_rng);
        }
        let loss = model.forward_backward(
            &mut ws_l,
            &xa[..],
            Loss::CrossEntropy(&yl),
            Reduction::Sum,
            Grads::Sum {
                grad: &mut grad,
                accumulate: false,
            },
            false,
        )?;
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                what: "training loss",
                detail: format!("labelled loss {loss} at step {t}; lower the learning rate"),
            });
        }
        // Unlabelled: pseudo-labels from the weak views, learnt on the strong views.
        let idx = take(&mut order_u, &mut pos_u, bu, &mut shuffle_rng);
        for (&i, dst) in idx.iter().zip(xw.chunks_mut(ex)) {
            weak.apply(
                &unlabelled[i * ex..(i + 1) * ex],
                dst,
                (c, h, w),
                &mut aug_rng,
            );
        }
        model.forward_slice(&mut ws_u, &xw)?;
        let logits = ws_u.output_vec()?;
        ys.clear();
        let mut kept = 0usize;
        for (j, row) in logits.chunks(classes).take(bu).enumerate() {
            let (k, p) = top_class(row);
            if p >= cfg.threshold {
                let i = idx[j];
                cfg.strong.apply(
                    &unlabelled[i * ex..(i + 1) * ex],
                    &mut xs[kept * ex..(kept + 1) * ex],
                    (c, h, w),
                    &mut aug_rng,
                );
                ys.push(k);
                kept += 1;
            }
        }
        stats.unlabelled_seen += bu as u64;
        stats.pseudo_labelled += kept as u64;
        if t as usize > tail_from {
            tail_seen += bu as u64;
            tail_kept += kept as u64;
        }
        let scale_u = cfg.lambda * b as f32 / bu as f32;
        if kept > 0 && scale_u > 0.0 {
            let loss_u = model.forward_backward(
                &mut ws_u,
                &xs[..kept * ex],
                Loss::CrossEntropy(&ys),
                Reduction::Sum,
                Grads::Sum {
                    grad: &mut grad_u,
                    accumulate: false,
                },
                false,
            )?;
            if !loss_u.is_finite() {
                return Err(Error::NonFinite {
                    what: "training loss",
                    detail: format!(
                        "unlabelled loss {loss_u} at step {t}; lower the learning rate"
                    ),
                });
            }
            // grad = Σ_labelled + λ·(B/(μB))·Σ_unlabelled; the step divides by B.
            let gu = grad_u.to_vec()?;
            let mut g = grad.to_vec()?;
            for (a, u) in g.iter_mut().zip(&gu) {
                *a += scale_u * u;
            }
            grad.copy_from_slice(&g)?;
        }
        let step = crate::NoisyStep {
            noise_std: 0.0,
            expected_batch_size: b as f64,
            key: crate::NoiseKey::from_parts(0, 0),
        };
        if cfg.cosine_lr {
            let frac = (t - 1) as f64 / cfg.steps as f64;
            adam.lr = cfg.lr * (7.0 * std::f64::consts::PI * frac / 16.0).cos() as f32;
        }
        crate::ops::noisy_adam_step(model.params_mut(), &grad, &mut m1, &mut m2, t, &adam, &step)?;
        if let (Some(e), Some(d)) = (ema.as_mut(), cfg.ema_decay) {
            // The warm-up of the trainer's EMA: b = min(β, (1 + t)/(10 + t)).
            let d = d.min((1.0 + t as f32) / (10.0 + t as f32));
            let theta = model.params().to_vec()?;
            for (a, v) in e.iter_mut().zip(&theta) {
                *a = d * *a + (1.0 - d) * v;
            }
        }
    }
    if let Some(e) = ema {
        model.params_mut().copy_from_slice(&e)?;
    }
    stats.mask_rate_final = tail_kept as f64 / tail_seen.max(1) as f64;
    Ok(stats)
}
