//! The measures of `gan_eval` (shared by the DP-DCGAN and GS-WGAN examples), on generated
//! labelled samples in the format of [`dpsgd::data::labelled`] (28×28×1, values in [−1, 1]):
//!
//! 1. **Downstream accuracy**: Opacus's SampleConvNet trained without privacy on the
//!    generated samples and their labels, tested on the real test set (the GS-WGAN paper's
//!    "sample quality" measure; it needs ≥ 2 classes).
//! 2. **Fréchet distance** between the generated samples and the real test images (of the
//!    same classes) in the 32-dimensional penultimate features (after the last ReLU) of an
//!    **evaluation-only** SampleConvNet trained without privacy on the real training set:
//!    `‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁^½ Σ₂ Σ₁^½)^½)` (Fréchet 1957; Dowson & Landau 1982, the
//!    Gaussian case; Heusel et al., NeurIPS 2017, as FID). This is **not** FID: FID uses
//!    Inception-v3's pool features, which cannot be loaded here; the numbers are on another
//!    scale and must not be compared with the papers' FIDs. The classifier is an evaluation
//!    tool trained on the real data and is never released by a private run.
//! 3. **Label agreement** (for a single-digit DCGAN: the fraction of samples the evaluation
//!    classifier calls an 8) and **diversity**: the mean pairwise L2 distance between samples
//!    in pixel space ([−1, 1]), beside the same measure on real test images of the same
//!    classes (a mode-collapsed generator scores far below the real images).

use dpsgd::data::Dataset;
use dpsgd::nn::{models, Grads, Loss, Reduction, Sequential};
use dpsgd::optim::{AdamConfig, NoisyStep};
use dpsgd::rng::{Purpose, RandomBits, RunKeys};
use dpsgd::{Buffer, Device, Error, NoiseKey, Result};
use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Mean and covariance (divisor n − 1, as numpy's `np.cov`) of `n` rows of `d` features.
pub fn mean_cov(rows: &[f64], d: usize) -> Result<(DVector<f64>, DMatrix<f64>)> {
    if d == 0 || rows.len() % d != 0 || rows.len() / d < 2 {
        return Err(Error::shape(
            "mean_cov",
            format!("{} values are not ≥ 2 rows of {d} features", rows.len()),
        ));
    }
    let n = rows.len() / d;
    let x = DMatrix::from_row_slice(n, d, rows);
    let mu = x.row_mean().transpose();
    let mut c = x.clone();
    for mut r in c.row_iter_mut() {
        r -= mu.transpose();
    }
    let cov = c.transpose() * &c / (n as f64 - 1.0);
    Ok((mu, cov))
}

/// The principal square root of a symmetric positive semi-definite matrix, by its
/// eigendecomposition (negative round-off eigenvalues are clamped to 0).
pub fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let sym = (m + m.transpose()) * 0.5;
    let e = SymmetricEigen::new(sym);
    let s = e.eigenvalues.map(|l| l.max(0.0).sqrt());
    &e.eigenvectors * DMatrix::from_diagonal(&s) * e.eigenvectors.transpose()
}

/// The Fréchet distance (squared, as FID reports it) between N(μ₁, Σ₁) and N(μ₂, Σ₂):
/// `‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½`. `tr (Σ₁^½ Σ₂ Σ₁^½)^½` equals
/// `tr (Σ₁Σ₂)^½` (the two matrices are similar), and `Σ₁^½ Σ₂ Σ₁^½` is symmetric PSD, so a
/// symmetric eigendecomposition computes it without the complex square root scipy needs.
pub fn frechet_distance(
    mu1: &DVector<f64>,
    s1: &DMatrix<f64>,
    mu2: &DVector<f64>,
    s2: &DMatrix<f64>,
) -> Result<f64> {
    let d = mu1.len();
    if mu2.len() != d || s1.shape() != (d, d) || s2.shape() != (d, d) {
        return Err(Error::shape("frechet_distance", "mismatched dimensions"));
    }
    let r1 = sqrt_psd(s1);
    let m = &r1 * s2 * &r1;
    let sym = (&m + m.transpose()) * 0.5;
    let tr_sqrt: f64 = SymmetricEigen::new(sym)
        .eigenvalues
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .sum();
    Ok((mu1 - mu2).norm_squared() + s1.trace() + s2.trace() - 2.0 * tr_sqrt)
}

/// Mean L2 distance over all pairs of the `n` rows of `d` values (f64 sums).
pub fn mean_pairwise_distance(rows: &[f32], d: usize) -> f64 {
    let n = rows.len() / d.max(1);
    if n < 2 {
        return 0.0;
    }
    let mut total = 0.0;
    for i in 0..n {
        let a = &rows[i * d..(i + 1) * d];
        for j in i + 1..n {
            let b = &rows[j * d..(j + 1) * d];
            let s: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
            total += s.sqrt();
        }
    }
    total / (n * (n - 1) / 2) as f64
}

/// [−1, 1] pixels to the classifier's input normalisation `(p/255 − mean)/std`.
pub fn to_classifier_input(x: &[f32], mean: f32, std: f32) -> Vec<f32> {
    x.iter().map(|&v| ((v + 1.0) * 0.5 - mean) / std).collect()
}

/// Trains SampleConvNet without privacy on `train` (inputs already normalised) with Adam
/// (lr 1e-3), minibatches of `batch` in a fresh shuffle (the `Shuffle` key of `seed`) each
/// epoch, initialisation from the `ModelInit` key. Deterministic for a seed and thread count.
pub fn train_classifier(
    train: &Dataset,
    epochs: u64,
    batch: usize,
    seed: u64,
) -> Result<Sequential> {
    let keys = RunKeys::seeded(seed);
    let dev = Device::Cpu;
    let mut model = models::sample_conv_net(&dev, keys.key(Purpose::ModelInit).derive_u64())?;
    let n = train.len();
    let per = train.example_len();
    let mut ws = model.workspace(batch)?;
    let p = model.num_params();
    let (mut m, mut v) = (Buffer::zeros(&dev, p)?, Buffer::zeros(&dev, p)?);
    let mut grad = Buffer::zeros(&dev, p)?;
    let adam = AdamConfig::new(1e-3);
    let plain = NoisyStep {
        noise_std: 0.0,
        expected_batch_size: 1.0,
        key: NoiseKey::from_parts(0, 0),
    };
    let mut idx: Vec<usize> = (0..n).collect();
    let mut xb = vec![0f32; batch * per];
    let mut yb = vec![0u32; batch];
    let mut t = 0;
    for epoch in 0..epochs {
        let mut rng = keys.key(Purpose::Shuffle).rng(epoch);
        for i in (1..n).rev() {
            let j = rng.next_below(i as u64 + 1) as usize;
            idx.swap(i, j);
        }
        for chunk in idx.chunks(batch) {
            let b = chunk.len();
            train.gather(chunk, &mut xb[..b * per], &mut yb[..b])?;
            model.forward_backward(
                &mut ws,
                &xb[..b * per],
                Loss::CrossEntropy(&yb[..b]),
                Reduction::Mean,
                Grads::Sum {
                    grad: &mut grad,
                    accumulate: false,
                },
                false,
            )?;
            t += 1;
            dpsgd::ops::noisy_adam_step(
                model.params_mut(),
                &grad,
                &mut m,
                &mut v,
                t,
                &adam,
                &plain,
            )?;
        }
    }
    Ok(model)
}

/// The classifier's predicted classes and penultimate features (the input of its last
/// layer) for `x` (normalised inputs, 784 values each).
pub fn predict_features(model: &Sequential, x: &[f32]) -> Result<(Vec<u32>, Vec<f64>)> {
    let per: usize = model.input_shape().iter().product();
    let last = model.layers().len() - 1;
    let classes: usize = model.output_shape().iter().product();
    let batch = 512;
    let mut ws = model.workspace(batch)?;
    let mut pred = Vec::new();
    let mut feats = Vec::new();
    for chunk in x.chunks(batch * per) {
        model.forward(&mut ws, chunk)?;
        for o in ws.output().chunks(classes) {
            let (k, _) =
                o.iter().enumerate().fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                );
            pred.push(k as u32);
        }
        let f = ws
            .activation(last)
            .ok_or_else(|| Error::shape("predict_features", "no penultimate activation"))?;
        feats.extend(f.iter().map(|&v| v as f64));
    }
    Ok((pred, feats))
}

/// Accuracy of `model` on `test` (normalised inputs).
pub fn accuracy(model: &Sequential, test: &Dataset) -> Result<f64> {
    let (pred, _) = predict_features(model, test.images())?;
    let ok = pred
        .iter()
        .zip(test.labels())
        .filter(|(a, b)| a == b)
        .count();
    Ok(ok as f64 / test.len().max(1) as f64)
}

/// The samples of every file, concatenated in order (all must have the same image shape and
/// class count).
pub fn load_samples(paths: &[std::path::PathBuf]) -> Result<Dataset> {
    let mut sets = Vec::with_capacity(paths.len());
    for p in paths {
        sets.push(dpsgd::data::load_labelled_images(p)?);
    }
    let first = sets.first().ok_or_else(|| {
        Error::invalid("--samples", "no file", "at least one gen_data.safetensors")
    })?;
    let shape = (
        first.channels(),
        first.height(),
        first.width(),
        first.classes(),
    );
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (s, p) in sets.iter().zip(paths) {
        if (s.channels(), s.height(), s.width(), s.classes()) != shape {
            return Err(Error::invalid(
                "--samples",
                p.display().to_string(),
                "files of one image shape and class count",
            ));
        }
        images.extend_from_slice(s.images());
        labels.extend_from_slice(s.labels());
    }
    if paths.len() == 1 {
        return Ok(sets.swap_remove(0));
    }
    Dataset::new(images, labels, shape.0, shape.1, shape.2, shape.3)
}
