//! The prompt embedding generator (`prompt_generator.*`) and the dense feature
//! adapter (`feature_adapter.*`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use samus_core::layout::{channels_first, channels_last};
use samus_model::layers::{ConvNormGelu, Linear};

use crate::cross_transformer::{CrossTransformer, CROSS_TRANSFORMER_DEPTH};

/// Number of learned object tokens.
pub const NUM_OBJECT_TOKENS: usize = 50;
/// Channels of the dense feature adapter's hidden stages.
pub const FEATURE_ADAPTER_HIDDEN: usize = 64;

/// What the generator makes of an image embedding.
#[derive(Debug, Clone)]
pub struct GeneratedPrompts {
    /// The image embedding after attending to the tokens, `B x 256 x G x G`.
    pub image_embeddings: Tensor,
    /// The sparse prompt: the first object token, `B x 1 x 256`.
    pub sparse: Tensor,
    /// The other updated tokens, `B x 54 x 256`.
    pub tokens: Tensor,
}

/// Object tokens that attend to the decoder's output tokens and then, together with
/// them, to the image embedding.
#[derive(Debug, Clone)]
pub struct PromptGenerator {
    object_token: Tensor,
    cross_token_token: CrossTransformer,
    token_proj: Linear,
    cross_image_token: CrossTransformer,
}

impl PromptGenerator {
    /// Loads the generator for tokens of width `dim` (256).
    pub fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            object_token: vb.get_with_hints(
                (1, NUM_OBJECT_TOKENS, dim),
                "object_token",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )?,
            cross_token_token: CrossTransformer::load(
                vb.pp("cross_token_token"),
                dim,
                CROSS_TRANSFORMER_DEPTH,
            )?,
            token_proj: Linear::load(vb.pp("token_proj"), dim, dim, true)?,
            cross_image_token: CrossTransformer::load(
                vb.pp("cross_image_token"),
                dim,
                CROSS_TRANSFORMER_DEPTH,
            )?,
        })
    }

    /// Image embeddings `B x C x G x G` and the decoder's output tokens `5 x C` (or
    /// `B x 5 x C`) to prompts.
    pub fn forward(
        &self,
        image_embeddings: &Tensor,
        output_tokens: &Tensor,
    ) -> Result<GeneratedPrompts> {
        let (b, c, h, w) = image_embeddings.dims4()?;
        let output_tokens = match output_tokens.rank() {
            2 => output_tokens
                .unsqueeze(0)?
                .broadcast_as((b, output_tokens.dim(0)?, c))?
                .contiguous()?,
            _ => output_tokens.clone(),
        };
        let objects = self
            .object_token
            .broadcast_as((b, NUM_OBJECT_TOKENS, c))?
            .contiguous()?;
        // The token stream of the first transformer is unused, as in the reference.
        let (attended, _) = self.cross_token_token.forward(&objects, &output_tokens)?;
        let objects = self
            .token_proj
            .forward(&attended)?
            .broadcast_add(&self.object_token)?;
        let tokens = Tensor::cat(&[&objects, &output_tokens], 1)?;
        let image_tokens = image_embeddings
            .flatten_from(2)?
            .transpose(1, 2)?
            .contiguous()?;
        let (image_tokens, tokens) = self.cross_image_token.forward(&image_tokens, &tokens)?;
        let image_embeddings = image_tokens.transpose(1, 2)?.reshape((b, c, h, w))?;
        let n = tokens.dim(1)?;
        Ok(GeneratedPrompts {
            image_embeddings,
            sparse: tokens.narrow(1, 0, 1)?,
            tokens: tokens.narrow(1, 1, n - 1)?,
        })
    }
}

/// The dense feature adapter: 4 x (Conv 3x3, LayerNorm2d, GELU), 256 -> 64 -> 64 ->
/// 64 -> 256 (`feature_adapter.{0,1}`, `{3,4}`, `{6,7}`, `{9,10}`).
#[derive(Debug, Clone)]
pub struct DenseFeatureAdapter {
    stages: Vec<ConvNormGelu>,
}

impl DenseFeatureAdapter {
    /// Loads the adapter for `dim` (256) channels.
    pub fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        let hidden = FEATURE_ADAPTER_HIDDEN;
        let widths = [
            (dim, hidden),
            (hidden, hidden),
            (hidden, hidden),
            (hidden, dim),
        ];
        let stages = widths
            .iter()
            .enumerate()
            .map(|(i, &(cin, cout))| ConvNormGelu::load(vb.pp(3 * i), vb.pp(3 * i + 1), cin, cout))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { stages })
    }
}

impl Module for DenseFeatureAdapter {
    /// NCHW in, NCHW out; the stages run channels-last.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = channels_last(x)?;
        for stage in &self.stages {
            x = stage.forward_nhwc(&x)?;
        }
        channels_first(&x)
    }
}
