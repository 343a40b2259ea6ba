//! Ready-made models. Each has a `*_builder` form, for building it without drawing an
//! initialisation (e.g. to load weights into it):
//!
//! ```
//! use dpsgd::nn::models;
//! use dpsgd::Device;
//! let model = models::sample_conv_net_builder(false).build_zeroed(&Device::Cpu)?;
//! assert_eq!(model.num_params(), 26_010);
//! // then: model.load_safetensors("model.safetensors")?;
//! # Ok::<(), dpsgd::Error>(())
//! ```

use super::layer::Layer;
use super::sequential::{Sequential, SequentialBuilder};
use crate::rng::RandomBits;
use crate::{Device, Error, Result};

/// Opacus's MNIST example network `SampleConvNet` (P = 26 010) for `[1, 28, 28]` inputs:
/// `Conv2d(1,16,8,2,padding=3)–ReLU–MaxPool2d(2,1)–Conv2d(16,32,4,2)–ReLU–MaxPool2d(2,1)–
/// Flatten–Linear(512,32)–ReLU–Linear(32,10)`.
///
/// PyTorch twin (same `state_dict` names: `0.*`, `3.*`, `7.*`, `9.*`):
/// ```python
/// nn.Sequential(nn.Conv2d(1, 16, 8, 2, padding=3), nn.ReLU(), nn.MaxPool2d(2, 1),
///               nn.Conv2d(16, 32, 4, 2), nn.ReLU(), nn.MaxPool2d(2, 1), nn.Flatten(),
///               nn.Linear(32 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))
/// ```
pub fn sample_conv_net(device: &Device, seed: u64) -> Result<Sequential> {
    sample_conv_net_with(device, seed, false)
}

/// [`sample_conv_net`] with Tanh instead of ReLU: the tempered-sigmoid network of Papernot,
/// Thakurta, Song, Chien, Erlingsson, "Tempered Sigmoid Activations for Deep Learning with
/// Differential Privacy" (AAAI 2021), which trains better under DP-SGD's clipping.
pub fn sample_conv_net_tanh(device: &Device, seed: u64) -> Result<Sequential> {
    sample_conv_net_with(device, seed, true)
}

fn act(b: SequentialBuilder, tanh: bool) -> SequentialBuilder {
    if tanh {
        b.tanh()
    } else {
        b.relu()
    }
}

fn sample_conv_net_with(device: &Device, seed: u64, tanh: bool) -> Result<Sequential> {
    sample_conv_net_builder(tanh).build(device, seed)
}

/// The layers of [`sample_conv_net`] (`tanh = false`) or [`sample_conv_net_tanh`], not yet
/// built: [`SequentialBuilder::build`] with a seed, or [`SequentialBuilder::build_zeroed`] to
/// load weights into.
pub fn sample_conv_net_builder(tanh: bool) -> SequentialBuilder {
    let b = Sequential::builder(&[1, 28, 28]).conv2d(16, 8, 2, 3, true);
    let b = act(b, tanh).max_pool2d(2, 1).conv2d(32, 4, 2, 0, true);
    let b = act(b, tanh).max_pool2d(2, 1).flatten().linear(32, true);
    act(b, tanh).linear(10, true)
}

/// Tramèr & Boneh's `ScatterLinear` (ICLR 2021, "Differentially Private Learning Needs Better
/// Features"; `models.py` of github.com/ftramer/Handcrafted-DP) for `[channels, 7, 7]`
/// ScatterNet features ([`crate::data::scatter`]): `GroupNorm(groups, channels)–Flatten–
/// Linear(channels·49, 10)` (P = 39 700 + 2·channels for 81 channels).
///
/// The paper's GroupNorm has no affine parameters (`affine=False`); this one has them (γ
/// starting at 1, β at 0, so the initial function is the paper's), trained with DP-SGD like
/// every other parameter. The paper's other variant, a data normalisation with privately
/// estimated per-channel statistics (its best MNIST setting), is not implemented here.
pub fn scatter_linear_builder(channels: usize, groups: usize) -> SequentialBuilder {
    Sequential::builder(&[channels, 7, 7])
        .group_norm(groups)
        .flatten()
        .linear(10, true)
}

/// [`scatter_linear_builder`] without the GroupNorm layer, `Flatten–Linear(channels·49, 10)`,
/// for features standardised before the model (Tramèr & Boneh's `ScatterLinear` with
/// `input_norm="BN"`: per-channel statistics estimated privately,
/// [`crate::mechanisms::feature_stats`]).
pub fn scatter_linear_plain_builder(channels: usize) -> SequentialBuilder {
    Sequential::builder(&[channels, 7, 7])
        .flatten()
        .linear(10, true)
}

/// [`scatter_cnn_builder`] without the GroupNorm layer, for features standardised before the
/// model ([`scatter_linear_plain_builder`]).
pub fn scatter_cnn_plain_builder(channels: usize) -> SequentialBuilder {
    Sequential::builder(&[channels, 7, 7])
        .conv2d(16, 3, 2, 1, true)
        .tanh()
        .conv2d(32, 3, 1, 1, true)
        .tanh()
        .flatten()
        .linear(32, true)
        .tanh()
        .linear(10, true)
}

/// Tramèr & Boneh's CNN on ScatterNet features (`MNIST_CNN` with `in_channels = 81`, default
/// size, in `models.py` of github.com/ftramer/Handcrafted-DP) for `[channels, 7, 7]` inputs:
/// `GroupNorm(groups, channels, affine=False)–Conv2d(channels,16,3,2,padding=1)–Tanh–
/// Conv2d(16,32,3,1,padding=1)–Tanh–Flatten–Linear(512,32)–Tanh–Linear(32,10)`.
///
/// The GroupNorm has no affine parameters, as in the paper (unlike [`scatter_linear_builder`],
/// whose reported accuracies were measured with them). Here the convolution that follows can
/// absorb a per-channel scale, and without parameters below the first convolution the backward
/// pass stops there: no input gradient of the 81-channel convolution (its col2im) and no
/// GroupNorm backward, about a fifth of an epoch's work.
pub fn scatter_cnn_builder(channels: usize, groups: usize) -> SequentialBuilder {
    Sequential::builder(&[channels, 7, 7])
        .group_norm_plain(groups)
        .conv2d(16, 3, 2, 1, true)
        .tanh()
        .conv2d(32, 3, 1, 1, true)
        .tanh()
        .flatten()
        .linear(32, true)
        .tanh()
        .linear(10, true)
}

/// Configuration of the DCGAN pair ([`dcgan_generator`], [`dcgan_discriminator`]), with
/// GroupNorm where DCGAN has BatchNorm (see [`crate::nn`] for why).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DcganConfig {
    /// Image side: 28 (MNIST), 32 (CIFAR-10) or 64 (the DCGAN paper's and Opacus's
    /// `dcgan.py`'s).
    pub image_size: usize,
    /// Image channels (1 or 3).
    pub channels: usize,
    /// Latent dimension; the generator's input is `[nz, 1, 1]`.
    pub nz: usize,
    /// Generator width (feature maps of its last hidden layer).
    pub ngf: usize,
    /// Discriminator width (feature maps of its first layer).
    pub ndf: usize,
    /// GroupNorm groups (must divide every normalised width: 2·ngf, 4·ngf, 2·ndf, 4·ndf).
    pub groups: usize,
}

impl Default for DcganConfig {
    /// MNIST: 28×28×1, nz = 100, ngf = ndf = 32, 8 groups.
    fn default() -> Self {
        DcganConfig {
            image_size: 28,
            channels: 1,
            nz: 100,
            ngf: 32,
            ndf: 32,
            groups: 8,
        }
    }
}

impl DcganConfig {
    fn check(&self) -> Result<()> {
        if !matches!(self.image_size, 28 | 32 | 64) {
            return Err(Error::invalid(
                "image_size",
                self.image_size,
                "28, 32 or 64",
            ));
        }
        for (n, v) in [
            ("channels", self.channels),
            ("nz", self.nz),
            ("ngf", self.ngf),
            ("ndf", self.ndf),
        ] {
            if v == 0 {
                return Err(Error::invalid(n, v, ">= 1"));
            }
        }
        Ok(())
    }
}

/// DCGAN generator `[nz, 1, 1]` → `[channels, s, s]` in (−1, 1), transposed convolutions
/// without bias, each hidden one followed by GroupNorm and ReLU, Tanh at the end.
///
/// 64×64 (Opacus's `dcgan.py`): `ConvT(nz,8g,4,1,0)` 4² → `ConvT(8g,4g,4,2,1)` 8² →
/// `ConvT(4g,2g,4,2,1)` 16² → `ConvT(2g,g,4,2,1)` 32² → `ConvT(g,c,4,2,1)` 64².
/// 32×32: `ConvT(nz,4g,4,1,0)` 4² → `ConvT(4g,2g,4,2,1)` 8² → `ConvT(2g,g,4,2,1)` 16² →
/// `ConvT(g,c,4,2,1)` 32². 28×28: `ConvT(nz,4g,7,1,0)` 7² → `ConvT(4g,2g,4,2,1)` 14² →
/// `ConvT(2g,c,4,2,1)` 28². The parameter layers sit at the same `nn.Sequential` indices as
/// in `dcgan.py`'s `Generator.main` (0, 1, 3, 4, …), so its `state_dict` names match there.
pub fn dcgan_generator(device: &Device, cfg: &DcganConfig, seed: u64) -> Result<Sequential> {
    dcgan_generator_builder(cfg)?.build(device, seed)
}

/// The layers of [`dcgan_generator`], not yet built (see [`sample_conv_net_builder`]).
pub fn dcgan_generator_builder(cfg: &DcganConfig) -> Result<SequentialBuilder> {
    cfg.check()?;
    let (g, gr) = (cfg.ngf, cfg.groups);
    let b = Sequential::builder(&[cfg.nz, 1, 1]);
    let b = if cfg.image_size == 64 {
        b.conv_transpose2d(8 * g, 4, 1, 0, false)
            .group_norm(gr)
            .relu()
            .conv_transpose2d(4 * g, 4, 2, 1, false)
            .group_norm(gr)
            .relu()
            .conv_transpose2d(2 * g, 4, 2, 1, false)
            .group_norm(gr)
            .relu()
            .conv_transpose2d(g, 4, 2, 1, false)
            .group_norm(gr)
            .relu()
    } else if cfg.image_size == 32 {
        b.conv_transpose2d(4 * g, 4, 1, 0, false)
            .group_norm(gr)
            .relu()
            .conv_transpose2d(2 * g, 4, 2, 1, false)
            .group_norm(gr)
            .relu()
            .conv_transpose2d(g, 4, 2, 1, false)
            .group_norm(gr)
            .relu()
    } else {
        b.conv_transpose2d(4 * g, 7, 1, 0, false)
            .group_norm(gr)
            .relu()
            .conv_transpose2d(2 * g, 4, 2, 1, false)
            .group_norm(gr)
            .relu()
    };
    Ok(b.conv_transpose2d(cfg.channels, 4, 2, 1, false).tanh())
}

/// DCGAN discriminator `[channels, s, s]` → one logit per image (use
/// [`super::Loss::BceWithLogits`]): strided convolutions, LeakyReLU(0.2), GroupNorm on the
/// hidden ones.
///
/// 64×64 (Opacus's `dcgan.py`, less its final Sigmoid): `Conv(c,d,4,2,1)` 32² →
/// `Conv(d,2d,4,2,1)` 16² → `Conv(2d,4d,4,2,1)` 8² → `Conv(4d,8d,4,2,1)` 4² →
/// `Conv(8d,1,4,1,0)`. 32×32: `Conv(c,d,4,2,1)` 16² → `Conv(d,2d,4,2,1)` 8² →
/// `Conv(2d,4d,4,2,1)` 4² → `Conv(4d,1,4,1,0)`. 28×28: `Conv(c,d,4,2,1)` 14² →
/// `Conv(d,2d,4,2,1)` 7² → `Conv(2d,1,7,1,0)`. Then Flatten.
pub fn dcgan_discriminator(device: &Device, cfg: &DcganConfig, seed: u64) -> Result<Sequential> {
    dcgan_discriminator_builder(cfg)?.build(device, seed)
}

/// The layers of [`dcgan_discriminator`], not yet built (see [`sample_conv_net_builder`]).
pub fn dcgan_discriminator_builder(cfg: &DcganConfig) -> Result<SequentialBuilder> {
    cfg.check()?;
    let (d, gr, s) = (cfg.ndf, cfg.groups, cfg.image_size);
    let b = Sequential::builder(&[cfg.channels, s, s])
        .conv2d(d, 4, 2, 1, false)
        .leaky_relu(0.2)
        .conv2d(2 * d, 4, 2, 1, false)
        .group_norm(gr)
        .leaky_relu(0.2);
    let b = if s == 64 {
        b.conv2d(4 * d, 4, 2, 1, false)
            .group_norm(gr)
            .leaky_relu(0.2)
            .conv2d(8 * d, 4, 2, 1, false)
            .group_norm(gr)
            .leaky_relu(0.2)
            .conv2d(1, 4, 1, 0, false)
    } else if s == 32 {
        b.conv2d(4 * d, 4, 2, 1, false)
            .group_norm(gr)
            .leaky_relu(0.2)
            .conv2d(1, 4, 1, 0, false)
    } else {
        b.conv2d(1, 7, 1, 0, false)
    };
    Ok(b.flatten())
}

/// DCGAN's initialisation (Radford, Metz & Chintala, "Unsupervised Representation Learning
/// with Deep Convolutional Generative Adversarial Networks", ICLR 2016, §4: "All weights were
/// initialized from a zero-centered Normal distribution with standard deviation 0.02"), as
/// `weights_init` of PyTorch's and Opacus's `dcgan.py`: every Conv2d, ConvTranspose2d and
/// Linear weight is redrawn from N(0, 0.02²) and its bias (if any) set to 0; GroupNorm is set
/// to PyTorch's default γ = 1, β = 0 (`dcgan.py` redraws only BatchNorm's γ, and neither model
/// here has one), so a model from [`SequentialBuilder::build_zeroed`] is fully initialised.
/// Draws from `rng` in parameter order (give it a [`crate::rng::Purpose::ModelInit`] stream).
/// Errors on a model that is not on the CPU-visible side of a [`crate::Buffer`] copy (never for
/// a valid model).
///
/// ```
/// use dpsgd::nn::models::{dcgan_generator_builder, dcgan_init, DcganConfig};
/// use dpsgd::rng::{Purpose, RunKeys};
/// let mut g = dcgan_generator_builder(&DcganConfig::default())?.build_zeroed(&dpsgd::Device::Cpu)?;
/// dcgan_init(&mut g, &mut RunKeys::seeded(1).key(Purpose::ModelInit).rng(0))?;
/// # Ok::<(), dpsgd::Error>(())
/// ```
pub fn dcgan_init(model: &mut Sequential, rng: &mut impl RandomBits) -> Result<()> {
    let mut p = model.params().to_vec()?;
    for (i, layer) in model.layers().iter().enumerate() {
        let conv = matches!(
            layer,
            Layer::Conv2d { .. } | Layer::ConvTranspose2d { .. } | Layer::Linear { .. }
        );
        let norm = matches!(layer, Layer::GroupNorm { .. });
        if !conv && !norm {
            continue;
        }
        let w = format!("{i}.weight");
        let b = format!("{i}.bias");
        for info in model.param_info() {
            if info.name == w && conv {
                for x in &mut p[info.range.clone()] {
                    *x = (0.02 * rng.next_normal_f64()) as f32;
                }
            } else if info.name == w {
                p[info.range.clone()].fill(1.0);
            } else if info.name == b {
                p[info.range.clone()].fill(0.0);
            }
        }
    }
    let device = model.device().clone();
    *model.params_mut() = crate::Buffer::from_slice(&device, &p)?;
    Ok(())
}

/// The network of PyTorch's MNIST example (`pytorch/examples`, `mnist/main.py`, class `Net`;
/// P = 1 199 882) for `[1, 28, 28]` inputs: `Conv2d(1,32,3,1)–ReLU–Conv2d(32,64,3,1)–ReLU–
/// MaxPool2d(2)–Dropout(0.25)–Flatten–Linear(9216,128)–ReLU–Dropout(0.5)–Linear(128,10)`.
/// The example ends with `log_softmax` and trains with NLL; here the output is the logits and
/// [`super::Loss::CrossEntropy`] is that same loss (log-softmax + NLL).
///
/// PyTorch twin (same `state_dict` names: `0.*`, `2.*`, `7.*`, `10.*`):
/// ```python
/// nn.Sequential(nn.Conv2d(1, 32, 3, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 1), nn.ReLU(),
///               nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(), nn.Linear(9216, 128),
///               nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))
/// ```
/// The Dropout layers are active only in a workspace set to
/// [`super::DropoutMode::Train`].
pub fn pytorch_mnist_net(device: &Device, seed: u64) -> Result<Sequential> {
    Sequential::builder(&[1, 28, 28])
        .conv2d(32, 3, 1, 0, true)
        .relu()
        .conv2d(64, 3, 1, 0, true)
        .relu()
        .max_pool2d(2, 2)
        .dropout(0.25)
        .flatten()
        .linear(128, true)
        .relu()
        .dropout(0.5)
        .linear(10, true)
        .build(device, seed)
}
