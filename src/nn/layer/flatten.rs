//! `nn.Flatten()`: `[c, h, w]` → `[c·h·w]`, a copy both ways (row-major data is unchanged).

use super::{Bwd, Double, Fwd, LayerKind, Shape};
use crate::Result;

/// [`super::Layer::Flatten`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Flatten;

impl LayerKind for Flatten {
    fn name(&self) -> &'static str {
        "Flatten"
    }

    fn out_shape(&self, s: &[usize]) -> Result<Shape> {
        Ok(vec![s.iter().product()])
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
