//! In-memory image-classification datasets: MNIST, Fashion-MNIST and synthetic data for tests.

use std::path::{Path, PathBuf};

use super::idx;
use crate::cpu::philox::Philox;
use crate::rng::RandomBits;
use crate::{Error, Result};

/// Where `scripts/fetch-mnist` puts MNIST, relative to the repository root.
pub const DEFAULT_MNIST_DIR: &str = "data/mnist";
/// Where Debian's `dataset-fashion-mnist` package (`scripts/fetch-fashion-mnist`) puts
/// Fashion-MNIST.
pub const DEFAULT_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// MNIST's training-set pixel mean (on the [0, 1] scale), as in Opacus's MNIST example.
pub const MNIST_MEAN: f32 = 0.1307;
/// MNIST's training-set pixel standard deviation (on the [0, 1] scale), as in Opacus's example.
pub const MNIST_STD: f32 = 0.3081;
/// Fashion-MNIST's training-set pixel mean (0.28604 measured over all 47 040 000 pixels).
pub const FASHION_MNIST_MEAN: f32 = 0.2860;
/// Fashion-MNIST's training-set pixel standard deviation (0.35302 measured, population).
pub const FASHION_MNIST_STD: f32 = 0.3530;

/// Subsequence of the Philox stream that [`Dataset::split_validation`] shuffles with.
const SPLIT_STREAM: u64 = 0x5350_4C49_5400_0000; // "SPLIT"
/// Subsequence of the Philox stream that [`Dataset::synthetic`] draws from.
const SYNTH_STREAM: u64 = 0x5359_4E54_4800_0000; // "SYNTH"

/// Which part of a dataset to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training set (60 000 examples for MNIST and Fashion-MNIST).
    Train,
    /// The test set (10 000 examples).
    Test,
}

impl Split {
    /// The IDX file-name prefix: `train` or `t10k`.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// The datasets dpsgd knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// LeCun, Cortes and Burges's handwritten digits (`scripts/fetch-mnist`).
    Mnist,
    /// Zalando's Fashion-MNIST (`scripts/fetch-fashion-mnist`).
    FashionMnist,
}

impl DatasetKind {
    /// The name used on the command line: `mnist` or `fashion-mnist`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
        }
    }

    /// The folder the dataset is read from when none is given.
    pub fn default_dir(self) -> &'static Path {
        Path::new(match self {
            DatasetKind::Mnist => DEFAULT_MNIST_DIR,
            DatasetKind::FashionMnist => DEFAULT_FASHION_MNIST_DIR,
        })
    }

    /// The (mean, std) that [`Dataset::load`] normalises pixels on the [0, 1] scale with.
    pub fn normalization(self) -> (f32, f32) {
        match self {
            DatasetKind::Mnist => (MNIST_MEAN, MNIST_STD),
            DatasetKind::FashionMnist => (FASHION_MNIST_MEAN, FASHION_MNIST_STD),
        }
    }

    /// What to do when the files are missing.
    fn fetch_hint(self) -> &'static str {
        match self {
            DatasetKind::Mnist => {
                "run scripts/fetch-mnist (it writes data/mnist/), or pass the folder that holds the IDX files"
            }
            DatasetKind::FashionMnist => {
                "run scripts/fetch-fashion-mnist (Debian's dataset-fashion-mnist package), or pass the folder that holds the IDX files"
            }
        }
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion-mnist" | "fashionmnist" | "fmnist" => Ok(DatasetKind::FashionMnist),
            _ => Err(Error::invalid("dataset", s, "`mnist` or `fashion-mnist`")),
        }
    }
}

/// A labelled image dataset held in memory as normalised `f32` in `[N, C, H, W]` order.
///
/// Invariants (checked by [`Dataset::new`]): `images.len() == n * channels * height * width`,
/// `labels.len() == n`, every label `< classes`, every image value finite.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    images: Vec<f32>,
    labels: Vec<u32>,
    n: usize,
    channels: usize,
    height: usize,
    width: usize,
    classes: usize,
}

impl Dataset {
    /// A dataset from its parts; checks the invariants above and returns [`Error::Shape`] or
    /// [`Error::InvalidParameter`] when one fails.
    pub fn new(
        images: Vec<f32>,
        labels: Vec<u32>,
        channels: usize,
        height: usize,
        width: usize,
        classes: usize,
    ) -> Result<Self> {
        if channels == 0 || height == 0 || width == 0 {
            return Err(Error::invalid(
                "channels × height × width",
                format!("{channels} × {height} × {width}"),
                "all > 0",
            ));
        }
        if classes == 0 || classes > u32::MAX as usize {
            return Err(Error::invalid("classes", classes, "in 1..=u32::MAX"));
        }
        let n = labels.len();
        let per = channels
            .checked_mul(height)
            .and_then(|p| p.checked_mul(width))
            .ok_or_else(|| Error::shape("Dataset::new", "channels × height × width overflows"))?;
        if n.checked_mul(per) != Some(images.len()) {
            return Err(Error::shape(
                "Dataset::new",
                format!(
                    "{n} labels × {channels}×{height}×{width} = {} image values expected, got {}",
                    n.saturating_mul(per),
                    images.len()
                ),
            ));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(Error::invalid(
                "labels",
                format!("label {l} at example {i}"),
                format!("< classes = {classes}"),
            ));
        }
        if let Some(j) = images.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: "dataset images",
                detail: format!(
                    "value {} at example {}, offset {}",
                    images[j],
                    j / per,
                    j % per
                ),
            });
        }
        Ok(Dataset {
            images,
            labels,
            n,
            channels,
            height,
            width,
            classes,
        })
    }

    /// Loads MNIST's training or test split from `dir` (the folder `scripts/fetch-mnist`
    /// writes, [`DEFAULT_MNIST_DIR`] by default), normalised as Opacus's MNIST example:
    /// `(p/255 − 0.1307)/0.3081` for a pixel `p`.
    pub fn mnist(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        Self::load(DatasetKind::Mnist, dir, split)
    }

    /// Loads Fashion-MNIST's training or test split from `dir` ([`DEFAULT_FASHION_MNIST_DIR`] by
    /// default, where Debian's `dataset-fashion-mnist` puts it), normalised with Fashion-MNIST's
    /// own training-set statistics: `(p/255 − 0.2860)/0.3530`.
    pub fn fashion_mnist(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        Self::load(DatasetKind::FashionMnist, dir, split)
    }

    /// Loads a split of a named dataset from `dir`: the files `{train,t10k}-images-idx3-ubyte`
    /// and `{train,t10k}-labels-idx1-ubyte`, each raw or with a `.gz` suffix; 10 classes,
    /// 1 × rows × cols images normalised with [`DatasetKind::normalization`].
    ///
    /// Missing files give [`Error::Io`] (kind `NotFound`) with a hint on how to fetch them;
    /// corrupt files, or image and label files whose counts differ, give [`Error::Format`].
    pub fn load(kind: DatasetKind, dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let images_path = find_file(kind, dir, &format!("{}-images-idx3-ubyte", split.prefix()))?;
        let labels_path = find_file(kind, dir, &format!("{}-labels-idx1-ubyte", split.prefix()))?;
        let (mean, std) = kind.normalization();
        Self::from_idx(&images_path, &labels_path, 10, mean, std)
    }

    /// Loads a split like [`Dataset::load`] but without normalisation: pixel `p` becomes
    /// `p/255` in [0, 1] (the input of the scattering front end, [`crate::data::scatter`], as
    /// Tramèr & Boneh feed it: torchvision's `ToTensor()` only).
    pub fn load_unit_range(kind: DatasetKind, dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let images_path = find_file(kind, dir, &format!("{}-images-idx3-ubyte", split.prefix()))?;
        let labels_path = find_file(kind, dir, &format!("{}-labels-idx1-ubyte", split.prefix()))?;
        Self::from_idx(&images_path, &labels_path, 10, 0.0, 1.0)
    }

    /// Loads an image IDX file and a label IDX file as one dataset with `classes` classes;
    /// pixel `p` becomes `(p/255 − mean)/std`.
    pub fn from_idx(
        images_path: impl AsRef<Path>,
        labels_path: impl AsRef<Path>,
        classes: usize,
        mean: f32,
        std: f32,
    ) -> Result<Self> {
        let (images_path, labels_path) = (images_path.as_ref(), labels_path.as_ref());
        if !(mean.is_finite() && std.is_finite() && std > 0.0) {
            return Err(Error::invalid(
                "mean, std",
                format!("{mean}, {std}"),
                "finite, std > 0",
            ));
        }
        let (n, rows, cols, pixels) = idx::read_images(images_path)?;
        let labels = idx::read_labels(labels_path)?;
        if labels.len() != n {
            return Err(Error::Format {
                path: labels_path.to_path_buf(),
                msg: format!(
                    "{} labels, but the images file {} holds {n} images",
                    labels.len(),
                    images_path.display()
                ),
            });
        }
        if rows == 0 || cols == 0 {
            return Err(Error::Format {
                path: images_path.to_path_buf(),
                msg: format!("images are {rows} × {cols}: both sizes must be > 0"),
            });
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(Error::Format {
                path: labels_path.to_path_buf(),
                msg: format!("label {l} at example {i} is not below the {classes} classes"),
            });
        }
        // One table for all 256 pixel values: every pixel maps the same way, bit for bit.
        let lut: Vec<f32> = (0..=255u8)
            .map(|p| (p as f32 / 255.0 - mean) / std)
            .collect();
        let images = pixels.iter().map(|&p| lut[p as usize]).collect();
        let labels = labels.into_iter().map(u32::from).collect();
        Self::new(images, labels, 1, rows, cols, classes)
    }

    /// `n` examples of small learnable synthetic data, `[n, 1, 28, 28]` with 10 classes, shaped
    /// like MNIST so the same models run on it. Deterministic in `seed`; see
    /// [`Dataset::synthetic_shaped`].
    pub fn synthetic(n: usize, seed: u64) -> Result<Self> {
        Self::synthetic_shaped(n, 10, 1, 28, 28, seed)
    }

    /// `n` examples of synthetic data of any shape: class `k`'s images are a Gaussian blob
    /// (σ = width/8) centred at angle 2πk/classes on a circle around the image centre, scaled
    /// to peak 3 and shifted by −0.5, plus independent N(0, 0.5²) pixel noise. Labels are uniform.
    ///
    /// The class patterns do not depend on `seed` (only labels and noise do), so a training set
    /// and a test set made with different seeds share them: a small model learns the data to
    /// near 100% accuracy, and a model that learns nothing stays near `1/classes`.
    pub fn synthetic_shaped(
        n: usize,
        classes: usize,
        channels: usize,
        height: usize,
        width: usize,
        seed: u64,
    ) -> Result<Self> {
        if classes == 0 || classes > 1 << 16 {
            return Err(Error::invalid("classes", classes, "in 1..=65536"));
        }
        if channels == 0 || height == 0 || width == 0 {
            return Err(Error::invalid(
                "channels × height × width",
                format!("{channels} × {height} × {width}"),
                "all > 0",
            ));
        }
        let plane = height * width;
        let per = channels * plane;
        let total = n
            .checked_mul(per)
            .filter(|&t| t <= 1 << 32)
            .ok_or_else(|| Error::invalid("n", n, "with n × C × H × W ≤ 2^32"))?;
        let sigma = (width.max(height) as f32 / 8.0).max(0.5);
        let radius = 0.3 * width.min(height) as f32;
        let (cy, cx) = ((height as f32 - 1.0) / 2.0, (width as f32 - 1.0) / 2.0);
        let mut patterns = vec![0f32; classes * plane];
        for (k, pat) in patterns.chunks_exact_mut(plane).enumerate() {
            let angle = std::f32::consts::TAU * k as f32 / classes as f32;
            let (by, bx) = (cy + radius * angle.sin(), cx + radius * angle.cos());
            for (j, v) in pat.iter_mut().enumerate() {
                let (y, x) = ((j / width) as f32, (j % width) as f32);
                let d2 = (y - by).powi(2) + (x - bx).powi(2);
                *v = 3.0 * (-d2 / (2.0 * sigma * sigma)).exp() - 0.5;
            }
        }
        let mut rng = Philox::new(seed, SYNTH_STREAM);
        let mut images = vec![0f32; total];
        let mut labels = vec![0u32; n];
        for (img, label) in images.chunks_exact_mut(per).zip(labels.iter_mut()) {
            let k = rng.next_below(classes as u64) as usize;
            *label = k as u32;
            let pat = &patterns[k * plane..(k + 1) * plane];
            for ch in img.chunks_exact_mut(plane) {
                for (v, &p) in ch.iter_mut().zip(pat) {
                    *v = p + 0.5 * rng.next_normal_f64() as f32;
                }
            }
        }
        Self::new(images, labels, channels, height, width, classes)
    }

    /// A new dataset of the examples at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<Self> {
        let mut images = vec![0f32; indices.len() * self.example_len()];
        let mut labels = vec![0u32; indices.len()];
        self.gather(indices, &mut images, &mut labels)?;
        Ok(Dataset {
            images,
            labels,
            n: indices.len(),
            ..*self
        })
    }

    /// Splits off `n_val` examples for validation, chosen uniformly at random by a Philox
    /// shuffle keyed by `seed`; returns `(train, validation)`, each in the original order.
    ///
    /// Deterministic: the same data, `n_val` and `seed` always give the same split. Tune
    /// hyperparameters on the validation part and report test accuracy once, so the test set
    /// stays honest. `n_val` must be in `1..n`.
    pub fn split_validation(&self, n_val: usize, seed: u64) -> Result<(Dataset, Dataset)> {
        let (train, val) = self.split_validation_indices(n_val, seed)?;
        Ok((self.subset(&train)?, self.subset(&val)?))
    }

    /// The indices (ascending) of the training and validation parts of
    /// [`Dataset::split_validation`] with the same arguments.
    pub fn split_validation_indices(
        &self,
        n_val: usize,
        seed: u64,
    ) -> Result<(Vec<usize>, Vec<usize>)> {
        if n_val == 0 || n_val >= self.n {
            return Err(Error::invalid(
                "n_val",
                n_val,
                format!("in 1..{} (the dataset has {} examples)", self.n, self.n),
            ));
        }
        // Partial Fisher–Yates: the first n_val slots end up a uniform random n_val-subset.
        let mut perm: Vec<usize> = (0..self.n).collect();
        let mut rng = Philox::new(seed, SPLIT_STREAM);
        for i in 0..n_val {
            let j = i + rng.next_below((self.n - i) as u64) as usize;
            perm.swap(i, j);
        }
        let mut is_val = vec![false; self.n];
        for &i in &perm[..n_val] {
            is_val[i] = true;
        }
        let val: Vec<usize> = (0..self.n).filter(|&i| is_val[i]).collect();
        let train: Vec<usize> = (0..self.n).filter(|&i| !is_val[i]).collect();
        Ok((train, val))
    }

    /// Copies the examples at `indices` into caller-owned buffers, without allocating:
    /// `images_out` must hold `indices.len() × C × H × W` values, `labels_out` `indices.len()`.
    ///
    /// Checks every index (`< n`) and both lengths before writing anything; a bad one gives
    /// [`Error::InvalidParameter`] or [`Error::Shape`] and leaves the buffers untouched.
    pub fn gather(
        &self,
        indices: &[usize],
        images_out: &mut [f32],
        labels_out: &mut [u32],
    ) -> Result<()> {
        let per = self.example_len();
        if images_out.len() != indices.len() * per || labels_out.len() != indices.len() {
            return Err(Error::shape(
                "Dataset::gather",
                format!(
                    "{} indices need images_out of {} values and labels_out of {}; got {} and {}",
                    indices.len(),
                    indices.len() * per,
                    indices.len(),
                    images_out.len(),
                    labels_out.len()
                ),
            ));
        }
        if let Some((pos, &i)) = indices.iter().enumerate().find(|(_, &i)| i >= self.n) {
            return Err(Error::invalid(
                "indices",
                format!("{i} at position {pos}"),
                format!("< n = {}", self.n),
            ));
        }
        for ((&i, dst), l) in indices
            .iter()
            .zip(images_out.chunks_exact_mut(per))
            .zip(labels_out.iter_mut())
        {
            dst.copy_from_slice(&self.images[i * per..(i + 1) * per]);
            *l = self.labels[i];
        }
        Ok(())
    }

    /// All images, `[N, C, H, W]` row-major.
    pub fn images(&self) -> &[f32] {
        &self.images
    }

    /// All labels, each `< classes`.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Example `i`'s image (`C × H × W` values) and label; `None` when `i >= n`.
    pub fn get(&self, i: usize) -> Option<(&[f32], u32)> {
        let per = self.example_len();
        (i < self.n).then(|| (&self.images[i * per..(i + 1) * per], self.labels[i]))
    }

    /// The number of examples, `N`.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the dataset has no examples.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Channels per image, `C`.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Image height, `H`.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Image width, `W`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The number of classes; labels lie in `0..classes`.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Values per example, `C × H × W`.
    pub fn example_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// How many examples of each class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }
}

/// `dir/name`, or `dir/name.gz`, whichever exists (the raw file first).
fn find_file(kind: DatasetKind, dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let why = if dir.is_dir() {
        format!(
            "{kind} file {name} (or {name}.gz) not found in {}",
            dir.display()
        )
    } else {
        format!("{kind} folder {} does not exist", dir.display())
    };
    Err(Error::Io {
        path: raw,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{why}; {}", kind.fetch_hint()),
        ),
    })
}
