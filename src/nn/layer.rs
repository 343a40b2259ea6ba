//! The layer configurations of a [`super::Sequential`] model and their shape rules.

use crate::cpu::activation::Activation;
use crate::cpu::conv::{Conv2dShape, ConvTranspose2dShape};
use crate::cpu::norm::GroupNormShape;
use crate::cpu::pool::PoolShape;
use crate::{Error, Result};

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
    /// `nn.GroupNorm(groups, channels, eps)` with affine parameters; input `[channels, …]`.
    GroupNorm {
        /// Number of groups (divides `channels`).
        groups: usize,
        /// Channels.
        channels: usize,
        /// ε added to the variance.
        eps: f64,
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
}

/// The shape of one example's activation: `[c, h, w]` or `[features]`.
pub type Shape = Vec<usize>;

fn chw(op: &'static str, s: &[usize]) -> Result<(usize, usize, usize)> {
    match s {
        [c, h, w] => Ok((*c, *h, *w)),
        _ => Err(Error::shape(
            op,
            format!("needs an image input [c, h, w], got {s:?}"),
        )),
    }
}

impl Layer {
    /// PyTorch's class name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Layer::Conv2d { .. } => "Conv2d",
            Layer::ConvTranspose2d { .. } => "ConvTranspose2d",
            Layer::Linear { .. } => "Linear",
            Layer::GroupNorm { .. } => "GroupNorm",
            Layer::MaxPool2d { .. } => "MaxPool2d",
            Layer::AvgPool2d { .. } => "AvgPool2d",
            Layer::Flatten => "Flatten",
            Layer::Dropout { .. } => "Dropout",
            Layer::Act(Activation::Relu) => "ReLU",
            Layer::Act(Activation::LeakyRelu(_)) => "LeakyReLU",
            Layer::Act(Activation::Tanh) => "Tanh",
            Layer::Act(Activation::Sigmoid) => "Sigmoid",
        }
    }

    /// The output shape for input shape `s`, validating the layer against it.
    pub fn out_shape(&self, s: &[usize]) -> Result<Shape> {
        let op = self.name();
        match *self {
            Layer::Conv2d {
                cin,
                cout,
                k,
                stride,
                pad,
                bias,
            } => {
                let (c, h, w) = chw(op, s)?;
                if c != cin {
                    return Err(Error::shape(
                        op,
                        format!("expects {cin} input channels, got {c}"),
                    ));
                }
                let sh = Conv2dShape {
                    batch: 1,
                    cin,
                    h,
                    w,
                    cout,
                    k,
                    stride,
                    pad,
                    bias,
                };
                let (oh, ow) = sh.out_hw()?;
                Ok(vec![cout, oh, ow])
            }
            Layer::ConvTranspose2d {
                cin,
                cout,
                k,
                stride,
                pad,
                bias,
            } => {
                let (c, h, w) = chw(op, s)?;
                if c != cin {
                    return Err(Error::shape(
                        op,
                        format!("expects {cin} input channels, got {c}"),
                    ));
                }
                let sh = ConvTranspose2dShape {
                    batch: 1,
                    cin,
                    h,
                    w,
                    cout,
                    k,
                    stride,
                    pad,
                    bias,
                };
                let (oh, ow) = sh.out_hw()?;
                Ok(vec![cout, oh, ow])
            }
            Layer::Linear { inf, outf, .. } => {
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
            Layer::GroupNorm {
                groups,
                channels,
                eps,
            } => {
                if s.first() != Some(&channels) {
                    return Err(Error::shape(
                        op,
                        format!("expects {channels} channels, got input {s:?}"),
                    ));
                }
                let sh = GroupNormShape {
                    batch: 0,
                    c: channels,
                    spatial: s[1..].iter().product(),
                    groups,
                    eps,
                };
                sh_check_gn(&sh)?;
                Ok(s.to_vec())
            }
            Layer::MaxPool2d { k, stride } | Layer::AvgPool2d { k, stride } => {
                let (c, h, w) = chw(op, s)?;
                let (oh, ow) = PoolShape {
                    batch: 1,
                    c,
                    h,
                    w,
                    k,
                    stride,
                }
                .out_hw()?;
                Ok(vec![c, oh, ow])
            }
            Layer::Flatten => Ok(vec![s.iter().product()]),
            Layer::Dropout { p } => {
                crate::cpu::dropout::check_p(p)?;
                Ok(s.to_vec())
            }
            Layer::Act(a) => {
                if let Activation::LeakyRelu(x) = a {
                    if !x.is_finite() {
                        return Err(Error::invalid("negative_slope", x, "finite"));
                    }
                }
                Ok(s.to_vec())
            }
        }
    }

    /// The layer's parameter tensors in PyTorch order: `(suffix, shape, fan_in)` where suffix is
    /// `weight` or `bias` and fan_in the bound denominator of PyTorch's default init (0 for
    /// GroupNorm, initialised to γ = 1, β = 0).
    pub fn param_tensors(&self) -> Vec<(&'static str, Vec<usize>, usize)> {
        match *self {
            Layer::Conv2d {
                cin, cout, k, bias, ..
            } => {
                let fan = cin * k * k;
                let mut v = vec![("weight", vec![cout, cin, k, k], fan)];
                if bias {
                    v.push(("bias", vec![cout], fan));
                }
                v
            }
            Layer::ConvTranspose2d {
                cin, cout, k, bias, ..
            } => {
                // PyTorch's fan_in of a [cin, cout, k, k] weight is dim 1 · k · k.
                let fan = cout * k * k;
                let mut v = vec![("weight", vec![cin, cout, k, k], fan)];
                if bias {
                    v.push(("bias", vec![cout], fan));
                }
                v
            }
            Layer::Linear { inf, outf, bias } => {
                let mut v = vec![("weight", vec![outf, inf], inf)];
                if bias {
                    v.push(("bias", vec![outf], inf));
                }
                v
            }
            Layer::GroupNorm { channels, .. } => {
                vec![("weight", vec![channels], 0), ("bias", vec![channels], 0)]
            }
            _ => Vec::new(),
        }
    }

    /// Total parameters of the layer.
    pub fn num_params(&self) -> usize {
        self.param_tensors()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum()
    }
}

fn sh_check_gn(s: &GroupNormShape) -> Result<()> {
    if s.c == 0 || s.spatial == 0 {
        return Err(Error::shape("GroupNorm", "zero channels or spatial size"));
    }
    if s.groups == 0 || s.c % s.groups != 0 {
        return Err(Error::invalid(
            "groups",
            s.groups,
            format!("a divisor of the channel count {}", s.c),
        ));
    }
    if !(s.eps.is_finite() && s.eps > 0.0) {
        return Err(Error::invalid("eps", s.eps, "finite and > 0"));
    }
    Ok(())
}
