//! `nn.Conv2d`: shape rule, parameters, CPU forward/backward (per-sample gradients), the fused
//! pass's kept im2col, and the CUDA arms.

use super::{chw_or_flat, expect_channels, Bwd, Double, Fwd, LayerKind, Shape};
use crate::cpu::conv::{
    conv2d_backward, conv2d_backward_group, conv2d_forward, conv2d_forward_group, Conv2dShape,
};
use crate::Result;

/// [`super::Layer::Conv2d`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Conv2d {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub bias: bool,
}

impl Conv2d {
    /// The kernels' shape for `batch` examples of input shape `s`.
    fn at(&self, s: &[usize], batch: usize) -> Conv2dShape {
        let (_, h, w) = chw_or_flat(s);
        Conv2dShape {
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

impl LayerKind for Conv2d {
    fn name(&self) -> &'static str {
        "Conv2d"
    }

    fn out_shape(&self, s: &[usize]) -> Result<Shape> {
        expect_channels(self.name(), s, self.cin)?;
        let (oh, ow) = self.at(s, 1).out_hw()?;
        Ok(vec![self.cout, oh, ow])
    }

    fn param_tensors(&self) -> Vec<(&'static str, Vec<usize>, usize)> {
        let (cin, cout, k) = (self.cin, self.cout, self.k);
        let fan = cin * k * k;
        let mut v = vec![("weight", vec![cout, cin, k, k], fan)];
        if self.bias {
            v.push(("bias", vec![cout], fan));
        }
        v
    }

    fn scratch_len(&self, shape: &[usize], chunks: usize) -> Result<usize> {
        self.at(shape, 1).scratch_len(chunks)
    }

    fn forward(&self, a: Fwd<'_>) -> Result<()> {
        conv2d_forward(&self.at(a.shape, a.batch), a.x, a.p, a.y, a.scratch)
    }

    fn backward(&self, a: Bwd<'_>) -> Result<()> {
        let s = self.at(a.shape, a.batch);
        conv2d_backward(&s, a.x, a.p, a.dy, a.dx, a.pg, a.scratch)
    }

    fn double(&self) -> Double {
        Double::LinearMap
    }

    fn kept_lens(&self, shape: &[usize], batch: usize) -> Result<Option<(usize, usize)>> {
        self.at(shape, batch).group_lens().map(Some)
    }

    fn forward_kept(&self, a: Fwd<'_>, kept: &mut [f32]) -> Result<()> {
        let s = self.at(a.shape, a.batch);
        conv2d_forward_group(&s, a.x, a.p, a.y, kept, a.scratch)
    }

    fn backward_kept(&self, a: Bwd<'_>, kept: &[f32]) -> Result<()> {
        let s = self.at(a.shape, a.batch);
        conv2d_backward_group(&s, kept, a.p, a.dy, a.dx, a.pg, a.scratch)
    }

    #[cfg(feature = "cuda")]
    fn gpu_scratch_len(&self, shape: &[usize], batch: usize) -> usize {
        crate::cuda::conv::conv2d_scratch_len(&self.at(shape, batch))
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
        crate::cuda::conv::conv2d_forward(dev, &self.at(shape, batch), x, p, y)
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
        crate::cuda::conv::conv2d_backward(dev, &s, x, p, dy, dx, pg, scratch)
    }
}
