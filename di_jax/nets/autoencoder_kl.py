"""The Stable-Diffusion VAE (Rombach et al. 2022; the KL-regularised autoencoder PixArt-α uses) in Flax linen,
with diffusers' `AutoencoderKL` semantics (DownEncoderBlock2D / UpDecoderBlock2D, SiLU, mid-block attention).

Public methods take and return NCHW like diffusers; NHWC inside.
    mean, logvar = vae.apply({"params": p}, image, method="encode")    # logvar clipped to [-30, 20]
    image = vae.apply({"params": p}, z, method="decode")               # z unscaled: divide by scaling_factor first
`scaling_factor` is carried as a field but, as in diffusers, never applied inside encode/decode.

Parameter names mirror the diffusers state_dict (`encoder.down_blocks.0.resnets.0.conv1.weight` ->
`encoder/down_blocks_0/resnets_0/conv1/kernel`; GroupNorm `weight` -> `scale`).
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from di_jax.nets.layers import Linear

Dtype = Any
RESNET_EPS = 1e-6          # every GroupNorm of diffusers' Encoder / Decoder / mid-block attention
LOGVAR_RANGE = (-30.0, 20.0)


def _conv(features: int, kernel: int, dtype, name: str, stride: int = 1, pad: Any = None) -> nn.Conv:
    pad = ((kernel // 2,) * 2,) * 2 if pad is None else pad
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, dtype=dtype, name=name)


class GroupNorm(nn.Module):
    """torch.nn.GroupNorm over NHWC (contiguous channel groups), statistics in float32 at least."""
    groups: int
    eps: float = RESNET_EPS

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        if c % self.groups:
            raise ValueError(f"GroupNorm: {c} channels are not divisible into {self.groups} groups")
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        h = x.astype(jnp.promote_types(x.dtype, jnp.float32)).reshape(x.shape[:-1] + (self.groups, c // self.groups))
        mean = h.mean((1, 2, 4), keepdims=True)
        var = jnp.square(h - mean).mean((1, 2, 4), keepdims=True)
        h = ((h - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        return (h * scale.astype(h.dtype) + bias.astype(h.dtype)).astype(x.dtype)


class ResnetBlock2D(nn.Module):
    """norm1 -> SiLU -> conv1 -> norm2 -> SiLU -> conv2, plus x (1×1 conv_shortcut where channels change);
    diffusers `ResnetBlock2D` without time embedding, output_scale_factor 1."""
    out_channels: int
    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.out_channels
        h = _conv(c, 3, self.dtype, "conv1")(nn.silu(GroupNorm(self.groups, name="norm1")(x)))
        h = _conv(c, 3, self.dtype, "conv2")(nn.silu(GroupNorm(self.groups, name="norm2")(h)))
        if x.shape[-1] != c:
            x = _conv(c, 1, self.dtype, "conv_shortcut")(x)
        return x + h


class AttentionBlock(nn.Module):
    """Mid-block spatial self-attention (diffusers `Attention` with group_norm, residual_connection=True,
    one head of all channels in the VAE): x + to_out_0(softmax(q kᵀ/√d) v), q, k, v of GroupNorm(x)."""
    groups: int
    head_dim: int

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        if c % self.head_dim:
            raise ValueError(f"AttentionBlock: {c} channels are not divisible into heads of {self.head_dim}")
        heads = c // self.head_dim
        h = GroupNorm(self.groups, name="group_norm")(x).reshape(b, hh * ww, c)
        split = lambda t: t.reshape(b, hh * ww, heads, self.head_dim)
        q, k, v = (split(Linear(c, name=n)(h)) for n in ("to_q", "to_k", "to_v"))
        acc = jnp.promote_types(x.dtype, jnp.float32)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=acc) / float(np.sqrt(self.head_dim))
        w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, hh * ww, c)
        return x + Linear(c, name="to_out_0")(out).reshape(b, hh, ww, c)


class Downsample2D(nn.Module):
    """Zero pad (left 0, right 1, top 0, bottom 1), then a 3×3 stride-2 conv (diffusers, padding=0)."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _conv(x.shape[-1], 3, self.dtype, "conv", stride=2, pad=((0, 1), (0, 1)))(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2× upsampling, then a 3×3 conv (diffusers `Upsample2D(use_conv=True)`)."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
        return _conv(c, 3, self.dtype, "conv")(x)


class MidBlock(nn.Module):
    """resnets_0 -> attentions_0 (if add_attention) -> resnets_1 (diffusers `UNetMidBlock2D`, one layer)."""
    groups: int
    add_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        x = ResnetBlock2D(c, self.groups, self.dtype, name="resnets_0")(x)
        if self.add_attention:
            x = AttentionBlock(self.groups, c, name="attentions_0")(x)
        return ResnetBlock2D(c, self.groups, self.dtype, name="resnets_1")(x)


class DownEncoderBlock2D(nn.Module):
    """resnets_0 .. resnets_{n-1}, then downsamplers_0 unless it is the last block."""
    out_channels: int
    num_layers: int
    groups: int
    add_downsample: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for j in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, self.dtype, name=f"resnets_{j}")(x)
        return Downsample2D(self.dtype, name="downsamplers_0")(x) if self.add_downsample else x


class UpDecoderBlock2D(nn.Module):
    """resnets_0 .. resnets_{n-1}, then upsamplers_0 unless it is the last block."""
    out_channels: int
    num_layers: int
    groups: int
    add_upsample: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for j in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, self.dtype, name=f"resnets_{j}")(x)
        return Upsample2D(self.dtype, name="upsamplers_0")(x) if self.add_upsample else x


class Encoder(nn.Module):
    """conv_in -> DownEncoderBlock2D × len(block_out_channels) (downsampling all but the last) -> mid block
    -> GroupNorm -> SiLU -> conv_out to 2 × latent_channels (mean and logvar)."""
    block_out_channels: Sequence[int]
    layers_per_block: int
    groups: int
    latent_channels: int
    add_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _conv(self.block_out_channels[0], 3, self.dtype, "conv_in")(x)
        last = len(self.block_out_channels) - 1
        for i, c in enumerate(self.block_out_channels):
            x = DownEncoderBlock2D(c, self.layers_per_block, self.groups, i != last, self.dtype,
                                   name=f"down_blocks_{i}")(x)
        x = MidBlock(self.groups, self.add_attention, self.dtype, name="mid_block")(x)
        x = nn.silu(GroupNorm(self.groups, name="conv_norm_out")(x))
        return _conv(2 * self.latent_channels, 3, self.dtype, "conv_out")(x)


class Decoder(nn.Module):
    """conv_in -> mid block -> UpDecoderBlock2D × len(block_out_channels) (layers_per_block + 1 resnets,
    channels reversed, upsampling all but the last) -> GroupNorm -> SiLU -> conv_out."""
    block_out_channels: Sequence[int]
    layers_per_block: int
    groups: int
    out_channels: int
    add_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        channels = list(reversed(self.block_out_channels))
        x = _conv(channels[0], 3, self.dtype, "conv_in")(z)
        x = MidBlock(self.groups, self.add_attention, self.dtype, name="mid_block")(x)
        for i, c in enumerate(channels):
            x = UpDecoderBlock2D(c, self.layers_per_block + 1, self.groups, i != len(channels) - 1, self.dtype,
                                 name=f"up_blocks_{i}")(x)
        x = nn.silu(GroupNorm(self.groups, name="conv_norm_out")(x))
        return _conv(self.out_channels, 3, self.dtype, "conv_out")(x)


class AutoencoderKL(nn.Module):
    """diffusers `AutoencoderKL` (SD VAE: 4 latent channels, 8× down-sampling at 4 levels, scaling 0.18215)."""
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: Sequence[int] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    scaling_factor: float = 0.18215
    shift_factor: Optional[float] = None    # SD3-style latent shift: like scaling_factor, applied by the caller
    dtype: Dtype = jnp.float32

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def setup(self):
        bc, lpb, g = tuple(self.block_out_channels), self.layers_per_block, self.norm_num_groups
        self.encoder = Encoder(bc, lpb, g, self.latent_channels, self.mid_block_add_attention, self.dtype)
        self.decoder = Decoder(bc, lpb, g, self.out_channels, self.mid_block_add_attention, self.dtype)
        lc2 = 2 * self.latent_channels
        self.quant_conv = _conv(lc2, 1, self.dtype, None) if self.use_quant_conv else None
        self.post_quant_conv = _conv(self.latent_channels, 1, self.dtype, None) if self.use_post_quant_conv else None

    def encode(self, x):
        """Posterior N(mean, exp(logvar)) of images x [B, in_channels, H, W] (H, W multiples of the
        down-sampling): (mean, logvar), each [B, latent_channels, H/f, W/f], logvar clipped to [-30, 20]."""
        x = jnp.asarray(x)
        f = self.downsampling
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"AutoencoderKL.encode: x must be NCHW [B, {self.in_channels}, H, W] with H, W "
                             f"multiples of {f}; got {x.shape}")
        h = self.encoder(x.transpose(0, 2, 3, 1).astype(self.dtype))
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h.transpose(0, 3, 1, 2), 2, axis=1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z):
        """Images [B, out_channels, H·f, W·f] of latents z [B, latent_channels, H, W] (unscaled latents)."""
        z = jnp.asarray(z)
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"AutoencoderKL.decode: z must be NCHW [B, {self.latent_channels}, H, W]; got {z.shape}")
        h = z.transpose(0, 2, 3, 1).astype(self.dtype)
        if self.post_quant_conv is not None:
            h = self.post_quant_conv(h)
        return self.decoder(h).transpose(0, 3, 1, 2)

    def sample_posterior(self, rng, mean, logvar):
        """mean + exp(logvar / 2) · N(0, I) (diffusers `DiagonalGaussianDistribution.sample`)."""
        return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)

    def __call__(self, x):
        """decode(posterior mean of x): diffusers' forward with sample_posterior=False (used by init)."""
        return self.decode(self.encode(x)[0])
