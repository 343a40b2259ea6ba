//! Double backward for piecewise-linear models: the parameter gradient of a contraction of
//! the input gradient, what WGAN-GP's gradient penalty needs (Gulrajani et al., *Improved
//! Training of Wasserstein GANs*, NeurIPS 2017).
//!
//! For a model `f` made of linear maps plus biases (Conv2d, ConvTranspose2d, Linear,
//! AvgPool2d, reshapes: each layer file declares its role, `Double::LinearMap`) and
//! piecewise-linear activations (ReLU, LeakyReLU: `Double::Diagonal`), on the linear region that contains `x`, `f(x) = W_L M_{L−1} W_{L−1} ⋯ M_1 W_1 x +
//! c`, with `W_l` the layers' linear maps (biases in `c`) and `M_l` the activations' diagonal
//! derivative masks at `x`. So `⟨v, ∇_x (dy · f(x))⟩ = dy · J v` with
//! `J v = W_L M_{L−1} ⋯ M_1 W_1 v` — a forward pass of `v` with the biases dropped and every
//! activation replaced by its mask at `x` (a forward-mode JVP). The masks are piecewise
//! constant in θ (their derivative is zero almost everywhere), so
//! `∇_θ ⟨v, ∇_x (dy · f(x))⟩` is the parameter gradient of that linear network at input `v`
//! with output gradient `dy`: weight gradient `δ_l ⊗ t_{l−1}` (`δ_l` the backward signal, equal
//! to the primal's, `t_{l−1}` the tangent activations), bias gradient zero. Smooth activations
//! (Tanh, Sigmoid), GroupNorm, MaxPool2d and Dropout are refused: their second-order terms are
//! not zero, or (MaxPool) the tangent is not the forward of the tangent.

use super::{numel, Sequential};
use crate::cpu::grad::ParamGrad;
use crate::nn::layer::{Bwd, Double, Fwd};
use crate::{Buffer, Error, Result};

const OP: &str = "Sequential::input_grad_param_grad";

impl Sequential {
    /// `grad (+)= ∇_θ Σ_i ⟨v_i, ∇_x (dy_i · f(x_i))⟩` (CPU): the parameter gradient of the
    /// input gradient contracted with `v`, for piecewise-linear models (module docs of
    /// `sequential/double.rs`: a JVP of `v` with the primal's masks and biases dropped, then a
    /// backward of `dy`; the bias gradients are zero). `x` and `v` hold `batch` inputs, `dy`
    /// `batch` output gradients; `grad` holds [`Sequential::num_params`] values, overwritten
    /// or, with `accumulate`, added to. For WGAN-GP take `dy` = the critic's output selector,
    /// `u` = the input gradient of [`Sequential::backward`] with that `dy`, and `v` =
    /// [`gradient_penalty`]'s `∂P/∂u`.
    ///
    /// On a CUDA model (feature `cuda`) the same algorithm runs on the GPU, composed from the
    /// layers' GPU forward and backward kernels: `x`, `dy` and `v` are copied to the device,
    /// `grad` must live on the model's GPU, and the result matches the CPU's up to the order of
    /// the f32 sums (`tests/double_backward.rs`). It allocates its activations, tangents and
    /// scratch per call, and copies the `P` gradient values back once to check them for
    /// non-finite values (as the CPU path does).
    ///
    /// Errors: a layer that is not piecewise linear (Tanh, Sigmoid, GroupNorm, MaxPool2d,
    /// Dropout; each layer says so in its `src/nn/layer/` file); a CUDA model without the
    /// `cuda` feature, or `grad` on another device than the model; lengths that do not
    /// match.
    pub fn input_grad_param_grad(
        &self,
        x: &[f32],
        dy: &[f32],
        v: &[f32],
        grad: &mut Buffer<f32>,
        accumulate: bool,
    ) -> Result<()> {
        for l in &self.kinds {
            if l.double() == Double::Unsupported {
                return Err(Error::invalid(
                    "layer",
                    l.name(),
                    "a piecewise-linear layer (a linear map such as Conv2d, ConvTranspose2d, \
                     Linear, AvgPool2d or a reshape, or ReLU/LeakyReLU): the double backward \
                     assumes a piecewise-linear model",
                ));
            }
        }
        let per_in = numel(&self.input);
        let per_out = numel(self.output_shape());
        let p = self.num_params();
        if x.is_empty() || x.len() % per_in != 0 {
            return Err(Error::shape(
                OP,
                format!("x has {} values, not batch × {per_in}", x.len()),
            ));
        }
        let batch = x.len() / per_in;
        if v.len() != x.len() || dy.len() != batch * per_out {
            return Err(Error::shape(
                OP,
                format!(
                    "batch {batch}: v has {} values (expected {}), dy {} (expected {})",
                    v.len(),
                    x.len(),
                    dy.len(),
                    batch * per_out
                ),
            ));
        }
        if grad.len() != p {
            return Err(Error::shape(
                OP,
                format!("grad has {} values, the model {p}", grad.len()),
            ));
        }
        if !grad.device().same(&self.device) {
            return Err(Error::DeviceMismatch {
                op: OP,
                msg: format!(
                    "the model lives on {} but grad on {}: make grad with Buffer::zeros(model.device(), …)",
                    self.device.describe(),
                    grad.device().describe()
                ),
            });
        }
        #[cfg(feature = "cuda")]
        if let crate::Device::Cuda(d) = &self.device {
            return self.gpu_input_grad_param_grad(d, batch, x, dy, v, grad, accumulate);
        }
        let params = self.cpu_params(OP)?;
        let out = grad.as_mut_slice().ok_or_else(|| super::no_cuda(OP))?;
        // Parameters with the biases zeroed (the tangent network has none).
        let mut p0 = params.to_vec();
        for info in &self.infos {
            if info.name.ends_with(".bias") {
                p0[info.range.clone()].fill(0.0);
            }
        }
        let n = self.layers.len();
        let chunks = rayon::current_num_threads().clamp(1, batch);
        let mut scratch = Vec::new();
        let need_scratch = |i: usize, s: &mut Vec<f32>| -> Result<()> {
            let need = self.scratch_for(i, chunks)?;
            if s.len() < need {
                s.resize(need, 0.0);
            }
            Ok(())
        };
        // Primal activations (for the masks) and tangents.
        let mut acts: Vec<Vec<f32>> = vec![x.to_vec()];
        let mut tans: Vec<Vec<f32>> = vec![v.to_vec()];
        for (i, l) in self.kinds.iter().enumerate() {
            let len = batch * numel(&self.shapes[i + 1]);
            let mut y = vec![0f32; len];
            let mut t = vec![0f32; len];
            need_scratch(i, &mut scratch)?;
            self.layer_forward(i, batch, &acts[i], params, &mut y, &mut scratch, None)?;
            match l.double() {
                // JVP of an element-wise activation: t · σ'(x), what its backward computes.
                Double::Diagonal => l.backward(Bwd {
                    shape: &self.shapes[i],
                    batch,
                    x: &acts[i],
                    y: &y,
                    p: &[],
                    dy: &tans[i],
                    dx: Some(&mut t),
                    pg: ParamGrad::None,
                    scratch: &mut scratch,
                    mask: None,
                })?,
                _ => l.forward(Fwd {
                    shape: &self.shapes[i],
                    batch,
                    x: &tans[i],
                    p: &p0[self.ranges[i].clone()],
                    y: &mut t,
                    scratch: &mut scratch,
                    mask: None,
                })?,
            }
            acts.push(y);
            tans.push(t);
        }
        // Backward of the tangent network from dy.
        let first = self.first_layer(false);
        let mut tmp = vec![0f32; p];
        let mut delta = dy.to_vec();
        for i in (first..n).rev() {
            let l = &self.kinds[i];
            let r = self.ranges[i].clone();
            let mut dx = vec![
                0f32;
                if i > first {
                    batch * numel(&self.shapes[i])
                } else {
                    0
                }
            ];
            let dxo = if i > first { Some(&mut dx[..]) } else { None };
            match l.double() {
                // The mask at the primal input: the activation's backward on the primal.
                Double::Diagonal => l.backward(Bwd {
                    shape: &self.shapes[i],
                    batch,
                    x: &acts[i],
                    y: &acts[i + 1],
                    p: &[],
                    dy: &delta,
                    dx: dxo,
                    pg: ParamGrad::None,
                    scratch: &mut scratch,
                    mask: None,
                })?,
                _ => {
                    need_scratch(i, &mut scratch)?;
                    let pg = if r.is_empty() {
                        ParamGrad::None
                    } else {
                        ParamGrad::Sum {
                            grad: &mut tmp[r],
                            accumulate: false,
                        }
                    };
                    self.layer_backward(
                        i,
                        batch,
                        &tans[i],
                        &tans[i + 1],
                        &p0,
                        &delta,
                        dxo,
                        pg,
                        &mut scratch,
                        None,
                    )?;
                }
            }
            delta = dx;
        }
        for info in &self.infos {
            if info.name.ends_with(".bias") {
                tmp[info.range.clone()].fill(0.0);
            }
        }
        if let Some(k) = tmp.iter().position(|g| !g.is_finite()) {
            return Err(Error::NonFinite {
                what: "input_grad_param_grad",
                detail: format!("parameter {k} of the double backward"),
            });
        }
        if accumulate {
            out.iter_mut().zip(&tmp).for_each(|(o, t)| *o += t);
        } else {
            out.copy_from_slice(&tmp);
        }
        Ok(())
    }
}

#[cfg(feature = "cuda")]
impl Sequential {
    /// The CUDA arm of [`Sequential::input_grad_param_grad`] (arguments validated there): the
    /// CPU algorithm step for step, each layer through its GPU forward/backward kernels.
    #[allow(clippy::too_many_arguments)]
    fn gpu_input_grad_param_grad(
        &self,
        d: &crate::device::CudaDevice,
        batch: usize,
        x: &[f32],
        dy: &[f32],
        v: &[f32],
        grad: &mut Buffer<f32>,
        accumulate: bool,
    ) -> Result<()> {
        use crate::cuda::grad::DeviceGrad;
        use crate::nn::layer::dtod;
        let dev = d.backend().clone();
        for l in &self.kinds {
            l.gpu_supported()?;
        }
        let mismatch = |what: &str| Error::DeviceMismatch {
            op: OP,
            msg: format!("the model lives on a GPU but {what} does not"),
        };
        let params = self
            .params
            .cuda_view()
            .ok_or_else(|| mismatch("its parameter buffer"))?;
        let p = self.num_params();
        let n = self.layers.len();
        let per: Vec<usize> = self.shapes.iter().map(|s| numel(s)).collect();
        // Parameters with the biases zeroed (the tangent network has none).
        let mut p0 = dev.alloc_zeros::<f32>(p)?;
        dtod(&dev, &params, &mut p0.slice_mut(..p))?;
        for info in &self.infos {
            if info.name.ends_with(".bias") {
                dev.memset_zero(&mut p0.slice_mut(info.range.clone()))?;
            }
        }
        let scratch_len = self
            .kinds
            .iter()
            .zip(&self.shapes)
            .map(|(l, s)| l.gpu_scratch_len(s, batch))
            .max()
            .unwrap_or(0);
        let mut scratch = dev.alloc_zeros::<f32>(scratch_len)?;
        // Primal activations (for the masks) and tangents.
        let mut acts = vec![dev.htod(x)?];
        let mut tans = vec![dev.htod(v)?];
        for (i, l) in self.kinds.iter().enumerate() {
            let (nin, len) = (batch * per[i], batch * per[i + 1]);
            let mut y = dev.alloc_zeros::<f32>(len)?;
            let mut t = dev.alloc_zeros::<f32>(len)?;
            let r = self.ranges[i].clone();
            let (shape, xv, tv) = (&self.shapes[i], acts[i].slice(..nin), tans[i].slice(..nin));
            l.gpu_forward(
                &dev,
                shape,
                batch,
                &xv,
                &params.slice(r.clone()),
                &mut y.slice_mut(..len),
            )?;
            match l.double() {
                // JVP of an element-wise activation: t · σ'(x), what its backward computes.
                Double::Diagonal => l.gpu_backward(
                    &dev,
                    shape,
                    batch,
                    &xv,
                    &y.slice(..len),
                    &params.slice(r),
                    &tv,
                    Some(&mut t.slice_mut(..len)),
                    DeviceGrad::None,
                    &mut scratch.slice_mut(..),
                )?,
                _ => l.gpu_forward(
                    &dev,
                    shape,
                    batch,
                    &tv,
                    &p0.slice(r),
                    &mut t.slice_mut(..len),
                )?,
            }
            acts.push(y);
            tans.push(t);
        }
        // Backward of the tangent network from dy.
        let first = self.first_layer(false);
        let mut tmp = dev.alloc_zeros::<f32>(p)?;
        let mut delta = dev.htod(dy)?;
        for i in (first..n).rev() {
            let l = &self.kinds[i];
            let r = self.ranges[i].clone();
            let (nin, nout) = (batch * per[i], batch * per[i + 1]);
            let ndx = if i > first { nin } else { 0 };
            let mut dx = dev.alloc_zeros::<f32>(ndx)?;
            let mut dxv = dx.slice_mut(..ndx);
            let dxo = if i > first { Some(&mut dxv) } else { None };
            let shape = &self.shapes[i];
            let dyv = delta.slice(..nout);
            match l.double() {
                // The mask at the primal input: the activation's backward on the primal.
                Double::Diagonal => l.gpu_backward(
                    &dev,
                    shape,
                    batch,
                    &acts[i].slice(..nin),
                    &acts[i + 1].slice(..nout),
                    &params.slice(r),
                    &dyv,
                    dxo,
                    DeviceGrad::None,
                    &mut scratch.slice_mut(..),
                )?,
                _ => {
                    let pg = if r.is_empty() {
                        DeviceGrad::None
                    } else {
                        DeviceGrad::Sum {
                            grad: tmp.slice_mut(r.clone()),
                            accumulate: false,
                        }
                    };
                    l.gpu_backward(
                        &dev,
                        shape,
                        batch,
                        &tans[i].slice(..nin),
                        &tans[i + 1].slice(..nout),
                        &p0.slice(r),
                        &dyv,
                        dxo,
                        pg,
                        &mut scratch.slice_mut(..),
                    )?;
                }
            }
            delta = dx;
        }
        for info in &self.infos {
            if info.name.ends_with(".bias") {
                dev.memset_zero(&mut tmp.slice_mut(info.range.clone()))?;
            }
        }
        let host = dev.dtoh(&tmp.slice(..p))?;
        if let Some(k) = host.iter().position(|g| !g.is_finite()) {
            return Err(Error::NonFinite {
                what: "input_grad_param_grad",
                detail: format!("parameter {k} of the double backward"),
            });
        }
        let mut out = grad.cuda_view_mut().ok_or_else(|| mismatch("grad"))?;
        if accumulate {
            crate::cuda::grad::sum_rows(&dev, &tmp.slice(..p), 1, p, 1.0, &mut out)
        } else {
            dtod(&dev, &tmp.slice(..p), &mut out)
        }
    }
}

/// WGAN-GP's gradient penalty `P = λ/B Σ_i (‖u_i‖ − 1)²` of `batch` input gradients `u`
/// (`[batch, D]`), and its gradient `∂P/∂u` into `dp_du`, `λ/B · 2 (‖u_i‖ − 1) u_i / ‖u_i‖`
/// (0 for a zero row), computed in f64 (Gulrajani et al. 2017, Algorithm 1). Feed `dp_du` as
/// `v` to [`Sequential::input_grad_param_grad`] for `∇_θ P`. Errors: `λ` not finite and ≥ 0,
/// lengths that do not match.
pub fn gradient_penalty(u: &[f32], batch: usize, lambda: f64, dp_du: &mut [f32]) -> Result<f64> {
    crate::error::check_non_negative("lambda", lambda)?;
    if batch == 0 || u.len() % batch != 0 || dp_du.len() != u.len() {
        return Err(Error::shape(
            "gradient_penalty",
            format!(
                "u has {} values, dp_du {}: expected [batch = {batch}, D] both",
                u.len(),
                dp_du.len()
            ),
        ));
    }
    let d = u.len() / batch;
    let mut total = 0f64;
    for (row, out) in u.chunks(d.max(1)).zip(dp_du.chunks_mut(d.max(1))) {
        let norm = row
            .iter()
            .map(|&a| (a as f64) * (a as f64))
            .sum::<f64>()
            .sqrt();
        if !norm.is_finite() {
            return Err(Error::NonFinite {
                what: "gradient_penalty",
                detail: "an input-gradient row".into(),
            });
        }
        total += (norm - 1.0) * (norm - 1.0);
        let s = if norm > 0.0 {
            lambda / batch as f64 * 2.0 * (norm - 1.0) / norm
        } else {
            0.0
        };
        for (o, &a) in out.iter_mut().zip(row) {
            *o = (s * a as f64) as f32;
        }
    }
    Ok(lambda * total / batch as f64)
}
