//! safetensors save/load with PyTorch `nn.Sequential` names and layouts.

use super::sequential::Sequential;
use crate::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
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
    /// model is unchanged.
    pub fn load_safetensors(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let fmt = |msg: String| Error::Format {
            path: path.to_path_buf(),
            msg,
        };
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| fmt(format!("not a valid safetensors file: {e}")))?;
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
        if st.len() != self.param_info().len() {
            let known: Vec<&str> = self.param_info().iter().map(|i| i.name.as_str()).collect();
            let extra: Vec<&str> = sorted(st.names())
                .into_iter()
                .filter(|n| !known.contains(n))
                .collect();
            return Err(fmt(format!("unexpected tensors {extra:?} for this model")));
        }
        self.params_mut().copy_from_slice(&staged)
    }
}

fn sorted(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_unstable();
    v
}
