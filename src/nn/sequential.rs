//! [`Sequential`]: a stack of layers that owns its flat parameter vector, and its
//! [`Workspace`].

use super::layer::{Bwd, Fwd, Layer, LayerKind, Shape};
use crate::buffer::Storage;
use crate::cpu::activation::Activation;
use crate::cpu::dropout::dropout_mask;
use crate::cpu::grad::ParamGrad;
use crate::cpu::loss::{bce, bce_with_logits, cross_entropy, Reduction};
use crate::cpu::philox::Philox;
use crate::ops::Clipping;
use crate::rng::{RandomBits, StreamKey};
use crate::{Buffer, Device, Error, Layout, Result};
use std::ops::Range;

// The CPU schedules (depth-first and layer-major) and the CUDA path (`Device::Cuda` models):
// child modules, so they share the private fields.
mod clip;
mod cpu;
mod double;
pub use double::gradient_penalty;
mod gpu;

/// Builds a [`Sequential`] layer by layer from the shape of one input example; each method
/// infers the input channels/features from the shape so far. Errors (a layer that does not
/// fit) are reported by [`SequentialBuilder::build`].
#[derive(Clone, Debug)]
pub struct SequentialBuilder {
    input: Shape,
    layers: Vec<Layer>,
    shape: Shape,
    error: Option<String>,
}

impl SequentialBuilder {
    /// Starts a model whose examples have shape `input` (`[c, h, w]` or `[features]`).
    pub fn new(input: &[usize]) -> Self {
        SequentialBuilder {
            input: input.to_vec(),
            layers: Vec::new(),
            shape: input.to_vec(),
            error: None,
        }
    }

    /// Appends any layer.
    pub fn push(mut self, layer: Layer) -> Self {
        if self.error.is_none() {
            match layer.out_shape(&self.shape) {
                Ok(s) => self.shape = s,
                Err(e) => {
                    self.error = Some(format!(
                        "layer {} ({}) on input {:?}: {e}",
                        self.layers.len(),
                        layer.name(),
                        self.shape
                    ))
                }
            }
        }
        self.layers.push(layer);
        self
    }

    fn channels(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// `nn.Conv2d(c, cout, k, stride, pad, bias)` with `c` the current channels.
    pub fn conv2d(self, cout: usize, k: usize, stride: usize, pad: usize, bias: bool) -> Self {
        let cin = self.channels();
        self.push(Layer::Conv2d {
            cin,
            cout,
            k,
            stride,
            pad,
            bias,
        })
    }

    /// `nn.ConvTranspose2d(c, cout, k, stride, pad, bias)` with `c` the current channels.
    pub fn conv_transpose2d(
        self,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
    ) -> Self {
        let cin = self.channels();
        self.push(Layer::ConvTranspose2d {
            cin,
            cout,
            k,
            stride,
            pad,
            bias,
        })
    }

    /// `nn.Linear(f, outf, bias)` with `f` the current (flat) features.
    pub fn linear(self, outf: usize, bias: bool) -> Self {
        let inf = self.shape.iter().product();
        self.push(Layer::Linear { inf, outf, bias })
    }

    /// `nn.GroupNorm(groups, c)` (ε = 1e-5, affine) with `c` the current channels.
    pub fn group_norm(self, groups: usize) -> Self {
        let channels = self.channels();
        self.push(Layer::GroupNorm {
            groups,
            channels,
            eps: 1e-5,
            affine: true,
        })
    }

    /// `nn.GroupNorm(groups, c, affine=False)` (ε = 1e-5) with `c` the current channels: the
    /// normalisation alone, no parameters. As the first layer of a model it also spares the
    /// backward pass below the first layer with parameters (no input gradient is needed there).
    pub fn group_norm_plain(self, groups: usize) -> Self {
        let channels = self.channels();
        self.push(Layer::GroupNorm {
            groups,
            channels,
            eps: 1e-5,
            affine: false,
        })
    }

    /// `nn.MaxPool2d(k, stride)`.
    pub fn max_pool2d(self, k: usize, stride: usize) -> Self {
        self.push(Layer::MaxPool2d { k, stride })
    }

    /// `nn.AvgPool2d(k, stride)`.
    pub fn avg_pool2d(self, k: usize, stride: usize) -> Self {
        self.push(Layer::AvgPool2d { k, stride })
    }

    /// `nn.Flatten()`.
    pub fn flatten(self) -> Self {
        self.push(Layer::Flatten)
    }

    /// `nn.Dropout(p)` (active only in a workspace set to [`DropoutMode::Train`]).
    pub fn dropout(self, p: f64) -> Self {
        self.push(Layer::Dropout { p })
    }

    /// `nn.ReLU()`.
    pub fn relu(self) -> Self {
        self.push(Layer::Act(Activation::Relu))
    }

    /// `nn.LeakyReLU(slope)`.
    pub fn leaky_relu(self, slope: f64) -> Self {
        self.push(Layer::Act(Activation::LeakyRelu(slope)))
    }

    /// `nn.Tanh()`.
    pub fn tanh(self) -> Self {
        self.push(Layer::Act(Activation::Tanh))
    }

    /// `nn.Sigmoid()`.
    pub fn sigmoid(self) -> Self {
        self.push(Layer::Act(Activation::Sigmoid))
    }

    /// The shape of one example after the layers so far.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Builds the model on `device` with PyTorch's default initialisation drawn from the
    /// Philox stream `seed`: weights (and biases) of Conv2d, ConvTranspose2d and Linear
    /// uniform in ±1/√fan_in (= `kaiming_uniform_(a=√5)` for the weight), GroupNorm γ = 1,
    /// β = 0. Errors if a layer does not fit, or the model has no parameters.
    pub fn build(self, device: &Device, seed: u64) -> Result<Sequential> {
        if let Some(e) = self.error {
            return Err(Error::shape("Sequential", e));
        }
        Sequential::new(device, &self.input, self.layers, seed)
    }

    /// Builds the model on `device` with every parameter 0 and no initialisation drawn: the
    /// model to load weights into ([`Sequential::load_safetensors`] and its `_bytes`/`_view`
    /// forms) when no seed is wanted. Errors as [`SequentialBuilder::build`].
    pub fn build_zeroed(self, device: &Device) -> Result<Sequential> {
        if let Some(e) = self.error {
            return Err(Error::shape("Sequential", e));
        }
        Sequential::with_init(device, &self.input, self.layers, None)
    }
}

/// One parameter tensor: its PyTorch name (`"0.weight"`), shape, and column range in the flat
/// parameter vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    /// `"{layer index}.weight"` or `"{layer index}.bias"`, as in a PyTorch `nn.Sequential`.
    pub name: String,
    /// The tensor's shape, PyTorch's layout.
    pub shape: Vec<usize>,
    /// Its columns in the flat vector (= its segment in [`Sequential::layout`]).
    pub range: Range<usize>,
}

/// A feed-forward stack of layers with its parameters in one flat `f32` vector: for each
/// layer, its weight then its bias, in layer order (the order of PyTorch's `parameters()`),
/// with one [`Layout`] segment per tensor. See the [module docs](crate::nn) for a training step.
#[derive(Debug)]
pub struct Sequential {
    device: Device,
    input: Shape,
    layers: Vec<Layer>,
    /// Each layer's implementation (`src/nn/layer/*.rs`): all per-layer behaviour goes through
    /// these.
    kinds: Vec<Box<dyn LayerKind>>,
    /// `shapes[i]` is the input shape of layer i; `shapes[L]` the output shape.
    shapes: Vec<Shape>,
    /// Column range of each layer's parameters (empty for parameter-free layers).
    ranges: Vec<Range<usize>>,
    infos: Vec<ParamInfo>,
    layout: Layout,
    params: Buffer<f32>,
}

impl Sequential {
    /// Starts a [`SequentialBuilder`] for examples of shape `input`.
    pub fn builder(input: &[usize]) -> SequentialBuilder {
        SequentialBuilder::new(input)
    }

    /// A model from explicit layers (each one's channel/feature counts must chain), initialised
    /// as in [`SequentialBuilder::build`].
    pub fn new(device: &Device, input: &[usize], layers: Vec<Layer>, seed: u64) -> Result<Self> {
        Self::with_init(device, input, layers, Some(seed))
    }

    /// [`Sequential::new`] with every parameter 0 and no initialisation drawn (for loading
    /// weights; see [`SequentialBuilder::build_zeroed`]).
    pub fn zeroed(device: &Device, input: &[usize], layers: Vec<Layer>) -> Result<Self> {
        Self::with_init(device, input, layers, None)
    }

    fn with_init(
        device: &Device,
        input: &[usize],
        layers: Vec<Layer>,
        seed: Option<u64>,
    ) -> Result<Self> {
        if input.is_empty() || input.contains(&0) {
            return Err(Error::shape(
                "Sequential",
                format!("input shape {input:?} is empty"),
            ));
        }
        let mut shapes = vec![input.to_vec()];
        let mut ranges = Vec::with_capacity(layers.len());
        let mut infos = Vec::new();
        let mut init = Vec::new();
        let mut rng = seed.map(|s| Philox::new(s, 0));
        let kinds: Vec<Box<dyn LayerKind>> = layers.iter().map(Layer::kind).collect();
        for (i, l) in kinds.iter().enumerate() {
            let s = l.out_shape(&shapes[i]).map_err(|e| {
                Error::shape(
                    "Sequential",
                    format!("layer {i} ({}) on input {:?}: {e}", l.name(), shapes[i]),
                )
            })?;
            shapes.push(s);
            let start = init.len();
            for (suffix, shape, fan_in) in l.param_tensors() {
                let n: usize = shape.iter().product();
                let from = init.len();
                match (l.init_const(suffix), rng.as_mut()) {
                    (_, None) => init.resize(from + n, 0.0),
                    (Some(c), Some(_)) => init.resize(from + n, c),
                    (None, Some(rng)) => {
                        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                        init.extend((0..n).map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32));
                    }
                }
                infos.push(ParamInfo {
                    name: format!("{i}.{suffix}"),
                    shape,
                    range: from..init.len(),
                });
            }
            ranges.push(start..init.len());
        }
        let sizes: Vec<usize> = infos.iter().map(|p| p.range.len()).collect();
        let layout = Layout::from_sizes(&sizes)
            .map_err(|_| Error::shape("Sequential", "the model has no parameters"))?;
        let params = Buffer::from_slice(device, &init)?;
        Ok(Sequential {
            device: device.clone(),
            input: input.to_vec(),
            layers,
            kinds,
            shapes,
            ranges,
            infos,
            layout,
            params,
        })
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The shape of one input example.
    pub fn input_shape(&self) -> &[usize] {
        &self.input
    }

    /// The shape of one output example.
    pub fn output_shape(&self) -> &[usize] {
        &self.shapes[self.layers.len()]
    }

    /// The shape of the activation entering layer `i` (`i = layers().len()`: the output).
    pub fn shape_at(&self, i: usize) -> Option<&[usize]> {
        self.shapes.get(i).map(|s| s.as_slice())
    }

    /// Number of parameters P (the row length of the per-sample gradient matrix).
    pub fn num_params(&self) -> usize {
        self.layout.num_params()
    }

    /// One segment per parameter tensor, in order (for per-layer clipping).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Names, shapes and ranges of the parameter tensors, in order.
    pub fn param_info(&self) -> &[ParamInfo] {
        &self.infos
    }

    /// The flat parameter vector.
    pub fn params(&self) -> &Buffer<f32> {
        &self.params
    }

    /// The flat parameter vector, to update in place (e.g. with [`crate::ops::noisy_sgd_step`]).
    pub fn params_mut(&mut self) -> &mut Buffer<f32> {
        &mut self.params
    }

    /// The column range of layer `i`'s parameters (empty for parameter-free layers).
    pub fn layer_params(&self, i: usize) -> Option<Range<usize>> {
        self.ranges.get(i).cloned()
    }

    fn cpu_params(&self, op: &'static str) -> Result<&[f32]> {
        match &self.params.storage {
            Storage::Cpu(v) => Ok(v),
            #[allow(unreachable_patterns)]
            _ => Err(no_cuda(op)),
        }
    }

    /// A workspace for batches of up to `max_batch` examples, sized once: activations of every
    /// layer, gradient buffers and the kernels' scratch (one chunk per rayon thread). No
    /// allocation happens in [`Sequential::forward`] or [`Sequential::backward`].
    pub fn workspace(&self, max_batch: usize) -> Result<Workspace> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(d) = &self.device {
            return self.gpu_workspace(d, max_batch);
        }
        if self.device.is_cuda() {
            return Err(no_cuda("Sequential::workspace"));
        }
        if max_batch == 0 {
            return Err(Error::invalid("max_batch", 0, ">= 1"));
        }
        let chunks = rayon::current_num_threads().clamp(1, max_batch);
        let numel = |s: &Shape| numel(s);
        let acts: Vec<Vec<f32>> = self
            .shapes
            .iter()
            .map(|s| vec![0.0; max_batch * numel(s)])
            .collect();
        let maxact = self.shapes.iter().map(numel).max().unwrap_or(0) * max_batch;
        let mut scratch = chunks * self.thread_scratch()?;
        for i in 0..self.layers.len() {
            scratch = scratch.max(self.scratch_for(i, chunks)?);
        }
        let group = cpu::group_size(self.shapes.iter().map(numel).sum());
        let maxper = self.shapes.iter().map(numel).max().unwrap_or(0);
        let fused_group = cpu::fused_group_size(
            self.shapes.iter().map(numel).sum(),
            self.im2col_per_example()?,
        );
        Ok(Workspace {
            max_batch,
            batch: 0,
            chunks,
            acts,
            ga: vec![0.0; maxact],
            gb: vec![0.0; maxact],
            input_grad: vec![0.0; max_batch * numel(&self.input)],
            scratch: vec![0.0; scratch],
            depth_first: true,
            group,
            ping: vec![0.0; chunks * 2 * group.max(fused_group) * maxper],
            sums: vec![0.0; chunks * self.num_params()],
            clip_rows: Vec::new(),
            clip_aux: Vec::new(),
            clip_sq: Vec::new(),
            record_norms: false,
            clip_views: 1,
            clip_norms: Vec::new(),
            norms_len: None,
            fused: Vec::new(),
            fused_group,
            have_forward: false,
            have_output_grad: false,
            have_input_grad: false,
            mean_loss: false,
            dropout: DropoutMode::Eval,
            masks: self
                .kinds
                .iter()
                .enumerate()
                .map(|(i, l)| match l.dropout_p() {
                    Some(_) => Vec::with_capacity(max_batch * numel(&self.shapes[i])),
                    None => Vec::new(),
                })
                .collect(),
            #[cfg(feature = "cuda")]
            gpu: None,
        })
    }

    /// Floats of one example's kept intermediates over the layers (the Conv2d layers' im2col,
    /// kept by the fused pass).
    fn im2col_per_example(&self) -> Result<usize> {
        let mut n = 0;
        for (i, l) in self.kinds.iter().enumerate() {
            if let Some((kept, _)) = l.kept_lens(&self.shapes[i], 1)? {
                n += kept;
            }
        }
        Ok(n)
    }

    /// CPU scratch of layer `i` run as `chunks` parallel chunks.
    fn scratch_for(&self, i: usize, chunks: usize) -> Result<usize> {
        self.kinds[i].scratch_len(&self.shapes[i], chunks)
    }

    /// Forward pass of a batch: `x` holds `batch` examples of [`Sequential::input_shape`]
    /// (row-major, batch first), `1 ≤ batch ≤ max_batch`, as any [`Input`]: a host slice
    /// (`&[f32]`, `&Vec<f32>`, an array) or a [`Buffer`] (on a CUDA model a device buffer is
    /// used in place; a host slice is uploaded). The output is then [`Workspace::output`].
    /// Errors if `x`'s length is not a whole, fitting number of examples.
    pub fn forward<'x>(&self, ws: &mut Workspace, x: impl Into<Input<'x>>) -> Result<()> {
        match x.into() {
            Input::Host(x) => self.forward_slice(ws, x),
            Input::Buffer(x) => {
                #[cfg(feature = "cuda")]
                if ws.gpu.is_some() || self.device.is_cuda() {
                    return self.gpu_forward(ws, x);
                }
                let x = match &x.storage {
                    Storage::Cpu(v) => v.as_slice(),
                    #[allow(unreachable_patterns)]
                    _ => return Err(no_cuda("Sequential::forward")),
                };
                self.forward_slice(ws, x)
            }
        }
    }

    /// [`Sequential::forward`] from a host slice (what `forward(ws, x)` does with one).
    pub fn forward_slice(&self, ws: &mut Workspace, x: &[f32]) -> Result<()> {
        #[cfg(feature = "cuda")]
        if ws.gpu.is_some() || self.device.is_cuda() {
            return self.gpu_forward_host(ws, x);
        }
        const OP: &str = "Sequential::forward";
        let batch = self.begin_forward(OP, ws, x)?;
        let params = self.cpu_params(OP)?;
        if ws.depth_first && self.layers.len() < cpu::MAX_LAYERS {
            self.forward_depth_first(ws, params, batch)?;
        } else {
            for i in 0..self.layers.len() {
                let (lo, hi) = ws.acts.split_at_mut(i + 1);
                let xin = &lo[i][..batch * numel(&self.shapes[i])];
                let y = &mut hi[0][..batch * numel(&self.shapes[i + 1])];
                // Exactly `chunks` chunks of scratch: one per thread.
                let need = self.scratch_for(i, ws.chunks)?;
                let mask = self.mask_of(&ws.masks, i, 0, batch);
                self.layer_forward(i, batch, xin, params, y, &mut ws.scratch[..need], mask)?;
            }
        }
        ws.have_forward = true;
        Ok(())
    }

    /// Layer `i`'s forward on `batch` examples (`params`: the whole flat vector; `mask`: a
    /// Dropout layer's mask of these examples in training, see [`Sequential::mask_of`]).
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        i: usize,
        batch: usize,
        xin: &[f32],
        params: &[f32],
        y: &mut [f32],
        scratch: &mut [f32],
        mask: Option<&[f32]>,
    ) -> Result<()> {
        self.kinds[i].forward(Fwd {
            shape: &self.shapes[i],
            batch,
            x: xin,
            p: &params[self.ranges[i].clone()],
            y,
            scratch,
            mask,
        })
    }

    /// Layer `i`'s backward on `batch` examples: `x`, `y` its forward input and output, `dy`
    /// the output gradient; writes `dx` when given and the parameter gradients to `pg`.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        i: usize,
        batch: usize,
        x: &[f32],
        y: &[f32],
        params: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        pg: ParamGrad<'_, f32>,
        scratch: &mut [f32],
        mask: Option<&[f32]>,
    ) -> Result<()> {
        self.kinds[i].backward(Bwd {
            shape: &self.shapes[i],
            batch,
            x,
            y,
            p: &params[self.ranges[i].clone()],
            dy,
            dx,
            pg,
            scratch,
            mask,
        })
    }

    /// [`Grads`] as the CPU kernels take them (validated): the parameter gradients, or the
    /// destination of a clipped sum.
    fn cpu_grads<'g>(
        &self,
        op: &'static str,
        batch: usize,
        grads: Grads<'g>,
    ) -> Result<(ParamGrad<'g, f32>, Option<cpu::ClipTarget<'g>>)> {
        let b = batch;
        let p = self.num_params();
        let mut clip = None;
        let grads = match grads {
            Grads::None => ParamGrad::None,
            Grads::PerSample(buf) => {
                let rows = buf.as_mut_slice().ok_or_else(|| no_cuda(op))?;
                if rows.len() < b * p {
                    return Err(Error::shape(
                        op,
                        format!(
                            "per-sample matrix has {} values, need {b} × {p}",
                            rows.len()
                        ),
                    ));
                }
                ParamGrad::PerSample {
                    rows,
                    stride: p,
                    offset: 0,
                }
            }
            Grads::Sum { grad, accumulate } => {
                let g = grad.as_mut_slice().ok_or_else(|| no_cuda(op))?;
                if g.len() != p {
                    return Err(Error::shape(
                        op,
                        format!("summed gradient has {} values, need {p}", g.len()),
                    ));
                }
                ParamGrad::Sum {
                    grad: g,
                    accumulate,
                }
            }
            Grads::ClippedSum {
                layout,
                clipping,
                sum,
            } => {
                let bounds = clipping.bounds();
                crate::check::max_norms(bounds)?;
                if layout.num_params() != p {
                    return Err(Error::shape(
                        op,
                        format!(
                            "the clipping layout covers {} parameters, the model has {p}",
                            layout.num_params()
                        ),
                    ));
                }
                if bounds.len() > 1 && bounds.len() != layout.num_segments() {
                    return Err(Error::shape(
                        op,
                        format!(
                            "{} per-layer bounds for {} segments",
                            bounds.len(),
                            layout.num_segments()
                        ),
                    ));
                }
                let sum = sum.as_mut_slice().ok_or_else(|| no_cuda(op))?;
                if sum.len() != p {
                    return Err(Error::shape(
                        op,
                        format!("clipped sum has {} values, need {p}", sum.len()),
                    ));
                }
                clip = Some(cpu::ClipTarget {
                    layout,
                    bounds,
                    sum,
                    views: 1,
                });
                ParamGrad::None
            }
        };
        Ok((grads, clip))
    }

    /// The lowest layer a backward pass must visit: 0 when the input's gradient is wanted, else
    /// the first layer with parameters (the layers below it need no gradient).
    pub(super) fn first_layer(&self, input_grad: bool) -> usize {
        if input_grad {
            0
        } else {
            self.ranges
                .iter()
                .position(|r| !r.is_empty())
                .unwrap_or(self.layers.len())
        }
    }

    /// Checks a CPU forward's input and copies it into the workspace; returns the batch size.
    fn begin_forward(&self, op: &'static str, ws: &mut Workspace, x: &[f32]) -> Result<usize> {
        self.check_ws(op, ws)?;
        self.cpu_params(op)?;
        let per: usize = self.input.iter().product();
        if x.is_empty() || x.len() % per != 0 || x.len() / per > ws.max_batch {
            return Err(Error::shape(
                op,
                format!(
                    "input has {} values; expected batch × {per} (one example is {:?}) with 1 ≤ batch ≤ {}",
                    x.len(),
                    self.input,
                    ws.max_batch
                ),
            ));
        }
        let batch = x.len() / per;
        ws.batch = batch;
        ws.have_forward = false;
        ws.have_output_grad = false;
        ws.have_input_grad = false;
        ws.acts[0][..x.len()].copy_from_slice(x);
        self.fill_masks(ws, batch)?;
        Ok(batch)
    }

    /// Draws the Dropout layers' masks of a batch (training), or marks them off (eval).
    fn fill_masks(&self, ws: &mut Workspace, batch: usize) -> Result<()> {
        for (i, l) in self.kinds.iter().enumerate() {
            let Some(p) = l.dropout_p() else { continue };
            let m = &mut ws.masks[i];
            match ws.dropout {
                DropoutMode::Eval => m.clear(),
                DropoutMode::Train {
                    key,
                    step,
                    first_example,
                } => {
                    if i >= 1 << 16 || step >= 1 << 48 {
                        return Err(Error::invalid(
                            "dropout step",
                            step,
                            "< 2^48 (with fewer than 65 536 layers): the stream id is step << 16 | layer",
                        ));
                    }
                    let per = numel(&self.shapes[i]);
                    m.resize(batch * per, 0.0);
                    dropout_mask(&key, step << 16 | i as u64, first_example, per, p, m)?;
                }
            }
        }
        Ok(())
    }

    /// Layer `i`'s Dropout mask of examples `ex0 .. ex0 + n` of the batch (`None`: not a
    /// Dropout layer, or eval mode).
    pub(super) fn mask_of<'m>(
        &self,
        masks: &'m [Vec<f32>],
        i: usize,
        ex0: usize,
        n: usize,
    ) -> Option<&'m [f32]> {
        let m = masks.get(i)?;
        if m.is_empty() {
            return None;
        }
        let per = numel(&self.shapes[i]);
        m.get(ex0 * per..(ex0 + n) * per)
    }

    fn check_ws(&self, op: &'static str, ws: &Workspace) -> Result<()> {
        let ok = ws.acts.len() == self.shapes.len()
            && ws
                .acts
                .iter()
                .zip(&self.shapes)
                .all(|(a, s)| a.len() == ws.max_batch * numel(s));
        if !ok {
            return Err(Error::shape(op, "the workspace was made for another model"));
        }
        Ok(())
    }

    /// Computes the loss of the last forward's output and stores its gradient as the output
    /// gradient for [`Sequential::backward`]. Use [`Reduction::Sum`] for DP-SGD (per-sample
    /// gradients are then each example's own; see [`crate::cpu::loss`]).
    pub fn loss(&self, ws: &mut Workspace, loss: Loss<'_>, reduction: Reduction) -> Result<f64> {
        ws.mean_loss = reduction == Reduction::Mean;
        #[cfg(feature = "cuda")]
        if ws.gpu.is_some() || self.device.is_cuda() {
            return self.gpu_loss(ws, loss, reduction);
        }
        const OP: &str = "Sequential::loss";
        self.check_ws(OP, ws)?;
        if !ws.have_forward {
            return Err(Error::shape(OP, "call forward first"));
        }
        let b = ws.batch;
        let per = numel(self.output_shape());
        let out = &ws.acts[self.layers.len()][..b * per];
        let dout = &mut ws.ga[..b * per];
        let v = match loss {
            Loss::CrossEntropy(t) => {
                if t.len() != b {
                    return Err(Error::shape(
                        OP,
                        format!("{} targets for a batch of {b}", t.len()),
                    ));
                }
                cross_entropy(out, per, t, reduction, Some(dout))?
            }
            Loss::BceWithLogits(t) => bce_with_logits(out, t, reduction, Some(dout))?,
            Loss::Bce(t) => bce(out, t, reduction, Some(dout))?,
        };
        ws.have_output_grad = true;
        Ok(v)
    }

    /// Sets the gradient of the loss w.r.t. the last forward's output (`batch ×`
    /// [`Sequential::output_shape`] values), e.g. the gradient a discriminator passes back to a
    /// generator.
    pub fn set_output_grad(&self, ws: &mut Workspace, dy: &[f32]) -> Result<()> {
        ws.mean_loss = false;
        #[cfg(feature = "cuda")]
        if ws.gpu.is_some() || self.device.is_cuda() {
            return self.gpu_set_output_grad(ws, dy);
        }
        const OP: &str = "Sequential::set_output_grad";
        self.check_ws(OP, ws)?;
        if !ws.have_forward {
            return Err(Error::shape(OP, "call forward first"));
        }
        let n = ws.batch * numel(self.output_shape());
        if dy.len() != n {
            return Err(Error::shape(
                OP,
                format!("dy has {} values, expected {n}", dy.len()),
            ));
        }
        ws.ga[..n].copy_from_slice(dy);
        ws.have_output_grad = true;
        Ok(())
    }

    /// Forward, loss and backward of one batch — what [`Sequential::forward_slice`],
    /// [`Sequential::loss`] and [`Sequential::backward`] do one after the other — in one pass
    /// over the batch. Returns the loss.
    ///
    /// On the CPU's depth-first schedule each thread takes each small group of its examples
    /// through the forward, the loss and the backward while the group's activations are in
    /// cache, and every Conv2d reuses the im2col matrix of its forward for the weight
    /// gradient instead of building it again. The activations, the input gradient (with
    /// `input_grad`), the output gradient and the per-sample rows equal those of the three
    /// calls; summed and clipped gradients and the loss differ at most in rounding (they are
    /// added up in another order). With [`Grads::ClippedSum`] this is DP-SGD's clipped sum
    /// with no `[B, P]` matrix (see there). On a CUDA model or the layer-major schedule it
    /// makes the three calls.
    ///
    /// Errors as the three calls; on an error nothing is added to a `Sum` or `ClippedSum`
    /// destination.
    pub fn forward_backward<'x>(
        &self,
        ws: &mut Workspace,
        x: impl Into<Input<'x>>,
        loss: Loss<'_>,
        reduction: Reduction,
        grads: Grads<'_>,
        input_grad: bool,
    ) -> Result<f64> {
        check_clipped_reduction("Sequential::forward_backward", reduction, &grads)?;
        ws.norms_len = None;
        #[cfg(feature = "cuda")]
        let on_gpu = ws.gpu.is_some() || self.device.is_cuda();
        #[cfg(not(feature = "cuda"))]
        let on_gpu = false;
        let x = x.into();
        let host = match x {
            Input::Host(h) => Some(h),
            Input::Buffer(b) => match &b.storage {
                Storage::Cpu(v) => Some(v.as_slice()),
                #[allow(unreachable_patterns)]
                _ => None,
            },
        };
        let x = match host {
            Some(h) if !(on_gpu || !ws.depth_first || self.layers.len() >= cpu::MAX_LAYERS) => h,
            _ => {
                self.forward(ws, x)?;
                let l = self.loss(ws, loss, reduction)?;
                self.backward(ws, grads, input_grad)?;
                return Ok(l);
            }
        };
        const OP: &str = "Sequential::forward_backward";
        let batch = self.begin_forward(OP, ws, x)?;
        let params = self.cpu_params(OP)?;
        let per = numel(self.output_shape());
        let n = match loss {
            Loss::CrossEntropy(t) => {
                if t.len() != batch {
                    return Err(Error::shape(
                        OP,
                        format!("{} targets for a batch of {batch}", t.len()),
                    ));
                }
                if let Some((i, c)) = t.iter().enumerate().find(|(_, c)| **c as usize >= per) {
                    return Err(Error::invalid(
                        "target",
                        c,
                        format!("a class index < {per} (example {i})"),
                    ));
                }
                batch
            }
            Loss::BceWithLogits(t) | Loss::Bce(t) => {
                if t.len() != batch * per {
                    return Err(Error::shape(
                        OP,
                        format!("{} targets for {} outputs", t.len(), batch * per),
                    ));
                }
                batch * per
            }
        };
        let scale = match reduction {
            Reduction::Mean => 1.0 / n as f64,
            Reduction::Sum => 1.0,
        };
        let (grads, clip) = self.cpu_grads(OP, batch, grads)?;
        let views = ws.clip_views;
        let clip = clip.map(|c| cpu::ClipTarget { views, ..c });
        let first = self.first_layer(input_grad);
        let fused = cpu::FusedLoss { loss, scale };
        let l =
            self.backward_depth_first(ws, params, grads, clip, first, input_grad, Some(&fused))?;
        ws.have_forward = true;
        ws.have_output_grad = false;
        ws.have_input_grad = input_grad;
        Ok(l)
    }

    /// Backward pass from the output gradient set by [`Sequential::loss`] or
    /// [`Sequential::set_output_grad`]: writes the parameter gradients to `grads` and, when
    /// `input_grad`, the gradient w.r.t. the input to [`Workspace::input_grad`].
    ///
    /// With [`Grads::ClippedSum`] the output gradient must come from a `Reduction::Sum` loss
    /// (or [`Sequential::set_output_grad`]): under `Mean` each example's gradient is divided
    /// by the realised batch size, so one example changes every other example's clipped
    /// gradient and the sensitivity is up to 2C, not C — an error.
    pub fn backward(&self, ws: &mut Workspace, grads: Grads<'_>, input_grad: bool) -> Result<()> {
        ws.norms_len = None;
        if ws.mean_loss {
            check_clipped_reduction("Sequential::backward", Reduction::Mean, &grads)?;
        }
        #[cfg(feature = "cuda")]
        if ws.gpu.is_some() || self.device.is_cuda() {
            return self.gpu_backward(ws, grads, input_grad);
        }
        const OP: &str = "Sequential::backward";
        self.check_ws(OP, ws)?;
        if !ws.have_output_grad {
            return Err(Error::shape(
                OP,
                "call loss or set_output_grad after forward first",
            ));
        }
        let params = self.cpu_params(OP)?;
        let (grads, clip) = self.cpu_grads(OP, ws.batch, grads)?;
        let views = ws.clip_views;
        let clip = clip.map(|c| cpu::ClipTarget { views, ..c });
        let first = self.first_layer(input_grad);
        if ws.depth_first && self.layers.len() < cpu::MAX_LAYERS {
            self.backward_depth_first(ws, params, grads, clip, first, input_grad, None)?;
        } else if let Some(clip) = clip {
            if clip.views > 1 {
                return Err(Error::invalid(
                    "schedule",
                    "layer-major",
                    "the depth-first schedule for augmentation multiplicity (Workspace::set_depth_first(true))",
                ));
            }
            self.backward_layer_major_clipped(ws, params, clip, first, input_grad)?;
        } else {
            self.backward_layer_major(ws, params, grads, first, input_grad)?;
        }
        ws.have_output_grad = false;
        ws.have_input_grad = input_grad;
        Ok(())
    }
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

pub(crate) fn no_cuda(op: &'static str) -> Error {
    Error::invalid(
        "device",
        op,
        "Device::Cpu: the nn layers have no CUDA backend yet (CPU only for now)",
    )
}

/// A loss on the model's output, with its targets (one per example for cross-entropy, one per
/// output value for the binary losses). Class indices are `u32`, the native type of the CPU and
/// CUDA kernels; labels held as `i64` (PyTorch's `LongTensor`, most data loaders) are checked
/// and converted in one call by [`class_targets`].
#[derive(Clone, Copy, Debug)]
pub enum Loss<'a> {
    /// Cross-entropy (log-softmax + NLL) on logits `[batch, classes]`; class indices.
    CrossEntropy(&'a [u32]),
    /// Binary cross-entropy on logits; targets in [0, 1].
    BceWithLogits(&'a [f32]),
    /// Binary cross-entropy on probabilities (after a Sigmoid); targets in [0, 1].
    Bce(&'a [f32]),
}

/// Class targets for [`Loss::CrossEntropy`] from `i64` labels (PyTorch's `LongTensor`, most
/// data loaders): each must be in `0..classes`. A negative or out-of-range label is
/// [`Error::ClassTarget`], naming the example; `classes` = 0 or above `u32::MAX` is
/// [`Error::InvalidParameter`].
///
/// ```
/// # fn main() -> dpsgd::Result<()> {
/// let labels: Vec<i64> = vec![3, 1, 4, 1];
/// let y = dpsgd::nn::class_targets(&labels, 10)?;
/// let loss = dpsgd::nn::Loss::CrossEntropy(&y);
/// # assert!(matches!(loss, dpsgd::nn::Loss::CrossEntropy(&[3, 1, 4, 1])));
/// assert!(dpsgd::nn::class_targets(&[0, -1], 10).is_err());
/// # Ok(()) }
/// ```
pub fn class_targets(targets: &[i64], classes: usize) -> Result<Vec<u32>> {
    if classes == 0 || classes > u32::MAX as usize {
        return Err(Error::invalid(
            "classes",
            classes,
            format!("the number of classes, in 1..={}", u32::MAX),
        ));
    }
    targets
        .iter()
        .enumerate()
        .map(|(index, &value)| match u32::try_from(value) {
            Ok(c) if (c as usize) < classes => Ok(c),
            _ => Err(Error::ClassTarget {
                index,
                value,
                classes,
            }),
        })
        .collect()
}

/// A batch of inputs for [`Sequential::forward`] and [`Sequential::forward_backward`]: host
/// values or a [`Buffer`] (on either device). Made by `.into()` from `&[f32]`, `&Vec<f32>`,
/// `&[f32; N]` or `&Buffer<f32>`, so those calls take any of them.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Host values (copied into the workspace; uploaded for a CUDA model).
    Host(&'a [f32]),
    /// A buffer (a CUDA one is read in place by a CUDA model).
    Buffer(&'a Buffer<f32>),
}

impl<'a> From<&'a [f32]> for Input<'a> {
    fn from(x: &'a [f32]) -> Self {
        Input::Host(x)
    }
}

impl<'a> From<&'a Vec<f32>> for Input<'a> {
    fn from(x: &'a Vec<f32>) -> Self {
        Input::Host(x)
    }
}

impl<'a, const N: usize> From<&'a [f32; N]> for Input<'a> {
    fn from(x: &'a [f32; N]) -> Self {
        Input::Host(x)
    }
}

impl<'a> From<&'a Buffer<f32>> for Input<'a> {
    fn from(x: &'a Buffer<f32>) -> Self {
        Input::Buffer(x)
    }
}

/// Where [`Sequential::backward`] writes the parameter gradients.
#[derive(Debug)]
pub enum Grads<'a> {
    /// None (only the input gradient, e.g. through a frozen discriminator).
    None,
    /// Per-sample gradients: row i of this `[≥batch, P]` row-major matrix gets example i's
    /// gradient (overwritten), ready for [`crate::ops::clip_and_accumulate`].
    PerSample(&'a mut Buffer<f32>),
    /// The gradient summed over the batch (P values), overwritten or accumulated.
    Sum {
        /// The summed gradient.
        grad: &'a mut Buffer<f32>,
        /// Add to `grad` instead of overwriting it.
        accumulate: bool,
    },
    /// DP-SGD's clipped sum (Abadi et al., CCS 2016, Algorithm 1): `sum += Σ_i clip(g_i)`,
    /// each example's gradient clipped to `clipping`'s bound(s) over the segments of `layout`
    /// (the model's [`Sequential::layout`], or a flat one over all its parameters), with the
    /// norms and factors of [`crate::ops::clip_and_accumulate`] (Opacus's
    /// `min(1, C / (‖g_i‖ + 1e-6))`). On the CPU the depth-first schedule clips each small
    /// group of examples as soon as its per-sample rows are computed, while they are in cache,
    /// so the `[B, P]` matrix is never written (the layer-major schedule materialises it in the
    /// workspace). CPU only; [`crate::engine::PrivacyEngine::accumulate_model`] takes either device.
    /// A NaN/Inf per-sample gradient is an [`Error::NonFinite`] naming the example, and
    /// nothing is added. Deterministic for a given number of rayon threads (each thread's
    /// partial sum is added in thread order), not across thread counts.
    /// Norms: Goodfellow 2015 and Li et al. 2022 (ghost norm) for `Linear`; the rows' for the
    /// rest (see `sequential/clip.rs`).
    ClippedSum {
        /// Segments of the parameter vector (P values in all).
        layout: &'a Layout,
        /// Flat (one bound) or per-layer (one bound per segment of `layout`) clipping.
        clipping: &'a Clipping,
        /// The clipped sum (P values), added to.
        sum: &'a mut Buffer<f32>,
    },
}

/// Activations, gradients and scratch of one model for batches of up to `max_batch`, made by
/// [`Sequential::workspace`] once and reused every step.
#[derive(Debug)]
pub struct Workspace {
    max_batch: usize,
    batch: usize,
    chunks: usize,
    acts: Vec<Vec<f32>>,
    ga: Vec<f32>,
    gb: Vec<f32>,
    input_grad: Vec<f32>,
    scratch: Vec<f32>,
    /// CPU schedule: depth-first (default) or layer-major; see `sequential/cpu.rs`.
    depth_first: bool,
    /// Examples per group in the depth-first schedule.
    group: usize,
    /// Per-thread gradient ping-pong buffers of the depth-first backward.
    ping: Vec<f32>,
    /// Per-thread summed-gradient accumulators of the depth-first backward.
    sums: Vec<f32>,
    /// [`Grads::ClippedSum`]'s buffers, sized on first use: per-thread group rows and clip
    /// factors (depth-first), or the `[B, P]` matrix, norms and factors (layer-major).
    clip_rows: Vec<f32>,
    clip_aux: Vec<f32>,
    clip_sq: Vec<f64>,
    /// Per-sample clipping norms of the last clipped backward (`[batch, F]`, F = the
    /// clipping's number of bounds) when `record_norms` is on; `norms_len` is the length of
    /// what `clip_norms` holds for it.
    record_norms: bool,
    /// Rows per example of a clipped backward (augmentation multiplicity K; 1 normally): each
    /// run of K consecutive rows is one example, whose K gradients are averaged before the
    /// norm ([`crate::engine::PrivacyEngine::accumulate_augmented`] sets it around one call).
    clip_views: usize,
    clip_norms: Vec<f32>,
    norms_len: Option<usize>,
    /// [`Sequential::forward_backward`]'s per-thread buffers (each Conv2d's kept im2col for a
    /// group), sized on first use, and its examples per group.
    fused: Vec<f32>,
    fused_group: usize,
    have_forward: bool,
    have_output_grad: bool,
    have_input_grad: bool,
    /// Whether the output gradient came from a `Reduction::Mean` loss (refused by a clipped
    /// backward: the per-sample gradients would depend on the realised batch size).
    mean_loss: bool,
    /// Train or eval mode of the Dropout layers.
    dropout: DropoutMode,
    /// Each Dropout layer's mask of the current batch (empty: eval, or not a Dropout layer).
    masks: Vec<Vec<f32>>,
    /// The device-resident buffers of a workspace made for a `Device::Cuda` model (the host
    /// vectors above are then empty).
    #[cfg(feature = "cuda")]
    gpu: Option<gpu::GpuWorkspace>,
}

/// The mode of a model's Dropout layers in one [`Workspace`]: the identity (eval, the
/// default), or training with masks drawn from a [`Purpose::Dropout`](crate::rng::Purpose)
/// key (see [`crate::cpu::dropout`] for the stream layout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DropoutMode {
    /// No dropout: every Dropout layer is the identity (evaluation, inference).
    #[default]
    Eval,
    /// Training: fresh masks for every `step` (use one per optimizer step, < 2⁴⁸).
    Train {
        /// The key: `RunKeys::key(Purpose::Dropout)` (never another purpose's key).
        key: StreamKey,
        /// The step; masks of the same step, example index and layer are the same.
        step: u64,
        /// The index of the batch's first example (0 normally; a batch of one that must get
        /// example `e`'s mask of a larger batch uses `e`).
        first_example: u64,
    },
}

impl Workspace {
    /// Sets the Dropout layers' mode for the following forward passes (masks are drawn at
    /// each forward, from the mode's key, step and example indices).
    pub fn set_dropout(&mut self, mode: DropoutMode) {
        self.dropout = mode;
    }

    /// The Dropout layers' mode.
    pub fn dropout(&self) -> DropoutMode {
        self.dropout
    }

    /// The largest batch it holds.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The batch size of the last forward.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Whether the current output gradient came from a `Reduction::Mean` loss (a clipped
    /// backward refuses it: see [`Sequential::backward`]).
    pub fn mean_reduced(&self) -> bool {
        self.mean_loss
    }

    /// Asks a [`Grads::ClippedSum`] backward on the CPU (and so
    /// [`crate::engine::PrivacyEngine::accumulate_batch`] and
    /// [`crate::engine::PrivacyEngine::accumulate_model`] there) to keep each example's
    /// clipping norm(s) for [`Workspace::clip_norms`]. Off by default (it costs a `[batch, F]`
    /// write). These norms are the caller's own private data: use them (diagnostics, adaptive
    /// clipping under its own accounting), never log or release them.
    pub fn set_record_norms(&mut self, on: bool) {
        self.record_norms = on;
        if !on {
            self.norms_len = None;
        }
    }

    /// Sets the rows per example of the following clipped backward passes (K ≥ 1; see the
    /// field). Only the engine's augmentation-multiplicity path uses it, and resets it to 1.
    pub(crate) fn set_clip_views(&mut self, k: usize) {
        self.clip_views = k.max(1);
    }

    /// Whether the CPU depth-first schedule is on.
    pub(crate) fn is_depth_first(&self) -> bool {
        self.depth_first
    }

    /// The per-sample norms the last [`Grads::ClippedSum`] backward clipped by, row-major
    /// `[batch, F]`: F = 1 with [`crate::ops::Clipping::Flat`] (each example's total L2 norm);
    /// with per-layer clipping F = the number of bounds (the norm of each clipping segment).
    /// Clip factor = `min(1, C / (norm + 1e-6))`. `None` unless recording was on
    /// ([`Workspace::set_record_norms`]) for that backward, and after any other backward, and
    /// on a CUDA workspace (whose clipping runs through the `[B, P]` rows:
    /// [`crate::ops::per_sample_norms`]).
    pub fn clip_norms(&self) -> Option<&[f32]> {
        self.norms_len.map(|n| &self.clip_norms[..n])
    }

    /// Parallel chunks the kernels split a batch into.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// Chooses the CPU schedule. Depth-first (the default): each thread takes a contiguous
    /// range of the batch and runs every layer on a small, cache-resident group of its
    /// examples at a time. Layer-major: every layer on the whole batch, each kernel parallel
    /// inside. Both give the same activations, input gradients and per-sample gradients (the
    /// summed gradient may differ in the last bits: it is added in another order). No effect
    /// on a CUDA workspace.
    pub fn set_depth_first(&mut self, on: bool) {
        self.depth_first = on;
    }

    /// Examples per group in the depth-first CPU schedule.
    pub fn group(&self) -> usize {
        self.group
    }

    /// The last forward's output, `batch ×` the output shape.
    pub fn output(&self) -> &[f32] {
        let a = &self.acts[self.acts.len() - 1];
        &a[..self.batch * (a.len() / self.max_batch)]
    }

    /// The activation entering layer `i` in the last forward (`i = 0`: the input).
    pub fn activation(&self, i: usize) -> Option<&[f32]> {
        self.acts
            .get(i)
            .map(|a| &a[..self.batch * (a.len() / self.max_batch)])
    }

    /// The gradient w.r.t. the input of the last [`Sequential::backward`] with `input_grad`.
    pub fn input_grad(&self) -> Option<&[f32]> {
        if self.have_input_grad {
            let per = self.input_grad.len() / self.max_batch;
            Some(&self.input_grad[..self.batch * per])
        } else {
            None
        }
    }
}

/// A clipped sum needs per-example gradients that are each example's own: a `Mean` reduction
/// divides them by the realised batch size (a function of the other examples), which doubles
/// the sensitivity. Refused with a typed error.
fn check_clipped_reduction(
    op: &'static str,
    reduction: Reduction,
    grads: &Grads<'_>,
) -> Result<()> {
    if reduction == Reduction::Mean && matches!(grads, Grads::ClippedSum { .. }) {
        return Err(Error::invalid(
            "reduction",
            "Mean",
            format!("Reduction::Sum for a clipped (DP) backward in {op}: under Mean each example's gradient depends on the realised batch size, so the sensitivity is 2C, not C"),
        ));
    }
    Ok(())
}
