//! The reshapes `nn.Flatten()` (`[c, h, w]` → `[c·h·w]`) and `nn.Unflatten(1, shape)` (an
//! example's first dimension `n` becomes `shape`, product `n`: `[n]` → `shape`, `[n, rest…]` →
//! `shape ++ rest`). Row-major data is unchanged, so both are a copy both ways, have no
//! parameters and are linear maps (they take part in the double backward); only their shape
//! rules differ.

use super::{Bwd, Double, Fwd, LayerKind, Shape};
use crate::{Error, Result};

/// [`super::Layer::Flatten`] or [`super::Layer::Unflatten`].
#[derive(Clone, Debug)]
pub(super) enum Reshape {
    /// `nn.Flatten()`.
    Flatten,
    /// `nn.Unflatten(1, shape)`.
    Unflatten(Vec<usize>),
}

impl LayerKind for Reshape {
    fn name(&self) -> &'static str {
        match self {
            Reshape::Flatten => "Flatten",
            Reshape::Unflatten(_) => "Unflatten",
        }
    }

    fn out_shape(&self, s: &[usize]) -> Result<Shape> {
        match self {
            Reshape::Flatten => Ok(vec![s.iter().product()]),
            Reshape::Unflatten(shape) => {
                if shape.is_empty() || shape.contains(&0) {
                    return Err(Error::invalid(
                        "shape",
                        format!("{shape:?}"),
                        "a non-empty list of sizes ≥ 1 (nn.Unflatten(1, shape))",
                    ));
                }
                let n: usize = shape.iter().product();
                match s.split_first() {
                    Some((&first, rest)) if first == n => {
                        Ok(shape.iter().chain(rest).copied().collect())
                    }
                    _ => Err(Error::shape(
                        "Unflatten",
                        format!(
                        "Unflatten(1, {shape:?}) needs an input whose first dimension is {n} (the \
                         product of the shape), got {s:?}: change the shape or the layer before it"
                    ),
                    )),
                }
            }
        }
    }

    fn forward(&self, a: Fwd<'_>) -> Result<()> {
        a.y.copy_from_slice(a.x);
        Ok(())
    }

    fn backward(&self, a: Bwd<'_>) -> Result<()> {
        if let Some(dx) = a.dx {
            dx.copy_from_slice(a.dy)
        }
        Ok(())
    }

    fn double(&self) -> Double {
        Double::LinearMap
    }

    #[cfg(feature = "cuda")]
    fn gpu_forward(
        &self,
        dev: &crate::cuda::CudaBackend,
        _shape: &[usize],
        _batch: usize,
        x: &cudarc::driver::CudaView<'_, f32>,
        _p: &cudarc::driver::CudaView<'_, f32>,
        y: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()> {
        super::dtod(dev, x, y)
    }

    #[cfg(feature = "cuda")]
    fn gpu_backward(
        &self,
        dev: &crate::cuda::CudaBackend,
        _shape: &[usize],
        _batch: usize,
        _x: &cudarc::driver::CudaView<'_, f32>,
        _y: &cudarc::driver::CudaView<'_, f32>,
        _p: &cudarc::driver::CudaView<'_, f32>,
        dy: &cudarc::driver::CudaView<'_, f32>,
        dx: Option<&mut cudarc::driver::CudaViewMut<'_, f32>>,
        _pg: crate::cuda::grad::DeviceGrad<'_>,
        _scratch: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()> {
        match dx {
            Some(dx) => super::dtod(dev, dy, dx),
            None => Ok(()),
        }
    }
}
