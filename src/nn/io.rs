//! safetensors save/load with PyTorch `nn.Sequential` names and layouts.

use super::sequential::Sequential;
use crate::{Error, Result};
use safetensors::tensor::{Dtype, TensorView};
/// The parsed safetensors view that [`Sequential::load_safetensors_view`] takes (re-exported,
/// so a dependent needs no `safetensors` dependency of its own, or one of the same version).
pub use safetensors::SafeTensors;
use std::path::Path;

/// One named tensor of a state dict: `(name, shape, values)`.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

impl Sequential {
    /// The parameters as `(name, shape, values)` in PyTorch's `state_dict()` order and layout.
    pub fn state_dict(&self) -> Result<Vec<NamedTensor>> {
        let p = self.params().to_vec()?;
        Ok(self
            .param_info()
            .iter()
            .map(|i| (i.name.clone(), i.shape.clone(), p[i.range.clone()].to_vec()))
            .collect())
    }

    /// Writes the parameters to a safetensors file (little-endian F32), named as PyTorch names
    /// the same `nn.Sequential`'s `state_dict()` (`"0.weight"`, `"0.bias"`, `"3.weight"`, …).
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let sd = self.state_dict()?;
        let bytes: Vec<Vec<u8>> = sd
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let mut views = Vec::with_capacity(sd.len());
        for ((name, shape, _), b) in sd.iter().zip(&bytes) {
            let v = TensorView::new(Dtype::F32, shape.clone(), b).map_err(|e| Error::Format {
                path: path.to_path_buf(),
                msg: format!("tensor {name}: {e}"),
            })?;
            views.push((name.clone(), v));
        }
        safetensors::serialize_to_file(views, None, path).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(source) => Error::Io {
                path: path.to_path_buf(),
                source,
            },
            other => Error::Format {
                path: path.to_path_buf(),
                msg: other.to_string(),
            },
        })
    }

    /// Loads parameters saved by [`Sequential::save_safetensors`] or by PyTorch
    /// (`safetensors.torch.save_file(model.state_dict(), path)`) into this model. Strict, like
    /// `load_state_dict`: every tensor must be present, F32 (F64 and F16/BF16 are not
    /// converted), of the right shape, and no other tensor may be in the file. On error the
    /// model is unchanged. From memory: [`Sequential::load_safetensors_bytes`],
    /// [`Sequential::load_safetensors_view`].
    pub fn load_safetensors(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_bytes(&bytes, LoadMode::Strict, path).map(|_| ())
    }

    /// [`Sequential::load_safetensors`] from the bytes of a safetensors file (an embedded
    /// model, a download, a database blob). Returns the names of the tensors that were ignored
    /// ([`LoadMode`]; always empty when strict). Errors name the source `<bytes>`.
    pub fn load_safetensors_bytes(&mut self, bytes: &[u8], mode: LoadMode) -> Result<Vec<String>> {
        self.load_bytes(bytes, mode, Path::new("<bytes>"))
    }

    /// [`Sequential::load_safetensors`] from an already parsed [`SafeTensors`] view (e.g. a
    /// memory-mapped file, or one shared with other loaders). Returns the names of the tensors
    /// that were ignored ([`LoadMode`]; always empty when strict). Errors name the source
    /// `<safetensors view>`.
    pub fn load_safetensors_view(
        &mut self,
        st: &SafeTensors<'_>,
        mode: LoadMode,
    ) -> Result<Vec<String>> {
        self.load_view(st, mode, Path::new("<safetensors view>"))
    }

    fn load_bytes(&mut self, bytes: &[u8], mode: LoadMode, origin: &Path) -> Result<Vec<String>> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Format {
            path: origin.to_path_buf(),
            msg: format!("not a valid safetensors file: {e}"),
        })?;
        self.load_view(&st, mode, origin)
    }

    /// The one loader: every parameter from `st` (staged, so the model is unchanged on error),
    /// then the tensors it does not know: an error when strict, returned when not.
    fn load_view(
        &mut self,
        st: &SafeTensors<'_>,
        mode: LoadMode,
        origin: &Path,
    ) -> Result<Vec<String>> {
        let fmt = |msg: String| Error::Format {
            path: origin.to_path_buf(),
            msg,
        };
        let mut staged = vec![0f32; self.num_params()];
        for info in self.param_info() {
            let t = st.tensor(&info.name).map_err(|_| {
                fmt(format!(
                    "missing tensor `{}` (shape {:?}); the file has {:?}",
                    info.name,
                    info.shape,
                    sorted(st.names())
                ))
            })?;
            if t.dtype() != Dtype::F32 {
                return Err(fmt(format!(
                    "tensor `{}` is {:?}, expected F32 (convert with .float() before saving)",
                    info.name,
                    t.dtype()
                )));
            }
            if t.shape() != info.shape.as_slice() {
                return Err(fmt(format!(
                    "tensor `{}` has shape {:?}, expected {:?}",
                    info.name,
                    t.shape(),
                    info.shape
                )));
            }
            let dst = &mut staged[info.range.clone()];
            let data = t.data();
            if data.len() != dst.len() * 4 {
                return Err(fmt(format!(
                    "tensor `{}` has {} bytes",
                    info.name,
                    data.len()
                )));
            }
            for (d, c) in dst.iter_mut().zip(data.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        let known: Vec<&str> = self.param_info().iter().map(|i| i.name.as_str()).collect();
        let extra: Vec<String> = sorted(st.names())
            .into_iter()
            .filter(|n| !known.contains(n))
            .map(str::to_string)
            .collect();
        if mode == LoadMode::Strict && !extra.is_empty() {
            return Err(fmt(format!(
                "unexpected tensors {extra:?} for this model (LoadMode::IgnoreUnknown loads \
                 the model's tensors and ignores these)"
            )));
        }
        self.params_mut().copy_from_slice(&staged)?;
        Ok(extra)
    }
}

/// How [`Sequential::load_safetensors_bytes`] and [`Sequential::load_safetensors_view`] treat
/// tensors that the model has no parameter of that name for. Either way every parameter of the
/// model must be in the source, F32 and of the right shape (a missing or mis-shaped parameter
/// is an error and the model is unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadMode {
    /// Like PyTorch's `load_state_dict(strict=True)`: an unknown tensor is an error.
    #[default]
    Strict,
    /// Unknown tensors (e.g. optimizer state or a head saved beside the model) are ignored and
    /// their names returned, sorted.
    IgnoreUnknown,
}

fn sorted(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_unstable();
    v
}
