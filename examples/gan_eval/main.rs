//! `gan_eval`: measures generated labelled samples (a `gen_data.safetensors` of
//! [`dpsgd::data::labelled`]'s format, 28×28×1 in [−1, 1]) against the real data: downstream
//! accuracy, a Fréchet distance on an evaluation classifier's features, label agreement and
//! diversity. See `eval.rs` for the definitions and what the numbers are (and are not).
//!
//! ```text
//! cargo run --release --example gan_eval -- --samples OUT/gen_data.safetensors
//! ```
//!
//! The evaluation classifier (SampleConvNet, trained without privacy on the real training set)
//! is cached in `--classifier` and reused, so every generator is measured with the same one.
//! It is an evaluation tool: it is trained on the real data outside any privacy accounting
//! and is never part of a private run's release. Prints one JSON object (also to `--json`).
//!
//! # Labelled samples from an unconditional GAN
//! A one-class DP-DCGAN (`dp_dcgan --target-digit d`) writes samples labelled `d`. Ten of
//! them, one per class, each trained with DP-SGD on its own class, give a labelled set for
//! the downstream accuracy: `gan_eval --samples c0/gen_data.safetensors … c9/gen_data.safetensors`.
//! The ten training sets are disjoint (an example's label decides the one run that can
//! see it), so by parallel composition (McSherry, "Privacy Integrated Queries", SIGMOD 2009,
//! Theorem 4; it holds for (ε, δ) and for RDP under add/remove neighbours) the ten models
//! together are (max ε, max δ)-DP, and their samples are post-processing. The class sizes
//! N_c set each run's sampling rate, as the dataset size does in any DP-SGD run (treated as
//! public, as in Opacus).

mod eval;

use clap::{Parser, ValueEnum};
use dpsgd::data::{Dataset, DatasetKind, Split};
use dpsgd::nn::models;
use dpsgd::{Device, Error, Result};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DataArg {
    Mnist,
    FashionMnist,
}

#[derive(Parser, Debug)]
#[command(
    name = "gan_eval",
    about = "Evaluate generated labelled samples: downstream accuracy, Fréchet distance (evaluation-classifier features, not FID), label agreement, diversity"
)]
struct Args {
    /// The generated samples (safetensors: `images` F32 [N,1,28,28] in [-1,1], `labels` I64 [N]).
    /// Several files (`--samples A B …`) are evaluated as one set, e.g. the `gen_data` of ten
    /// one-class DP-DCGANs trained on the ten disjoint classes (see the module doc).
    #[arg(long, required = true, num_args = 1..)]
    samples: Vec<PathBuf>,
    /// The real dataset they imitate.
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: DataArg,
    /// Folder of the real IDX files (default: the dataset's usual folder).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The evaluation classifier's cache (trained on the real training set when missing).
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Epochs of the evaluation classifier (when it is trained).
    #[arg(long, default_value_t = 3)]
    classifier_epochs: u64,
    /// Epochs of the downstream classifier on the generated samples.
    #[arg(long, default_value_t = 5)]
    downstream_epochs: u64,
    /// Samples (and real images) used for the pairwise diversity (O(n²)).
    #[arg(long, default_value_t = 1000)]
    diversity_samples: usize,
    /// Seed of the classifiers' initialisation and shuffles.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the JSON result here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    match run(&Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let kind = match args.dataset {
        DataArg::Mnist => DatasetKind::Mnist,
        DataArg::FashionMnist => DatasetKind::FashionMnist,
    };
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| kind.default_dir().to_path_buf());
    let gen = eval::load_samples(&args.samples)?;
    if (gen.channels(), gen.height(), gen.width()) != (1, 28, 28) || gen.classes() != 10 {
        return Err(Error::invalid(
            "--samples",
            format!(
                "{}×{}×{} images, {} classes",
                gen.channels(),
                gen.height(),
                gen.width(),
                gen.classes()
            ),
            "1×28×28 images with 10 classes (resize before writing)",
        ));
    }
    let train = Dataset::load(kind, &dir, Split::Train)?;
    let test = Dataset::load(kind, &dir, Split::Test)?;
    let (mean, std) = kind.normalization();
    let dev = Device::Cpu;

    // The evaluation classifier: cached, or trained on the real training set.
    let cache = args.classifier.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "gan-eval-classifier-{}-e{}-s{}.safetensors",
            kind.name(),
            args.classifier_epochs,
            args.seed
        ))
    });
    // Make the cache's folder now, so a bad path fails before minutes of training.
    if let Some(parent) = cache.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let clf = if cache.exists() {
        let mut m = models::sample_conv_net_builder(false).build_zeroed(&dev)?;
        m.load_safetensors(&cache)?;
        eprintln!("evaluation classifier: loaded {}", cache.display());
        m
    } else {
        eprintln!(
            "evaluation classifier: training SampleConvNet on the real training set ({} epochs)",
            args.classifier_epochs
        );
        let m = eval::train_classifier(&train, args.classifier_epochs, 128, args.seed)?;
        m.save_safetensors(&cache)?;
        m
    };
    let clf_acc = eval::accuracy(&clf, &test)?;

    // The classes present in the samples, and the real images of those classes.
    let counts = gen.class_counts();
    let present: Vec<u32> = (0..10u32).filter(|&c| counts[c as usize] > 0).collect();
    let per = 28 * 28;
    let real_idx: Vec<usize> = (0..test.len())
        .filter(|&i| present.contains(&test.labels()[i]))
        .collect();
    let mut real_norm = vec![0f32; real_idx.len() * per];
    let mut real_lab = vec![0u32; real_idx.len()];
    test.gather(&real_idx, &mut real_norm, &mut real_lab)?;
    // Real images back to [−1, 1] for the pixel-space diversity.
    let real_pm1: Vec<f32> = real_norm
        .iter()
        .map(|&x| ((x * std + mean) * 2.0 - 1.0).clamp(-1.0, 1.0))
        .collect();
    let gen_norm = eval::to_classifier_input(gen.images(), mean, std);

    let (pred, gen_feat) = eval::predict_features(&clf, &gen_norm)?;
    let (_, real_feat) = eval::predict_features(&clf, &real_norm)?;
    let d = gen_feat.len() / gen.len();
    let (mu_g, s_g) = eval::mean_cov(&gen_feat, d)?;
    let (mu_r, s_r) = eval::mean_cov(&real_feat, d)?;
    let fd = eval::frechet_distance(&mu_g, &s_g, &mu_r, &s_r)?;
    // Floor: real training images of the same classes (as many as the samples) vs the test set.
    let train_idx: Vec<usize> = (0..train.len())
        .filter(|&i| present.contains(&train.labels()[i]))
        .take(gen.len())
        .collect();
    let mut tr = vec![0f32; train_idx.len() * per];
    let mut trl = vec![0u32; train_idx.len()];
    train.gather(&train_idx, &mut tr, &mut trl)?;
    let (_, tr_feat) = eval::predict_features(&clf, &tr)?;
    let (mu_t, s_t) = eval::mean_cov(&tr_feat, d)?;
    let fd_real = eval::frechet_distance(&mu_t, &s_t, &mu_r, &s_r)?;

    let agree = pred
        .iter()
        .zip(gen.labels())
        .filter(|(a, b)| a == b)
        .count() as f64
        / gen.len() as f64;
    let k = args.diversity_samples.max(2);
    let div_gen = eval::mean_pairwise_distance(&gen.images()[..gen.len().min(k) * per], per);
    let div_real = eval::mean_pairwise_distance(&real_pm1[..real_idx.len().min(k) * per], per);

    let downstream = if present.len() >= 2 {
        let ds = Dataset::new(gen_norm.clone(), gen.labels().to_vec(), 1, 28, 28, 10)?;
        let m = eval::train_classifier(&ds, args.downstream_epochs, 128, args.seed ^ 0x5eed)?;
        Some(eval::accuracy(&m, &test)?)
    } else {
        None
    };
    let out = serde_json::json!({
        "samples": args.samples.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "n": gen.len(),
        "classes": present,
        "downstream_accuracy": downstream,
        "downstream_note": if downstream.is_none() { "needs >= 2 classes in the samples" } else { "SampleConvNet trained on the samples, tested on the real test set (all classes)" },
        "eval_classifier_test_accuracy": clf_acc,
        "frechet_distance": fd,
        "frechet_distance_real_train_vs_test": fd_real,
        "frechet_note": "squared Fréchet distance on the 32-d penultimate features of an evaluation-only SampleConvNet trained on the real training set; NOT FID (no Inception features): do not compare with papers' FID",
        "label_agreement": agree,
        "diversity_generated": div_gen,
        "diversity_real_test": div_real,
        "diversity_note": "mean pairwise L2 distance in [-1, 1] pixel space, first min(n, --diversity-samples) images",
    });
    let text = serde_json::to_string_pretty(&out)?;
    println!("{text}");
    if let Some(p) = &args.json {
        std::fs::write(p, &text).map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?;
    }
    Ok(())
}
