//! The SAMUS image encoder (`image_encoder.*`): a SAM ViT with a parallel CNN branch,
//! cross-branch attention and adapters, on 256x256 inputs.
//!
//! Shapes for ViT-B (D = 768, G = 32): image `B x 3 x 256 x 256` (grey images are
//! repeated to 3 channels) -> patch tokens and CNN tokens BHWC `B x 32 x 32 x D` ->
//! blocks -> neck -> image embedding `B x 256 x 32 x 32`.

mod adapter;
mod attention;
mod block;
mod cnn_branch;
mod cross_branch;
mod neck;
mod patch_embed;
mod position_adapter;

// The parts that the benchmarks and profiling examples (other crates) time one by
// one are public; the rest is internal to the encoder.
pub(crate) use adapter::FeatureAdapter;
pub use block::EncoderBlock;
pub use cnn_branch::CnnEmbed;
pub use cross_branch::CrossBranchAttention;
pub use neck::Neck;
pub use patch_embed::PatchEmbed;
pub(crate) use position_adapter::PositionAdapter;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::{SamusConfig, SAM_POS_EMBED_GRID};
use crate::samus::PackedWeights;

/// Weight of the CNN tokens added to the ViT tokens before the neck.
pub const CNN_SKIP_SCALE: f64 = 0.5;

/// Intermediate activations of one encoder pass, for inspection and parity tests.
#[derive(Debug, Clone, Default)]
pub struct EncoderTrace {
    /// CNN branch output, BHWC.
    pub cnn_embed: Option<Tensor>,
    /// Patch embedding output, BHWC.
    pub patch_embed: Option<Tensor>,
    /// After the input adapter, BHWC.
    pub input_adapter: Option<Tensor>,
    /// `(x, cnnx)` after each block, BHWC.
    pub blocks: Vec<(Tensor, Tensor)>,
}

/// The image encoder.
#[derive(Debug, Clone)]
pub struct ImageEncoder {
    patch_embed: PatchEmbed,
    cnn_embed: CnnEmbed,
    input_adapter: FeatureAdapter,
    pos_embed: Tensor,
    position_adapter: PositionAdapter,
    /// The position adapter's output, `1 x G x G x D`, computed once at load time
    /// (and again on every pass when its weights are trainable).
    position: Tensor,
    blocks: Vec<EncoderBlock>,
    neck: Neck,
}

impl ImageEncoder {
    /// Loads the encoder of `cfg` from `vb` (the `image_encoder` prefix).
    pub fn load(vb: VarBuilder, cfg: &SamusConfig) -> Result<Self> {
        let d = cfg.embed_dim;
        // The reference creates pos_embed with zeros (SAM checkpoints fill it).
        let pos_embed = vb.get_with_hints(
            (1, SAM_POS_EMBED_GRID, SAM_POS_EMBED_GRID, d),
            "pos_embed",
            Init::Const(0.0),
        )?;
        let position_adapter = PositionAdapter::load(vb.pp("post_pos_embed"), cfg)?;
        let position = position_adapter.forward(&pos_embed)?;
        let blocks = (0..cfg.depth)
            .map(|i| EncoderBlock::load(vb.pp("blocks").pp(i), cfg, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed: PatchEmbed::load(vb.pp("patch_embed"), cfg)?,
            cnn_embed: CnnEmbed::load(vb.pp("cnn_embed"), cfg)?,
            input_adapter: FeatureAdapter::load(vb.pp("input_Adapter"), d, true)?,
            pos_embed,
            position_adapter,
            position,
            blocks,
            neck: Neck::load(vb.pp("neck"), d, cfg.prompt_embed_dim)?,
        })
    }

    /// Packs every linear layer of the encoder (the blocks' attention and MLP
    /// products and the SAMUS adapters: nearly all of its weights) for this CPU's
    /// inference product and drops their unpacked copies; see
    /// [`Samus::pack_for_inference`](crate::Samus::pack_for_inference).
    pub fn pack_for_inference(&mut self) -> Result<PackedWeights> {
        let mut packed = PackedWeights::default();
        let adapter = self.input_adapter.linears_mut();
        let blocks = self.blocks.iter_mut().flat_map(EncoderBlock::linears_mut);
        for layer in adapter.into_iter().chain(blocks) {
            if let Some(bytes) = layer.pack_for_inference()? {
                packed.layers += 1;
                packed.bytes += bytes;
            }
        }
        Ok(packed)
    }

    /// The position adapter's output `1 x G x G x D` (cached).
    pub fn position_embedding(&self) -> &Tensor {
        &self.position
    }

    /// Recomputes the position adapter's output from `pos_embed` (for training, where
    /// the adapter's weights change).
    pub fn compute_position_embedding(&self) -> Result<Tensor> {
        self.position_adapter.forward(&self.pos_embed)
    }

    /// The encoder blocks.
    pub fn blocks(&self) -> &[EncoderBlock] {
        &self.blocks
    }

    /// Image `B x C x S x S` (C = 1 or 3, values in [0, 1]) to image embeddings
    /// `B x 256 x G x G`.
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        self.run(image, None)
    }

    /// [`ImageEncoder::forward`] that also returns the intermediate activations.
    pub fn forward_traced(&self, image: &Tensor) -> Result<(Tensor, EncoderTrace)> {
        let mut trace = EncoderTrace::default();
        let out = self.run(image, Some(&mut trace))?;
        Ok((out, trace))
    }

    fn run(&self, image: &Tensor, mut trace: Option<&mut EncoderTrace>) -> Result<Tensor> {
        let (_, channels, _, _) = image.dims4()?;
        let image = match channels {
            1 => image.repeat((1, 3, 1, 1))?,
            3 => image.clone(),
            c => candle_core::bail!("the image encoder takes 1 or 3 channels, got {c}"),
        };
        let mut cnnx = self.cnn_embed.forward(&image)?;
        let patches = self.patch_embed.forward(&image)?;
        let mut x = self.input_adapter.forward(&patches)?;
        if let Some(t) = trace.as_deref_mut() {
            t.cnn_embed = Some(cnnx.clone());
            t.patch_embed = Some(patches);
            t.input_adapter = Some(x.clone());
        }
        // With trainable position-adapter weights the cached output would go stale as
        // they change, so it is recomputed on every pass.
        let position = if self.position.track_op() {
            self.compute_position_embedding()?
        } else {
            self.position.clone()
        };
        x = x.broadcast_add(&position)?;
        for block in &self.blocks {
            (x, cnnx) = block.forward(&x, &cnnx)?;
            if let Some(t) = trace.as_deref_mut() {
                t.blocks.push((x.clone(), cnnx.clone()));
            }
        }
        let x = (x + (cnnx * CNN_SKIP_SCALE)?)?;
        self.neck.forward_nhwc(&x)
    }
}
