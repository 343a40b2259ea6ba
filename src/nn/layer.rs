//! The layers of a [`super::Sequential`] model: the public configuration enum [`Layer`], and
//! one private file per layer kind (`src/nn/layer/*.rs`) that holds everything about it — its
//! shape rule, parameter tensors and initialisation, its CPU forward, backward and per-sample
//! gradient, its double-backward role, its clipping role (ghost norm) and its CUDA arms. The
//! schedules in `sequential*.rs` call the layers only through the `LayerKind` trait below;
//! `Layer::kind` is the one place that maps a variant to its file. See "Adding a layer" in the
//! [`crate::nn`] module docs.

use crate::cpu::activation::Activation;
use crate::cpu::grad::ParamGrad;
use crate::{Error, Result};

mod activation;
mod conv2d;
mod conv_transpose2d;
mod dropout;
mod group_norm;
mod linear;
mod pool;
mod reshape;

/// The serde default of [`Layer::GroupNorm`]'s `affine` (every GroupNorm had γ, β before it).
fn affine_default() -> bool {
    true
}

/// One layer of a [`super::Sequential`] model, with PyTorch's meaning of every field.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Layer {
    /// `nn.Conv2d(cin, cout, k, stride, pad, bias=bias)`; input `[cin, h, w]`.
    Conv2d {
        /// Input channels.
        cin: usize,
        /// Output channels.
        cout: usize,
        /// Kernel size.
        k: usize,
        /// Stride.
        stride: usize,
        /// Zero padding on each side.
        pad: usize,
        /// Whether the layer has a bias.
        bias: bool,
    },
    /// `nn.ConvTranspose2d(cin, cout, k, stride, pad, bias=bias)`; input `[cin, h, w]`.
    ConvTranspose2d {
        /// Input channels.
        cin: usize,
        /// Output channels.
        cout: usize,
        /// Kernel size.
        k: usize,
        /// Stride.
        stride: usize,
        /// Padding.
        pad: usize,
        /// Whether the layer has a bias.
        bias: bool,
    },
    /// `nn.Linear(inf, outf, bias=bias)`; input `[inf]` (flatten images first).
    Linear {
        /// Input features.
        inf: usize,
        /// Output features.
        outf: usize,
        /// Whether the layer has a bias.
        bias: bool,
    },
    /// `nn.GroupNorm(groups, channels, eps, affine)`; input `[channels, …]`.
    GroupNorm {
        /// Number of groups (divides `channels`).
        groups: usize,
        /// Channels.
        channels: usize,
        /// ε added to the variance.
        eps: f64,
        /// Whether the layer has the per-channel affine parameters γ (weight) and β (bias).
        /// Without them it has no parameters: `y = (x − μ_g) / √(σ²_g + ε)`. Absent from a
        /// serialised layer list written before this field existed: `true`.
        #[serde(default = "affine_default")]
        affine: bool,
    },
    /// `nn.MaxPool2d(k, stride)`.
    MaxPool2d {
        /// Window size.
        k: usize,
        /// Stride.
        stride: usize,
    },
    /// `nn.AvgPool2d(k, stride)`.
    AvgPool2d {
        /// Window size.
        k: usize,
        /// Stride.
        stride: usize,
    },
    /// `nn.Flatten()`: `[c, h, w]` → `[c·h·w]`.
    Flatten,
    /// `nn.Dropout(p)`: in training each unit is zeroed with probability `p` and the others
    /// scaled by 1/(1 − p); in eval the identity (see [`crate::cpu::dropout`] and
    /// [`super::Workspace::set_dropout`]). Any input shape; no parameters.
    Dropout {
        /// Drop probability in [0, 1).
        p: f64,
    },
    /// `nn.ReLU()`, `nn.LeakyReLU(slope)`, `nn.Tanh()` or `nn.Sigmoid()`.
    Act(Activation),
    /// `nn.Unflatten(1, shape)`: an example's first dimension `n` becomes `shape` (whose
    /// product must be `n`): `[n]` → `shape`, e.g. a Linear's features to `[c, h, w]`.
    Unflatten {
        /// The new shape of the first dimension (sizes ≥ 1).
        shape: Vec<usize>,
    },
}

/// The shape of one example's activation: `[c, h, w]` or `[features]`.
pub type Shape = Vec<usize>;

impl Layer {
    /// The layer's implementation: the one `match` from a variant to its file in
    /// `src/nn/layer/` (a new layer adds one arm here).
    pub(crate) fn kind(&self) -> Box<dyn LayerKind> {
        match *self {
            Layer::Conv2d {
                cin,
                cout,
                k,
                stride,
                pad,
                bias,
            } => Box::new(conv2d::Conv2d {
                cin,
                cout,
                k,
                stride,
                pad,
                bias,
            }),
            Layer::ConvTranspose2d {
                cin,
                cout,
                k,
                stride,
                pad,
                bias,
            } => Box::new(conv_transpose2d::ConvTranspose2d {
                cin,
                cout,
                k,
                stride,
                pad,
                bias,
            }),
            Layer::Linear { inf, outf, bias } => Box::new(linear::Linear { inf, outf, bias }),
            Layer::GroupNorm {
                groups,
                channels,
                eps,
                affine,
            } => Box::new(group_norm::GroupNorm::new(groups, channels, eps, affine)),
            Layer::MaxPool2d { k, stride } => Box::new(pool::Pool {
                max: true,
                k,
                stride,
            }),
            Layer::AvgPool2d { k, stride } => Box::new(pool::Pool {
                max: false,
                k,
                stride,
            }),
            Layer::Flatten => Box::new(reshape::Reshape::Flatten),
            Layer::Dropout { p } => Box::new(dropout::Dropout { p }),
            Layer::Act(a) => Box::new(activation::Act(a)),
            Layer::Unflatten { ref shape } => Box::new(reshape::Reshape::Unflatten(shape.clone())),
        }
    }

    /// PyTorch's class name, for messages.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The output shape for input shape `s`, validating the layer against it.
    pub fn out_shape(&self, s: &[usize]) -> Result<Shape> {
        self.kind().out_shape(s)
    }

    /// The layer's parameter tensors in PyTorch order: `(suffix, shape, fan_in)` where suffix is
    /// `weight` or `bias` and fan_in the bound denominator of PyTorch's default init (0 for
    /// GroupNorm, initialised to γ = 1, β = 0).
    pub fn param_tensors(&self) -> Vec<(&'static str, Vec<usize>, usize)> {
        self.kind().param_tensors()
    }

    /// Total parameters of the layer.
    pub fn num_params(&self) -> usize {
        self.param_tensors()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum()
    }
}

/// `[c, h, w]` of an image input, or a shape error naming layer `op`.
fn chw(op: &'static str, s: &[usize]) -> Result<(usize, usize, usize)> {
    match s {
        [c, h, w] => Ok((*c, *h, *w)),
        _ => Err(Error::shape(
            op,
            format!("needs an image input [c, h, w], got {s:?}"),
        )),
    }
}

/// Checks that `s` is an image input `[cin, h, w]` with the layer's `cin` channels (the
/// convolutions' common shape rule).
fn expect_channels(op: &'static str, s: &[usize], cin: usize) -> Result<()> {
    let (c, _, _) = chw(op, s)?;
    if c != cin {
        return Err(Error::shape(
            op,
            format!("expects {cin} input channels, got {c}"),
        ));
    }
    Ok(())
}

/// `(c, h, w)` of a shape already validated by the layer's shape rule (`[c, h, w]`, or
/// `(s[0], 1, 1)` for any other).
fn chw_or_flat(s: &[usize]) -> (usize, usize, usize) {
    match s {
        [c, h, w] => (*c, *h, *w),
        _ => (s[0], 1, 1),
    }
}

/// A layer's CPU forward on `batch` examples.
pub(crate) struct Fwd<'a> {
    /// One example's input shape (validated by [`LayerKind::out_shape`]).
    pub shape: &'a [usize],
    /// Examples in `x` and `y`.
    pub batch: usize,
    /// The input, `batch ×` `shape`.
    pub x: &'a [f32],
    /// The layer's own parameters (weight then bias; empty for parameter-free layers).
    pub p: &'a [f32],
    /// The output, `batch ×` the output shape (overwritten).
    pub y: &'a mut [f32],
    /// The kernels' scratch, at least [`LayerKind::scratch_len`] long for the number of
    /// chunks the call runs as.
    pub scratch: &'a mut [f32],
    /// The random mask of these examples (a Dropout layer in training; else `None`).
    pub mask: Option<&'a [f32]>,
}

/// A layer's CPU backward on `batch` examples.
pub(crate) struct Bwd<'a> {
    /// One example's input shape.
    pub shape: &'a [usize],
    /// Examples.
    pub batch: usize,
    /// The forward's input and output.
    pub x: &'a [f32],
    pub y: &'a [f32],
    /// The layer's own parameters.
    pub p: &'a [f32],
    /// The output gradient.
    pub dy: &'a [f32],
    /// The input gradient (overwritten), when wanted.
    pub dx: Option<&'a mut [f32]>,
    /// Where the parameter gradients go (per sample or summed; `None` for parameter-free
    /// layers and when not wanted).
    pub pg: ParamGrad<'a, f32>,
    /// The kernels' scratch.
    pub scratch: &'a mut [f32],
    /// The forward's random mask of these examples.
    pub mask: Option<&'a [f32]>,
}

/// A layer's role in [`super::Sequential::input_grad_param_grad`] (the double backward of
/// piecewise-linear models, `sequential/double.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Double {
    /// Not piecewise linear (smooth activations, GroupNorm, MaxPool2d, Dropout): refused.
    Unsupported,
    /// A linear map plus a bias (Conv2d, Linear, AvgPool2d, reshapes): the tangent runs
    /// through the layer's own forward with the biases zeroed, and its backward.
    LinearMap,
    /// An element-wise piecewise-linear activation (ReLU, LeakyReLU): the tangent is
    /// multiplied by the derivative mask at the primal input — what the layer's backward
    /// computes from the primal input and output.
    Diagonal,
}

/// A `Linear`-like layer whose per-example weight gradient is `dy_i x_iᵀ` and bias gradient
/// `dy_i`: the fused clipping takes its norm as `‖dy_i‖²·‖x_i‖²` (the ghost norm,
/// `sequential/clip.rs`) and never forms the per-example weight gradient.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GhostShape {
    /// Input features.
    pub inf: usize,
    /// Output features.
    pub outf: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
}

/// Everything about one layer kind; implemented once per file in `src/nn/layer/`. The
/// schedules of [`super::Sequential`] (CPU depth-first and layer-major, fused clipping, double
/// backward, CUDA) call layers only through it. Defaults describe a parameter-free layer with
/// no scratch, no double backward, no ghost norm, no mask and no kept im2col.
pub(crate) trait LayerKind: std::fmt::Debug + Send + Sync {
    /// PyTorch's class name, for messages.
    fn name(&self) -> &'static str;

    /// The output shape for one example of input shape `s`; a shape error that says what fits
    /// otherwise.
    fn out_shape(&self, s: &[usize]) -> Result<Shape>;

    /// The parameter tensors in PyTorch order: `(suffix, shape, fan_in)` (see
    /// [`Layer::param_tensors`]).
    fn param_tensors(&self) -> Vec<(&'static str, Vec<usize>, usize)> {
        Vec::new()
    }

    /// A constant initial value of parameter tensor `suffix` (GroupNorm's γ = 1, β = 0);
    /// `None`: PyTorch's default uniform ±1/√fan_in drawn from the model's init stream.
    fn init_const(&self, _suffix: &str) -> Option<f32> {
        None
    }

    /// CPU scratch for input shape `shape` when the kernel runs as `chunks` parallel chunks.
    fn scratch_len(&self, _shape: &[usize], _chunks: usize) -> Result<usize> {
        Ok(0)
    }

    /// CPU forward.
    fn forward(&self, a: Fwd<'_>) -> Result<()>;

    /// CPU backward: the input gradient (when `a.dx`) and the parameter gradients into `a.pg`
    /// (per sample: each example's own row).
    fn backward(&self, a: Bwd<'_>) -> Result<()>;

    /// The layer's role in the double backward.
    fn double(&self) -> Double {
        Double::Unsupported
    }

    /// `Some` for a layer the fused clipping may clip by its ghost norm.
    fn ghost(&self) -> Option<GhostShape> {
        None
    }

    /// The drop probability of a Dropout layer, whose forward takes a random mask per example
    /// (drawn by the model from its [`crate::rng::Purpose::Dropout`] key).
    fn dropout_p(&self) -> Option<f64> {
        None
    }

    /// For a layer whose fused forward-backward keeps an intermediate (Conv2d's im2col) for a
    /// group of `batch` examples: `(kept floats, work floats)`.
    fn kept_lens(&self, _shape: &[usize], _batch: usize) -> Result<Option<(usize, usize)>> {
        Ok(None)
    }

    /// The forward that fills `kept` (`a.scratch`: the work area); only for a layer with
    /// [`LayerKind::kept_lens`].
    fn forward_kept(&self, _a: Fwd<'_>, _kept: &mut [f32]) -> Result<()> {
        Err(Error::invalid(
            "layer",
            self.name(),
            "a layer that keeps an intermediate",
        ))
    }

    /// The backward from what [`LayerKind::forward_kept`] kept (`a.scratch`: the work area).
    fn backward_kept(&self, _a: Bwd<'_>, _kept: &[f32]) -> Result<()> {
        Err(Error::invalid(
            "layer",
            self.name(),
            "a layer that keeps an intermediate",
        ))
    }

    /// Whether the layer runs on a CUDA device (an error that says what to do if not).
    #[cfg(feature = "cuda")]
    fn gpu_supported(&self) -> Result<()> {
        Ok(())
    }

    /// GPU scratch for `batch` examples of input shape `shape`.
    #[cfg(feature = "cuda")]
    fn gpu_scratch_len(&self, _shape: &[usize], _batch: usize) -> usize {
        0
    }

    /// GPU twin of [`LayerKind::forward`] (no mask: Dropout has no GPU twin).
    #[cfg(feature = "cuda")]
    fn gpu_forward(
        &self,
        dev: &crate::cuda::CudaBackend,
        shape: &[usize],
        batch: usize,
        x: &cudarc::driver::CudaView<'_, f32>,
        p: &cudarc::driver::CudaView<'_, f32>,
        y: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()>;

    /// GPU twin of [`LayerKind::backward`].
    #[cfg(feature = "cuda")]
    #[allow(clippy::too_many_arguments)]
    fn gpu_backward(
        &self,
        dev: &crate::cuda::CudaBackend,
        shape: &[usize],
        batch: usize,
        x: &cudarc::driver::CudaView<'_, f32>,
        y: &cudarc::driver::CudaView<'_, f32>,
        p: &cudarc::driver::CudaView<'_, f32>,
        dy: &cudarc::driver::CudaView<'_, f32>,
        dx: Option<&mut cudarc::driver::CudaViewMut<'_, f32>>,
        pg: crate::cuda::grad::DeviceGrad<'_>,
        scratch: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<()>;
}

/// Copies `src` into `dst` on the device (reshaping layers' GPU forward and backward).
#[cfg(feature = "cuda")]
pub(crate) fn dtod(
    dev: &crate::cuda::CudaBackend,
    src: &cudarc::driver::CudaView<'_, f32>,
    dst: &mut cudarc::driver::CudaViewMut<'_, f32>,
) -> Result<()> {
    if src.is_empty() {
        return Ok(());
    }
    dev.stream
        .memcpy_dtod(src, dst)
        .map_err(crate::cuda::drv("memcpy device to device"))
}
