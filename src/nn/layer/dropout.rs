//! `nn.Dropout(p)`: the identity in eval; in training `y = x · mask` with a per-example mask
//! drawn by the model from its [`crate::rng::Purpose::Dropout`] key (see
//! [`crate::cpu::dropout`]). No GPU twin yet: a CUDA model with Dropout is refused.

use super::{Bwd, Fwd, LayerKind, Shape};
use crate::cpu::dropout::{check_p, dropout_backward, dropout_forward};
use crate::Result;

/// [`super::Layer::Dropout`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Dropout {
    pub p: f64,
}

#[cfg(feature = "cuda")]
fn no_cuda() -> crate::Error {
    crate::Error::invalid(
        "layer",
        "Dropout",
        "a model without Dropout on Device::Cuda: Dropout's GPU twin is pending (run this model on Device::Cpu)",
    )
}

impl LayerKind for Dropout {
    fn name(&self) -> &'static str {
        "Dropout"
    }

    fn out_shape(&self, s: &[usize]) -> Result<Shape> {
        check_p(self.p)?;
        Ok(s.to_vec())
    }

    fn forward(&self, a: Fwd<'_>) -> Result<()> {
        dropout_forward(a.x, a.mask, a.y)
    }

    fn backward(&self, a: Bwd<'_>) -> Result<()> {
        match a.dx {
            Some(dx) => dropout_backward(a.dy, a.mask, dx),
            None => Ok(()),
        }
    }

    fn dropout_p(&self) -> Option<f64> {
        Some(self.p)
    }

    #[cfg(feature = "cuda")]
    fn gpu_supported(&self) -> Result<()> {
        Err(no_cuda())
    }

    #[cfg(feature = "cuda")]
    fn gpu_forward(
        &self,
        _dev: &crate::cuda::CudaBackend,
        _shape: &[usize],
        _batch: usize,
        _x: &cudarc::driver::CudaView<'_, f32>,
        _p: &cudarc::driver::CudaView<'_, f32>,
        _y: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()> {
        Err(no_cuda())
    }

    #[cfg(feature = "cuda")]
    fn gpu_backward(
        &self,
        _dev: &crate::cuda::CudaBackend,
        _shape: &[usize],
        _batch: usize,
        _x: &cudarc::driver::CudaView<'_, f32>,
        _y: &cudarc::driver::CudaView<'_, f32>,
        _p: &cudarc::driver::CudaView<'_, f32>,
        _dy: &cudarc::driver::CudaView<'_, f32>,
        _dx: Option<&mut cudarc::driver::CudaViewMut<'_, f32>>,
        _pg: crate::cuda::grad::DeviceGrad<'_>,
        _scratch: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()> {
        Err(no_cuda())
    }
}
