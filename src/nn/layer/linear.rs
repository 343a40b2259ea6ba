//! `nn.Linear`: shape rule, parameters, CPU forward/backward (per-sample gradients), its ghost
//! norm in the fused clipping, and the CUDA arms.

use super::{Bwd, Double, Fwd, GhostShape, LayerKind, Shape};
use crate::cpu::linear::{linear_backward, linear_forward, LinearShape};
use crate::{Error, Result};

/// [`super::Layer::Linear`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Linear {
    pub inf: usize,
    pub outf: usize,
    pub bias: bool,
}

impl Linear {
    /// The kernels' shape for `batch` examples.
    fn at(&self, batch: usize) -> LinearShape {
        LinearShape {
            batch,
            inf: self.inf,
            outf: self.outf,
            bias: self.bias,
        }
    }
}

impl LayerKind for Linear {
    fn name(&self) -> &'static str {
        "Linear"
    }

    fn out_shape(&self, s: &[usize]) -> Result<Shape> {
        let (op, inf, outf) = (self.name(), self.inf, self.outf);
        if s != [inf] {
            return Err(Error::shape(
                op,
                format!("Linear({inf}, {outf}) expects input [{inf}], got {s:?} (add a Flatten before it)"),
            ));
        }
        if outf == 0 || inf == 0 {
            return Err(Error::shape(op, "zero features"));
        }
        Ok(vec![outf])
    }

    fn param_tensors(&self) -> Vec<(&'static str, Vec<usize>, usize)> {
        let (inf, outf) = (self.inf, self.outf);
        let mut v = vec![("weight", vec![outf, inf], inf)];
        if self.bias {
            v.push(("bias", vec![outf], inf));
        }
        v
    }

    fn scratch_len(&self, _shape: &[usize], chunks: usize) -> Result<usize> {
        Ok(self.at(1).scratch_len(chunks))
    }

    fn forward(&self, a: Fwd<'_>) -> Result<()> {
        linear_forward(&self.at(a.batch), a.x, a.p, a.y)
    }

    fn backward(&self, a: Bwd<'_>) -> Result<()> {
        linear_backward(&self.at(a.batch), a.x, a.p, a.dy, a.dx, a.pg, a.scratch)
    }

    fn double(&self) -> Double {
        Double::LinearMap
    }

    /// Example i's weight gradient is `dy_i x_iᵀ`, its bias gradient `dy_i`.
    fn ghost(&self) -> Option<GhostShape> {
        Some(GhostShape {
            inf: self.inf,
            outf: self.outf,
            bias: self.bias,
        })
    }

    #[cfg(feature = "cuda")]
    fn gpu_scratch_len(&self, _shape: &[usize], batch: usize) -> usize {
        crate::cuda::linear::linear_scratch_len(&self.at(batch))
    }

    #[cfg(feature = "cuda")]
    fn gpu_forward(
        &self,
        dev: &crate::cuda::CudaBackend,
        _shape: &[usize],
        batch: usize,
        x: &cudarc::driver::CudaView<'_, f32>,
        p: &cudarc::driver::CudaView<'_, f32>,
        y: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()> {
        crate::cuda::linear::linear_forward(dev, &self.at(batch), x, p, y)
    }

    #[cfg(feature = "cuda")]
    fn gpu_backward(
        &self,
        dev: &crate::cuda::CudaBackend,
        _shape: &[usize],
        batch: usize,
        x: &cudarc::driver::CudaView<'_, f32>,
        _y: &cudarc::driver::CudaView<'_, f32>,
        p: &cudarc::driver::CudaView<'_, f32>,
        dy: &cudarc::driver::CudaView<'_, f32>,
        dx: Option<&mut cudarc::driver::CudaViewMut<'_, f32>>,
        pg: crate::cuda::grad::DeviceGrad<'_>,
        scratch: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let s = self.at(batch);
        crate::cuda::linear::linear_backward(dev, &s, x, p, dy, dx, pg, scratch)
    }
}
