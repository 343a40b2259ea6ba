//! Small conv nets with per-sample gradients: a [`Sequential`] model over the CPU layer kernels
//! of [`crate::cpu`] (`conv`, `linear`, `norm`, `pool`, `activation`, `loss`).
//!
//! One backward pass writes every example's parameter gradient straight into its row of the
//! `[B, P]` per-sample gradient matrix, with the model's [`Layout`](crate::Layout) (one segment
//! per parameter tensor), ready for [`crate::ops::clip_and_accumulate`]:
//!
//! ```
//! use dpsgd::nn::{models, Grads, Loss, Reduction};
//! use dpsgd::{Buffer, ClipWorkspace, Clipping, Device};
//! # fn main() -> dpsgd::Result<()> {
//! let dev = Device::Cpu;
//! let model = models::sample_conv_net(&dev, 42)?;          // P = 26 010
//! let b = 4;
//! let mut ws = model.workspace(b)?;                          // sized once
//! let mut per_sample = Buffer::zeros(&dev, b * model.num_params())?;
//! let mut sum = Buffer::zeros(&dev, model.num_params())?;
//! let mut clip_ws = ClipWorkspace::new(&dev, b, model.layout())?;
//! let x = Buffer::from_slice(&dev, &vec![0.1f32; b * 28 * 28])?;
//! let y = [3u32, 1, 4, 1];
//!
//! model.forward(&mut ws, &x)?;
//! let loss = model.loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)?;
//! model.backward(&mut ws, Grads::PerSample(&mut per_sample), false)?;
//! dpsgd::ops::clip_and_accumulate(&per_sample, b, model.layout(), &Clipping::Flat(1.0),
//!                                 &mut clip_ws, &mut sum)?;
//! // then noise + step: dpsgd::ops::noisy_sgd_step(model.params_mut(), &sum, ...)
//! # assert!(loss.is_finite());
//! # Ok(()) }
//! ```
//!
//! The same step in one pass, as the trainer runs it: [`Sequential::forward_backward`] into
//! [`Grads::ClippedSum`] gives the clipped sum without the `[B, P]` matrix (on the CPU each
//! thread takes each small group of examples through forward, loss, backward and clipping
//! while it is in cache; [`crate::engine::PrivacyEngine::accumulate_batch`] wraps it):
//!
//! ```
//! # use dpsgd::nn::{models, Grads, Loss, Reduction};
//! # use dpsgd::{Buffer, Clipping, Device};
//! # fn main() -> dpsgd::Result<()> {
//! # let dev = Device::Cpu;
//! # let model = models::sample_conv_net(&dev, 42)?;
//! # let mut ws = model.workspace(4)?;
//! # let mut sum = Buffer::zeros(&dev, model.num_params())?;
//! let x = vec![0.1f32; 4 * 28 * 28];
//! let loss = model.forward_backward(
//!     &mut ws,
//!     &x,
//!     Loss::CrossEntropy(&[3, 1, 4, 1]),
//!     Reduction::Sum,
//!     Grads::ClippedSum { layout: model.layout(), clipping: &Clipping::Flat(1.0), sum: &mut sum },
//!     false,
//! )?;
//! # assert!(loss.is_finite());
//! # Ok(()) }
//! ```
//!
//! Use [`Reduction::Sum`] with per-sample gradients, so that row i
//! is ∇ℓ_i (a mean would scale every row by 1/B). [`Grads::Sum`] gives the ordinary summed
//! gradient instead (non-private training, a GAN's generator), and `input_grad = true` the
//! gradient w.r.t. the input ([`Workspace::input_grad`]; GS-WGAN needs it).
//!
//! Backends: the model holds a [`Device`](crate::Device). On `Device::Cpu` the layers run the
//! kernels of [`crate::cpu`], by default depth-first: the batch is split once into one
//! contiguous range per rayon thread, and each thread runs every layer on a small group of its
//! examples at a time, so activations stay in the core's L2 cache
//! ([`Workspace::set_depth_first`] switches to the layer-major schedule, every layer on the
//! whole batch; both give the same per-sample gradients bit for bit); on `Device::Cuda` (feature `cuda`) the same calls run their GPU
//! twins in `crate::cuda` (`conv`, `linear`, `norm`, `pool`, `activation`, `loss`) over
//! device-resident buffers: the workspace holds every activation, gradient and scratch buffer
//! in device memory, the input, the per-sample matrix and the summed gradient are GPU
//! [`Buffer`](crate::Buffer)s on the model's device, and [`Workspace::output_vec`] /
//! [`Workspace::input_grad_vec`] copy results back (the host views `output()` /
//! `input_grad()` of a GPU workspace are empty). Mixing devices is a typed
//! [`Error::DeviceMismatch`](crate::Error).
//!
//! # Why no BatchNorm
//!
//! BatchNorm normalises each activation with the mean and variance *of the batch*, so example
//! j's output — and hence its loss and gradient — depends on every other example in the batch.
//! There is then no "gradient of example i" to clip: changing one example changes all B
//! gradients, the sensitivity of the clipped sum is no longer C, and the Gaussian noise of
//! DP-SGD no longer buys the claimed (ε, δ). The running statistics are a second leak: they are
//! an unclipped, un-noised average of the private data that ships with the model. GroupNorm
//! normalises each example over groups of its own channels, so examples stay independent; it
//! is the usual DP-safe replacement (Opacus rejects BatchNorm and suggests GroupNorm too).
//!
//! # Loading in PyTorch
//!
//! [`Sequential::save_safetensors`] writes the `state_dict` of the PyTorch `nn.Sequential`
//! with the same layers (names `"{index}.weight"`, `"{index}.bias"`, where the index counts
//! every layer, ReLU/pool/Flatten included; PyTorch's layouts; F32):
//!
//! ```python
//! import torch, torch.nn as nn
//! from safetensors.torch import load_file, save_file
//!
//! model = nn.Sequential(                       # = dpsgd::nn::models::sample_conv_net
//!     nn.Conv2d(1, 16, 8, 2, padding=3), nn.ReLU(), nn.MaxPool2d(2, 1),
//!     nn.Conv2d(16, 32, 4, 2), nn.ReLU(), nn.MaxPool2d(2, 1), nn.Flatten(),
//!     nn.Linear(32 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))
//! model.load_state_dict(load_file("model.safetensors"))   # strict: names and shapes match
//! save_file(model.state_dict(), "back.safetensors")       # ... and back to Sequential::load_safetensors
//! ```
//!
//! [`Sequential::load_safetensors`] is as strict as `load_state_dict`: a missing, mis-shaped,
//! non-F32 or unexpected tensor, or a corrupt file, is an error and leaves the model unchanged.
//! [`Sequential::load_safetensors_bytes`] and [`Sequential::load_safetensors_view`] load from
//! memory (bytes, or a parsed [`io::SafeTensors`]); with [`LoadMode::IgnoreUnknown`] they skip
//! tensors the model has no parameter for and return their names.
//!
//! # Adding a layer
//!
//! Everything about one layer kind lives in one file, `src/nn/layer/<kind>.rs`; the schedules
//! in `src/nn/sequential*.rs` (depth-first and layer-major CPU passes, the fused clipping, the
//! double backward, the CUDA path) hold no per-layer knowledge and reach layers only through
//! the crate-private `LayerKind` trait (`src/nn/layer.rs`). Opacus's grad-sampler registry and
//! candle's `Module` are the models. To add a layer:
//!
//! 1. Add its variant to [`Layer`] (PyTorch's meaning of every field; it is part of the serde
//!    format, so never rename existing ones).
//! 2. Write `src/nn/layer/<kind>.rs`: a struct with the variant's fields and
//!    `impl LayerKind`, providing
//!    - `name` (PyTorch's class name) and `out_shape` (the shape rule: a typed
//!      [`Error`](crate::Error) that says what would fit, never a panic);
//!    - `param_tensors` (PyTorch's `state_dict` suffixes, shapes and layouts, and fan-in) and,
//!      for a constant init, `init_const`; parameter-free layers keep the defaults;
//!    - the CPU `forward` and `backward` (input gradient when asked; parameter gradients into
//!      the given `ParamGrad`, per sample: each example's own row — never a quantity that
//!      mixes examples, or DP-SGD's sensitivity bound breaks) and their `scratch_len`; call
//!      kernels of [`crate::cpu`], each with a GPU twin in `crate::cuda`;
//!    - `gpu_forward`, `gpu_backward` and `gpu_scratch_len` under `#[cfg(feature = "cuda")]`
//!      (or `gpu_supported` returning an error that says to run the model on the CPU);
//!    - optional roles, each with a default that is always safe: `double` (the double backward
//!      of WGAN-GP: `LinearMap` only for a linear map plus a bias named `bias`, `Diagonal` only
//!      for a piecewise-linear element-wise activation; default refused), `ghost` (only for a
//!      layer whose per-example weight gradient is `dy_i x_iᵀ`), `dropout_p` (a layer that
//!      takes a per-example random mask), `kept_lens`/`forward_kept`/`backward_kept` (an
//!      intermediate kept between the fused pass's forward and backward).
//! 3. Register it: `mod <kind>;` and one arm of `Layer::kind` in `src/nn/layer.rs`.
//! 4. Test it (`tests/unflatten.rs` is a template): shape errors, forward/backward against
//!    finite differences or an exact identity, per-sample gradients against a batch of one,
//!    serde and safetensors round trips. [`Layer::Unflatten`] took exactly these two source
//!    files (it was then folded into `reshape.rs` beside Flatten: a layer that only changes the
//!    shape rule of an existing one can share its file, as MaxPool2d and AvgPool2d do).

pub mod io;
pub mod layer;
pub mod models;
pub mod sequential;

/// How per-example losses are combined (defined with the CPU loss kernels; also
/// `dpsgd::cpu::loss::Reduction`).
pub use crate::cpu::loss::Reduction;
pub use io::LoadMode;
pub use layer::{Layer, Shape};
pub use sequential::{
    class_targets, gradient_penalty, DropoutMode, Grads, Input, Loss, ParamInfo, Sequential,
    SequentialBuilder, Workspace,
};
