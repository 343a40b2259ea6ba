//! `dpsgd pate`: PATE on MNIST end to end (Papernot et al. 2017, 2018) — teachers on disjoint
//! partitions of the training set, a noisy aggregator labelling public images (the test set's
//! first 9 000), a student trained on the answers and tested on the last 1 000, and the privacy
//! analysis (the library's [`dpsgd::pate`] and [`dpsgd::mechanisms::pate`]).

use crate::cli::plot;
use crate::cli::train::{DatasetArg, ModelArg};
use clap::{Args, ValueEnum};
use dpsgd::data::{Dataset, DatasetKind};
use dpsgd::mechanisms::pate_smooth::SmoothSensitivity;
use dpsgd::pate::{
    accuracy, aggregate_with_release, confident_pseudo_labels, ensemble_predict, fit, fit_fixmatch,
    load_teacher_predictions, new_model, partition, predict, save_teacher_predictions,
    student_stream, train_teachers, validation_split, vote_histograms, Aggregator, FitConfig,
    FixMatchConfig, FixMatchStats, PrivacyReport, ReleaseConfig, MAX_STUDENTS,
};
use dpsgd::rng::RunKeys;
use dpsgd::train::{load_data, write_atomic, DataSource, ModelKind};
use dpsgd::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Aggregators.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AggregatorArg {
    /// LNMax: Laplace noise of scale 1/γ (Papernot et al. 2017; --gamma).
    Lnmax,
    /// GNMax: Gaussian noise σ (Papernot et al. 2018; --sigma).
    Gnmax,
    /// Confident-GNMax: threshold T with noise σ₁, then GNMax with σ₂ (--threshold, --sigma1,
    /// --sigma2).
    ConfidentGnmax,
}

/// `dpsgd pate`.
#[derive(Clone, Debug, Args)]
pub struct PateArgs {
    /// Dataset (synthetic: 2 000 training and 1 000 test images, for smoke tests).
    #[arg(long, value_enum, default_value = "mnist")]
    pub dataset: DatasetArg,
    /// Folder of the IDX files (default: data/mnist).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Model of the teachers (and of the student unless --student-model is given). The
    /// scattering models train on ScatterNet features of the images (computed once and cached,
    /// see `DPSGD_FEATURE_CACHE`), with no image shifts.
    #[arg(long, value_enum, default_value = "sample-convnet")]
    pub model: ModelArg,
    /// Model of the student (default: --model).
    #[arg(long, value_enum)]
    pub student_model: Option<ModelArg>,
    /// Teachers K (disjoint partitions of the training set).
    #[arg(long)]
    pub teachers: Option<usize>,
    /// Epochs of each teacher over its partition.
    #[arg(long)]
    pub teacher_epochs: Option<usize>,
    /// Teachers' mini-batch size.
    #[arg(long, default_value_t = 16)]
    pub teacher_batch: usize,
    /// Teachers' Adam learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub teacher_lr: f32,
    /// Random image shifts of up to this many pixels for the teachers (and the student unless
    /// --student-shift is given); 0: none. Default: 2 for the pixel models, 0 (required) for the
    /// scattering models.
    #[arg(long)]
    pub shift: Option<usize>,
    /// The teachers' random affine augmentation (pixel teacher models; free: the teachers train
    /// non-privately and each augmented image stays in its teacher's partition): largest
    /// rotation in degrees. Any of --teacher-rotation, --teacher-scale, --teacher-cutout above
    /// 0 replaces the teachers' shifts by `augment::RandomAffine` (translation: --shift px).
    #[arg(long, default_value_t = 0.0)]
    pub teacher_rotation: f32,
    /// The teachers' affine augmentation: largest relative scale change (see
    /// --teacher-rotation).
    #[arg(long, default_value_t = 0.0)]
    pub teacher_scale: f32,
    /// The teachers' affine augmentation: side of a Cutout square (0: none; see
    /// --teacher-rotation).
    #[arg(long, default_value_t = 0)]
    pub teacher_cutout: usize,
    /// The student's random image shifts (default: --shift, or its model's default).
    #[arg(long)]
    pub student_shift: Option<usize>,
    /// The aggregator.
    #[arg(long, value_enum, default_value = "confident-gnmax")]
    pub aggregator: AggregatorArg,
    /// LNMax's γ (Laplace scale 1/γ; each answer is 2γ-DP).
    #[arg(long, default_value_t = 0.05)]
    pub gamma: f64,
    /// GNMax's σ.
    #[arg(long, default_value_t = 40.0)]
    pub sigma: f64,
    /// Confident-GNMax's threshold T on the plurality count (default: 200 for 250 teachers,
    /// the paper's MNIST setting, scaled by K/250 for K teachers).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Confident-GNMax's threshold noise σ₁ (default: 150·K/250).
    #[arg(long)]
    pub sigma1: Option<f64>,
    /// Confident-GNMax's GNMax noise σ₂ (default: 40·K/250).
    #[arg(long)]
    pub sigma2: Option<f64>,
    /// Queries Q: the first Q public images are sent to the aggregator.
    #[arg(long)]
    pub queries: Option<usize>,
    /// Public (student) images: the test set's first N; the rest is the student's test set.
    #[arg(long)]
    pub public: Option<usize>,
    /// Tuning mode: hold out V public images, a uniformly random choice (its own stream of the
    /// seed; the images are public, so the choice costs no privacy), as a validation set. They
    /// are never queried, self-labelled nor used for training; the student and the teachers are
    /// evaluated on them instead of the student's test set, which is then not touched (0: off,
    /// the reported run).
    #[arg(long, default_value_t = 0)]
    pub validation: usize,
    /// Student's epochs.
    #[arg(long)]
    pub student_epochs: Option<usize>,
    /// Student's mini-batch size.
    #[arg(long, default_value_t = 32)]
    pub student_batch: usize,
    /// Student's Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub student_lr: f32,
    /// Self-training: after the student has learnt the answered queries, label the other
    /// public images with its own predictions of at least --self-train-confidence, and train a
    /// fresh student on both (post-processing: no privacy cost).
    #[arg(long)]
    pub self_train: bool,
    /// Epochs of the self-trained student (over the answered and self-labelled images).
    #[arg(long, default_value_t = 20)]
    pub self_train_epochs: usize,
    /// Self-training rounds (each labels the public images with the latest student).
    #[arg(long, default_value_t = 2)]
    pub self_train_rounds: usize,
    /// The student's smallest softmax probability for a self-training label.
    #[arg(long, default_value_t = 0.95)]
    pub self_train_confidence: f32,
    /// Stop after the aggregator: print the teachers' accuracy, the answered queries, their
    /// label accuracy and the ε's, and train no student (seconds with --teacher-cache: for
    /// scanning the aggregator's settings). Not with --fixmatch or --self-train.
    #[arg(long)]
    pub aggregate_only: bool,
    /// Consistency training of the student (FixMatch, Sohn et al. 2020; post-processing: no
    /// privacy cost): the answered queries as labelled data and every usable public image as
    /// unlabelled data, pseudo-labelled from a weakly augmented view (shifts of
    /// --student-shift px) when the student's confidence is >= --fixmatch-threshold and learnt
    /// on a strongly augmented view (rotation, scaling, translation, Cutout). Needs a pixel
    /// student model; replaces the answers-only student and --self-train.
    #[arg(long)]
    pub fixmatch: bool,
    /// Students: train N students on the same answers and public images, each with its own
    /// initialisation, data order and augmentation streams of the seed (student 0 is the
    /// single student of N = 1), and evaluate the average of their softmax outputs
    /// (post-processing: no privacy cost). Each student's own accuracy is reported beside the
    /// ensemble's. Not with --self-train.
    #[arg(long, default_value_t = 1)]
    pub students: usize,
    /// FixMatch's optimizer steps.
    #[arg(long, default_value_t = 4000)]
    pub fixmatch_steps: usize,
    /// FixMatch's unlabelled batch as a multiple μ of --student-batch.
    #[arg(long, default_value_t = 3)]
    pub fixmatch_mu: usize,
    /// FixMatch's confidence threshold τ.
    #[arg(long, default_value_t = 0.95)]
    pub fixmatch_threshold: f32,
    /// FixMatch's weight λ of the unlabelled loss.
    #[arg(long, default_value_t = 1.0)]
    pub fixmatch_lambda: f32,
    /// FixMatch's cosine learning-rate decay (lr·cos(7πt/(16T))).
    #[arg(long)]
    pub fixmatch_cosine: bool,
    /// Evaluate and save an exponential moving average of the FixMatch student's weights with
    /// this decay (e.g. 0.999).
    #[arg(long)]
    pub fixmatch_ema: Option<f32>,
    /// Strong augmentation: largest rotation in degrees.
    #[arg(long, default_value_t = 15.0)]
    pub strong_rotation: f32,
    /// Strong augmentation: largest relative scale change.
    #[arg(long, default_value_t = 0.1)]
    pub strong_scale: f32,
    /// Strong augmentation: largest translation in pixels.
    #[arg(long, default_value_t = 3.0)]
    pub strong_shift: f32,
    /// Strong augmentation: side of the Cutout square (0: none).
    #[arg(long, default_value_t = 10)]
    pub strong_cutout: usize,
    /// Cache the teachers' predictions on the test set in this folder, keyed by the dataset,
    /// the teachers' settings and the seed (seeded runs only), and reuse them: student
    /// variants then skip the teachers' training. The files are **private** (functions of the
    /// training data, not covered by ε).
    #[arg(long)]
    pub teacher_cache: Option<PathBuf>,
    /// δ.
    #[arg(long, default_value_t = 1e-5)]
    pub delta: f64,
    /// The smooth-sensitivity release of the data-dependent ε (GNMax and Confident-GNMax;
    /// Papernot et al. 2018, Appendix B): its Rényi order λ. Default: the largest of 20, 15,
    /// 10, 8, 6, 4, 3, 2 at which the analysis's conditions C5/C6 hold for the GNMax noise —
    /// a rule on the parameters, never on the votes.
    #[arg(long)]
    pub release_order: Option<f64>,
    /// The release's noise σ_ss, in units of the smooth sensitivity, fixed before the votes are
    /// seen; its RDP cost (λe^(2β)/σ_ss² + …, β = 0.49/λ) is added to the data-independent ε.
    #[arg(long, default_value_t = 10.0)]
    pub release_sigma: f64,
    /// No smooth-sensitivity release (the data-independent ε then excludes its cost; the
    /// data-dependent ε is still computed, for the operator only).
    #[arg(long)]
    pub no_release: bool,
    /// Seed (partition, initialisation, shuffles, shifts, the aggregator's noise); without
    /// one, a secure OS seed that is never printed or saved.
    #[arg(long)]
    pub seed: Option<u64>,
    /// A small run for tests: 20 teachers (5 on synthetic data), 3 teacher epochs, 100
    /// queries, 10 student epochs (each unless given explicitly).
    #[arg(long)]
    pub quick: bool,
    /// Output folder (metrics.json, student.safetensors unless --aggregate-only,
    /// vote_agreement.png).
    #[arg(long, default_value = "runs/pate")]
    pub out: PathBuf,
    /// Print the figures as JSON on stdout (progress and notes go to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Everything `dpsgd pate` reports (`metrics.json`).
#[derive(Debug, Serialize)]
pub struct PateReport {
    dataset: String,
    teachers: usize,
    teacher_fit: FitConfig,
    student_fit: FitConfig,
    aggregator: Aggregator,
    public_examples: usize,
    /// What the student and the teachers were evaluated on: the student's test set, or (with
    /// --validation) public images held out for tuning.
    evaluation_set: String,
    student_test_examples: usize,
    /// Each teacher's accuracy on the student's test set. The test images are public, but each
    /// teacher is a function of its private partition: a diagnostic, not covered by ε.
    teacher_accuracies: Vec<f64>,
    teacher_accuracy_mean: f64,
    teacher_accuracy_min: f64,
    teacher_accuracy_max: f64,
    queries: u64,
    /// Not covered by ε for Confident-GNMax (it depends on the private votes).
    answered: u64,
    /// Accuracy of the aggregator's answers against the public images' true labels.
    label_accuracy: f64,
    /// Accuracy of the noiseless plurality vote on the answered queries (not covered by ε).
    plurality_accuracy_answered: f64,
    student_trained_on: String,
    self_training: bool,
    self_training_labels: usize,
    /// The student's test accuracy after each self-training round.
    self_training_accuracies: Vec<f64>,
    /// The first student's accuracy when trained on the answers only (before FixMatch or
    /// self-training); None with --aggregate-only.
    student_accuracy_answered_only: Option<f64>,
    /// The student's accuracy (with --students N > 1: the ensemble's, the average of the N
    /// students' softmax outputs); None with --aggregate-only.
    student_accuracy: Option<f64>,
    /// Students trained (--students; 0 with --aggregate-only).
    students: usize,
    /// Each student's own accuracy (after FixMatch or self-training, when on).
    student_accuracies: Vec<f64>,
    /// Each student's accuracy when trained on the answers only.
    student_accuracies_answered_only: Vec<f64>,
    /// The accuracy of the ensemble of the first n students, n = 1..=N (the last is
    /// `student_accuracy`).
    ensemble_accuracies: Vec<f64>,
    privacy: PrivacyReport,
    dp_statement: String,
    not_covered_by_epsilon: Vec<String>,
    /// FixMatch's settings and counts, when the student was trained by consistency training.
    fixmatch: Option<(FixMatchConfig, FixMatchStats)>,
    /// Whether the teachers' predictions came from --teacher-cache.
    teachers_from_cache: bool,
    teacher_seconds: f64,
    total_seconds: f64,
}

/// "98.10%, 97.90%, …" for a list of accuracies.
fn percentages(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{:.2}%", 100.0 * x))
        .collect::<Vec<_>>()
        .join(", ")
}

fn positive(name: &'static str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(name, v, "finite and > 0"))
    }
}

/// Runs `dpsgd pate`.
pub fn pate_cmd(a: PateArgs) -> Result<()> {
    let t0 = Instant::now();
    let synthetic = matches!(a.dataset, DatasetArg::Synthetic);
    // Every flag checked before anything is loaded or trained.
    positive("gamma", a.gamma)?;
    positive("sigma", a.sigma)?;
    if !(a.delta > 0.0 && a.delta < 1.0) {
        return Err(Error::invalid("delta", a.delta, "in (0, 1)"));
    }
    if !(a.self_train_confidence > 0.0 && a.self_train_confidence <= 1.0) {
        return Err(Error::invalid(
            "self_train_confidence",
            a.self_train_confidence,
            "in (0, 1]",
        ));
    }
    let k = a.teachers.unwrap_or(match (a.quick, synthetic) {
        (true, true) => 5,
        (true, false) => 20,
        _ => 250,
    });
    let q = a.queries.unwrap_or(if a.quick { 100 } else { 640 });
    // The paper's MNIST setting (T 200, σ₁ 150, σ₂ 40 for 250 teachers), scaled to K.
    let scale = k as f64 / 250.0;
    let threshold = a.threshold.unwrap_or(200.0 * scale);
    let sigma1 = a.sigma1.unwrap_or(150.0 * scale);
    let sigma2 = a.sigma2.unwrap_or(40.0 * scale);
    positive("sigma1", sigma1)?;
    positive("sigma2", sigma2)?;
    if !threshold.is_finite() {
        return Err(Error::invalid("threshold", threshold, "finite"));
    }
    let kind_of = |m: ModelArg| match m {
        ModelArg::SampleConvnet => ModelKind::SampleConvnet,
        ModelArg::TanhConvnet => ModelKind::TanhConvnet,
        ModelArg::ScatterLinear => ModelKind::ScatterLinear,
        ModelArg::ScatterCnn => ModelKind::ScatterCnn,
    };
    let teacher_model = kind_of(a.model);
    let model = kind_of(a.student_model.unwrap_or(a.model));
    let default_shift = |m: ModelKind| if m.uses_scattering() { 0 } else { 2 };
    let teacher_shift = a.shift.unwrap_or(default_shift(teacher_model));
    let teacher_affine = (a.teacher_rotation != 0.0
        || a.teacher_scale != 0.0
        || a.teacher_cutout != 0)
        .then_some(dpsgd::augment::RandomAffine {
            max_rotation_deg: a.teacher_rotation,
            max_scale: a.teacher_scale,
            max_shift: teacher_shift as f32,
            cutout: a.teacher_cutout,
        });
    let teacher_fit = FitConfig {
        model: teacher_model,
        epochs: a.teacher_epochs.unwrap_or(if a.quick { 3 } else { 40 }),
        batch_size: a.teacher_batch,
        lr: a.teacher_lr,
        max_shift: teacher_shift,
        affine: teacher_affine,
    };
    let student_fit = FitConfig {
        model,
        epochs: a.student_epochs.unwrap_or(if a.quick { 10 } else { 100 }),
        batch_size: a.student_batch,
        lr: a.student_lr,
        max_shift: a.student_shift.or(a.shift).unwrap_or(default_shift(model)),
        affine: None,
    };
    teacher_fit.validate()?;
    student_fit.validate()?;
    if a.self_train_epochs == 0 {
        return Err(Error::invalid("self_train_epochs", 0, ">= 1"));
    }
    if a.self_train_rounds == 0 {
        return Err(Error::invalid("self_train_rounds", 0, ">= 1"));
    }
    let agg = match a.aggregator {
        AggregatorArg::Lnmax => Aggregator::Lnmax { gamma: a.gamma },
        AggregatorArg::Gnmax => Aggregator::Gnmax { sigma: a.sigma },
        AggregatorArg::ConfidentGnmax => Aggregator::ConfidentGnmax {
            threshold,
            sigma1,
            sigma2,
        },
    };
    agg.validate()?;
    let fixmatch_cfg = FixMatchConfig {
        model,
        steps: a.fixmatch_steps,
        batch_size: a.student_batch,
        mu: a.fixmatch_mu,
        threshold: a.fixmatch_threshold,
        lambda: a.fixmatch_lambda,
        lr: a.student_lr,
        weak_shift: student_fit.max_shift,
        strong: dpsgd::augment::RandomAffine {
            max_rotation_deg: a.strong_rotation,
            max_scale: a.strong_scale,
            max_shift: a.strong_shift,
            cutout: a.strong_cutout,
        },
        cosine_lr: a.fixmatch_cosine,
        ema_decay: a.fixmatch_ema,
    };
    if a.fixmatch {
        fixmatch_cfg.validate()?;
        if a.self_train {
            return Err(Error::invalid(
                "self_train",
                true,
                "off with --fixmatch (consistency training replaces self-training)",
            ));
        }
    }
    if a.students == 0 || a.students > MAX_STUDENTS {
        return Err(Error::invalid(
            "students",
            a.students,
            format!("in 1..={MAX_STUDENTS} (the number of students to train and average)"),
        ));
    }
    if a.students > 1 && a.self_train {
        return Err(Error::invalid(
            "students",
            a.students,
            "1 with --self-train (ensembles are of answers-only or FixMatch students)",
        ));
    }
    if a.students > 1 && a.aggregate_only {
        return Err(Error::invalid(
            "students",
            a.students,
            "1 with --aggregate-only (it trains no student)",
        ));
    }
    if a.aggregate_only && (a.fixmatch || a.self_train) {
        return Err(Error::invalid(
            "aggregate_only",
            true,
            "off with --fixmatch and --self-train (it trains no student)",
        ));
    }
    if q == 0 {
        return Err(Error::invalid("queries", 0, ">= 1"));
    }

    // Data: missing files are an error that names scripts/fetch-mnist (Dataset::load); the
    // scattering models get the ScatterNet features of the [0, 1] pixels (train::load_data).
    let (source, name) = match a.dataset {
        DatasetArg::Synthetic => (
            DataSource::Synthetic {
                train: 2000,
                test: 1000,
            },
            "synthetic",
        ),
        DatasetArg::Mnist | DatasetArg::FashionMnist => {
            let kind = if matches!(a.dataset, DatasetArg::Mnist) {
                DatasetKind::Mnist
            } else {
                DatasetKind::FashionMnist
            };
            (
                DataSource::Idx {
                    kind,
                    dir: Some(
                        a.data_dir
                            .clone()
                            .unwrap_or_else(|| kind.default_dir().to_path_buf()),
                    ),
                },
                kind.name(),
            )
        }
    };
    let say = |s: String| eprintln!("{s}");
    // Pixels first (cheap; the sizes are checked before any features are computed), then the
    // teachers' and the student's representations.
    let (train_px, test_px) = load_data(&source, ModelKind::SampleConvnet)?;
    let public_all = a.public.unwrap_or(if synthetic { 900 } else { 9000 });
    if public_all == 0 || public_all >= test_px.len() {
        return Err(Error::invalid(
            "public",
            public_all,
            format!(
                "in 1..{} (the rest of the {}-image test set is the student's test set)",
                test_px.len(),
                test_px.len()
            ),
        ));
    }
    let keys = RunKeys::from_seed(a.seed)?;
    // Tuning mode: a random `validation` of the public images are the evaluation set; the
    // student's test set is not touched.
    let (usable, val_idx) = validation_split(public_all, a.validation, &keys)?;
    let public_n = usable.len();
    let eval_idx: Vec<usize> = if a.validation > 0 {
        val_idx
    } else {
        (public_all..test_px.len()).collect()
    };
    let eval_name = if a.validation > 0 {
        "validation set (public images held out)"
    } else {
        "student's test set"
    };
    if q > public_n {
        return Err(Error::invalid(
            "queries",
            q,
            format!(
                "<= the public set's {public_n} images{}",
                if a.validation > 0 {
                    " (after the validation hold-out)"
                } else {
                    ""
                }
            ),
        ));
    }
    if k > train_px.len() {
        return Err(Error::invalid(
            "teachers",
            k,
            format!("<= the {} training examples", train_px.len()),
        ));
    }
    let release = release_config(&a, agg, k, test_px.classes())?;
    let features = |m: ModelKind| -> Result<(Dataset, Dataset)> {
        if m.uses_scattering() {
            say(format!("ScatterNet features for the {m:?} model (cached)"));
            load_data(&source, m)
        } else {
            Ok((train_px.clone(), test_px.clone()))
        }
    };
    let (train, teacher_test) = features(teacher_model)?;
    let test = if model.uses_scattering() == teacher_model.uses_scattering() {
        teacher_test.clone()
    } else {
        features(model)?.1
    };
    let parts = partition(train.len(), k, &keys)?;
    std::fs::create_dir_all(&a.out).map_err(|source| Error::Io {
        path: a.out.clone(),
        source,
    })?;
    say(format!(
        "pate: {k} {:?} teachers on {} {name} training images (~{} each), {} epochs each; {q} queries of {public_n} public images; {:?} student evaluated on {} images: the {eval_name}",
        teacher_model,
        train.len(),
        train.len() / k,
        teacher_fit.epochs,
        model,
        eval_idx.len()
    ));

    // Teachers, in parallel (rayon), each predicting the whole test set.
    let t_teach = Instant::now();
    let bar = ProgressBar::new(k as u64);
    bar.set_style(
        ProgressStyle::with_template("teachers [{bar:30}] {pos}/{len} {elapsed} (eta {eta})")
            .map_err(|e| Error::invalid("progress template", e, "valid"))?,
    );
    // The teachers predict the whole test set (cheap next to their training), so that a cached
    // run serves every split; only the Q queries and the evaluation set are read.
    let cache_file = match (&a.teacher_cache, a.seed) {
        (Some(dir), Some(seed)) => {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
            let affine = teacher_fit.affine.map_or(String::new(), |f| {
                format!("-r{}-z{}-c{}", f.max_rotation_deg, f.max_scale, f.cutout)
            });
            Some(dir.join(format!(
                "{name}-k{k}-{teacher_model:?}-e{}-b{}-lr{}-s{}{affine}-n{}-seed{seed}.preds",
                teacher_fit.epochs,
                teacher_fit.batch_size,
                teacher_fit.lr,
                teacher_fit.max_shift,
                train.len()
            )))
        }
        (Some(_), None) => {
            return Err(Error::invalid(
                "teacher_cache",
                "set",
                "used with --seed (a secure run's teachers are never cached)",
            ))
        }
        _ => None,
    };
    let cached = match &cache_file {
        Some(f) => load_teacher_predictions(f, k, teacher_test.len())?,
        None => None,
    };
    let teachers_from_cache = cached.is_some();
    let all_preds = match cached {
        Some(p) => {
            say(format!(
                "teachers' predictions read from the cache {}",
                cache_file
                    .as_ref()
                    .map_or(String::new(), |f| f.display().to_string())
            ));
            p
        }
        None => {
            let p = train_teachers(&train, &parts, &teacher_test, &teacher_fit, &keys, &|| {
                bar.inc(1)
            })?;
            if let Some(f) = &cache_file {
                save_teacher_predictions(f, &p)?;
            }
            p
        }
    };
    bar.finish_and_clear();
    let query_idx: Vec<usize> = usable[..q].iter().chain(eval_idx.iter()).copied().collect();
    let preds: Vec<Vec<u32>> = all_preds
        .iter()
        .map(|p| query_idx.iter().map(|&i| p[i]).collect())
        .collect();
    let teacher_seconds = t_teach.elapsed().as_secs_f64();
    let labels = test.labels();
    let test_labels: Vec<u32> = eval_idx.iter().map(|&i| labels[i]).collect();
    let teacher_acc: Vec<f64> = preds
        .iter()
        .map(|p| accuracy(&p[q..], &test_labels))
        .collect();
    let mean = teacher_acc.iter().sum::<f64>() / k as f64;
    let tmin = teacher_acc.iter().cloned().fold(f64::MAX, f64::min);
    let tmax = teacher_acc.iter().cloned().fold(f64::MIN, f64::max);
    say(format!(
        "teachers trained in {teacher_seconds:.0} s; accuracy on the {eval_name} (teachers are private: not covered by ε): mean {:.2}%, min {:.2}%, max {:.2}%",
        100.0 * mean,
        100.0 * tmin,
        100.0 * tmax
    ));

    // Votes on the first Q public images, and the aggregator.
    let q_preds: Vec<Vec<u32>> = preds.iter().map(|p| p[..q].to_vec()).collect();
    let votes = vote_histograms(&q_preds, test.classes())?;
    let agg_out = aggregate_with_release(&votes, agg, a.delta, release, &keys)?;
    let answered: Vec<(usize, u32)> = agg_out
        .labels
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.map(|l| (i, l)))
        .collect();
    // Answers and self-labels index `usable` (the public images the run may use).
    let label_accuracy = answered
        .iter()
        .filter(|(i, l)| labels[usable[*i]] == *l)
        .count() as f64
        / answered.len().max(1) as f64;
    let plurality = |v: &[u64]| {
        v.iter()
            .enumerate()
            .fold((0, 0), |b, (c, &n)| if n > b.1 { (c, n) } else { b })
    };
    let plurality_acc = answered
        .iter()
        .filter(|(i, _)| plurality(&votes[*i]).0 as u32 == labels[usable[*i]])
        .count() as f64
        / answered.len().max(1) as f64;

    // Vote agreement: the plurality's share of the teachers, over all queries.
    let bins = 20usize;
    let mut hist_all = vec![0f64; bins];
    for v in &votes {
        let share = plurality(v).1 as f64 / k as f64;
        let b = ((share * bins as f64) as usize).min(bins - 1);
        hist_all[b] += 1.0;
    }
    let centre = |b: usize| (b as f64 + 0.5) / bins as f64;
    let png = a.out.join("vote_agreement.png");
    let plotted = plot::bar_chart(
        &png,
        &format!("Plurality vote share, {q} queries, {k} teachers (private: NOT covered by ε)"),
        "share of teachers voting for the plurality class",
        "queries",
        &(0..bins)
            .map(|b| (centre(b), hist_all[b]))
            .collect::<Vec<_>>(),
        1.0 / bins as f64,
    );
    if let Err(e) = &plotted {
        say(format!("warning: no plot: {e}"));
    }

    // The student: answered queries (public images, aggregator's labels); none with
    // --aggregate-only (the aggregator's figures and the ε's only).
    let (acc_answered, student_acc, trained_on, n_self, round_acc, fixmatch_out, per_student) = if a
        .aggregate_only
    {
        say("--aggregate-only: no student trained".to_string());
        (
            None,
            None,
            "nothing: --aggregate-only (no student)".to_string(),
            0,
            Vec::new(),
            None,
            (Vec::new(), Vec::new(), Vec::new()),
        )
    } else {
        if answered.is_empty() {
            return Err(Error::invalid(
                "aggregator",
                format!("{agg:?}"),
                "answering at least one query (lower --threshold or raise --queries)",
            ));
        }
        let public = test.subset(&usable)?;
        let held = test.subset(&eval_idx)?;
        let ex = test.example_len();
        let labelled = |items: &[(usize, u32)]| -> Result<Dataset> {
            let mut img = Vec::with_capacity(items.len() * ex);
            let mut lab = Vec::with_capacity(items.len());
            for &(i, l) in items {
                img.extend_from_slice(&public.images()[i * ex..(i + 1) * ex]);
                lab.push(l);
            }
            Dataset::new(
                img,
                lab,
                test.channels(),
                test.height(),
                test.width(),
                test.classes(),
            )
        };
        let student_data = labelled(&answered)?;
        let eval = |m: &dpsgd::nn::Sequential| -> Result<f64> {
            let p: Vec<u32> = predict(m, held.images())?
                .into_iter()
                .map(|(c, _)| c)
                .collect();
            Ok(accuracy(&p, held.labels()))
        };
        // Student j learns from its own streams (student 0: STUDENT_STREAM, the single
        // student's); with --students N > 1 the N students' softmax outputs are averaged
        // (post-processing of the answers and public images: no privacy cost).
        let mut students = Vec::with_capacity(a.students);
        let mut accs = Vec::with_capacity(a.students);
        let mut accs_answered = Vec::with_capacity(a.students);
        let mut round_acc = Vec::new();
        let mut fixmatch_out = None;
        let mut trained_on = String::new();
        let mut n_self = 0;
        for j in 0..a.students {
            let stream = student_stream(j)?;
            let who = if a.students > 1 {
                format!("student {} of {}", j + 1, a.students)
            } else {
                "student".to_string()
            };
            let mut student = new_model(model, &keys, stream)?;
            fit(&mut student, &student_data, &student_fit, &keys, stream)?;
            let acc_answered = eval(&student)?;
            say(format!(
                "{who} on {} answered queries: accuracy on the {eval_name} {:.2}%",
                answered.len(),
                100.0 * acc_answered
            ));
            let student_acc = if a.fixmatch {
                // Warm start from the answers-only student (its pseudo-labels pass the threshold
                // from the first step); the unlabelled images are every usable public image.
                let stats = fit_fixmatch(
                    &mut student,
                    &student_data,
                    public.images(),
                    &fixmatch_cfg,
                    &keys,
                    stream + 100,
                )?;
                let acc = eval(&student)?;
                say(format!(
                    "{who}, FixMatch (post-processing, no privacy cost): {} steps, {} of {} unlabelled views pseudo-labelled (last tenth of the steps: {:.1}%); accuracy on the {eval_name} {:.2}%",
                    fixmatch_cfg.steps,
                    stats.pseudo_labelled,
                    stats.unlabelled_seen,
                    100.0 * stats.mask_rate_final,
                    100.0 * acc
                ));
                trained_on = format!(
                    "{} answered queries + consistency training (FixMatch) on {} unlabelled public images (post-processing)",
                    answered.len(),
                    public.len()
                );
                if j == 0 {
                    fixmatch_out = Some((fixmatch_cfg, stats));
                }
                acc
            } else if a.self_train {
                // (--students is 1 here: checked above.)
                let answered_set: std::collections::HashSet<usize> =
                    answered.iter().map(|(i, _)| *i).collect();
                let cfg = FitConfig {
                    epochs: a.self_train_epochs,
                    ..student_fit
                };
                let mut acc = acc_answered;
                for r in 0..a.self_train_rounds {
                    // The current student labels the public images it is confident about; a
                    // fresh student learns those and the answered queries.
                    let p = predict(&student, public.images())?;
                    let mut items = answered.clone();
                    n_self = 0;
                    for (i, c) in confident_pseudo_labels(&p, a.self_train_confidence) {
                        if !answered_set.contains(&i) {
                            items.push((i, c));
                            n_self += 1;
                        }
                    }
                    let data = labelled(&items)?;
                    let stream = stream + 1 + r as u64;
                    let mut next = new_model(model, &keys, stream)?;
                    fit(&mut next, &data, &cfg, &keys, stream)?;
                    acc = eval(&next)?;
                    round_acc.push(acc);
                    student = next;
                    say(format!(
                        "self-training round {} (post-processing, no privacy cost): +{n_self} public images labelled by the student (confidence >= {}); test accuracy {:.2}%",
                        r + 1,
                        a.self_train_confidence,
                        100.0 * acc
                    ));
                }
                trained_on = format!(
                    "{} answered queries + {n_self} public images self-labelled by the student (confidence >= {}, {} rounds; post-processing)",
                    answered.len(),
                    a.self_train_confidence,
                    a.self_train_rounds
                );
                acc
            } else {
                trained_on = format!(
                    "{} answered queries only (no self-training)",
                    answered.len()
                );
                acc_answered
            };
            let file = if j == 0 {
                "student.safetensors".to_string()
            } else {
                format!("student-{j}.safetensors")
            };
            student.save_safetensors(a.out.join(file))?;
            accs_answered.push(acc_answered);
            accs.push(student_acc);
            students.push(student);
        }
        // The ensembles of the first n students, n = 1..=N (n = 1: student 0 alone).
        let mut ensemble_acc = Vec::with_capacity(a.students);
        for n in 1..=students.len() {
            let p: Vec<u32> = ensemble_predict(&students[..n], held.images())?
                .into_iter()
                .map(|(c, _)| c)
                .collect();
            ensemble_acc.push(accuracy(&p, held.labels()));
        }
        let student_acc = ensemble_acc.last().copied().unwrap_or(0.0);
        if a.students > 1 {
            say(format!(
                "ensemble of {} students (averaged softmax; post-processing, no privacy cost): accuracy on the {eval_name} {:.2}% (the students alone: {}; the first n = 1..{}: {})",
                a.students,
                100.0 * student_acc,
                percentages(&accs),
                a.students,
                percentages(&ensemble_acc)
            ));
            trained_on = format!(
                "{trained_on}; an ensemble of {} such students (averaged softmax outputs; post-processing)",
                a.students
            );
        }
        (
            Some(accs_answered[0]),
            Some(student_acc),
            trained_on,
            n_self,
            round_acc,
            fixmatch_out,
            (accs, accs_answered, ensemble_acc),
        )
    };

    let p = &agg_out.privacy;
    let report = PateReport {
        dataset: name.to_string(),
        teachers: k,
        teacher_fit,
        student_fit,
        aggregator: agg,
        public_examples: public_n,
        evaluation_set: eval_name.to_string(),
        student_test_examples: eval_idx.len(),
        teacher_accuracies: teacher_acc.clone(),
        teacher_accuracy_mean: mean,
        teacher_accuracy_min: tmin,
        teacher_accuracy_max: tmax,
        queries: p.queries,
        answered: p.answered,
        label_accuracy,
        plurality_accuracy_answered: plurality_acc,
        student_trained_on: trained_on,
        self_training: a.self_train,
        self_training_labels: n_self,
        self_training_accuracies: round_acc,
        student_accuracy_answered_only: acc_answered,
        student_accuracy: student_acc,
        students: per_student.0.len(),
        student_accuracies: per_student.0,
        student_accuracies_answered_only: per_student.1,
        ensemble_accuracies: per_student.2,
        privacy: p.clone(),
        dp_statement: format!(
            "({:.4}, {:e})-DP for the teachers' training data: the data-independent ε ({}). The data-dependent ε is itself a function of the private votes and is not a DP statement; its smooth-sensitivity release (privacy.smooth_release, Papernot et al. 2018 Appendix B, when present) may be published — its cost is inside the DP statement — but it is a noisy estimate of the data-dependent ε, not a guarantee.",
            p.epsilon_data_independent, p.delta, p.data_independent_method
        ),
        not_covered_by_epsilon: vec![
            "epsilon_data_dependent and its order (computed from the private votes)".into(),
            "answered (Confident-GNMax: depends on the private votes)".into(),
            "plurality_accuracy_answered and vote_agreement.png (computed from the private votes)".into(),
            "teacher_seconds, total_seconds (timing)".into(),
        ],
        fixmatch: fixmatch_out,
        teachers_from_cache,
        teacher_seconds,
        total_seconds: t0.elapsed().as_secs_f64(),
    };
    write_atomic(
        &a.out.join("metrics.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report, &a.out, plotted.is_ok());
    }
    Ok(())
}

/// The smooth-sensitivity release's parameters (None for LNMax or `--no-release`), checked
/// (conditions C5/C6 included) before anything is trained.
fn release_config(
    a: &PateArgs,
    agg: Aggregator,
    teachers: usize,
    classes: usize,
) -> Result<Option<ReleaseConfig>> {
    let (sigma, threshold) = match agg {
        Aggregator::Lnmax { .. } => {
            if a.release_order.is_some() {
                return Err(Error::invalid(
                    "release_order",
                    a.release_order.unwrap_or_default(),
                    "not given with --aggregator lnmax (the smooth-sensitivity release is implemented for GNMax and Confident-GNMax)",
                ));
            }
            return Ok(None);
        }
        _ if a.no_release => return Ok(None),
        Aggregator::Gnmax { sigma } => (sigma, None),
        Aggregator::ConfidentGnmax {
            threshold,
            sigma1,
            sigma2,
        } => (sigma2, Some((threshold, sigma1))),
    };
    if !(a.release_sigma.is_finite() && a.release_sigma > 0.0) {
        return Err(Error::invalid(
            "release_sigma",
            a.release_sigma,
            "finite and > 0",
        ));
    }
    let check = |order: f64| {
        let r = ReleaseConfig::new(order, a.release_sigma);
        SmoothSensitivity::new(teachers, classes, sigma, threshold, r.order, r.beta).map(|_| r)
    };
    match a.release_order {
        Some(order) => check(order).map(Some),
        None => {
            for order in [20.0, 15.0, 10.0, 8.0, 6.0, 4.0, 3.0, 2.0] {
                if let Ok(r) = check(order) {
                    return Ok(Some(r));
                }
            }
            Err(Error::invalid(
                "sigma2",
                sigma,
                "a GNMax noise at which the smooth-sensitivity analysis holds at some order in 2..=20; raise it, or pass --no-release",
            ))
        }
    }
}

fn print_table(r: &PateReport, out: &Path, plotted: bool) {
    let p = &r.privacy;
    println!(
        "PATE on {} ({} teachers, {:?})",
        r.dataset, r.teachers, r.aggregator
    );
    println!(
        "  teachers' accuracy ({}; teachers are private: not covered by ε): mean {:.2}%  min {:.2}%  max {:.2}%",
        r.evaluation_set,
        100.0 * r.teacher_accuracy_mean,
        100.0 * r.teacher_accuracy_min,
        100.0 * r.teacher_accuracy_max
    );
    println!(
        "  queries {}  answered {}{}",
        r.queries,
        r.answered,
        if r.answered < r.queries {
            "  (the count depends on the private votes: not covered by ε)"
        } else {
            ""
        }
    );
    println!(
        "  label accuracy of the answered queries: {:.2}%",
        100.0 * r.label_accuracy
    );
    println!("  student trained on {}", r.student_trained_on);
    if let Some(acc) = r.student_accuracy {
        if r.students > 1 {
            println!(
                "  the {} students alone on the {}: {}",
                r.students,
                r.evaluation_set,
                percentages(&r.student_accuracies)
            );
        }
        println!(
            "  student{} accuracy on the {} ({} images): {:.2}%",
            if r.students > 1 {
                format!(" ensemble ({} students, averaged softmax)", r.students)
            } else {
                String::new()
            },
            r.evaluation_set,
            r.student_test_examples,
            100.0 * acc
        );
    }
    println!(
        "  ε data-independent = {:.3} at δ = {:e}   <- the DP statement ({})",
        p.epsilon_data_independent, p.delta, p.data_independent_method
    );
    println!(
        "  ε data-dependent   = {:.3} (order {})    <- NOT a DP statement and not for publication: computed from the private votes",
        p.epsilon_data_dependent, p.data_dependent_order
    );
    match &p.smooth_release {
        Some(s) => println!(
            "  ε data-dependent, smooth-sensitivity release = {:.3} (order {}, β {:.4}, σ_ss {}; release cost {:.3} RDP)    <- publishable (its cost is in the DP statement), a noisy estimate of the data-dependent ε, not a guarantee (Papernot et al. 2018, Appendix B)",
            s.epsilon, s.order, s.beta, s.sigma_ss, s.release_rdp
        ),
        None => println!("  (no smooth-sensitivity release: --no-release or LNMax)"),
    }
    println!(
        "  wrote {}{}{}",
        out.join("metrics.json").display(),
        if r.student_accuracy.is_some() {
            ", student.safetensors"
        } else {
            ""
        },
        if plotted {
            ", vote_agreement.png (the vote histogram is private: not covered by ε)"
        } else {
            ""
        }
    );
}
