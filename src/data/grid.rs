//! Image grids: a batch of images tiled into one picture, with torchvision's
//! `make_grid` / `save_image` semantics (what the DCGAN and GS-WGAN examples write as
//! `real_samples.png`, `fake_samples_epoch_NNN.png` and per-class grids).
//!
//! [`grid_pixels`] is always available and returns 8-bit pixels; [`save_grid_png`] (feature
//! `cli`, which brings the `png` crate) writes them to a PNG file.
//!
//! Semantics, as `torchvision.utils.make_grid(x, nrow, padding, normalize=True,
//! value_range=range, pad_value=0)` followed by `save_image`: `min(nrow, n)` images per row,
//! `ceil(n / nrow)` rows, `padding` black pixels around and between the images; each value is
//! clamped to `range`, mapped linearly to [0, 1], then to `floor(255·v + 0.5)`.

use crate::{Error, Result};

/// An 8-bit picture, row-major, `channels` interleaved values per pixel (1 = grey, 3 = RGB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GridImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Values per pixel: 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// `height · width · channels` values.
    pub pixels: Vec<u8>,
}

/// Tiles `n` images of shape `[channels, h, w]` (row-major, `images.len() == n·channels·h·w`,
/// as a model's output batch) into one picture: `nrow` images per row, `padding` pixels between
/// them and around the border, each value mapped from `range = (lo, hi)` to 0..=255 (values
/// outside are clamped; DCGAN's Tanh output is `(-1.0, 1.0)`).
///
/// Errors: `channels` not 1 or 3, a zero dimension, `n`·… not matching `images.len()`,
/// `nrow` = 0, `lo ≥ hi` or a non-finite bound ([`Error::InvalidParameter`] /
/// [`Error::Shape`]); a NaN or ±Inf pixel ([`Error::NonFinite`], naming the image).
///
/// ```
/// # fn main() -> dpsgd::Result<()> {
/// // Two 1×2×2 images side by side with 1 pixel of padding: a 7×4 grey picture.
/// let g = dpsgd::data::grid::grid_pixels(&[-1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, -1.0], 2, 1, 2, 2, 8, 1, (-1.0, 1.0))?;
/// assert_eq!((g.width, g.height, g.channels), (7, 4, 1));
/// assert_eq!(&g.pixels[7 + 1..7 + 3], &[0, 255]); // first image's top row
/// # Ok(()) }
/// ```
#[allow(clippy::too_many_arguments)]
pub fn grid_pixels(
    images: &[f32],
    n: usize,
    channels: usize,
    h: usize,
    w: usize,
    nrow: usize,
    padding: usize,
    range: (f32, f32),
) -> Result<GridImage> {
    if channels != 1 && channels != 3 {
        return Err(Error::invalid(
            "channels",
            channels,
            "1 (grey) or 3 (RGB) values per pixel",
        ));
    }
    if n == 0 || h == 0 || w == 0 {
        return Err(Error::shape(
            "grid_pixels",
            format!(
                "needs at least one image of at least 1×1 pixels, got n = {n}, h = {h}, w = {w}"
            ),
        ));
    }
    if nrow == 0 {
        return Err(Error::invalid("nrow", nrow, "at least 1 image per row"));
    }
    let (lo, hi) = range;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(Error::invalid(
            "range",
            format!("({lo}, {hi})"),
            "finite bounds with lo < hi, e.g. (-1, 1) for a Tanh output",
        ));
    }
    let per = channels
        .checked_mul(h)
        .and_then(|v| v.checked_mul(w))
        .ok_or_else(|| Error::shape("grid_pixels", "image size overflows usize"))?;
    if n.checked_mul(per) != Some(images.len()) {
        return Err(Error::shape(
            "grid_pixels",
            format!(
                "{} values for {n} images of [{channels}, {h}, {w}] (needs {})",
                images.len(),
                n.saturating_mul(per)
            ),
        ));
    }
    if let Some(i) = images.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: "grid_pixels images",
            detail: format!("image {}, value {} is {}", i / per, i % per, images[i]),
        });
    }
    let xmaps = nrow.min(n);
    let ymaps = n.div_ceil(xmaps);
    let width = xmaps * (w + padding) + padding;
    let height = ymaps * (h + padding) + padding;
    let mut pixels = vec![0u8; width * height * channels];
    let scale = 1.0 / (hi - lo);
    for (k, img) in images.chunks_exact(per).enumerate() {
        let (gx, gy) = (k % xmaps, k / xmaps);
        let (x0, y0) = (gx * (w + padding) + padding, gy * (h + padding) + padding);
        for c in 0..channels {
            for y in 0..h {
                for x in 0..w {
                    let v = ((img[(c * h + y) * w + x].clamp(lo, hi) - lo) * scale).clamp(0.0, 1.0);
                    let p = ((y0 + y) * width + x0 + x) * channels + c;
                    pixels[p] = (255.0 * v + 0.5).floor().min(255.0) as u8;
                }
            }
        }
    }
    Ok(GridImage {
        width,
        height,
        channels,
        pixels,
    })
}

/// [`grid_pixels`] with torchvision's default padding of 2, written to `path` as an 8-bit PNG
/// (grey for 1 channel, RGB for 3). Errors as [`grid_pixels`], and [`Error::Io`] /
/// [`Error::Format`] when the file cannot be written.
#[cfg(feature = "cli")]
#[allow(clippy::too_many_arguments)]
pub fn save_grid_png(
    path: &std::path::Path,
    images: &[f32],
    n: usize,
    channels: usize,
    h: usize,
    w: usize,
    nrow: usize,
    range: (f32, f32),
) -> Result<()> {
    let g = grid_pixels(images, n, channels, h, w, nrow, 2, range)?;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut enc = png::Encoder::new(
        std::io::BufWriter::new(file),
        g.width as u32,
        g.height as u32,
    );
    enc.set_color(if g.channels == 1 {
        png::ColorType::Grayscale
    } else {
        png::ColorType::Rgb
    });
    enc.set_depth(png::BitDepth::Eight);
    let fmt = |e: png::EncodingError| Error::Format {
        path: path.to_path_buf(),
        msg: format!("writing the PNG failed: {e}"),
    };
    let mut writer = enc.write_header().map_err(fmt)?;
    writer.write_image_data(&g.pixels).map_err(fmt)?;
    writer.finish().map_err(fmt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_make_grid() {
        // 5 images of 1×2×3, 2 per row, padding 2: xmaps 2, ymaps 3.
        let imgs: Vec<f32> = (0..5 * 6).map(|i| (i % 6) as f32 / 5.0).collect();
        let g = grid_pixels(&imgs, 5, 1, 2, 3, 2, 2, (0.0, 1.0)).unwrap();
        assert_eq!((g.width, g.height), (2 * 5 + 2, 3 * 4 + 2));
        // Image 3 (row 1, col 1) starts at x = 5 + 2 = 7, y = 4 + 2 = 6.
        let at = |x: usize, y: usize| g.pixels[y * g.width + x];
        assert_eq!(at(7, 6), 0);
        assert_eq!(at(9, 7), 255);
        assert_eq!(at(8, 6), 51); // 0.2 → floor(51.5)
                                  // Padding and the empty sixth slot stay black.
        assert_eq!(at(0, 0), 0);
        assert!((7..10).all(|x| at(x, 10) == 0 && at(x, 11) == 0));
    }

    #[test]
    fn clamps_and_rgb_interleaves() {
        let imgs = [-5.0, 5.0, 0.0, 0.0, 0.0, 1.0]; // 1 image [3, 1, 2]
        let g = grid_pixels(&imgs, 1, 3, 1, 2, 8, 0, (-1.0, 1.0)).unwrap();
        assert_eq!(g.pixels, vec![0, 128, 128, 255, 128, 255]);
    }

    #[cfg(feature = "cli")]
    #[test]
    fn png_round_trip() {
        let imgs: Vec<f32> = (0..2 * 3 * 4 * 5)
            .map(|i| (i % 7) as f32 / 3.0 - 1.0)
            .collect();
        let path = std::env::temp_dir().join(format!("dpsgd-grid-{}.png", std::process::id()));
        save_grid_png(&path, &imgs, 2, 3, 4, 5, 1, (-1.0, 1.0)).unwrap();
        let want = grid_pixels(&imgs, 2, 3, 4, 5, 1, 2, (-1.0, 1.0)).unwrap();
        let dec = png::Decoder::new(std::fs::File::open(&path).unwrap());
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(
            (info.width as usize, info.height as usize),
            (want.width, want.height)
        );
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(&buf[..info.buffer_size()], &want.pixels[..]);
        let missing = std::path::Path::new("/nonexistent-dir/x.png");
        assert!(matches!(
            save_grid_png(missing, &imgs, 2, 3, 4, 5, 1, (-1.0, 1.0)),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn bad_input_is_an_error() {
        let x = [0.0f32; 4];
        assert!(grid_pixels(&x, 1, 2, 1, 2, 1, 2, (0.0, 1.0)).is_err());
        assert!(grid_pixels(&x, 2, 1, 1, 1, 1, 2, (0.0, 1.0)).is_err());
        assert!(grid_pixels(&x, 1, 1, 2, 2, 0, 2, (0.0, 1.0)).is_err());
        assert!(grid_pixels(&x, 1, 1, 2, 2, 1, 2, (1.0, 1.0)).is_err());
        assert!(grid_pixels(&[0.0, f32::NAN], 1, 1, 1, 2, 1, 2, (0.0, 1.0)).is_err());
    }
}
