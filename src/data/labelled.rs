//! A file of labelled images, the exchange format of generated data (a GAN's `gen_data`, read
//! by `examples/gan_eval.rs`): one safetensors file (readable by
//! `safetensors.torch.load_file`) with
//!
//! | tensor   | dtype | shape          | values                                   |
//! |----------|-------|----------------|------------------------------------------|
//! | `images` | F32   | `[N, C, H, W]` | finite, in [−1, 1] (a Tanh generator's output; 0 = mid-grey) |
//! | `labels` | I64   | `[N]`          | class indices in `0..classes` (PyTorch's `LongTensor`) |
//!
//! and the metadata `{"format": "dpsgd-labelled-images-v1", "classes": "<classes>"}`. No other
//! tensor may be present. A file without the metadata (e.g. written by PyTorch) is read with
//! 10 classes.
//!
//! ```python
//! from safetensors.torch import save_file
//! save_file({"images": x.float().contiguous(), "labels": y.long()}, "gen_data.safetensors",
//!           metadata={"format": "dpsgd-labelled-images-v1", "classes": "10"})
//! ```

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use super::Dataset;
use crate::{Error, Result};

/// The `format` metadata value of [`save_labelled_images`].
pub const LABELLED_IMAGES_FORMAT: &str = "dpsgd-labelled-images-v1";

/// Writes `images` (`n × C × H × W` values in [−1, 1]) and their `labels` (`n` values in
/// `0..classes`) in the format of the [module docs](self). Checks everything before writing:
/// a mis-sized buffer is [`Error::Shape`], a label out of range or a value outside [−1, 1]
/// [`Error::InvalidParameter`], a NaN/Inf [`Error::NonFinite`].
pub fn save_labelled_images(
    path: impl AsRef<Path>,
    images: &[f32],
    labels: &[u32],
    shape: [usize; 3],
    classes: usize,
) -> Result<()> {
    let path = path.as_ref();
    let [c, h, w] = shape;
    // Dataset::new checks sizes, labels and finiteness.
    let ds = Dataset::new(images.to_vec(), labels.to_vec(), c, h, w, classes)?;
    check_range(ds.images())?;
    let n = labels.len();
    let img_bytes: Vec<u8> = images.iter().flat_map(|x| x.to_le_bytes()).collect();
    let lab_bytes: Vec<u8> = labels
        .iter()
        .flat_map(|&l| (l as i64).to_le_bytes())
        .collect();
    let fmt = |e: safetensors::SafeTensorError| match e {
        safetensors::SafeTensorError::IoError(source) => Error::Io {
            path: path.to_path_buf(),
            source,
        },
        other => Error::Format {
            path: path.to_path_buf(),
            msg: other.to_string(),
        },
    };
    let views = vec![
        (
            "images".to_string(),
            TensorView::new(Dtype::F32, vec![n, c, h, w], &img_bytes).map_err(fmt)?,
        ),
        (
            "labels".to_string(),
            TensorView::new(Dtype::I64, vec![n], &lab_bytes).map_err(fmt)?,
        ),
    ];
    let meta = HashMap::from([
        ("format".to_string(), LABELLED_IMAGES_FORMAT.to_string()),
        ("classes".to_string(), classes.to_string()),
    ]);
    safetensors::serialize_to_file(views, Some(meta), path).map_err(fmt)
}

/// Reads a file of the [module docs](self)' format as a [`Dataset`] whose images are the
/// stored [−1, 1] values (not re-normalised). A missing file is [`Error::Io`]; a file that is
/// not safetensors, lacks a tensor, has another dtype, shape or an extra tensor, a label out of
/// range or an image value outside [−1, 1] is [`Error::Format`] naming the file.
pub fn load_labelled_images(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |msg: String| Error::Format {
        path: path.to_path_buf(),
        msg,
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let classes = match meta.metadata().as_ref().and_then(|m| m.get("classes")) {
        Some(c) => c.parse::<usize>().ok().filter(|&c| c >= 1).ok_or_else(|| {
            bad(format!(
                "metadata classes = {c:?}: expected an integer >= 1"
            ))
        })?,
        None => 10,
    };
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    if names != ["images", "labels"] {
        return Err(bad(format!(
            "tensors {names:?}: expected exactly `images` (F32 [N, C, H, W]) and `labels` (I64 [N])"
        )));
    }
    let img = st.tensor("images").map_err(|e| bad(e.to_string()))?;
    let lab = st.tensor("labels").map_err(|e| bad(e.to_string()))?;
    if img.dtype() != Dtype::F32 || lab.dtype() != Dtype::I64 {
        return Err(bad(format!(
            "dtypes images {:?}, labels {:?}: expected F32 and I64",
            img.dtype(),
            lab.dtype()
        )));
    }
    let (is, ls) = (img.shape(), lab.shape());
    if is.len() != 4 || ls.len() != 1 || is[0] != ls[0] {
        return Err(bad(format!(
            "shapes images {is:?}, labels {ls:?}: expected [N, C, H, W] and [N]"
        )));
    }
    let images: Vec<f32> = img
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut labels = Vec::with_capacity(ls[0]);
    for (i, b) in lab.data().chunks_exact(8).enumerate() {
        let l = i64::from_le_bytes(b.try_into().expect("chunks of 8"));
        if l < 0 || l as u64 >= classes as u64 {
            return Err(bad(format!(
                "label {l} of example {i} is outside 0..{classes}"
            )));
        }
        labels.push(l as u32);
    }
    check_range(&images).map_err(|e| bad(e.to_string()))?;
    Dataset::new(images, labels, is[1], is[2], is[3], classes).map_err(|e| bad(e.to_string()))
}

fn check_range(images: &[f32]) -> Result<()> {
    if let Some(j) = images.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            what: "labelled images",
            detail: format!("value {} at offset {j}", images[j]),
        });
    }
    if let Some(j) = images.iter().position(|x| !(-1.0..=1.0).contains(x)) {
        return Err(Error::invalid(
            "images",
            format!("{} at offset {j}", images[j]),
            "in [-1, 1] (a Tanh generator's range)",
        ));
    }
    Ok(())
}
