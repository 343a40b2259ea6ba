//! `nn.ReLU`, `nn.LeakyReLU`, `nn.Tanh`, `nn.Sigmoid`: element-wise, no parameters. ReLU and
//! LeakyReLU are piecewise linear (a diagonal mask in the double backward); Tanh and Sigmoid
//! are not.

use super::{Bwd, Double, Fwd, LayerKind, Shape};
use crate::cpu::activation::{activation_backward, activation_forward, Activation};
use crate::{Error, Result};

/// [`super::Layer::Act`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Act(pub Activation);

impl LayerKind for Act {
    fn name(&self) -> &'static str {
        match self.0 {
            Activation::Relu => "ReLU",
            Activation::LeakyRelu(_) => "LeakyReLU",
            Activation::Tanh => "Tanh",
            Activation::Sigmoid => "Sigmoid",
        }
    }

    fn out_shape(&self, s: &[usize]) -> Result<Shape> {
        if let Activation::LeakyRelu(x) = self.0 {
            if !x.is_finite() {
                return Err(Error::invalid("negative_slope", x, "finite"));
            }
        }
        Ok(s.to_vec())
    }

    fn forward(&self, a: Fwd<'_>) -> Result<()> {
        activation_forward(self.0, a.x, a.y)
    }

    fn backward(&self, a: Bwd<'_>) -> Result<()> {
        match a.dx {
            Some(dx) => activation_backward(self.0, a.x, a.y, a.dy, dx),
            None => Ok(()),
        }
    }

    fn double(&self) -> Double {
        match self.0 {
            Activation::Relu | Activation::LeakyRelu(_) => Double::Diagonal,
            Activation::Tanh | Activation::Sigmoid => Double::Unsupported,
        }
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
        crate::cuda::activation::activation_forward(dev, self.0, x, y)
    }

    #[cfg(feature = "cuda")]
    fn gpu_backward(
        &self,
        dev: &crate::cuda::CudaBackend,
        _shape: &[usize],
        _batch: usize,
        x: &cudarc::driver::CudaView<'_, f32>,
        y: &cudarc::driver::CudaView<'_, f32>,
        _p: &cudarc::driver::CudaView<'_, f32>,
        dy: &cudarc::driver::CudaView<'_, f32>,
        dx: Option<&mut cudarc::driver::CudaViewMut<'_, f32>>,
        _pg: crate::cuda::grad::DeviceGrad<'_>,
        _scratch: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()> {
        match dx {
            Some(dx) => crate::cuda::activation::activation_backward(dev, self.0, x, y, dy, dx),
            None => Ok(()),
        }
    }
}
