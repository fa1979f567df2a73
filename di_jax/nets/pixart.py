"""PixArt-α transformer (Chen et al. 2023, arXiv:2310.00426) in Flax linen, with diffusers'
`PixArtTransformer2DModel` semantics (norm_type "ada_norm_single").

Public call: latents NCHW [B, C, H, W], encoder_hidden_states [B, L, caption_channels], timestep [B]
(DDPM step, integer or float), encoder_attention_mask [B, L] (1 keep, 0 pad) -> [B, out_channels, H, W].
Tokens are [B, N, D] inside; the patchify conv runs NHWC.

Parameter names mirror the diffusers state_dict: a list index `name.N` becomes the module name `name_N`
(`transformer_blocks.0.attn1.to_out.0.weight` -> `transformer_blocks_0/attn1/to_out_0/kernel`); Linear
`weight` is `kernel` [in, out], Conv2d `weight` is `kernel` HWIO; `scale_shift_table` keeps its name.
`di_jax.convert.diffusers_folder` holds the table.
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from di_jax.nets.layers import Linear

Dtype = Any
MASK_BIAS = -10000.0   # diffusers turns a 0/1 key mask into this additive bias on the attention scores
TIMESTEP_CHANNELS = 256


def sincos_pos_embed(embed_dim: int, grid_h: int, grid_w: int, base_size: int,
                     interpolation_scale: float) -> np.ndarray:
    """2-D sin-cos position embedding [grid_h * grid_w, embed_dim] (float32), diffusers `get_2d_sincos_pos_embed`.

    Positions are arange(n) / (n / base_size) / interpolation_scale (float32). Token (i, j) (row-major)
    gets [sin, cos](col_j · ω) in the first half and [sin, cos](row_i · ω) in the second half, with
    ω_k = 10000^(-k / (embed_dim / 4)) in float64, as diffusers computes it before rounding to float32.
    """
    if embed_dim % 4:
        raise ValueError(f"sincos_pos_embed: embed_dim {embed_dim} must be divisible by 4")
    f32 = np.float32
    rows = np.arange(grid_h, dtype=f32) / f32(grid_h / base_size) / f32(interpolation_scale)
    cols = np.arange(grid_w, dtype=f32) / f32(grid_w / base_size) / f32(interpolation_scale)
    omega = 1.0 / 10000.0 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))

    def one_d(pos):
        out = np.outer(pos.astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    col = one_d(np.tile(cols, grid_h))          # token t = i * grid_w + j has column j
    row = one_d(np.repeat(rows, grid_w))        # ... and row i
    return np.concatenate([col, row], axis=1).astype(f32)


def timestep_proj(t, num_channels: int = TIMESTEP_CHANNELS) -> jax.Array:
    """[cos(t ω), sin(t ω)] in float32, ω_k = exp(-ln(10000) k / half) (diffusers `Timesteps(256,
    flip_sin_to_cos=True, downscale_freq_shift=0)`; always float32, as there, whatever the model dtype)."""
    half = num_channels // 2
    exponent = (np.float32(-math.log(10000)) * np.arange(half, dtype=np.float32)) / np.float32(half)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)   # correctly rounded float32 exp
    arg = jnp.asarray(t).astype(jnp.float32)[:, None] * jnp.asarray(freqs)[None, :]
    return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)


def layer_norm(x, eps: float):
    """LayerNorm without affine over the last axis (biased variance, statistics in float32 at least)."""
    h = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = h.mean(-1, keepdims=True)
    var = jnp.square(h - mean).mean(-1, keepdims=True)
    return ((h - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers `TimestepEmbedding`)."""
    features: int

    @nn.compact
    def __call__(self, x):
        return Linear(self.features, name="linear_2")(nn.silu(Linear(self.features, name="linear_1")(x)))


class CombinedTimestepSizeEmbeddings(nn.Module):
    """Timestep embedding, plus resolution and aspect-ratio embeddings when `use_additional_conditions`
    (diffusers `PixArtAlphaCombinedTimestepSizeEmbeddings`, size_emb_dim = D // 3)."""
    features: int
    use_additional_conditions: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, timestep, resolution=None, aspect_ratio=None):
        emb = TimestepEmbedding(self.features, name="timestep_embedder")(timestep_proj(timestep).astype(self.dtype))
        if not self.use_additional_conditions:
            return emb
        b, size_dim = emb.shape[0], self.features // 3
        res = timestep_proj(resolution.reshape(-1)).astype(self.dtype)          # [B * 2, 256]
        res = TimestepEmbedding(size_dim, name="resolution_embedder")(res).reshape(b, -1)
        ar = timestep_proj(aspect_ratio.reshape(-1)).astype(self.dtype)         # [B, 256]
        ar = TimestepEmbedding(size_dim, name="aspect_ratio_embedder")(ar).reshape(b, -1)
        return emb + jnp.concatenate([res, ar], axis=1)


class AdaLayerNormSingle(nn.Module):
    """adaLN-single (PixArt-α §2.3): returns (linear(SiLU(e)) [B, 6D] shared by every block, e [B, D])."""
    features: int
    use_additional_conditions: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, timestep, resolution=None, aspect_ratio=None):
        e = CombinedTimestepSizeEmbeddings(self.features, self.use_additional_conditions, self.dtype,
                                           name="emb")(timestep, resolution, aspect_ratio)
        return Linear(6 * self.features, name="linear")(nn.silu(e)), e


class TextProjection(nn.Module):
    """linear_1 -> GELU(tanh) -> linear_2 (diffusers `PixArtAlphaTextProjection`)."""
    features: int

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(Linear(self.features, name="linear_1")(x), approximate=True)
        return Linear(self.features, name="linear_2")(h)


class Attention(nn.Module):
    """Multi-head attention with to_q / to_k / to_v / to_out_0 (diffusers `Attention`, default processor):
    softmax(q kᵀ / √d + bias) v, softmax in float32. bias broadcasts to [B, heads, Nq, Nk]."""
    heads: int
    head_dim: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x, context=None, bias=None):
        context = x if context is None else context
        inner = self.heads * self.head_dim
        split = lambda t: t.reshape(t.shape[:2] + (self.heads, self.head_dim))
        q = split(Linear(inner, self.use_bias, name="to_q")(x))
        k = split(Linear(inner, self.use_bias, name="to_k")(context))
        v = split(Linear(inner, self.use_bias, name="to_v")(context))
        acc = jnp.promote_types(x.dtype, jnp.float32)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=acc) / float(np.sqrt(self.head_dim))
        if bias is not None:
            logits = logits + bias.astype(acc)
        w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(x.shape[:2] + (inner,))
        return Linear(x.shape[-1], name="to_out_0")(out)


class GELUProj(nn.Module):
    """diffusers `GELU(approximate="tanh")`: a Linear `proj` then GELU(tanh)."""
    features: int

    @nn.compact
    def __call__(self, x):
        return nn.gelu(Linear(self.features, name="proj")(x), approximate=True)


class FeedForward(nn.Module):
    """net_0 (Linear + GELU-tanh, 4× wide) -> net_2 (Linear); diffusers' net.1 is a parameterless Dropout(0)."""
    mult: int = 4

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        return Linear(d, name="net_2")(GELUProj(self.mult * d, name="net_0")(x))


class PixArtBlock(nn.Module):
    """diffusers `BasicTransformerBlock` with norm_type "ada_norm_single".

    (shift, scale, gate) for the self-attention and the MLP are `scale_shift_table` [6, D] + the shared
    adaLN-single output; the cross-attention has neither norm nor gate. Arguments are arrays only, so
    `nn.remat(PixArtBlock)` can wrap it.
      x [B, N, D], t6 [B, 6D], context [B, L, D], bias [B, 1, 1, L] (0 keep, -10000 pad).
    """
    heads: int
    head_dim: int
    attention_bias: bool = True
    eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t6, context, bias):
        b, _, d = x.shape
        table = self.param("scale_shift_table", lambda key, s: jax.random.normal(key, s) / np.sqrt(d), (6, d))
        mod = table.astype(self.dtype)[None] + t6.reshape(b, 6, d)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = [mod[:, i:i + 1] for i in range(6)]
        h = layer_norm(x, self.eps) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * Attention(self.heads, self.head_dim, self.attention_bias, name="attn1")(h)
        x = x + Attention(self.heads, self.head_dim, self.attention_bias, name="attn2")(x, context, bias)
        h = layer_norm(x, self.eps) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * FeedForward(name="ff")(h)


class PatchEmbed(nn.Module):
    """Conv patchify (kernel = stride = patch) + 2-D sin-cos positions (diffusers `PatchEmbed`); NHWC in,
    tokens [B, (H/p)(W/p), D] out (row-major)."""
    features: int
    patch_size: int
    base_size: int
    interpolation_scale: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        p = self.patch_size
        h = nn.Conv(self.features, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="proj")(x)
        b, gh, gw, d = h.shape
        pos = sincos_pos_embed(d, gh, gw, self.base_size, self.interpolation_scale)
        return h.reshape(b, gh * gw, d) + jnp.asarray(pos, self.dtype)[None]


class PixArtTransformer2DModel(nn.Module):
    """diffusers `PixArtTransformer2DModel` (PixArt-α DiT). Defaults: PixArt-XL-2 (28 × 16 heads × 72).

    `interpolation_scale` None means max(sample_size // 64, 1), as in diffusers; `caption_channels` None
    means no caption projection (encoder states already `cross_attention_dim` wide). `remat` wraps every
    block in `nn.remat` (gradient checkpointing); `dtype` is the compute dtype (params stay float32).
    """
    num_attention_heads: int = 16
    attention_head_dim: int = 72
    in_channels: int = 4
    out_channels: int = 8
    num_layers: int = 28
    patch_size: int = 2
    sample_size: int = 64
    caption_channels: Optional[int] = 4096
    cross_attention_dim: int = 1152
    attention_bias: bool = True
    norm_eps: float = 1e-6
    interpolation_scale: Optional[float] = None
    use_additional_conditions: bool = False
    dtype: Dtype = jnp.float32
    remat: bool = False

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def check_inputs(self, latents, encoder_hidden_states, timestep, encoder_attention_mask) -> None:
        """ValueError naming the argument whose shape does not fit the model."""
        p, c, d = self.patch_size, self.in_channels, self.caption_channels or self.cross_attention_dim
        if latents.ndim != 4 or latents.shape[1] != c or latents.shape[2] % p or latents.shape[3] % p:
            raise ValueError(f"PixArt: latents must be NCHW [B, {c}, H, W] with H, W multiples of {p}; "
                             f"got {latents.shape}")
        b = latents.shape[0]
        text = encoder_hidden_states.shape
        if len(text) != 3 or text[0] != b or text[2] != d:
            raise ValueError(f"PixArt: encoder_hidden_states must be [B={b}, L, {d}]; got {text}")
        if timestep.shape != (b,):
            raise ValueError(f"PixArt: timestep must be [B={b}]; got {timestep.shape}")
        if encoder_attention_mask is not None and encoder_attention_mask.shape != encoder_hidden_states.shape[:2]:
            raise ValueError(f"PixArt: encoder_attention_mask must be [B, L]={encoder_hidden_states.shape[:2]}; "
                             f"got {encoder_attention_mask.shape}")

    @nn.compact
    def __call__(self, latents, encoder_hidden_states, timestep, encoder_attention_mask=None,
                 resolution=None, aspect_ratio=None):
        """ε and variance prediction [B, out_channels, H, W]; `resolution` [B, 2] (height, width) and
        `aspect_ratio` [B, 1] are required exactly when use_additional_conditions."""
        latents, encoder_hidden_states, timestep = map(jnp.asarray, (latents, encoder_hidden_states, timestep))
        self.check_inputs(latents, encoder_hidden_states, timestep, encoder_attention_mask)
        if self.use_additional_conditions and (resolution is None or aspect_ratio is None):
            raise ValueError("PixArt: use_additional_conditions needs resolution [B, 2] and aspect_ratio [B, 1]")
        b, _, hh, ww = latents.shape
        p, d, dt = self.patch_size, self.inner_dim, self.dtype
        scale = self.interpolation_scale if self.interpolation_scale is not None else max(self.sample_size // 64, 1)
        x = PatchEmbed(d, p, self.sample_size // p, scale, dt, name="pos_embed")(
            latents.transpose(0, 2, 3, 1).astype(dt))
        t6, embedded_t = AdaLayerNormSingle(d, self.use_additional_conditions, dt, name="adaln_single")(
            timestep, resolution, aspect_ratio)
        context = encoder_hidden_states.astype(dt)
        if self.caption_channels is not None:
            context = TextProjection(d, name="caption_projection")(context)
        acc = jnp.promote_types(dt, jnp.float32)   # the additive mask bias stays at least float32
        if encoder_attention_mask is None:
            bias = jnp.zeros((b, 1, 1, context.shape[1]), acc)
        else:
            bias = ((1 - jnp.asarray(encoder_attention_mask).astype(acc)) * MASK_BIAS)[:, None, None, :]
        block = nn.remat(PixArtBlock) if self.remat else PixArtBlock
        for i in range(self.num_layers):
            x = block(self.num_attention_heads, self.attention_head_dim, self.attention_bias, self.norm_eps, dt,
                      name=f"transformer_blocks_{i}")(x, t6, context, bias)
        table = self.param("scale_shift_table", lambda key, s: jax.random.normal(key, s) / np.sqrt(d), (2, d))
        mod = table.astype(dt)[None] + embedded_t[:, None]
        x = layer_norm(x, 1e-6) * (1 + mod[:, 1:2]) + mod[:, 0:1]
        x = Linear(p * p * self.out_channels, name="proj_out")(x)
        gh, gw, c = hh // p, ww // p, self.out_channels
        x = x.reshape(b, gh, gw, p, p, c).transpose(0, 5, 1, 3, 2, 4)   # unpatchify: n h w p q c -> n c h p w q
        return x.reshape(b, c, hh, ww)
