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

/// A strong random augmentation for digit images, the "strong view" of consistency training
/// ([`crate::pate::fit_fixmatch`]; Sohn et al., "FixMatch", NeurIPS 2020, use RandAugment and
/// Cutout for natural images): a random affine map — rotation by a uniform angle in
/// ±`max_rotation_deg`, isotropic scaling by a uniform factor in 1 ± `max_scale`, translation
/// by a uniform offset in ±`max_shift` pixels on each axis — resampled bilinearly (the border
/// filled with the image's top-left value, the background of MNIST-like images), then Cutout
/// (DeVries & Taylor 2017): a `cutout` × `cutout` square at a uniform position (its centre
/// anywhere in the image, clipped at the border) set to the background. Every transform keeps
/// a digit's class at the default sizes (no flips: a mirrored 2 is no digit).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RandomAffine {
    /// Largest rotation, in degrees (0..=45).
    pub max_rotation_deg: f32,
    /// Largest relative change of scale (0..=0.5).
    pub max_scale: f32,
    /// Largest translation, in pixels (0..=[`MAX_SHIFT`]).
    pub max_shift: f32,
    /// Side of the Cutout square in pixels (0: none).
    pub cutout: usize,
}

impl RandomAffine {
    /// The strong augmentation used for MNIST's consistency training: ±15°, ±10% scale,
    /// ±3 px, a 10 × 10 Cutout.
    pub const MNIST_STRONG: RandomAffine = RandomAffine {
        max_rotation_deg: 15.0,
        max_scale: 0.1,
        max_shift: 3.0,
        cutout: 10,
    };

    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        let r = self.max_rotation_deg;
        if !(r.is_finite() && (0.0..=45.0).contains(&r)) {
            return Err(Error::invalid("max_rotation_deg", r, "in [0, 45] degrees"));
        }
        let s = self.max_scale;
        if !(s.is_finite() && (0.0..=0.5).contains(&s)) {
            return Err(Error::invalid("max_scale", s, "in [0, 0.5]"));
        }
        let t = self.max_shift;
        if !(t.is_finite() && (0.0..=MAX_SHIFT as f32).contains(&t)) {
            return Err(Error::invalid(
                "max_shift",
                t,
                format!("in [0, {MAX_SHIFT}] pixels"),
            ));
        }
        Ok(())
    }

    /// One augmented copy of a `[c, h, w]` image `src` into `dst` (same length), drawing five
    /// 64-bit words from `rng` (three more with Cutout).
    pub fn apply(
        &self,
        src: &[f32],
        dst: &mut [f32],
        (c, h, w): (usize, usize, usize),
        rng: &mut impl RandomBits,
    ) {
        let mut sym = |m: f32| ((2.0 * rng.next_f64() - 1.0) as f32) * m;
        let angle = sym(self.max_rotation_deg).to_radians();
        let scale = 1.0 + sym(self.max_scale);
        let (ty, tx) = (sym(self.max_shift), sym(self.max_shift));
        let fill = src.first().copied().unwrap_or(0.0);
        // Output pixel p maps to source point A⁻¹(p − centre − t) + centre, where A rotates by
        // `angle` and scales by `scale`.
        let (sin, cos) = angle.sin_cos();
        let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
        for ch in 0..c {
            let plane = &src[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                for x in 0..w {
                    let (oy, ox) = (y as f32 - cy - ty, x as f32 - cx - tx);
                    let sy = (cos * oy - sin * ox) / scale + cy;
                    let sx = (sin * oy + cos * ox) / scale + cx;
                    dst[ch * h * w + y * w + x] = bilinear(plane, h, w, sy, sx, fill);
                }
            }
        }
        if self.cutout > 0 {
            let py = rng.next_below(h as u64) as i64 - (self.cutout / 2) as i64;
            let px = rng.next_below(w as u64) as i64 - (self.cutout / 2) as i64;
            for ch in 0..c {
                for y in py.max(0)..(py + self.cutout as i64).min(h as i64) {
                    for x in px.max(0)..(px + self.cutout as i64).min(w as i64) {
                        dst[ch * h * w + y as usize * w + x as usize] = fill;
                    }
                }
            }
        }
    }
}

/// Bilinear sample of an `h × w` plane at (y, x); points outside read `fill`.
fn bilinear(plane: &[f32], h: usize, w: usize, y: f32, x: f32, fill: f32) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let at = |yy: f32, xx: f32| {
        if yy >= 0.0 && xx >= 0.0 && (yy as usize) < h && (xx as usize) < w {
            plane[yy as usize * w + xx as usize]
        } else {
            fill
        }
    };
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1.0) * fx;
    let bottom = at(y0 + 1.0, x0) * (1.0 - fx) + at(y0 + 1.0, x0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
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

    #[test]
    fn random_affine_identity_keeps_the_image_and_cutout_blanks_a_square() {
        let img: Vec<f32> = (0..64).map(|v| v as f32 - 1.0).collect();
        let keys = RunKeys::seeded(4);
        let mut rng = keys.key(Purpose::Augmentation).rng(2);
        let none = RandomAffine {
            max_rotation_deg: 0.0,
            max_scale: 0.0,
            max_shift: 0.0,
            cutout: 0,
        };
        let mut out = vec![0f32; 64];
        none.apply(&img, &mut out, (1, 8, 8), &mut rng);
        for (a, b) in out.iter().zip(&img) {
            assert!((a - b).abs() < 1e-4, "{a} {b}");
        }
        // Cutout alone: between 1 and 9 pixels (3 × 3, clipped at the border) become the
        // background (-1), the rest is unchanged.
        let cut = RandomAffine { cutout: 3, ..none };
        for _ in 0..50 {
            cut.apply(&img, &mut out, (1, 8, 8), &mut rng);
            let changed: Vec<usize> = (1..64).filter(|&i| out[i] != img[i]).collect();
            assert!(!changed.is_empty() && changed.len() <= 9, "{changed:?}");
            assert!(changed.iter().all(|&i| out[i] == -1.0));
        }
    }

    #[test]
    fn random_affine_moves_mass_by_at_most_the_shift_and_keeps_it() {
        // A 3 × 3 blob on a 0 background: a translation-only map keeps its total (bilinear
        // weights sum to one inside the image) and moves its centre by at most max_shift.
        let mut img = vec![0f32; 28 * 28];
        for y in 12..15 {
            for x in 12..15 {
                img[y * 28 + x] = 1.0;
            }
        }
        let shift = RandomAffine {
            max_rotation_deg: 0.0,
            max_scale: 0.0,
            max_shift: 3.0,
            cutout: 0,
        };
        let keys = RunKeys::seeded(5);
        let mut rng = keys.key(Purpose::Augmentation).rng(3);
        let mut out = vec![0f32; 28 * 28];
        let mut max_dy = 0f32;
        for _ in 0..200 {
            shift.apply(&img, &mut out, (1, 28, 28), &mut rng);
            let total: f32 = out.iter().sum();
            assert!((total - 9.0).abs() < 1e-3, "{total}");
            let cy: f32 = out
                .iter()
                .enumerate()
                .map(|(i, v)| (i / 28) as f32 * v)
                .sum::<f32>()
                / total;
            assert!((cy - 13.0).abs() <= 3.0 + 1e-3, "{cy}");
            max_dy = max_dy.max((cy - 13.0).abs());
        }
        assert!(max_dy > 2.0, "shifts near the bound are drawn: {max_dy}");
        // A 90° rotation limit is refused, as is a NaN.
        for bad in [
            RandomAffine {
                max_rotation_deg: 90.0,
                ..shift
            },
            RandomAffine {
                max_scale: f32::NAN,
                ..shift
            },
        ] {
            assert!(matches!(
                bad.validate().unwrap_err(),
                Error::InvalidParameter { .. }
            ));
        }
        RandomAffine::MNIST_STRONG.validate().unwrap();
    }
}
