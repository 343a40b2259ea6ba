//! `nn.MaxPool2d` and `nn.AvgPool2d`: shape rule, CPU forward/backward and the CUDA arms (no
//! parameters). AvgPool2d is a linear map (it takes part in the double backward); MaxPool2d is
//! not (the tangent of a max is not the max of the tangent).

use super::{chw, chw_or_flat, Bwd, Double, Fwd, LayerKind, Shape};
use crate::cpu::pool::{
    avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward_with_output, max_pool2d_forward,
    PoolShape,
};
use crate::Result;

/// [`super::Layer::MaxPool2d`] (`max`) or [`super::Layer::AvgPool2d`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Pool {
    pub max: bool,
    pub k: usize,
    pub stride: usize,
}

impl Pool {
    /// The kernels' shape for `batch` examples of input shape `s`.
    fn at(&self, s: &[usize], batch: usize) -> PoolShape {
        let (c, h, w) = chw_or_flat(s);
        PoolShape {
            batch,
            c,
            h,
            w,
            k: self.k,
            stride: self.stride,
        }
    }
}

impl LayerKind for Pool {
    fn name(&self) -> &'static str {
        if self.max {
            "MaxPool2d"
        } else {
            "AvgPool2d"
        }
    }

    fn out_shape(&self, s: &[usize]) -> Result<Shape> {
        let (c, _, _) = chw(self.name(), s)?;
        let (oh, ow) = self.at(s, 1).out_hw()?;
        Ok(vec![c, oh, ow])
    }

    fn forward(&self, a: Fwd<'_>) -> Result<()> {
        let s = self.at(a.shape, a.batch);
        if self.max {
            max_pool2d_forward(&s, a.x, a.y)
        } else {
            avg_pool2d_forward(&s, a.x, a.y)
        }
    }

    fn backward(&self, a: Bwd<'_>) -> Result<()> {
        let s = self.at(a.shape, a.batch);
        match a.dx {
            Some(dx) if self.max => max_pool2d_backward_with_output(&s, a.x, a.y, a.dy, dx),
            Some(dx) => avg_pool2d_backward(&s, a.dy, dx),
            None => Ok(()),
        }
    }

    fn double(&self) -> Double {
        if self.max {
            Double::Unsupported
        } else {
            Double::LinearMap
        }
    }

    #[cfg(feature = "cuda")]
    fn gpu_forward(
        &self,
        dev: &crate::cuda::CudaBackend,
        shape: &[usize],
        batch: usize,
        x: &cudarc::driver::CudaView<'_, f32>,
        _p: &cudarc::driver::CudaView<'_, f32>,
        y: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let s = self.at(shape, batch);
        if self.max {
            crate::cuda::pool::max_pool2d_forward(dev, &s, x, y)
        } else {
            crate::cuda::pool::avg_pool2d_forward(dev, &s, x, y)
        }
    }

    #[cfg(feature = "cuda")]
    fn gpu_backward(
        &self,
        dev: &crate::cuda::CudaBackend,
        shape: &[usize],
        batch: usize,
        x: &cudarc::driver::CudaView<'_, f32>,
        _y: &cudarc::driver::CudaView<'_, f32>,
        _p: &cudarc::driver::CudaView<'_, f32>,
        dy: &cudarc::driver::CudaView<'_, f32>,
        dx: Option<&mut cudarc::driver::CudaViewMut<'_, f32>>,
        _pg: crate::cuda::grad::DeviceGrad<'_>,
        _scratch: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let s = self.at(shape, batch);
        match dx {
            Some(dx) if self.max => crate::cuda::pool::max_pool2d_backward(dev, &s, x, dy, dx),
            Some(dx) => crate::cuda::pool::avg_pool2d_backward(dev, &s, dy, dx),
            None => Ok(()),
        }
    }
}
