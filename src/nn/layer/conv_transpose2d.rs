//! `nn.ConvTranspose2d`: shape rule, parameters, CPU forward/backward (per-sample gradients)
//! and the CUDA arms.

use super::{chw_or_flat, expect_channels, Bwd, Double, Fwd, LayerKind, Shape};
use crate::cpu::conv::{conv_transpose2d_backward, conv_transpose2d_forward, ConvTranspose2dShape};
use crate::Result;

/// [`super::Layer::ConvTranspose2d`].
#[derive(Clone, Copy, Debug)]
pub(super) struct ConvTranspose2d {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub bias: bool,
}

impl ConvTranspose2d {
    /// The kernels' shape for `batch` examples of input shape `s`.
    fn at(&self, s: &[usize], batch: usize) -> ConvTranspose2dShape {
        let (_, h, w) = chw_or_flat(s);
        ConvTranspose2dShape {
            batch,
            cin: self.cin,
            h,
            w,
            cout: self.cout,
            k: self.k,
            stride: self.stride,
            pad: self.pad,
            bias: self.bias,
        }
    }
}

impl LayerKind for ConvTranspose2d {
    fn name(&self) -> &'static str {
        "ConvTranspose2d"
    }

    fn out_shape(&self, s: &[usize]) -> Result<Shape> {
        expect_channels(self.name(), s, self.cin)?;
        let (oh, ow) = self.at(s, 1).out_hw()?;
        Ok(vec![self.cout, oh, ow])
    }

    fn param_tensors(&self) -> Vec<(&'static str, Vec<usize>, usize)> {
        let (cin, cout, k) = (self.cin, self.cout, self.k);
        // PyTorch's fan_in of a [cin, cout, k, k] weight is dim 1 · k · k.
        let fan = cout * k * k;
        let mut v = vec![("weight", vec![cin, cout, k, k], fan)];
        if self.bias {
            v.push(("bias", vec![cout], fan));
        }
        v
    }

    fn scratch_len(&self, shape: &[usize], chunks: usize) -> Result<usize> {
        self.at(shape, 1).scratch_len(chunks)
    }

    fn forward(&self, a: Fwd<'_>) -> Result<()> {
        conv_transpose2d_forward(&self.at(a.shape, a.batch), a.x, a.p, a.y, a.scratch)
    }

    fn backward(&self, a: Bwd<'_>) -> Result<()> {
        let s = self.at(a.shape, a.batch);
        conv_transpose2d_backward(&s, a.x, a.p, a.dy, a.dx, a.pg, a.scratch)
    }

    fn double(&self) -> Double {
        Double::LinearMap
    }

    #[cfg(feature = "cuda")]
    fn gpu_scratch_len(&self, shape: &[usize], batch: usize) -> usize {
        crate::cuda::conv::conv_transpose2d_scratch_len(&self.at(shape, batch))
    }

    #[cfg(feature = "cuda")]
    fn gpu_forward(
        &self,
        dev: &crate::cuda::CudaBackend,
        shape: &[usize],
        batch: usize,
        x: &cudarc::driver::CudaView<'_, f32>,
        p: &cudarc::driver::CudaView<'_, f32>,
        y: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()> {
        crate::cuda::conv::conv_transpose2d_forward(dev, &self.at(shape, batch), x, p, y)
    }

    #[cfg(feature = "cuda")]
    fn gpu_backward(
        &self,
        dev: &crate::cuda::CudaBackend,
        shape: &[usize],
        batch: usize,
        x: &cudarc::driver::CudaView<'_, f32>,
        _y: &cudarc::driver::CudaView<'_, f32>,
        p: &cudarc::driver::CudaView<'_, f32>,
        dy: &cudarc::driver::CudaView<'_, f32>,
        dx: Option<&mut cudarc::driver::CudaViewMut<'_, f32>>,
        pg: crate::cuda::grad::DeviceGrad<'_>,
        scratch: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let s = self.at(shape, batch);
        crate::cuda::conv::conv_transpose2d_backward(dev, &s, x, p, dy, dx, pg, scratch)
    }
}
