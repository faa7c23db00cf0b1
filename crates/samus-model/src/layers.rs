//! Building blocks shared by the SAMUS components, each loaded by its checkpoint
//! names with the reference's default initialisation as the hint for fresh weights.

use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Init, VarBuilder};
use samus_core::conv::conv3x3_same_nhwc_cached;
use samus_core::cpu::Isa;
use samus_core::layout::{channels_first, channels_last};
use samus_core::linear;
use samus_core::packed::{PackedCache, PackedLayer};
use samus_core::pool::max_pool2x2_nhwc;
use samus_core::{LayerNorm, LayerNorm2d};

/// Epsilon of every `LayerNorm2d` in SAM and SAMUS.
pub const LAYER_NORM_2D_EPS: f64 = 1e-6;

/// PyTorch's default initialisation of `nn.Linear` and `nn.Conv2d` weights and biases
/// (`kaiming_uniform_(a = sqrt(5))`): uniform in `+-1/sqrt(fan_in)`.
pub fn pytorch_default_init(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A fully connected layer `y = x W^T + b` over the last axis (PyTorch `nn.Linear`).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

/// How a [`Linear`] holds its weight.
#[derive(Debug, Clone)]
enum LinearWeight {
    /// The `out x in` tensor (trainable or not), with its packed form for the CPU's
    /// inference product made on first use.
    Dense { weight: Tensor, packed: PackedCache },
    /// Only the packed form ([`Linear::pack_for_inference`]): CPU inference in f32.
    Packed(Arc<PackedLayer>),
}

impl Linear {
    /// Loads `weight` (`out x in`) and, with `bias`, `bias` (`out`).
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let init = pytorch_default_init(in_dim);
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(out_dim, "bias", init)?)
        } else {
            None
        };
        Ok(Self {
            weight: LinearWeight::Dense {
                weight,
                packed: PackedCache::default(),
            },
            bias,
        })
    }

    /// The `out x in` weight; `None` once the layer keeps only its packed form.
    pub fn weight(&self) -> Option<&Tensor> {
        match &self.weight {
            LinearWeight::Dense { weight, .. } => Some(weight),
            LinearWeight::Packed(_) => None,
        }
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Packs the weight for this CPU's inference product and drops the unpacked
    /// tensor (whose memory is freed once nothing else holds it); returns the bytes
    /// of the packed form, or `None`, leaving the layer as it was, where the packed
    /// product does not apply: no packed kernel for this CPU, a weight that is not
    /// an f32 CPU tensor, or a trainable one. Afterwards the layer runs on the CPU
    /// in f32 only, without gradients.
    pub fn pack_for_inference(&mut self) -> Result<Option<usize>> {
        let LinearWeight::Dense { weight, .. } = &self.weight else {
            return Ok(None);
        };
        let packable = samus_core::packed::available()
            && weight.device().is_cpu()
            && weight.dtype() == DType::F32
            && !weight.is_variable()
            && self.bias.as_ref().is_none_or(|b| !b.is_variable());
        if !packable {
            return Ok(None);
        }
        let layer = PackedLayer::from_linear(weight, self.bias.as_ref(), Isa::selected())?;
        let bytes = layer.bytes();
        self.weight = LinearWeight::Packed(Arc::new(layer));
        Ok(Some(bytes))
    }

    /// `gelu(self(x))`, with the GELU fused into the product where it runs packed.
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense { weight, packed } => {
                linear::linear_gelu_cached(x, weight, self.bias.as_ref(), packed)
            }
            LinearWeight::Packed(layer) => linear::linear_gelu_packed(x, layer),
        }
    }

    /// `residual + self(x)`, with the product accumulating onto `residual` where it
    /// runs packed.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense { weight, packed } => {
                linear::linear_add_cached(x, weight, self.bias.as_ref(), residual, packed)
            }
            LinearWeight::Packed(layer) => linear::linear_add_packed(x, layer, residual),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense { weight, packed } => {
                linear::linear_cached(x, weight, self.bias.as_ref(), packed)
            }
            LinearWeight::Packed(layer) => linear::linear_packed(x, layer),
        }
    }
}

/// Loads an `nn.LayerNorm(dim, eps)` (weight 1, bias 0 when fresh).
pub fn layer_norm(vb: VarBuilder, dim: usize, eps: f64) -> Result<LayerNorm> {
    let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
    Ok(LayerNorm::new(weight, bias, eps))
}

/// Loads a `LayerNorm2d(dim)` (eps 1e-6; weight 1, bias 0 when fresh).
pub fn layer_norm_2d(vb: VarBuilder, dim: usize) -> Result<LayerNorm2d> {
    let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
    Ok(LayerNorm2d::new(weight, bias, LAYER_NORM_2D_EPS))
}

/// Shape and options of a square 2-D convolution.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Whether the convolution has a bias.
    pub bias: bool,
}

impl ConvSpec {
    /// A 3x3, stride 1, padding 1 convolution without bias (SAMUS's `SingleConv`).
    pub fn same_3x3(in_channels: usize, out_channels: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: 3,
            stride: 1,
            padding: 1,
            bias: false,
        }
    }

    /// A 1x1 convolution without bias.
    pub fn pointwise(in_channels: usize, out_channels: usize) -> Self {
        Self {
            kernel: 1,
            padding: 0,
            ..Self::same_3x3(in_channels, out_channels)
        }
    }
}

/// Loads an `nn.Conv2d` described by `spec`.
pub fn conv2d(vb: VarBuilder, spec: ConvSpec) -> Result<Conv2d> {
    let fan_in = spec.in_channels * spec.kernel * spec.kernel;
    let init = pytorch_default_init(fan_in);
    let weight = vb.get_with_hints(
        (
            spec.out_channels,
            spec.in_channels,
            spec.kernel,
            spec.kernel,
        ),
        "weight",
        init,
    )?;
    let bias = if spec.bias {
        Some(vb.get_with_hints(spec.out_channels, "bias", init)?)
    } else {
        None
    };
    let cfg = Conv2dConfig {
        padding: spec.padding,
        stride: spec.stride,
        ..Default::default()
    };
    Ok(Conv2d::new(weight, bias, cfg))
}

/// Loads an `nn.ConvTranspose2d(in, out, kernel, stride=kernel)` with bias.
pub fn conv_transpose_2x2(
    vb: VarBuilder,
    in_channels: usize,
    out_channels: usize,
) -> Result<ConvTranspose2d> {
    // PyTorch computes the fan-in of a transposed convolution from weight.size(1).
    let init = pytorch_default_init(out_channels * 4);
    let weight = vb.get_with_hints((in_channels, out_channels, 2, 2), "weight", init)?;
    let bias = vb.get_with_hints(out_channels, "bias", init)?;
    let cfg = ConvTranspose2dConfig {
        stride: 2,
        ..Default::default()
    };
    Ok(ConvTranspose2d::new(weight, Some(bias), cfg))
}

/// Conv2d (3x3, no bias) -> LayerNorm2d -> GELU: SAMUS's `SingleConv`, with its
/// parts at `<prefix>.0` and `<prefix>.1`.
#[derive(Debug, Clone)]
pub struct ConvNormGelu {
    conv: Conv2d,
    norm: LayerNorm2d,
    /// The kernel packed for the CPU's inference product, made on first use.
    packed: PackedCache,
}

impl ConvNormGelu {
    /// Loads the convolution from `conv_vb` and the norm from `norm_vb`.
    pub fn load(
        conv_vb: VarBuilder,
        norm_vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
    ) -> Result<Self> {
        Ok(Self {
            conv: conv2d(conv_vb, ConvSpec::same_3x3(in_channels, out_channels))?,
            norm: layer_norm_2d(norm_vb, out_channels)?,
            packed: PackedCache::default(),
        })
    }

    /// Loads a `SingleConv` whose modules are `<vb>.0` (conv) and `<vb>.1` (norm).
    pub fn load_sequential(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
    ) -> Result<Self> {
        Self::load(vb.pp("0"), vb.pp("1"), in_channels, out_channels)
    }
}

impl ConvNormGelu {
    /// Channels-last `N x H x W x C` in, `N x H x W x O` out: the layout the whole
    /// CNN branch runs in, with no copies between the three operations.
    pub fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv3x3_same_nhwc_cached(x, self.conv.weight(), Some(&self.packed))?;
        self.norm.forward_nhwc_gelu(&y)
    }
}

impl Module for ConvNormGelu {
    /// NCHW in, NCHW out (through [`ConvNormGelu::forward_nhwc`]).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        channels_first(&self.forward_nhwc(&channels_last(x)?)?)
    }
}

/// MaxPool2d(2) -> [`ConvNormGelu`]: SAMUS's `SingleDown`, stored as
/// `maxpool_conv.{1,2}`.
#[derive(Debug, Clone)]
pub struct DownConvNormGelu {
    inner: ConvNormGelu,
}

impl DownConvNormGelu {
    /// Loads a `SingleDown` at `vb` (its parameters are under `vb.maxpool_conv`).
    pub fn load(vb: VarBuilder, in_channels: usize, out_channels: usize) -> Result<Self> {
        let vb = vb.pp("maxpool_conv");
        Ok(Self {
            inner: ConvNormGelu::load(vb.pp("1"), vb.pp("2"), in_channels, out_channels)?,
        })
    }

    /// Channels-last in, channels-last out at half the resolution.
    pub fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward_nhwc(&max_pool2x2_nhwc(x)?)
    }
}

impl Module for DownConvNormGelu {
    /// NCHW in, NCHW out at half the resolution.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        channels_first(&self.forward_nhwc(&channels_last(x)?)?)
    }
}
/// SAM's `MLP`: `num_layers` linears (`layers.{i}`) with ReLU between them.
#[derive(Debug, Clone)]
pub struct StackedMlp {
    layers: Vec<Linear>,
}

impl StackedMlp {
    /// Loads `in -> hidden -> ... -> out` with `num_layers` linears.
    pub fn load(
        vb: VarBuilder,
        in_dim: usize,
        hidden: usize,
        out_dim: usize,
        num_layers: usize,
    ) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..num_layers)
            .map(|i| {
                let n_in = if i == 0 { in_dim } else { hidden };
                let n_out = if i + 1 == num_layers { out_dim } else { hidden };
                Linear::load(vb.pp(i), n_in, n_out, true)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }
}

impl Module for StackedMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if i + 1 < self.layers.len() {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// An NCHW tensor as a view of `N x HW x C` tokens (no copy).
pub(crate) fn nchw_as_tokens(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.transpose(1, 2)
}
