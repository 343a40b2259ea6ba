//! The CUDA path of [`Sequential`]: the same forward, loss, backward and gradient destinations
//! as the CPU path, over device-resident buffers and the GPU twins in [`crate::cuda`]. A
//! workspace for a `Device::Cuda` model holds every activation, gradient, scratch and loss
//! buffer in device memory, allocated once by [`Sequential::workspace`]; a training step
//! allocates nothing (a loss copies `batch` (or `batch × outputs`) doubles back to sum them).
//!
//! Host views of a GPU workspace ([`Workspace::output`], [`Workspace::input_grad`]) are empty:
//! use [`Workspace::output_vec`] and [`Workspace::input_grad_vec`], which copy back.

use super::Workspace;
use crate::Result;

impl Workspace {
    /// The last forward's output (`batch ×` the output shape), copied to the host on a GPU.
    pub fn output_vec(&self) -> Result<Vec<f32>> {
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            let n = self.batch * g.per_example[g.per_example.len() - 1];
            return g.dev.dtoh(&g.acts[g.acts.len() - 1].slice(..n));
        }
        Ok(self.output().to_vec())
    }

    /// The gradient w.r.t. the input of the last [`Sequential::backward`](crate::nn::Sequential::backward) with `input_grad`,
    /// copied to the host on a GPU.
    pub fn input_grad_vec(&self) -> Result<Option<Vec<f32>>> {
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            if !self.have_input_grad {
                return Ok(None);
            }
            let n = self.batch * g.per_example[0];
            return g.dev.dtoh(&g.input_grad.slice(..n)).map(Some);
        }
        Ok(self.input_grad().map(<[f32]>::to_vec))
    }
}

#[cfg(feature = "cuda")]
pub(super) use imp::GpuWorkspace;

#[cfg(feature = "cuda")]
mod imp {
    use super::super::{numel, Grads, Loss, Sequential, Workspace};
    use crate::buffer::Storage;
    use crate::cpu::loss::Reduction;
    use crate::cuda::grad::DeviceGrad;
    use crate::cuda::{self, CudaBackend};
    use crate::device::CudaDevice;
    use crate::nn::layer::dtod;
    use crate::{Buffer, Error, Result};
    use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
    use std::sync::Arc;

    /// The device buffers of a GPU [`Workspace`].
    pub(crate) struct GpuWorkspace {
        pub(super) dev: Arc<CudaBackend>,
        /// Elements of one example at each layer boundary (`[0]` = the input).
        pub(super) per_example: Vec<usize>,
        pub(super) acts: Vec<CudaSlice<f32>>,
        ga: CudaSlice<f32>,
        gb: CudaSlice<f32>,
        pub(super) input_grad: CudaSlice<f32>,
        scratch: CudaSlice<f32>,
        targets: CudaSlice<u32>,
        btargets: CudaSlice<f32>,
        losses: CudaSlice<f64>,
    }

    impl std::fmt::Debug for GpuWorkspace {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "GpuWorkspace(cuda:{}, {} activations, scratch {})",
                self.dev.ordinal(),
                self.acts.len(),
                self.scratch.len()
            )
        }
    }

    fn mismatch(op: &'static str, what: &str) -> Error {
        Error::DeviceMismatch {
            op,
            msg: format!("the model lives on a GPU but {what} does not (or on another GPU)"),
        }
    }

    impl Sequential {
        fn gpu_of<'w>(
            &self,
            op: &'static str,
            ws: &'w mut Workspace,
        ) -> Result<&'w mut GpuWorkspace> {
            let same_model = ws.acts.len() == self.shapes.len()
                && ws.gpu.as_ref().is_some_and(|g| {
                    g.per_example
                        .iter()
                        .zip(&self.shapes)
                        .all(|(n, s)| *n == numel(s))
                });
            let g = match (&mut ws.gpu, same_model) {
                (Some(g), true) => g,
                (Some(_), false) => {
                    return Err(Error::shape(op, "the workspace was made for another model"))
                }
                (None, _) => return Err(mismatch(op, "the workspace")),
            };
            match &self.device {
                crate::Device::Cuda(d) if d.ordinal() == g.dev.ordinal() => Ok(g),
                _ => Err(mismatch(op, "the workspace")),
            }
        }

        fn params_view(&self, op: &'static str) -> Result<CudaView<'_, f32>> {
            self.params
                .cuda_view()
                .ok_or_else(|| mismatch(op, "its parameter buffer"))
        }

        pub(in crate::nn::sequential) fn gpu_workspace(
            &self,
            d: &CudaDevice,
            max_batch: usize,
        ) -> Result<Workspace> {
            if max_batch == 0 {
                return Err(Error::invalid("max_batch", 0, ">= 1"));
            }
            for l in &self.kinds {
                l.gpu_supported()?;
            }
            let dev = d.backend().clone();
            let per_example: Vec<usize> = self.shapes.iter().map(|s| numel(s)).collect();
            let acts = per_example
                .iter()
                .map(|n| dev.alloc_zeros::<f32>(max_batch * n))
                .collect::<Result<Vec<_>>>()?;
            let maxact = per_example.iter().copied().max().unwrap_or(0) * max_batch;
            let mut scratch = 0usize;
            for (l, s) in self.kinds.iter().zip(&self.shapes) {
                scratch = scratch.max(l.gpu_scratch_len(s, max_batch));
            }
            let nout = max_batch * per_example[per_example.len() - 1];
            let g = GpuWorkspace {
                ga: dev.alloc_zeros(maxact)?,
                gb: dev.alloc_zeros(maxact)?,
                input_grad: dev.alloc_zeros(max_batch * per_example[0])?,
                scratch: dev.alloc_zeros(scratch)?,
                targets: dev.alloc_zeros(max_batch)?,
                btargets: dev.alloc_zeros(nout)?,
                losses: dev.alloc_zeros(nout)?,
                acts,
                per_example,
                dev,
            };
            Ok(Workspace {
                max_batch,
                batch: 0,
                chunks: 1,
                acts: vec![Vec::new(); self.shapes.len()],
                ga: Vec::new(),
                gb: Vec::new(),
                input_grad: Vec::new(),
                scratch: Vec::new(),
                depth_first: false,
                group: 1,
                ping: Vec::new(),
                sums: Vec::new(),
                clip_rows: Vec::new(),
                clip_aux: Vec::new(),
                clip_sq: Vec::new(),
                record_norms: false,
                clip_views: 1,
                clip_norms: Vec::new(),
                norms_len: None,
                fused: Vec::new(),
                fused_group: 1,
                have_forward: false,
                have_output_grad: false,
                have_input_grad: false,
                mean_loss: false,
                dropout: crate::nn::DropoutMode::Eval,
                masks: Vec::new(),
                gpu: Some(g),
            })
        }

        fn batch_of(&self, op: &'static str, ws: &Workspace, n: usize) -> Result<usize> {
            let per: usize = self.input.iter().product();
            if n == 0 || n % per != 0 || n / per > ws.max_batch {
                return Err(Error::shape(
                    op,
                    format!(
                        "input has {n} values; expected batch × {per} (one example is {:?}) with 1 ≤ batch ≤ {}",
                        self.input, ws.max_batch
                    ),
                ));
            }
            Ok(n / per)
        }

        /// Forward from a device buffer (or a host one, copied in).
        pub(in crate::nn::sequential) fn gpu_forward(
            &self,
            ws: &mut Workspace,
            x: &Buffer<f32>,
        ) -> Result<()> {
            const OP: &str = "Sequential::forward";
            let batch = self.batch_of(OP, ws, x.len())?;
            let g = self.gpu_of(OP, ws)?;
            let n = x.len();
            match &x.storage {
                Storage::Cpu(v) => g.dev.htod_into(v, &mut g.acts[0].slice_mut(..n))?,
                Storage::Cuda(s, d, _) => {
                    if d.ordinal() != g.dev.ordinal() {
                        return Err(mismatch(OP, "the input"));
                    }
                    dtod(&g.dev, &s.slice(..n), &mut g.acts[0].slice_mut(..n))?
                }
            }
            self.gpu_run_forward(ws, batch)
        }

        /// Forward from a host slice (copied to the device).
        pub(in crate::nn::sequential) fn gpu_forward_host(
            &self,
            ws: &mut Workspace,
            x: &[f32],
        ) -> Result<()> {
            const OP: &str = "Sequential::forward";
            let batch = self.batch_of(OP, ws, x.len())?;
            let g = self.gpu_of(OP, ws)?;
            g.dev.htod_into(x, &mut g.acts[0].slice_mut(..x.len()))?;
            self.gpu_run_forward(ws, batch)
        }

        fn gpu_run_forward(&self, ws: &mut Workspace, batch: usize) -> Result<()> {
            const OP: &str = "Sequential::forward";
            ws.batch = batch;
            ws.have_forward = false;
            ws.have_output_grad = false;
            ws.have_input_grad = false;
            let params = self.params_view(OP)?;
            let g = self.gpu_of(OP, ws)?;
            let dev = g.dev.clone();
            for (i, l) in self.kinds.iter().enumerate() {
                let (lo, hi) = g.acts.split_at_mut(i + 1);
                let x = lo[i].slice(..batch * g.per_example[i]);
                let mut y = hi[0].slice_mut(..batch * g.per_example[i + 1]);
                let p = params.slice(self.ranges[i].clone());
                l.gpu_forward(&dev, &self.shapes[i], batch, &x, &p, &mut y)?;
            }
            ws.have_forward = true;
            Ok(())
        }

        pub(in crate::nn::sequential) fn gpu_loss(
            &self,
            ws: &mut Workspace,
            loss: Loss<'_>,
            reduction: Reduction,
        ) -> Result<f64> {
            const OP: &str = "Sequential::loss";
            let (b, have) = (ws.batch, ws.have_forward);
            let per = numel(self.output_shape());
            let g = self.gpu_of(OP, ws)?;
            if !have {
                return Err(Error::shape(OP, "call forward first"));
            }
            let dev = g.dev.clone();
            let n = b * per;
            let out = g.acts[self.layers.len()].slice(..n);
            let mut dout = g.ga.slice_mut(..n);
            let v = match loss {
                Loss::CrossEntropy(t) => {
                    if t.len() != b {
                        return Err(Error::shape(
                            OP,
                            format!("{} targets for a batch of {b}", t.len()),
                        ));
                    }
                    dev.htod_into(t, &mut g.targets.slice_mut(..b))?;
                    cuda::loss::cross_entropy(
                        &dev,
                        &out,
                        per,
                        &g.targets.slice(..b),
                        reduction,
                        Some(&mut dout),
                        &mut g.losses.slice_mut(..b),
                    )?
                }
                Loss::BceWithLogits(t) | Loss::Bce(t) => {
                    if t.len() != n {
                        return Err(Error::shape(
                            OP,
                            format!("{} targets for {n} outputs", t.len()),
                        ));
                    }
                    dev.htod_into(t, &mut g.btargets.slice_mut(..n))?;
                    let (tv, mut lv) = (g.btargets.slice(..n), g.losses.slice_mut(..n));
                    if matches!(loss, Loss::Bce(_)) {
                        cuda::loss::bce(&dev, &out, &tv, reduction, Some(&mut dout), &mut lv)?
                    } else {
                        cuda::loss::bce_with_logits(
                            &dev,
                            &out,
                            &tv,
                            reduction,
                            Some(&mut dout),
                            &mut lv,
                        )?
                    }
                }
            };
            ws.have_output_grad = true;
            Ok(v)
        }

        pub(in crate::nn::sequential) fn gpu_set_output_grad(
            &self,
            ws: &mut Workspace,
            dy: &[f32],
        ) -> Result<()> {
            const OP: &str = "Sequential::set_output_grad";
            let (b, have) = (ws.batch, ws.have_forward);
            let g = self.gpu_of(OP, ws)?;
            if !have {
                return Err(Error::shape(OP, "call forward first"));
            }
            let n = b * numel(self.output_shape());
            if dy.len() != n {
                return Err(Error::shape(
                    OP,
                    format!("dy has {} values, expected {n}", dy.len()),
                ));
            }
            g.dev.htod_into(dy, &mut g.ga.slice_mut(..n))?;
            ws.have_output_grad = true;
            Ok(())
        }

        pub(in crate::nn::sequential) fn gpu_backward(
            &self,
            ws: &mut Workspace,
            grads: Grads<'_>,
            input_grad: bool,
        ) -> Result<()> {
            const OP: &str = "Sequential::backward";
            let (b, have) = (ws.batch, ws.have_output_grad);
            let g = self.gpu_of(OP, ws)?;
            if !have {
                return Err(Error::shape(
                    OP,
                    "call loss or set_output_grad after forward first",
                ));
            }
            let params = self.params_view(OP)?;
            let p = self.num_params();
            let dev = g.dev.clone();
            // The whole destination, re-sliced per layer.
            enum Dst<'a> {
                None,
                Rows(CudaViewMut<'a, f32>),
                Sum(CudaViewMut<'a, f32>, bool),
            }
            let mut dst = match grads {
                Grads::None => Dst::None,
                Grads::PerSample(buf) => {
                    let rows = buf
                        .cuda_view_mut()
                        .ok_or_else(|| mismatch(OP, "the per-sample matrix"))?;
                    if rows.len() < b * p {
                        return Err(Error::shape(
                            OP,
                            format!(
                                "per-sample matrix has {} values, need {b} × {p}",
                                rows.len()
                            ),
                        ));
                    }
                    Dst::Rows(rows)
                }
                Grads::Sum { grad, accumulate } => {
                    let v = grad
                        .cuda_view_mut()
                        .ok_or_else(|| mismatch(OP, "the summed gradient"))?;
                    if v.len() != p {
                        return Err(Error::shape(
                            OP,
                            format!("summed gradient has {} values, need {p}", v.len()),
                        ));
                    }
                    Dst::Sum(v, accumulate)
                }
                Grads::ClippedSum { .. } => {
                    return Err(Error::invalid(
                        "grads",
                        "Grads::ClippedSum",
                        "a CPU model (the fused clipping is CPU-only): on a GPU use Grads::PerSample and ops::clip_and_accumulate, or PrivacyEngine::accumulate_model, which does that",
                    ))
                }
            };
            let first = self.first_layer(input_grad);
            let GpuWorkspace {
                acts,
                ga,
                gb,
                input_grad: ig,
                scratch,
                per_example,
                ..
            } = g;
            let (mut dyb, mut dxb): (&mut CudaSlice<f32>, &mut CudaSlice<f32>) = (ga, gb);
            for i in (first..self.layers.len()).rev() {
                let r = self.ranges[i].clone();
                let pl = params.slice(r.clone());
                let (nin, nout) = (b * per_example[i], b * per_example[i + 1]);
                let need_dx = i > first || input_grad;
                let x = acts[i].slice(..nin);
                let y = acts[i + 1].slice(..nout);
                let dy = dyb.slice(..nout);
                let mut dx = if i == 0 {
                    ig.slice_mut(..nin)
                } else {
                    dxb.slice_mut(..nin)
                };
                let pg = match &mut dst {
                    _ if r.is_empty() => DeviceGrad::None,
                    Dst::None => DeviceGrad::None,
                    Dst::Rows(rows) => DeviceGrad::PerSample {
                        rows: rows.slice_mut(..),
                        stride: p,
                        offset: r.start,
                    },
                    Dst::Sum(v, acc) => DeviceGrad::Sum {
                        grad: v.slice_mut(r.clone()),
                        accumulate: *acc,
                    },
                };
                let dxo = if need_dx { Some(&mut dx) } else { None };
                let mut scr = scratch.slice_mut(..);
                let shape = &self.shapes[i];
                self.kinds[i].gpu_backward(&dev, shape, b, &x, &y, &pl, &dy, dxo, pg, &mut scr)?;
                std::mem::swap(&mut dyb, &mut dxb);
            }
            ws.have_output_grad = false;
            ws.have_input_grad = input_grad;
            Ok(())
        }
    }
}
