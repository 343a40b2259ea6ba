//! Augmentation multiplicity (De, Berrada, Hayes, Smith & Balle 2022, "Unlocking
//! high-accuracy differentially private image classification through scale", §3.1): each
//! sampled example's gradient is the **mean over K augmented copies** of it, computed *before*
//! clipping, so one example still contributes one clipped vector of norm ≤ C to the lot's sum
//! and the sensitivity of DP-SGD's sum — hence the accountant — is unchanged. (Clipping the K
//! copies separately and summing them would give an example up to K·C of influence.)
//!
//! This module makes the copies ([`Augmentation::fill_copies`]); the averaging and clipping is
//! [`crate::engine::PrivacyEngine::accumulate_augmented`], and the trainer's `augmult` field
//! ([`crate::train::TrainConfig::augmult`], `dpsgd train --augmult K`) drives both.
//!
//! # The augmentations chosen
//! Random translations by up to `max_shift` pixels on each axis (the uncovered border filled
//! with the image's top-left value, the background of MNIST-like images), uniformly and
//! independently per copy — the "random crop of a padded image" of De et al. for images that
//! are centred on a blank background. Horizontal flips only where they keep the class:
//! [`Augmentation::for_dataset`] turns them on for Fashion-MNIST (clothes, bags and shoes
//! mirrored are the same class) and off for MNIST (a mirrored 2, 3, 4, 5, 7 or 9 is no digit).
//!
//! # Privacy
//! The augmentation draws are data-independent randomness ([`crate::rng::Purpose::Augmentation`]);
//! they only change *which* function of the example is clipped, not how much one example can
//! move the sum, so the Gaussian mechanism's analysis (Abadi et al. 2016, Theorem 1; the RDP of
//! the subsampled Gaussian, Mironov, Talwar & Zhang 2019) holds as for K = 1.

use crate::rng::RandomBits;
use crate::{Error, Result};

/// Largest K accepted (each example costs K forward/backward passes).
pub const MAX_AUGMULT: usize = 64;
/// Largest translation accepted, in pixels.
pub const MAX_SHIFT: usize = 8;

/// Which random transforms make an augmented copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Augmentation {
    /// Translate by a uniform integer in `-max_shift..=max_shift` pixels on each axis.
    pub max_shift: usize,
    /// Mirror left–right with probability 1/2.
    pub hflip: bool,
}

impl Augmentation {
    /// The augmentation used for a dataset: shifts of up to 2 pixels for both; horizontal
    /// flips for Fashion-MNIST only (see the module docs).
    pub fn for_dataset(kind: crate::data::DatasetKind) -> Self {
        Augmentation {
            max_shift: 2,
            hflip: matches!(kind, crate::data::DatasetKind::FashionMnist),
        }
    }

    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        if self.max_shift > MAX_SHIFT {
            return Err(Error::invalid(
                "max_shift",
                self.max_shift,
                format!("<= {MAX_SHIFT} pixels"),
            ));
        }
        Ok(())
    }

    /// One augmented copy of a `[c, h, w]` image `src` into `dst`, drawing from `rng`
    /// (two draws for the shift, one more when flipping is on).
    pub fn apply(
        &self,
        src: &[f32],
        dst: &mut [f32],
        (c, h, w): (usize, usize, usize),
        rng: &mut impl RandomBits,
    ) {
        let span = 2 * self.max_shift as u64 + 1;
        let dy = rng.next_below(span) as i64 - self.max_shift as i64;
        let dx = rng.next_below(span) as i64 - self.max_shift as i64;
        let flip = self.hflip && rng.next_u32() & 1 == 1;
        let fill = src.first().copied().unwrap_or(0.0);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let (sy, mut sx) = (y as i64 - dy, x as i64 - dx);
                    if flip {
                        sx = w as i64 - 1 - sx;
                    }
                    dst[ch * h * w + y * w + x] =
                        if sy >= 0 && sy < h as i64 && sx >= 0 && sx < w as i64 {
                            src[ch * h * w + sy as usize * w + sx as usize]
                        } else {
                            fill
                        };
                }
            }
        }
    }

    /// `k` augmented copies of each of the `b` images in `src` (`[b, c·h·w]`), written to
    /// `dst` (`[b·k, c·h·w]`) example-major: copies of example i are rows `i·k .. i·k + k`, the
    /// order [`crate::engine::PrivacyEngine::accumulate_augmented`] expects. Labels are
    /// repeated into `labels_out` (`b·k`) the same way.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for `k` outside `1..=MAX_AUGMULT` or a bad shift;
    /// [`Error::Shape`] when the lengths do not fit.
    #[allow(clippy::too_many_arguments)]
    pub fn fill_copies(
        &self,
        src: &[f32],
        labels: &[u32],
        k: usize,
        shape: (usize, usize, usize),
        rng: &mut impl RandomBits,
        dst: &mut [f32],
        labels_out: &mut [u32],
    ) -> Result<()> {
        check_augmult(k)?;
        self.validate()?;
        let ex = shape.0 * shape.1 * shape.2;
        let b = labels.len();
        if ex == 0 || src.len() != b * ex || dst.len() != b * k * ex || labels_out.len() != b * k {
            return Err(Error::shape(
                "Augmentation::fill_copies",
                format!(
                    "{b} labels, {} source values, {} destination values, {} destination labels for k = {k} and images of {ex} values",
                    src.len(),
                    dst.len(),
                    labels_out.len()
                ),
            ));
        }
        for (i, (img, &y)) in src.chunks(ex).zip(labels).enumerate() {
            for j in 0..k {
                let r = i * k + j;
                self.apply(img, &mut dst[r * ex..(r + 1) * ex], shape, rng);
                labels_out[r] = y;
            }
        }
        Ok(())
    }
}

/// Checks an augmentation multiplicity K: `1..=MAX_AUGMULT`.
pub fn check_augmult(k: usize) -> Result<()> {
    if k == 0 || k > MAX_AUGMULT {
        return Err(Error::invalid(
            "augmult",
            k,
            format!("in 1..={MAX_AUGMULT} (1: no augmentation; K: average each example's gradient over K augmented copies)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Purpose, RunKeys};

    #[test]
    fn shift_zero_is_identity_and_flip_mirrors() {
        let img: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let keys = RunKeys::seeded(3);
        let mut rng = keys.key(Purpose::Augmentation).rng(0);
        let none = Augmentation {
            max_shift: 0,
            hflip: false,
        };
        let mut out = vec![0f32; 12];
        none.apply(&img, &mut out, (1, 3, 4), &mut rng);
        assert_eq!(out, img);
        // With flips on, over a few draws both the image and its mirror appear, nothing else.
        let flip = Augmentation {
            max_shift: 0,
            hflip: true,
        };
        let mirror: Vec<f32> = (0..3)
            .flat_map(|y| (0..4).rev().map(move |x| (y * 4 + x) as f32))
            .collect();
        let (mut same, mut mirrored) = (0, 0);
        for _ in 0..64 {
            flip.apply(&img, &mut out, (1, 3, 4), &mut rng);
            if out == img {
                same += 1;
            } else {
                assert_eq!(out, mirror);
                mirrored += 1;
            }
        }
        assert!(same > 0 && mirrored > 0, "{same} {mirrored}");
    }

    #[test]
    fn shifts_stay_in_range_and_fill_with_background() {
        // A single bright pixel in the middle of a 7 × 7 background of -1.
        let mut img = vec![-1f32; 49];
        img[3 * 7 + 3] = 5.0;
        let aug = Augmentation {
            max_shift: 2,
            hflip: false,
        };
        let keys = RunKeys::seeded(9);
        let mut rng = keys.key(Purpose::Augmentation).rng(1);
        let mut out = vec![0f32; 49];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..400 {
            aug.apply(&img, &mut out, (1, 7, 7), &mut rng);
            let pos = out.iter().position(|&v| v == 5.0).expect("pixel kept");
            assert_eq!(out.iter().filter(|&&v| v == -1.0).count(), 48);
            let (y, x) = ((pos / 7) as i64 - 3, (pos % 7) as i64 - 3);
            assert!(y.abs() <= 2 && x.abs() <= 2, "shift ({y}, {x})");
            seen.insert((y, x));
        }
        assert_eq!(seen.len(), 25, "every shift in -2..=2 × -2..=2 is drawn");
    }

    #[test]
    fn bad_k_and_shapes_are_typed_errors() {
        let aug = Augmentation::for_dataset(crate::data::DatasetKind::Mnist);
        let keys = RunKeys::seeded(1);
        let mut rng = keys.key(Purpose::Augmentation).rng(0);
        let src = vec![0f32; 2 * 4];
        let mut dst = vec![0f32; 2 * 3 * 4];
        let mut lab = vec![0u32; 6];
        for k in [0, MAX_AUGMULT + 1] {
            let e = aug
                .fill_copies(&src, &[0, 1], k, (1, 2, 2), &mut rng, &mut [], &mut [])
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidParameter {
                        name: "augmult",
                        ..
                    }
                ),
                "{e}"
            );
        }
        let e = aug
            .fill_copies(&src, &[0, 1], 2, (1, 2, 2), &mut rng, &mut dst, &mut lab)
            .unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        aug.fill_copies(&src, &[4, 7], 3, (1, 2, 2), &mut rng, &mut dst, &mut lab)
            .unwrap();
        assert_eq!(lab, [4, 4, 4, 7, 7, 7]);
        let e = Augmentation {
            max_shift: MAX_SHIFT + 1,
            hflip: false,
        }
        .validate()
        .unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidParameter {
                    name: "max_shift",
                    ..
                }
            ),
            "{e}"
        );
    }
}
