//! Private per-channel feature statistics for input normalisation ("data normalisation" of
//! Tramèr & Boneh, "Differentially Private Learning Needs Better Features (or Much More Data)",
//! ICLR 2021, §3 and Appendix; their code: `scatter_normalization` in `dp_utils.py` of
//! github.com/ftramer/Handcrafted-DP).
//!
//! Features `x_i ∈ R^{K×S}` (K channels of S positions each, e.g. 81 ScatterNet channels of
//! 7 × 7), i = 1 … n. Per example, the vector of channel means `a_i[k] = (1/S) Σ_s x_i[k, s]` and
//! of channel mean squares `b_i[k] = (1/S) Σ_s x_i[k, s]²`, each clipped in L2 norm to a fixed
//! bound (`ā_i = a_i · min(1, C_a/‖a_i‖)`, `b̄_i` likewise with `C_b`). Released: the two noisy
//! sums `A = Σ_i ā_i + N(0, σ²C_a² I_K)` and `B = Σ_i b̄_i + N(0, σ²C_b² I_K)`. Post-processing
//! (no privacy cost): `μ = A/n`, `m₂ = B/n`, `var = max(m₂ − μ², 0)` per channel, with n the
//! size of the training set (public, as the expected lot size q·N by which DP-SGD divides).
//! [`ChannelStats::standardize`] then maps `x ↦ (x − μ_k)/√(var_k + 10⁻⁵)` (the paper's
//! `standardize`, except that it also sets to 0 every channel whose released variance is 0;
//! here such a channel is kept, scaled by 1/√10⁻⁵: the smallest channel variances of MNIST's
//! scattering features, about 3·10⁻⁶, are below the noise on the mean squares, so clamping to 0
//! happens to real channels, and zeroing would discard them).
//!
//! # Proof (privacy)
//! Adjacency: add or remove one example (the adjacency of DP-SGD's Poisson-sampled analysis, so
//! the two compose). Adding or removing example i changes `(A/C_a, B/C_b)` — ignoring the noise —
//! by `(ā_i/C_a, b̄_i/C_b)`, whose L2 norm is at most √(1 + 1) = √2 whatever the data, because
//! each part was clipped to norm 1 after scaling. So the release is the Gaussian mechanism on a
//! query of L2 sensitivity √2 with noise N(0, σ² I) per coordinate, whose Rényi divergence of
//! order α is α·(√2)²/(2σ²) = α/σ² (Mironov, "Rényi Differential Privacy", CSF 2017,
//! Proposition 7), i.e. exactly two compositions of the sensitivity-1 Gaussian mechanism
//! (α/(2σ²) each, Proposition 1). [`FeatureStatsConfig::history`] gives the accountant that as
//! two full-batch steps (q = 1) of noise multiplier σ, and the trainer's accountant composes
//! them with DP-SGD's subsampled Gaussian steps by RDP (Mironov 2017, Proposition 1: adaptive
//! composition — DP-SGD runs on data normalised with the released statistics) and by PRV/PLD
//! (Zhu, Dong & Wang 2022, Theorem 10, for the dominating pairs of both). Dividing by n,
//! subtracting, clamping and standardising are post-processing.
//!
//! **What differs from the paper's code, and why.** `scatter_normalization` clips at the
//! *median* of the per-example norms of the private data (`np.quantile(norms, 0.5)`; its comment
//! calls it "technically a small privacy leak"): the clipping bound then depends on every
//! example, the sensitivity argument above fails (one example moves the bound), and ε does not
//! cover the release. Here the bounds `C_a`, `C_b` are parameters fixed before the data is seen.
//! The trainer's defaults: [`scatter_clip_bounds`], the bounds that no image with pixels in
//! [0, 1] can exceed, computed from the scattering filters alone (so such images are never
//! clipped, and no data set chose them), for Fashion-MNIST and synthetic data; for MNIST a third
//! of them, a hyperparameter chosen among 1, 1/3 and 1/10 of the bound on the validation split
//! (a tuning choice, whose own privacy cost the README's tuning caveat covers; never the test
//! set). Every example is clipped whatever the bounds, so the sensitivity argument never
//! depends on them.
//! The rest matches: noise scale σ·C on each sum, the same two-release RDP cost
//! (`2 * get_renyi_divergence(1, σ)` there, with the full training set: q = 1), and
//! composition with DP-SGD's RDP.
//!
//! The noise comes from DP-SGD's own Gaussian samplers ([`crate::cpu::noise::normals`]: Philox
//! in seeded runs, ChaCha20 with the sum of four normals in secure mode) under the key of
//! [`Purpose::FeatureStats`](crate::rng::Purpose::FeatureStats), streams 0 (A) and 1 (B); their
//! truncation ([`crate::noise`]) is [`FeatureStatsConfig::truncation_mass`], which the trainer
//! charges to δ with DP-SGD's. Parameters are validated before anything is drawn.
//!
//! ```
//! use dpsgd::mechanisms::feature_stats::{private_channel_stats, FeatureStatsConfig};
//! use dpsgd::rng::{Purpose, RunKeys};
//! // 1 000 examples of 2 channels × 3 positions: channel 0 around 1, channel 1 around 3.
//! let x: Vec<f32> = (0..1000)
//!     .flat_map(|i| {
//!         let d = (i % 7) as f32 * 0.01;
//!         [1.0 + d, 1.0, 1.0 - d, 3.0, 3.0 + d, 3.0]
//!     })
//!     .collect();
//! let cfg = FeatureStatsConfig { noise_multiplier: 8.0, mean_clip: 5.0, sq_clip: 15.0 };
//! let key = RunKeys::seeded(1).key(Purpose::FeatureStats);
//! let stats = private_channel_stats(&x, 1000, 2, 3, &cfg, key)?;
//! assert!((stats.mean[0] - 1.0).abs() < 0.2 && (stats.mean[1] - 3.02).abs() < 0.2);
//! // ε of this release alone (two full-batch Gaussian steps of σ = 8), at δ = 1e-5:
//! let eps = dpsgd::accounting::epsilon(dpsgd::accounting::Method::Rdp, &cfg.history()?, 1e-5)?;
//! assert!(eps > 0.5 && eps < 0.7);
//! # Ok::<(), dpsgd::Error>(())
//! ```

use crate::accounting::HistoryEntry;
use crate::noise::NoiseKey;
use crate::rng::{Generator, StreamKey};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// The added constant under the square root of [`ChannelStats::standardize`] (PyTorch's
/// BatchNorm ε, the paper's `standardize`).
pub const STANDARDIZE_EPS: f64 = 1e-5;

/// Parameters of the release: the noise multiplier σ and the two fixed clipping bounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureStatsConfig {
    /// σ: the noise on each sum has standard deviation σ·C (C its clipping bound). Finite, > 0.
    pub noise_multiplier: f64,
    /// C_a: the L2 bound on an example's vector of channel means. Finite, > 0; fixed before the
    /// data is seen.
    pub mean_clip: f64,
    /// C_b: the L2 bound on an example's vector of channel mean squares. Finite, > 0.
    pub sq_clip: f64,
}

impl FeatureStatsConfig {
    /// Checks every field (called before anything is computed or drawn).
    pub fn validate(&self) -> Result<()> {
        let s = self.noise_multiplier;
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::invalid(
                "norm noise multiplier",
                s,
                "finite and > 0 (σ = 0 would release the statistics exactly: ε = ∞); e.g. 8, Tramèr & Boneh's",
            ));
        }
        for (name, c) in [
            ("norm mean clip", self.mean_clip),
            ("norm square clip", self.sq_clip),
        ] {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::invalid(
                    name,
                    c,
                    "finite and > 0 (a bound fixed before the data is seen)",
                ));
            }
        }
        Ok(())
    }

    /// The release as the accountant sees it: two full-batch (q = 1) Gaussian steps of noise
    /// multiplier σ (module docs, "Proof").
    pub fn history(&self) -> Result<Vec<HistoryEntry>> {
        self.validate()?;
        Ok(vec![HistoryEntry::new(self.noise_multiplier, 1.0, 2)?])
    }

    /// The release's Rényi DP at order α > 1: α/σ².
    pub fn rdp(&self, alpha: f64) -> Result<f64> {
        self.validate()?;
        if alpha.is_nan() || alpha <= 1.0 {
            return Err(Error::invalid("alpha", alpha, "an RDP order > 1"));
        }
        Ok(alpha / (self.noise_multiplier * self.noise_multiplier))
    }

    /// The noise samplers' truncation mass of one release of `channels` channels by
    /// `generator` ([`crate::noise::gaussian_truncation_mass`], two vectors).
    pub fn truncation_mass(channels: usize, generator: Generator) -> f64 {
        2.0 * crate::noise::gaussian_truncation_mass(channels as u64, generator)
    }
}

/// Clipping bounds `(C_a, C_b)` that no example can exceed, from per-channel bounds `B_k` on
/// the features (`|x[k, s]| ≤ B_k` at every position, for every possible input): an example's
/// channel means satisfy `|a_k| ≤ B_k` and its mean squares `0 ≤ b_k ≤ B_k²`, so
/// `‖a‖ ≤ √(Σ_k B_k²)` and `‖b‖ ≤ √(Σ_k B_k⁴)`. Chosen this way the bounds depend on no data
/// (neither private nor public), cost nothing, and clip nothing; the price is noise σ_n·C on
/// bounds far above typical norms (for MNIST's scattering features about 9× the 99th
/// percentile of the test images' norms; README).
///
/// Errors: an empty slice, or a bound that is not finite and > 0.
pub fn clip_bounds_from_feature_bounds(bounds: &[f64]) -> Result<(f64, f64)> {
    if bounds.is_empty() {
        return Err(Error::shape(
            "clip_bounds_from_feature_bounds",
            "no channel bounds (want one per channel)",
        ));
    }
    if let Some(b) = bounds.iter().find(|b| !(b.is_finite() && **b > 0.0)) {
        return Err(Error::invalid(
            "feature bound",
            b,
            "finite and > 0 (a bound on |feature| for every possible input)",
        ));
    }
    let ca = bounds.iter().map(|b| b * b).sum::<f64>().sqrt();
    let cb = bounds.iter().map(|b| b.powi(4)).sum::<f64>().sqrt();
    Ok((ca, cb))
}

/// The data-independent clipping bounds `(C_a, C_b)` of the statistics of a scattering
/// transform's features ([`crate::cpu::scatter::Scattering2d::output_bounds`], the bound that
/// holds for every image with pixels in [0, 1]) for `input_channels` image channels
/// (each contributes its own `channels()` feature channels): [`clip_bounds_from_feature_bounds`].
/// For Kymatio's `J = 2, L = 8` on 28 × 28 images (MNIST and Fashion-MNIST): about 2.517 / 1.289.
///
/// Errors: invalid scattering parameters, `input_channels == 0`.
pub fn scatter_clip_bounds(
    params: crate::cpu::scatter::ScatterParams,
    input_channels: usize,
) -> Result<(f64, f64)> {
    if input_channels == 0 {
        return Err(Error::invalid("input channels", input_channels, ">= 1"));
    }
    let per = crate::cpu::scatter::Scattering2d::new(params)?.output_bounds();
    let all: Vec<f64> = (0..input_channels)
        .flat_map(|_| per.iter().copied())
        .collect();
    clip_bounds_from_feature_bounds(&all)
}

/// Released per-channel statistics: the mean and variance of each channel over the training
/// set's examples and positions, noisy (module docs). Part of a privately normalised model: the
/// trainer saves them beside the model ([`ChannelStats::save`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelStats {
    /// μ_k per channel.
    pub mean: Vec<f32>,
    /// var_k ≥ 0 per channel.
    pub var: Vec<f32>,
}

/// Validates `x` as `n` examples of `channels × spatial` finite values.
fn check_features(x: &[f32], n: usize, channels: usize, spatial: usize) -> Result<()> {
    if n == 0 || channels == 0 || spatial == 0 {
        return Err(Error::shape(
            "feature_stats",
            format!("n = {n}, channels = {channels}, spatial = {spatial}: each must be >= 1"),
        ));
    }
    let want = n
        .checked_mul(channels)
        .and_then(|v| v.checked_mul(spatial))
        .ok_or_else(|| Error::shape("feature_stats", "n·channels·spatial overflows usize"))?;
    if x.len() != want {
        return Err(Error::shape(
            "feature_stats",
            format!(
                "{} values for {n} examples of {channels} × {spatial} (want {want})",
                x.len()
            ),
        ));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: "features",
            detail: format!(
                "value {} at index {i}; the statistics need finite features",
                x[i]
            ),
        });
    }
    Ok(())
}

/// The clipped sums `(Σ_i ā_i, Σ_i b̄_i)` of the module docs, without noise (in f64). What
/// [`private_channel_stats`] adds noise to; public so that its sensitivity can be checked.
/// Nothing from it may be released: it is the exact statistic of the private data.
pub fn clipped_channel_sums(
    x: &[f32],
    n: usize,
    channels: usize,
    spatial: usize,
    cfg: &FeatureStatsConfig,
) -> Result<(Vec<f64>, Vec<f64>)> {
    cfg.validate()?;
    check_features(x, n, channels, spatial)?;
    let mut sa = vec![0f64; channels];
    let mut sb = vec![0f64; channels];
    let mut a = vec![0f64; channels];
    let mut b = vec![0f64; channels];
    for ex in x.chunks_exact(channels * spatial) {
        for ((ak, bk), row) in a.iter_mut().zip(&mut b).zip(ex.chunks_exact(spatial)) {
            let (s1, s2) = row.iter().fold((0f64, 0f64), |(s1, s2), &v| {
                let v = v as f64;
                (s1 + v, s2 + v * v)
            });
            *ak = s1 / spatial as f64;
            *bk = s2 / spatial as f64;
        }
        for (v, sum, c) in [(&a, &mut sa, cfg.mean_clip), (&b, &mut sb, cfg.sq_clip)] {
            let norm = v.iter().map(|t| t * t).sum::<f64>().sqrt();
            let scale = if norm > c { c / norm } else { 1.0 };
            for (s, t) in sum.iter_mut().zip(v.iter()) {
                *s += t * scale;
            }
        }
    }
    Ok((sa, sb))
}

/// Adds N(0, std²) from `key` to each of `v` (f64, in runs of 256 elements = 16 groups).
fn add_noise(v: &mut [f64], std: f64, key: &NoiseKey) {
    let mut z = [0f64; 256];
    for (i, chunk) in v.chunks_mut(256).enumerate() {
        let z = &mut z[..chunk.len()];
        crate::cpu::noise::normals(key, 16 * i as u64, z);
        for (o, zi) in chunk.iter_mut().zip(z.iter()) {
            *o += std * zi;
        }
    }
}

/// The private release of the module docs: per-channel mean and variance of `x` (`n` examples
/// of `channels × spatial` values, example-major, channel-major within an example), with noise
/// from `key` (the run's [`Purpose::FeatureStats`](crate::rng::Purpose::FeatureStats) key; a
/// key must serve one release only). Its cost is [`FeatureStatsConfig::history`].
///
/// Errors (before any noise is drawn): invalid `cfg`, a shape that does not match, non-finite
/// features.
pub fn private_channel_stats(
    x: &[f32],
    n: usize,
    channels: usize,
    spatial: usize,
    cfg: &FeatureStatsConfig,
    key: StreamKey,
) -> Result<ChannelStats> {
    let (mut sa, mut sb) = clipped_channel_sums(x, n, channels, spatial, cfg)?;
    add_noise(
        &mut sa,
        cfg.noise_multiplier * cfg.mean_clip,
        &NoiseKey::new(key, 0),
    );
    add_noise(
        &mut sb,
        cfg.noise_multiplier * cfg.sq_clip,
        &NoiseKey::new(key, 1),
    );
    Ok(ChannelStats::from_sums(&sa, &sb, n))
}

impl ChannelStats {
    /// Post-processing of released (or, for a non-private reference, exact) sums over `n`
    /// examples: μ = A/n, var = max(B/n − μ², 0).
    pub fn from_sums(sum: &[f64], sum_sq: &[f64], n: usize) -> ChannelStats {
        let n = n.max(1) as f64;
        let (mean, var) = sum
            .iter()
            .zip(sum_sq)
            .map(|(&a, &b)| {
                let m = a / n;
                (m as f32, (b / n - m * m).max(0.0) as f32)
            })
            .unzip();
        ChannelStats { mean, var }
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Checks the statistics (equal lengths, ≥ 1 channel, finite, var ≥ 0).
    pub fn validate(&self) -> Result<()> {
        if self.mean.is_empty() || self.mean.len() != self.var.len() {
            return Err(Error::shape(
                "ChannelStats",
                format!(
                    "{} means and {} variances (want equal, >= 1)",
                    self.mean.len(),
                    self.var.len()
                ),
            ));
        }
        if self.mean.iter().chain(&self.var).any(|v| !v.is_finite())
            || self.var.iter().any(|&v| v < 0.0)
        {
            return Err(Error::invalid(
                "channel statistics",
                "non-finite or negative variance",
                "finite means and variances >= 0",
            ));
        }
        Ok(())
    }

    /// Standardises rows of `channels × spatial` values in place:
    /// `x ↦ (x − μ_k)/√(var_k + 10⁻⁵)` (module docs).
    pub fn standardize(&self, x: &mut [f32], spatial: usize) -> Result<()> {
        self.validate()?;
        let row = self.channels() * spatial;
        if spatial == 0 || x.len() % row != 0 {
            return Err(Error::shape(
                "ChannelStats::standardize",
                format!(
                    "{} values are not rows of {} channels × {spatial}",
                    x.len(),
                    self.channels()
                ),
            ));
        }
        let scale: Vec<f32> = self
            .var
            .iter()
            .map(|&v| (1.0 / (v as f64 + STANDARDIZE_EPS).sqrt()) as f32)
            .collect();
        for ex in x.chunks_exact_mut(row) {
            for ((c, &m), &s) in ex.chunks_exact_mut(spatial).zip(&self.mean).zip(&scale) {
                for v in c {
                    *v = (*v - m) * s;
                }
            }
        }
        Ok(())
    }

    /// Writes the statistics as safetensors (`mean`, `var`: F32 `[channels]`), atomically; the
    /// release's parameters go in the metadata (`dpsgd_feature_stats`, JSON).
    pub fn save(&self, path: impl AsRef<Path>, cfg: &FeatureStatsConfig) -> Result<()> {
        self.validate()?;
        let path = path.as_ref();
        let fmt = |msg: String| Error::Format {
            path: path.to_path_buf(),
            msg,
        };
        let bytes: Vec<Vec<u8>> = [&self.mean, &self.var]
            .iter()
            .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views = ["mean", "var"]
            .iter()
            .zip(&bytes)
            .map(|(n, b)| {
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![self.channels()],
                    b,
                )
                .map(|v| (n.to_string(), v))
                .map_err(|e| fmt(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut meta = std::collections::HashMap::new();
        meta.insert(
            "dpsgd_feature_stats".to_string(),
            serde_json::to_string(cfg)?,
        );
        let data = safetensors::serialize(views, Some(meta)).map_err(|e| fmt(e.to_string()))?;
        crate::atomic::write_with(path, |w| w.write_all(&data))
    }

    /// Reads what [`ChannelStats::save`] wrote: the statistics and the release's parameters.
    pub fn load(path: impl AsRef<Path>) -> Result<(ChannelStats, FeatureStatsConfig)> {
        let path = path.as_ref();
        let fmt = |msg: String| Error::Format {
            path: path.to_path_buf(),
            msg,
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| fmt(format!("not a safetensors file: {e}")))?;
        let cfg: FeatureStatsConfig = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("dpsgd_feature_stats"))
            .ok_or_else(|| fmt("no dpsgd_feature_stats metadata".into()))
            .and_then(|j| {
                serde_json::from_str(j).map_err(|e| fmt(format!("bad dpsgd_feature_stats: {e}")))
            })?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fmt(e.to_string()))?;
        let read = |name: &str| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|_| fmt(format!("missing tensor {name}")))?;
            if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 1 {
                return Err(fmt(format!("tensor {name}: want F32 [channels]")));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let stats = ChannelStats {
            mean: read("mean")?,
            var: read("var")?,
        };
        stats.validate().map_err(|e| fmt(e.to_string()))?;
        cfg.validate()?;
        Ok((stats, cfg))
    }
}
