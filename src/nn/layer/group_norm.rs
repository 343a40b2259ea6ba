//! `nn.GroupNorm` (affine or not): shape rule, parameters and their constant init (γ = 1,
//! β = 0), CPU forward/backward (per-sample gradients) and the CUDA arms. Each example is
//! normalised over groups of its own channels, so examples stay independent (why not BatchNorm:
//! `crate::nn`). Without the affine parameters the kernels run with γ = 1, β = 0 (the same
//! arithmetic: `1·x̂ + 0` is `x̂` exactly in IEEE arithmetic).

use super::{Bwd, Fwd, LayerKind, Shape};
use crate::cpu::norm::{group_norm_backward, group_norm_forward, GroupNormShape};
use crate::{Error, Result};

/// [`super::Layer::GroupNorm`].
#[derive(Clone, Debug)]
pub(super) struct GroupNorm {
    pub groups: usize,
    pub channels: usize,
    pub eps: f64,
    pub affine: bool,
    /// γ = 1, β = 0 for the kernels when not affine (built once, not per call); empty otherwise.
    unit: Vec<f32>,
}

impl GroupNorm {
    pub fn new(groups: usize, channels: usize, eps: f64, affine: bool) -> Self {
        let unit = if affine {
            Vec::new()
        } else {
            unit_params(channels)
        };
        GroupNorm {
            groups,
            channels,
            eps,
            affine,
            unit,
        }
    }

    /// The kernels' shape for `batch` examples of input shape `s` (`[channels, …]`).
    fn at(&self, s: &[usize], batch: usize) -> GroupNormShape {
        GroupNormShape {
            batch,
            c: self.channels,
            spatial: s[1..].iter().product(),
            groups: self.groups,
            eps: self.eps,
        }
    }

    /// The kernels' parameter slice: the layer's own (`p`) when affine, else γ = 1, β = 0.
    fn params<'a>(&'a self, p: &'a [f32]) -> &'a [f32] {
        if self.affine {
            p
        } else {
            &self.unit
        }
    }
}

/// γ = 1 then β = 0 for `c` channels: the parameters of a GroupNorm without affine ones.
fn unit_params(c: usize) -> Vec<f32> {
    let mut v = vec![0.0; 2 * c];
    v[..c].fill(1.0);
    v
}

impl LayerKind for GroupNorm {
    fn name(&self) -> &'static str {
        "GroupNorm"
    }

    fn out_shape(&self, s: &[usize]) -> Result<Shape> {
        let channels = self.channels;
        if s.first() != Some(&channels) {
            return Err(Error::shape(
                self.name(),
                format!("expects {channels} channels, got input {s:?}"),
            ));
        }
        let sh = self.at(s, 0);
        if sh.c == 0 || sh.spatial == 0 {
            return Err(Error::shape("GroupNorm", "zero channels or spatial size"));
        }
        if sh.groups == 0 || sh.c % sh.groups != 0 {
            return Err(Error::invalid(
                "groups",
                sh.groups,
                format!("a divisor of the channel count {}", sh.c),
            ));
        }
        if !(sh.eps.is_finite() && sh.eps > 0.0) {
            return Err(Error::invalid("eps", sh.eps, "finite and > 0"));
        }
        Ok(s.to_vec())
    }

    fn param_tensors(&self) -> Vec<(&'static str, Vec<usize>, usize)> {
        let c = self.channels;
        if !self.affine {
            return Vec::new();
        }
        vec![("weight", vec![c], 0), ("bias", vec![c], 0)]
    }

    fn init_const(&self, suffix: &str) -> Option<f32> {
        Some(if suffix == "weight" { 1.0 } else { 0.0 })
    }

    fn scratch_len(&self, shape: &[usize], chunks: usize) -> Result<usize> {
        Ok(self.at(shape, 1).scratch_len(chunks))
    }

    fn forward(&self, a: Fwd<'_>) -> Result<()> {
        let p = self.params(a.p);
        group_norm_forward(&self.at(a.shape, a.batch), a.x, p, a.y)
    }

    fn backward(&self, a: Bwd<'_>) -> Result<()> {
        let s = self.at(a.shape, a.batch);
        if !self.affine && a.dx.is_none() {
            // No parameters and no input gradient wanted: nothing to compute.
            return Ok(());
        }
        let p = self.params(a.p);
        group_norm_backward(&s, a.x, p, a.dy, a.dx, a.pg, a.scratch)
    }

    #[cfg(feature = "cuda")]
    fn gpu_scratch_len(&self, shape: &[usize], batch: usize) -> usize {
        crate::cuda::norm::group_norm_scratch_len(&self.at(shape, batch))
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
        if self.affine {
            crate::cuda::norm::group_norm_forward(dev, &self.at(shape, batch), x, p, y)
        } else {
            let unit = dev.htod(&self.unit)?;
            crate::cuda::norm::group_norm_forward(
                dev,
                &self.at(shape, batch),
                x,
                &unit.as_view(),
                y,
            )
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
        p: &cudarc::driver::CudaView<'_, f32>,
        dy: &cudarc::driver::CudaView<'_, f32>,
        dx: Option<&mut cudarc::driver::CudaViewMut<'_, f32>>,
        pg: crate::cuda::grad::DeviceGrad<'_>,
        scratch: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let s = self.at(shape, batch);
        if self.affine {
            crate::cuda::norm::group_norm_backward(dev, &s, x, p, dy, dx, pg, scratch)
        } else if dx.is_none() {
            Ok(())
        } else {
            let unit = dev.htod(&self.unit)?;
            crate::cuda::norm::group_norm_backward(dev, &s, x, &unit.as_view(), dy, dx, pg, scratch)
        }
    }
}
