#!/usr/bin/env python3
"""SAMUS forward pass in PyTorch: the benchmark peer of the Rust implementation.

This is an independent re-implementation of SAMUS inference (image encoder with the
CNN branch, cross-branch attention and adapters; SAM's prompt encoder and mask
decoder), written from our model description (SAMUS.md) and our Rust crates
(`samus-model`, `samus-core`), not taken from the reference repositories. Its only
purpose is to give the Rust code an honest, idiomatic CPU PyTorch peer: inference
mode, channels-last convolutions and `F.scaled_dot_product_attention` (SAM's
decomposed relative-position bias is passed as an additive float mask).

Tensor names are the reference `state_dict` names, so the same safetensors file loads
into both implementations. `cargo xtask bench-compare` runs

    samus bench --config vit_b --random-weights --save-weights W --write-io IO
    python bench/pytorch_reference.py --config vit_b --weights W --io IO --json

and compares the two timings; `max_rel_error` in the JSON (present when IO holds the
Rust `low_res_logits`) checks that both computed the same thing. The IO file holds
`image` (B x 1 x 256 x 256 in [0, 1]), `point_coords` (B x 1 x 2, x then y, 256
frame), `point_labels` (B x 1, int64) and optionally `low_res_logits` (B x 1 x 128 x
128). The prompt is that one point plus SAM's padding point, single-mask output.

`--train` times training steps instead (`cargo xtask bench-train`): every
parameter trainable, Adam, the SPEC's loss (0.2 BCE with pos_weight 2 + 0.8 Dice) on
the 128 x 128 logits of one fixed batch. Its IO file (from `samus bench --train
--write-io`) holds `images`, `low_targets`, `point_coords` and `point_labels`; the
JSON gives `train_step_median_s` and the losses of the first two steps
(`first_loss` before any update, `second_loss` after one), which the same weights
and batch make comparable with the Rust ones.

`--check-fixtures DIR` checks this file against the parity fixtures (tiny model).
Needs only torch, safetensors and numpy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

SAM_PATCH_KERNEL = 16  # SAM's patch kernel, used with stride patch_size
SAM_POS_EMBED_GRID = 64  # SAM's 64x64 absolute position embedding
CNN_BASE_CHANNELS = 64  # first CNN-branch stage; doubled per down stage, last -> D
ADAPTER_RATIO = 0.25  # feature-adapter bottleneck width / input width
MLP_ADAPTER_SCALE = 0.5  # weight of the MLP adapter in global blocks
CNN_SKIP_SCALE = 0.5  # weight of the CNN tokens added before the neck
LN2D_EPS = 1e-6  # every LayerNorm2d
DECODER_LN_EPS = 1e-5  # the two-way transformer's LayerNorms
NUM_MASK_TOKENS = 4
PROMPTS_PER_IMAGE = 10  # decoder timing: prompts on one cached embedding


# --------------------------------------------------------------------------- config
@dataclasses.dataclass
class SamusConfig:
    """Size of a SAMUS model; defaults and presets mirror `config.rs`."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    img_size: int = 256
    patch_size: int = 8
    prompt_embed_dim: int = 256
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6

    PRESETS = {
        "vit_b": (768, 12, 12, (2, 5, 8, 11)),
        "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
        "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
        "tiny": (128, 4, 4, (1, 3)),
    }

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @classmethod
    def from_name_or_path(cls, spec: str) -> "SamusConfig":
        """A preset name (vit_b, vit_l, vit_h, tiny) or a JSON file holding the
        configuration object, or {"config": {...}} as the fixtures' samus_tiny.json."""
        if spec in cls.PRESETS:
            d, depth, heads, glob = cls.PRESETS[spec]
            cfg = cls(d, depth, heads, glob)
        else:
            path = Path(spec)
            if not path.is_file():
                raise SystemExit(f"--config {spec!r} is neither a preset "
                                 f"({', '.join(cls.PRESETS)}) nor a JSON file")
            obj = json.loads(path.read_text())
            if "config" in obj and "embed_dim" not in obj:
                obj = obj["config"]
            names = {f.name for f in dataclasses.fields(cls)}
            kwargs = {k: v for k, v in obj.items() if k in names}  # unknown keys ignored
            kwargs["global_attn_indexes"] = tuple(kwargs.get("global_attn_indexes", ()))
            try:
                cfg = cls(**kwargs)
            except TypeError as e:  # a required key is missing
                raise SystemExit(f"{spec}: {e}") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        problems = []
        if self.embed_dim % self.num_heads:
            problems.append(f"num_heads ({self.num_heads}) must divide embed_dim ({self.embed_dim})")
        if any(i >= self.depth for i in self.global_attn_indexes):
            problems.append(f"global_attn_indexes {self.global_attn_indexes} exceed depth {self.depth}")
        if self.patch_size < 2 or self.patch_size & (self.patch_size - 1):
            problems.append(f"patch_size must be a power of two >= 2, got {self.patch_size}")
        if self.img_size % self.patch_size:
            problems.append("img_size must be a multiple of patch_size")
        grid = max(self.grid, 1)
        ratio = SAM_POS_EMBED_GRID // grid
        if grid > SAM_POS_EMBED_GRID or SAM_POS_EMBED_GRID % grid or ratio & (ratio - 1):
            problems.append(f"grid {self.grid} must divide 64 by a power of two")
        if problems:
            raise SystemExit("invalid config: " + "; ".join(problems))


# ------------------------------------------------------------------ shared layers
class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor (runs channels-last)."""

    def __init__(self, channels: int, eps: float = LN2D_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def conv_norm_gelu(cin: int, cout: int) -> list[nn.Module]:
    """SAMUS's SingleConv: Conv 3x3 (no bias) -> LayerNorm2d -> GELU."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), LayerNorm2d(cout), nn.GELU()]


class SingleConv(nn.Module):
    """`<name>.conv.{0,1}`: Conv 3x3 -> LN2d -> GELU, BHWC in and out."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(*conv_norm_gelu(cin, cout))

    def forward(self, x_bhwc: Tensor) -> Tensor:
        return self.conv(x_bhwc.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SingleDown(nn.Module):
    """`<name>.maxpool_conv.{1,2}`: MaxPool 2 -> Conv 3x3 -> LN2d -> GELU, BHWC in/out."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), *conv_norm_gelu(cin, cout))

    def forward(self, x_bhwc: Tensor) -> Tensor:
        return self.maxpool_conv(x_bhwc.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class FeatureAdapter(nn.Module):
    """`D_fc2(GELU(D_fc1(x)))`, D -> D/4 -> D, optionally plus x."""

    def __init__(self, dim: int, skip: bool):
        super().__init__()
        hidden = int(dim * ADAPTER_RATIO)
        self.D_fc1 = nn.Linear(dim, hidden)
        self.D_fc2 = nn.Linear(hidden, dim)
        self.skip = skip

    def forward(self, x: Tensor) -> Tensor:
        y = self.D_fc2(F.gelu(self.D_fc1(x)))
        return x + y if self.skip else y


class StackedMlp(nn.Module):
    """SAM's MLP: `layers.{i}` linears with ReLU between them."""

    def __init__(self, din: int, hidden: int, dout: int, num_layers: int):
        super().__init__()
        dims = [din] + [hidden] * (num_layers - 1) + [dout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = F.relu(x)
        return x


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, H*Dh) -> (B, H, N, Dh)."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, Dh) -> (B, N, H*Dh)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


# ----------------------------------------------------------------- image encoder
def gather_rel_pos(size: int, rel_pos: Tensor) -> Tensor:
    """Relative-position table for every (query, key) pair along one axis of a
    `size`-long grid: (size, size, C), entry [q, k] = rel_pos[q - k + size - 1]. A table
    of another length would first be resampled linearly (align_corners=False), as SAM
    does; the strict shape check at load time means SAMUS tables never need it."""
    length = 2 * size - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(rel_pos.t().unsqueeze(0), size=length, mode="linear",
                                align_corners=False)[0].t()
    idx = torch.arange(size)[:, None] - torch.arange(size)[None, :] + size - 1
    return rel_pos[idx].contiguous()


class EncoderAttention(nn.Module):
    """Self-attention over a side x side grid with SAM's decomposed rel-pos bias."""

    def __init__(self, dim: int, heads: int, side: int):
        super().__init__()
        head_dim = dim // heads
        self.heads, self.side = heads, side
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * side - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * side - 1, head_dim))
        self.register_buffer("rh", torch.empty(0), persistent=False)
        self.register_buffer("rw", torch.empty(0), persistent=False)

    def prepare(self) -> None:
        """Gathers the (side, side, Dh) tables once the weights are loaded."""
        self.rh = gather_rel_pos(self.side, self.rel_pos_h)
        self.rw = gather_rel_pos(self.side, self.rel_pos_w)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, Dh)
        # bias[q, (kh, kw)] = <q, Rh[qh, kh]> + <q, Rw[qw, kw]>, from the unscaled q.
        rq = q.reshape(b, self.heads, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", rq, self.rh).contiguous()
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", rq, self.rw).contiguous()
        # Contiguous terms make the broadcast sum come out contiguous: the view is free.
        bias = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).view(b, self.heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(merge_heads(out).view(b, h, w, c))


class CrossBranchAttention(nn.Module):
    """`Space_Adapter`: ViT tokens (queries) attend to CNN tokens (keys, values)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor, ctx: Tensor) -> Tensor:
        b, h, w, c = x.shape
        q = split_heads(self.q(x).view(b, h * w, c), self.heads)
        k = split_heads(self.k(ctx).view(b, -1, c), self.heads)
        v = split_heads(self.v(ctx).view(b, -1, c), self.heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(merge_heads(out).view(b, h, w, c))


class EncoderMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class ParaBlock(nn.Module):
    """Encoder block `blocks.{i}`: windowed SAM block, or global block with adapters."""

    def __init__(self, cfg: SamusConfig, index: int):
        super().__init__()
        d = cfg.embed_dim
        self.is_global = index in cfg.global_attn_indexes
        self.window = 0 if self.is_global else cfg.window_size
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.attn = EncoderAttention(d, cfg.num_heads, cfg.grid if self.is_global else cfg.window_size)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = EncoderMlp(d, cfg.mlp_dim)
        if self.is_global:
            self.Space_Adapter = CrossBranchAttention(d, cfg.num_heads)
            self.refine_Adapter = SingleConv(d, d)
            self.MLP_Adapter = FeatureAdapter(d, skip=False)

    def _window_attention(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        ws = self.window
        ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        win = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)
        out = self.attn(win)
        out = out.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        return out[:, :h, :w, :] if (ph or pw) else out

    def forward(self, x: Tensor, cnnx: Tensor) -> tuple[Tensor, Tensor]:
        shortcut = x
        x = self.norm1(x)
        if self.is_global:
            x = x + self.Space_Adapter(x, cnnx)
            cnnx = self.refine_Adapter(cnnx)
            x = self.attn(x)
        else:
            x = self._window_attention(x)
        x = shortcut + x
        xn = self.norm2(x)
        x = x + self.mlp(xn)
        if self.is_global:
            x = x + MLP_ADAPTER_SCALE * self.MLP_Adapter(xn)
        return x, cnnx


class CnnEmbed(nn.Module):
    """`cnn_embed`: inc (3 -> 64) then log2(patch) down stages (64 -> 128 -> ... -> D)."""

    def __init__(self, cfg: SamusConfig):
        super().__init__()
        self.inc = SingleConv(3, CNN_BASE_CHANNELS)
        stages = cfg.patch_size.bit_length() - 1
        chans = [CNN_BASE_CHANNELS * 2 ** i for i in range(stages)] + [cfg.embed_dim]
        self.downs = nn.ModuleList(SingleDown(a, b) for a, b in zip(chans[:-1], chans[1:]))

    def forward(self, image_bhwc: Tensor) -> Tensor:
        x = self.inc(image_bhwc)
        for down in self.downs:
            x = down(x)
        return x


class PostPosEmbed(nn.Module):
    """`post_pos_embed`: log2(64 / G) SingleDown stages on SAM's pos_embed."""

    def __init__(self, cfg: SamusConfig):
        super().__init__()
        stages = (SAM_POS_EMBED_GRID // cfg.grid).bit_length() - 1
        self.downs = nn.ModuleList(SingleDown(cfg.embed_dim, cfg.embed_dim) for _ in range(stages))

    def forward(self, pos_bhwc: Tensor) -> Tensor:
        for down in self.downs:
            pos_bhwc = down(pos_bhwc)
        return pos_bhwc


class PatchEmbed(nn.Module):
    """Bilinear resize to (G-1)*patch + 16 (264), then Conv(3, D, 16, stride patch)."""

    def __init__(self, cfg: SamusConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, SAM_PATCH_KERNEL, stride=cfg.patch_size)
        self.resized = (cfg.grid - 1) * cfg.patch_size + SAM_PATCH_KERNEL

    def forward(self, image: Tensor) -> Tensor:
        x = F.interpolate(image, size=(self.resized, self.resized), mode="bilinear", align_corners=False)
        return self.proj(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)


class ImageEncoder(nn.Module):
    """`image_encoder`: B x 1|3 x S x S in [0, 1] -> B x 256 x G x G embeddings."""

    def __init__(self, cfg: SamusConfig):
        super().__init__()
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, SAM_POS_EMBED_GRID, SAM_POS_EMBED_GRID, d))
        self.post_pos_embed = PostPosEmbed(cfg)
        self.cnn_embed = CnnEmbed(cfg)
        self.input_Adapter = FeatureAdapter(d, skip=True)
        self.blocks = nn.ModuleList(ParaBlock(cfg, i) for i in range(cfg.depth))
        p = cfg.prompt_embed_dim
        self.neck = nn.Sequential(nn.Conv2d(d, p, 1, bias=False), LayerNorm2d(p),
                                  nn.Conv2d(p, p, 3, padding=1, bias=False), LayerNorm2d(p))
        self.register_buffer("position", torch.empty(0), persistent=False)

    def prepare(self) -> None:
        """The position adapter does not depend on the image: run it once."""
        self.position = self.post_pos_embed(self.pos_embed).contiguous()
        for block in self.blocks:
            block.attn.prepare()

    def forward(self, image: Tensor) -> Tensor:
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        cnnx = self.cnn_embed(image.permute(0, 2, 3, 1).contiguous())
        x = self.input_Adapter(self.patch_embed(image)) + self.position
        for block in self.blocks:
            x, cnnx = block(x, cnnx)
        x = x + CNN_SKIP_SCALE * cnnx
        return self.neck(x.permute(0, 3, 1, 2))  # channels-last NCHW


# ---------------------------------------------------------------- prompt encoder
class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features [sin, cos](2 pi (2c - 1) G) of coordinates c in [0, 1]."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, dim // 2))

    def forward(self, coords: Tensor) -> Tensor:
        c = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix * (2 * math.pi)
        return torch.cat([c.sin(), c.cos()], dim=-1)


class PromptEncoder(nn.Module):
    """`prompt_encoder`: points -> sparse tokens; no mask -> `no_mask_embed` (dense)."""

    def __init__(self, cfg: SamusConfig):
        super().__init__()
        p = cfg.prompt_embed_dim
        self.grid, self.input_size = cfg.grid, cfg.img_size
        self.pe_layer = PositionEmbeddingRandom(p)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, p) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, p)
        self.no_mask_embed = nn.Embedding(1, p)
        # Loaded for strict state_dict parity; unused by the point-only path.
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, 4, 2, stride=2), LayerNorm2d(4), nn.GELU(),
            nn.Conv2d(4, 16, 2, stride=2), LayerNorm2d(16), nn.GELU(), nn.Conv2d(16, p, 1))
        self.register_buffer("dense_pe", torch.empty(0), persistent=False)

    def prepare(self) -> None:
        """Positional encoding of the G x G cell centres, 1 x 256 x G x G, once."""
        g = self.grid
        centres = (torch.arange(g, dtype=torch.float32) + 0.5) / g
        yy, xx = torch.meshgrid(centres, centres, indexing="ij")
        self.dense_pe = self.pe_layer(torch.stack([xx, yy], dim=-1)).permute(2, 0, 1).unsqueeze(0)

    def forward(self, coords: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Points (B x N x 2, x y in the input frame) and labels (B x N) plus SAM's
        padding point; returns sparse B x (N+1) x 256 and dense B x 256 x G x G."""
        b = coords.shape[0]
        coords = torch.cat([coords.float() + 0.5, coords.new_zeros(b, 1, 2)], dim=1)
        labels = torch.cat([labels.float(), labels.new_full((b, 1), -1).float()], dim=1)[..., None]
        pe = self.pe_layer(coords / self.input_size)
        w = [e.weight for e in self.point_embeddings]
        sparse = (pe * (labels != -1) + self.not_a_point_embed.weight * (labels == -1)
                  + w[0] * (labels == 0) + w[1] * (labels == 1))
        dense = self.no_mask_embed.weight.view(1, -1, 1, 1).expand(b, -1, self.grid, self.grid)
        return sparse, dense


# ------------------------------------------------------------------ mask decoder
class DecoderAttention(nn.Module):
    """q/k/v projections to dim / downsample, heads, SDPA, out_proj back."""

    def __init__(self, dim: int, heads: int, downsample: int = 1):
        super().__init__()
        inner = dim // downsample
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, inner) for _ in range(3))
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = split_heads(self.q_proj(q), self.heads)
        k = split_heads(self.k_proj(k), self.heads)
        v = split_heads(self.v_proj(v), self.heads)
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class TokenMlp(EncoderMlp):
    """The decoder's token MLP: `lin2(ReLU(lin1(x)))`."""

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class TwoWayBlock(nn.Module):
    """Token self-attention, tokens -> image, MLP (ReLU), image -> tokens."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_pe: bool):
        super().__init__()
        self.skip_first_pe = skip_first_pe
        self.self_attn = DecoderAttention(dim, heads)
        self.cross_attn_token_to_image = DecoderAttention(dim, heads, 2)
        self.cross_attn_image_to_token = DecoderAttention(dim, heads, 2)
        self.mlp = TokenMlp(dim, mlp_dim)
        for i in range(1, 5):
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=DECODER_LN_EPS))

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, dim: int = 256, depth: int = 2, heads: int = 8, mlp_dim: int = 2048):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, heads, mlp_dim, i == 0) for i in range(depth))
        self.final_attn_token_to_image = DecoderAttention(dim, heads, 2)
        self.norm_final_attn = nn.LayerNorm(dim, eps=DECODER_LN_EPS)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        keys = image.flatten(2).transpose(1, 2)  # B x HW x C
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class MaskDecoder(nn.Module):
    """`mask_decoder`: SAM's decoder; single-mask output (token 0)."""

    def __init__(self, dim: int = 256):
        super().__init__()
        self.transformer = TwoWayTransformer(dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(NUM_MASK_TOKENS, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, stride=2), LayerNorm2d(dim // 4), nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, stride=2), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(
            StackedMlp(dim, dim, dim // 8, 3) for _ in range(NUM_MASK_TOKENS))
        self.iou_prediction_head = StackedMlp(dim, 256, NUM_MASK_TOKENS, 3)

    def forward(self, emb: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor):
        """Returns low-res logits B x 1 x 4G x 4G and IoU B x 1 (single mask)."""
        b, _, c = sparse.shape
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], 0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        src = emb + dense
        _, _, h, w = src.shape
        hs, keys = self.transformer(src, image_pe, tokens)
        up = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
        # Only mask token 0 is returned: its hypernetwork alone is evaluated.
        hyper = self.output_hypernetworks_mlps[0](hs[:, 1:2])  # B x 1 x C/8
        up_tokens = up.permute(0, 2, 3, 1).reshape(b, -1, up.shape[1])  # B x 16G^2 x C/8
        masks = (up_tokens @ hyper.transpose(1, 2)).transpose(1, 2)
        iou = self.iou_prediction_head(hs[:, 0])[:, :1]
        return masks.reshape(b, 1, up.shape[2], up.shape[3]), iou


# ------------------------------------------------------------------------- model
class Samus(nn.Module):
    """SAMUS: image encoder, prompt encoder and mask decoder (reference names)."""

    def __init__(self, cfg: SamusConfig):
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ImageEncoder(cfg)
        self.prompt_encoder = PromptEncoder(cfg)
        self.mask_decoder = MaskDecoder(cfg.prompt_embed_dim)

    @classmethod
    def load(cls, cfg: SamusConfig, weights: str) -> "Samus":
        """Builds the model and loads `weights` with strict name and shape checks."""
        if not Path(weights).is_file():
            raise SystemExit(f"weights file {weights} not found")
        model = cls(cfg)
        state = load_file(weights)
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
                 for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            lines = [f"{weights} does not match the model of this config:"]
            for what, names in (("missing", missing), ("unexpected", unexpected),
                                ("wrong shape", wrong)):
                lines += [f"  {what}: {k}" for k in names[:20]]
                if len(names) > 20:
                    lines.append(f"  ... and {len(names) - 20} more {what}")
            raise SystemExit("\n".join(lines))
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        model.eval().requires_grad_(False)
        model.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            model.image_encoder.prepare()
            model.prompt_encoder.prepare()
        return model

    def embed(self, image: Tensor) -> Tensor:
        return self.image_encoder(image)

    def decode(self, emb: Tensor, coords: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        sparse, dense = self.prompt_encoder(coords, labels)
        return self.mask_decoder(emb, self.prompt_encoder.dense_pe, sparse, dense)


# ------------------------------------------------------------------------ driver
def rel_error(ours: Tensor, ref: Tensor) -> float:
    return (torch.linalg.vector_norm(ours.double() - ref.double())
            / torch.linalg.vector_norm(ref.double())).item()


def read_io(path: str, keys: tuple[str, ...] = ("image", "point_coords", "point_labels"),
            hint: str = "") -> dict[str, Tensor]:
    """The IO file's tensors; exits naming the file and the first of `keys` it lacks."""
    if not Path(path).is_file():
        raise SystemExit(f"IO file {path} not found")
    io = load_file(path)
    for key in keys:
        if key not in io:
            raise SystemExit(f"{path}: no tensor `{key}`{hint}")
    return io


def check_fixtures(directory: str, threads: int) -> int:
    """Runs the tiny fixture model; prints relative errors; 0 when all <= 1e-4."""
    torch.set_num_threads(threads)
    fx = Path(directory)
    model = Samus.load(SamusConfig.from_name_or_path(str(fx / "samus_tiny.json")),
                       str(fx / "samus_tiny.safetensors"))
    io = read_io(str(fx / "samus_tiny_io.safetensors"))
    with torch.inference_mode():
        emb = model.embed(io["image"])
        logits, _ = model.decode(emb, io["point_coords"], io["point_labels"])
    worst = 0.0
    for name, ours in (("image_embeddings", emb), ("point.low_res_logits", logits)):
        for i in range(ours.shape[0]):
            err = rel_error(ours[i], io[name][i])
            worst = max(worst, err)
            print(f"{name:<22} item {i}: relative error {err:.3e}")
    ok = worst <= 1e-4
    print(f"{'PASS' if ok else 'FAIL'} (worst {worst:.3e}, tolerance 1e-4)")
    return 0 if ok else 1


def bench(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    cfg = SamusConfig.from_name_or_path(args.config)
    model = Samus.load(cfg, args.weights)
    io = read_io(args.io)
    image = io["image"].float().contiguous()
    coords, labels = io["point_coords"].float(), io["point_labels"]
    batch = image.shape[0]
    if coords.shape[0] != batch:
        raise SystemExit(f"point_coords has batch {coords.shape[0]}, image {batch}")
    enc_times, full_times, dec_times = [], [], []
    with torch.inference_mode():
        for _ in range(args.warmup):
            emb = model.embed(image)
            model.decode(emb, coords, labels)
        for _ in range(args.iters):
            t0 = time.perf_counter()
            emb = model.embed(image)
            t1 = time.perf_counter()
            logits, iou = model.decode(emb, coords, labels)
            t2 = time.perf_counter()
            enc_times.append(t1 - t0)
            full_times.append(t2 - t0)
            # Prompt encoder + decoder: 10 prompts per image on its cached embedding.
            t3 = time.perf_counter()
            for i in range(batch):
                e, c, lab = emb[i:i + 1], coords[i:i + 1], labels[i:i + 1]
                for _ in range(PROMPTS_PER_IMAGE):
                    model.decode(e, c, lab)
            dec_times.append((time.perf_counter() - t3) / (PROMPTS_PER_IMAGE * batch))
    if args.logits_out:
        save_file({"low_res_logits": logits.contiguous(), "iou": iou.contiguous()}, args.logits_out)
    full = statistics.median(full_times)
    result = {
        "full_median_s": full,
        "encoder_median_s": statistics.median(enc_times),
        "decoder_median_ms": 1e3 * statistics.median(dec_times),
        "images_per_s": batch / full,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "config": args.config,
    }
    if "low_res_logits" in io:
        result["max_rel_error"] = rel_error(logits, io["low_res_logits"])
    if args.json:
        print(json.dumps(result))
    else:
        print(f"SAMUS PyTorch reference: config {args.config}, batch {batch}, "
              f"{result['threads']} threads, torch {torch.__version__}, {args.iters} iters")
        print(f"  encoder, median           {result['encoder_median_s']:9.3f} s")
        print(f"  decoder, median/prompt    {result['decoder_median_ms']:9.2f} ms")
        print(f"  full (encoder + 1 prompt) {full:9.3f} s  ({result['images_per_s']:.3f} images/s)")
        if "max_rel_error" in result:
            print(f"  low_res_logits vs IO file: relative error {result['max_rel_error']:.3e}")
    return 0


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """SPEC section 5: 0.2 BCE-with-logits (pos_weight 2, mean) + 0.8 (1 - Dice), the
    Dice of sigmoid(logits) over the whole batch."""
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(2.0))
    p = torch.sigmoid(logits)
    dice = (2 * (p * target).sum() + 1e-5) / ((p * p).sum() + (target * target).sum() + 1e-5)
    return 0.2 * bce + 0.8 * (1 - dice)


def train_bench(args: argparse.Namespace) -> int:
    """Times `--iters` training steps after two untimed ones (whose losses are
    reported), every parameter trainable, plain Adam at `--lr`."""
    torch.set_num_threads(args.threads)
    cfg = SamusConfig.from_name_or_path(args.config)
    model = Samus.load(cfg, args.weights)
    model.train().requires_grad_(True)
    io = read_io(args.io, ("images", "low_targets", "point_coords", "point_labels"),
                 " (write it with samus bench --train --write-io)")
    images = io["images"].float().contiguous()
    targets = io["low_targets"].float()
    coords, labels = io["point_coords"].float(), io["point_labels"]
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    losses, steps = [], []
    for run in range(2 + args.iters):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        # The image-independent parts (position adapter, rel-pos tables) run in
        # every step, so that their parameters get gradients.
        model.image_encoder.prepare()
        logits, _ = model.decode(model.embed(images), coords, labels)
        loss = segmentation_loss(logits, targets)
        loss.backward()
        opt.step()
        seconds = time.perf_counter() - t0
        losses.append(loss.item())
        if run >= 2:
            steps.append(seconds)
    result = {
        "train_step_median_s": statistics.median(steps),
        "train_step_min_s": min(steps),
        "train_step_max_s": max(steps),
        "first_loss": losses[0],
        "second_loss": losses[1],
        "batch_size": images.shape[0],
        "trainable_parameters": sum(p.numel() for p in model.parameters()),
        "lr": args.lr,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "config": args.config,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"SAMUS PyTorch reference, training: config {args.config}, batch {images.shape[0]}, "
              f"{result['threads']} threads, torch {torch.__version__}, {args.iters} steps")
        print(f"  train step, median        {result['train_step_median_s']:9.3f} s")
        print(f"  loss: first {losses[0]:.6f}, second {losses[1]:.6f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Independent PyTorch SAMUS forward pass, the benchmark peer of the Rust "
        "implementation: times the image encoder, the prompt encoder + mask decoder (one point "
        "prompt, single mask) and the full pass on CPU, and checks the logits against the IO file.",
        epilog="Self-test: --check-fixtures DIR (tiny model; exits 1 when a relative error "
        "exceeds 1e-4).")
    parser.add_argument("--config", help="preset (tiny, vit_b, vit_l, vit_h) or JSON file: the "
                        "config object or {\"config\": {...}}")
    parser.add_argument("--weights", help="SAMUS safetensors file (reference state_dict names)")
    parser.add_argument("--io", help="safetensors with image, point_coords, point_labels and "
                        "optionally low_res_logits (the Rust output, for max_rel_error)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--iters", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--logits-out", help="write low_res_logits and iou to this safetensors file")
    parser.add_argument("--json", action="store_true", help="print one JSON object: full_median_s, "
                        "encoder_median_s, decoder_median_ms (per prompt), images_per_s, threads, "
                        "torch_version, config[, max_rel_error]")
    parser.add_argument("--train", action="store_true", help="time training steps (forward, "
                        "loss, backward, Adam; every parameter trainable) on the IO file's batch")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate with --train "
                        "(default 1e-4)")
    parser.add_argument("--check-fixtures", metavar="DIR", help="self-test against the parity "
                        "fixtures in DIR (samus_tiny.json/.safetensors, samus_tiny_io.safetensors)")
    args = parser.parse_args(argv)
    if args.check_fixtures:
        return check_fixtures(args.check_fixtures, args.threads)
    missing = [f"--{n}" for n in ("config", "weights", "io") if getattr(args, n) is None]
    if missing:
        parser.error("required without --check-fixtures: " + ", ".join(missing))
    if args.iters < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--iters and --threads must be >= 1, --warmup >= 0")
    return train_bench(args) if args.train else bench(args)


if __name__ == "__main__":
    sys.exit(main())
