//! Model configuration: [`SamusConfig`] with the ViT-B/L/H presets and JSON loading.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Number of channels of the image embedding, the prompt embeddings and the mask
/// decoder in SAM.
pub const SAM_PROMPT_EMBED_DIM: usize = 256;
/// Side of SAM's square patch-embedding kernel; SAMUS keeps the kernel and uses it
/// with a stride of `patch_size`.
pub const SAM_PATCH_KERNEL: usize = 16;
/// Grid side of SAM's absolute position embedding (1024 / 16), which the SAMUS
/// position adapter shrinks to the SAMUS grid.
pub const SAM_POS_EMBED_GRID: usize = 64;

/// The configuration of a SAMUS model: the image encoder's size and the input frame.
///
/// Deserialises from a JSON object with the keys below; unknown keys (such as `seed`)
/// are ignored. `window_size`, `img_size`, `patch_size`, `prompt_embed_dim`,
/// `mlp_ratio` and `layer_norm_eps` default to the SAMUS values.
///
/// ```
/// let cfg = samus_model::SamusConfig::vit_b();
/// assert_eq!(cfg.grid_size(), 32);
/// let tiny: samus_model::SamusConfig = serde_json::from_str(
///     r#"{"embed_dim": 128, "depth": 4, "num_heads": 4, "global_attn_indexes": [1, 3]}"#,
/// ).unwrap();
/// tiny.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamusConfig {
    /// Width D of the ViT tokens.
    pub embed_dim: usize,
    /// Number of ViT blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// Indexes of the blocks with global attention (and the SAMUS adapters).
    pub global_attn_indexes: Vec<usize>,
    /// Side of the attention windows of the other blocks.
    #[serde(default = "defaults::window_size")]
    pub window_size: usize,
    /// Side of the square input image.
    #[serde(default = "defaults::img_size")]
    pub img_size: usize,
    /// Stride of the patch embedding: the token grid is `img_size / patch_size`.
    #[serde(default = "defaults::patch_size")]
    pub patch_size: usize,
    /// Channels of the prompt embeddings and the mask decoder.
    #[serde(default = "defaults::prompt_embed_dim")]
    pub prompt_embed_dim: usize,
    /// Hidden width of the ViT MLPs relative to `embed_dim`.
    #[serde(default = "defaults::mlp_ratio")]
    pub mlp_ratio: f64,
    /// Epsilon of the ViT LayerNorms.
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
}

mod defaults {
    pub fn window_size() -> usize {
        14
    }
    pub fn img_size() -> usize {
        256
    }
    pub fn patch_size() -> usize {
        8
    }
    pub fn prompt_embed_dim() -> usize {
        super::SAM_PROMPT_EMBED_DIM
    }
    pub fn mlp_ratio() -> f64 {
        4.0
    }
    pub fn layer_norm_eps() -> f64 {
        1e-6
    }
}

impl SamusConfig {
    fn with_encoder(embed_dim: usize, depth: usize, num_heads: usize, global: &[usize]) -> Self {
        Self {
            embed_dim,
            depth,
            num_heads,
            global_attn_indexes: global.to_vec(),
            window_size: defaults::window_size(),
            img_size: defaults::img_size(),
            patch_size: defaults::patch_size(),
            prompt_embed_dim: defaults::prompt_embed_dim(),
            mlp_ratio: defaults::mlp_ratio(),
            layer_norm_eps: defaults::layer_norm_eps(),
        }
    }

    /// SAMUS on SAM ViT-B (D 768, 12 blocks, 12 heads, global blocks 2, 5, 8, 11).
    pub fn vit_b() -> Self {
        Self::with_encoder(768, 12, 12, &[2, 5, 8, 11])
    }

    /// SAMUS on SAM ViT-L (D 1024, 24 blocks, 16 heads, global blocks 5, 11, 17, 23).
    pub fn vit_l() -> Self {
        Self::with_encoder(1024, 24, 16, &[5, 11, 17, 23])
    }

    /// SAMUS on SAM ViT-H (D 1280, 32 blocks, 16 heads, global blocks 7, 15, 23, 31).
    pub fn vit_h() -> Self {
        Self::with_encoder(1280, 32, 16, &[7, 15, 23, 31])
    }

    /// A small model (D 128, 4 blocks, 4 heads, global blocks 1 and 3), the size of
    /// the parity fixtures: for demos and tests, not for real segmentation.
    pub fn tiny() -> Self {
        Self::with_encoder(128, 4, 4, &[1, 3])
    }

    /// The names accepted by [`SamusConfig::preset`].
    pub const PRESETS: [&'static str; 4] = ["vit_b", "vit_l", "vit_h", "tiny"];

    /// A preset by name: `vit_b`, `vit_l`, `vit_h` or `tiny`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "vit_b" => Some(Self::vit_b()),
            "vit_l" => Some(Self::vit_l()),
            "vit_h" => Some(Self::vit_h()),
            "tiny" => Some(Self::tiny()),
            _ => None,
        }
    }

    /// Parses a JSON configuration: either the configuration object itself or an
    /// object holding it under `"config"` (as the fixtures' `samus_tiny.json`).
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::ConfigSource {
                path: None,
                message: format!("invalid JSON: {e}"),
            })?;
        let object = match value.get("config") {
            Some(inner) if value.get("embed_dim").is_none() => inner.clone(),
            _ => value,
        };
        let cfg: Self = serde_json::from_value(object).map_err(|e| Error::ConfigSource {
            path: None,
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a JSON configuration file (see [`SamusConfig::from_json_str`]).
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text).map_err(|e| match e {
            Error::ConfigSource {
                path: None,
                message,
            } => Error::ConfigSource {
                path: Some(path.to_path_buf()),
                message,
            },
            Error::Config { message, .. } => Error::ConfigSource {
                path: Some(path.to_path_buf()),
                message,
            },
            other => other,
        })
    }

    /// A preset name or the path of a JSON file.
    pub fn from_name_or_path(spec: &str) -> Result<Self> {
        if let Some(cfg) = Self::preset(spec) {
            return Ok(cfg);
        }
        let path = Path::new(spec);
        if path.exists() {
            return Self::from_json_file(path);
        }
        Err(Error::ConfigSource {
            path: None,
            message: format!(
                "`{spec}` is neither a preset ({}) nor an existing JSON file",
                Self::PRESETS.join(", ")
            ),
        })
    }

    /// Side of the token grid and of the image embedding: `img_size / patch_size`.
    pub fn grid_size(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Channels per attention head.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Hidden width of the ViT MLPs.
    pub fn mlp_dim(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Whether block `index` uses global attention.
    pub fn is_global(&self, index: usize) -> bool {
        self.global_attn_indexes.contains(&index)
    }

    /// Side of the low-resolution mask logits (4 x the grid).
    pub fn low_res_size(&self) -> usize {
        4 * self.grid_size()
    }

    /// Largest values [`SamusConfig::validate`] accepts (ViT-H is 1280 wide, 32 deep,
    /// 16 heads): far above any real model, low enough that a typo cannot ask for
    /// terabytes.
    pub const LIMITS: ConfigLimits = ConfigLimits {
        embed_dim: 8192,
        depth: 256,
        num_heads: 256,
        img_size: 4096,
        window_size: 256,
        prompt_embed_dim: 4096,
        mlp_ratio: 64.0,
    };

    /// Checks that the numbers describe a buildable model.
    pub fn validate(&self) -> Result<()> {
        let fail = |field: &'static str, message: String| Err(Error::Config { field, message });
        let limits = Self::LIMITS;
        for (field, value, max) in [
            ("embed_dim", self.embed_dim, limits.embed_dim),
            ("depth", self.depth, limits.depth),
            ("num_heads", self.num_heads, limits.num_heads),
            ("img_size", self.img_size, limits.img_size),
            ("window_size", self.window_size, limits.window_size),
            (
                "prompt_embed_dim",
                self.prompt_embed_dim,
                limits.prompt_embed_dim,
            ),
        ] {
            if value > max {
                return fail(
                    field,
                    format!("{field} {value} is larger than the limit {max}"),
                );
            }
        }
        if self.mlp_ratio > limits.mlp_ratio {
            return fail(
                "mlp_ratio",
                format!(
                    "mlp_ratio {} is larger than the limit {}",
                    self.mlp_ratio, limits.mlp_ratio
                ),
            );
        }
        if self.embed_dim < 4 {
            return fail(
                "embed_dim",
                format!("embed_dim must be at least 4, got {}", self.embed_dim),
            );
        }
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return fail(
                "num_heads",
                format!(
                    "num_heads ({}) must divide embed_dim ({})",
                    self.num_heads, self.embed_dim
                ),
            );
        }
        if self.depth == 0 {
            return fail("depth", "depth must be positive".into());
        }
        if let Some(bad) = self.global_attn_indexes.iter().find(|&&i| i >= self.depth) {
            return fail(
                "global_attn_indexes",
                format!(
                    "global_attn_indexes contains {bad}, but depth is {}",
                    self.depth
                ),
            );
        }
        if self.window_size == 0 {
            return fail("window_size", "window_size must be positive".into());
        }
        if !self.patch_size.is_power_of_two() || self.patch_size < 2 {
            return fail(
                "patch_size",
                format!(
                    "patch_size must be a power of two of at least 2, got {}",
                    self.patch_size
                ),
            );
        }
        if self.img_size == 0 || !self.img_size.is_multiple_of(self.patch_size) {
            return fail(
                "img_size",
                format!(
                    "img_size ({}) must be a positive multiple of patch_size ({})",
                    self.img_size, self.patch_size
                ),
            );
        }
        let grid = self.grid_size();
        if grid > SAM_POS_EMBED_GRID
            || !SAM_POS_EMBED_GRID.is_multiple_of(grid)
            || !(SAM_POS_EMBED_GRID / grid).is_power_of_two()
        {
            return fail(
                "img_size",
                format!(
                "the token grid img_size / patch_size = {grid} must divide SAM's {SAM_POS_EMBED_GRID}x{SAM_POS_EMBED_GRID} position grid by a power of two"
            ));
        }
        if self.prompt_embed_dim == 0 || !self.prompt_embed_dim.is_multiple_of(2) {
            return fail(
                "prompt_embed_dim",
                format!(
                    "prompt_embed_dim must be a positive even number, got {}",
                    self.prompt_embed_dim
                ),
            );
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0 && self.mlp_dim() > 0) {
            return fail(
                "mlp_ratio",
                format!("mlp_ratio must be positive, got {}", self.mlp_ratio),
            );
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return fail(
                "layer_norm_eps",
                format!(
                    "layer_norm_eps must be positive, got {}",
                    self.layer_norm_eps
                ),
            );
        }
        Ok(())
    }
}

/// The largest configuration values accepted ([`SamusConfig::LIMITS`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfigLimits {
    /// Largest `embed_dim`.
    pub embed_dim: usize,
    /// Largest `depth`.
    pub depth: usize,
    /// Largest `num_heads`.
    pub num_heads: usize,
    /// Largest `img_size`.
    pub img_size: usize,
    /// Largest `window_size`.
    pub window_size: usize,
    /// Largest `prompt_embed_dim`.
    pub prompt_embed_dim: usize,
    /// Largest `mlp_ratio`.
    pub mlp_ratio: f64,
}

impl Default for SamusConfig {
    /// ViT-B, the configuration of the released SAMUS weights.
    fn default() -> Self {
        Self::vit_b()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for name in SamusConfig::PRESETS {
            SamusConfig::preset(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn wrapped_config_and_unknown_keys() {
        let cfg = SamusConfig::from_json_str(
            r#"{"config": {"embed_dim": 96, "depth": 3, "num_heads": 3, "global_attn_indexes": [2], "seed": 7}, "trainable": []}"#,
        )
        .unwrap();
        assert_eq!((cfg.embed_dim, cfg.depth, cfg.num_heads), (96, 3, 3));
        assert_eq!(cfg.window_size, 14);
    }

    #[test]
    fn bad_values_are_named() {
        let err = SamusConfig::from_json_str(
            r#"{"embed_dim": 100, "depth": 2, "num_heads": 3, "global_attn_indexes": []}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("num_heads (3) must divide embed_dim (100)"),
            "{err}"
        );
        let err = SamusConfig::from_json_str(
            r#"{"embed_dim": "wide", "depth": 2, "num_heads": 2, "global_attn_indexes": []}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("wide"), "{err}");
        let err = SamusConfig::from_json_str(
            r#"{"embed_dim": 64, "depth": 2, "num_heads": 2, "global_attn_indexes": [5]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("global_attn_indexes contains 5"), "{err}");
    }
}
