"""EDM building blocks in Flax linen, NHWC (spec edm_architecture.md section 1).

Param names mirror the official PyTorch modules (`kernel`/`bias` for Conv2d and Linear, `scale`/`bias`
for GroupNorm) so that `di_jax.convert.edm_mapping` is a plain table. Resample filters are constants
recomputed from the config, never params.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Dtype = Any
_DN = ("NHWC", "HWIO", "NHWC")


def resample_filter(taps: Sequence[float]) -> np.ndarray:
    """f = outer(r, r) / (sum r)^2 in float32, shape [L, L] (spec 1.3)."""
    r = np.asarray(taps, np.float32)
    if r.ndim != 1 or r.size < 2 or r.sum() == 0:
        raise ValueError(f"resample_filter must be >= 2 taps with non-zero sum; got {taps!r}")
    f = np.outer(r, r)
    return (f / np.square(r.sum())).astype(np.float32)


def _depthwise(x, f, stride, pad, dilate):
    c = x.shape[-1]
    w = jnp.tile(jnp.asarray(f, x.dtype)[:, :, None, None], (1, 1, 1, c))
    return lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2, lhs_dilation=(dilate, dilate),
                                    dimension_numbers=_DN, feature_group_count=c)


def _is_box2(f, pad) -> bool:
    """The [1, 1] filter without padding: 2x2 box, where the FIR resampling needs no convolution."""
    return f.shape == (2, 2) and pad == 0 and bool(np.all(f == np.float32(0.25)))


def upsample(x, f, pad):
    """Depthwise transposed conv with 4f, stride 2, padding `pad` (zero-padded FIR; spec 1.3).

    For the [1, 1] filter this is nearest-neighbour 2x upsampling and is computed as such (a
    broadcast: no grouped, input-dilated convolution in the forward or backward pass).
    """
    if _is_box2(f, pad):
        n, h, w, c = x.shape
        return jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)
    L = f.shape[0]
    return _depthwise(x, 4 * f[::-1, ::-1], 1, L - 1 - pad, 2)


def downsample(x, f, pad):
    """Depthwise conv with f, stride 2, padding `pad`; the [1, 1] filter is 2x2 average pooling."""
    if _is_box2(f, pad) and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
        n, h, w, c = x.shape
        return x.reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4))
    return _depthwise(x, f, 2, pad, 1)


def _xavier(scale):
    base = nn.initializers.xavier_uniform()
    return lambda key, shape, dtype=jnp.float32: scale * base(key, shape, dtype)


class Conv2d(nn.Module):
    """Conv with optional up/down FIR resampling (spec 1.3); kernel 0 = weightless resampler."""
    features: int
    kernel: int
    use_bias: bool = True
    up: bool = False
    down: bool = False
    resample_filter: Sequence[float] = (1, 1)
    fused_resample: bool = False
    init_scale: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.up and self.down:
            raise ValueError("Conv2d: up and down cannot both be set")
        k, cin = self.kernel, x.shape[-1]
        w = self.param("kernel", _xavier(self.init_scale), (k, k, cin, self.features)) if k else None
        b = self.param("bias", nn.initializers.zeros, (self.features,)) if k and self.use_bias else None
        f = resample_filter(self.resample_filter) if (self.up or self.down) else None
        pw, pf = k // 2, (f.shape[0] - 1) // 2 if f is not None else 0
        x = x.astype(self.dtype)
        conv = lambda h, pad: lax.conv_general_dilated(h, w.astype(self.dtype), (1, 1), [(pad, pad)] * 2,
                                                       dimension_numbers=_DN)
        if self.fused_resample and self.up and w is not None:
            x = conv(upsample(x, f, max(pf - pw, 0)), max(pw - pf, 0))
        elif self.fused_resample and self.down and w is not None:
            x = downsample(conv(x, pw + pf), f, 0)
        else:
            if self.up:
                x = upsample(x, f, pf)
            if self.down:
                x = downsample(x, f, pf)
            if w is not None:
                x = conv(x, pw)
        if b is not None:
            x = x + b.astype(self.dtype)
        return x


class Linear(nn.Module):
    """y = x W + b, weights cast to the input dtype (spec 1.2); kernel is [in, out]."""
    features: int
    use_bias: bool = True
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", _xavier(self.init_scale), (x.shape[-1], self.features))
        y = x @ w.astype(x.dtype)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
        return y


class GroupNorm(nn.Module):
    """GroupNorm with min(32, C//4) contiguous groups, float32 statistics (spec 1.4)."""
    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        g = min(32, c // 4)
        if g == 0 or c % g:
            raise ValueError(f"GroupNorm: {c} channels are not divisible into min(32, C//4) = {g} groups")
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        h = x.astype(jnp.float32).reshape(x.shape[:-1] + (g, c // g))
        axes = tuple(range(1, h.ndim - 2)) + (h.ndim - 1,)
        mean = h.mean(axes, keepdims=True)
        var = jnp.square(h - mean).mean(axes, keepdims=True)
        h = ((h - mean) * lax.rsqrt(var + self.eps)).reshape(x.shape)
        return (h * scale + bias).astype(self.dtype)


class PositionalEmbedding(nn.Module):
    """[cos(t fr), sin(t fr)], fr_i = (1/max_positions)^(i / (half - endpoint)) in float32 (spec 1.7)."""
    num_channels: int
    max_positions: int = 10000
    endpoint: bool = False

    def __call__(self, t):
        half = self.num_channels // 2
        fr = np.arange(half, dtype=np.float32) / np.float32(half - (1 if self.endpoint else 0))
        fr = jnp.power(jnp.float32(1.0 / self.max_positions), jnp.asarray(fr)).astype(t.dtype)
        t = jnp.outer(t, fr)
        return jnp.concatenate([jnp.cos(t), jnp.sin(t)], axis=1)


class FourierEmbedding(nn.Module):
    """[cos(2 pi freqs t), sin(2 pi freqs t)] (spec 1.7).

    `freqs` is the checkpoint's random buffer; it is kept in the 'params' collection (so a converted
    checkpoint is one pytree) but wrapped in stop_gradient, so training never changes it.
    """
    num_channels: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, t):
        init = lambda key, shape: jax.random.normal(key, shape) * self.scale
        freqs = lax.stop_gradient(self.param("freqs", init, (self.num_channels // 2,)))
        t = jnp.outer(t, (2 * np.pi * freqs).astype(t.dtype))
        return jnp.concatenate([jnp.cos(t), jnp.sin(t)], axis=1)


class UNetBlock(nn.Module):
    """Residual block with optional up/down and self-attention (spec 1.5, 1.6); x NHWC, emb [N or 1, E]."""
    out_channels: int
    up: bool = False
    down: bool = False
    attention: bool = False
    num_heads: Optional[int] = None
    channels_per_head: int = 64
    dropout: float = 0.0
    skip_scale: float = 1.0
    eps: float = 1e-5
    resample_filter: Sequence[float] = (1, 1)
    resample_proj: bool = False
    adaptive_scale: bool = True
    zero_scale: float = 1e-5
    attn_scale: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb, train: bool = False):
        cin, c = x.shape[-1], self.out_channels
        heads = 0 if not self.attention else (self.num_heads if self.num_heads is not None
                                               else c // self.channels_per_head)
        rs = dict(resample_filter=self.resample_filter, dtype=self.dtype)
        gn = lambda name: GroupNorm(self.eps, self.dtype, name=name)
        h = Conv2d(c, 3, up=self.up, down=self.down, name="conv0", **rs)(nn.silu(gn("norm0")(x)))
        p = Linear(c * (2 if self.adaptive_scale else 1), name="affine")(emb)[:, None, None, :].astype(h.dtype)
        if self.adaptive_scale:
            scale, shift = jnp.split(p, 2, axis=-1)
            h = nn.silu(gn("norm1")(h) * (scale + 1) + shift)
        else:
            h = nn.silu(gn("norm1")(h + p))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = Conv2d(c, 3, init_scale=self.zero_scale, name="conv1", **rs)(h)
        if cin != c or self.up or self.down:
            k = 1 if (self.resample_proj or cin != c) else 0
            x = Conv2d(c, k, up=self.up, down=self.down, name="skip", **rs)(x)
        x = (h + x.astype(h.dtype)) * self.skip_scale
        if heads:
            x = self._attention(x, heads, gn("norm2"), rs)
        return x

    def _attention(self, x, heads, norm, rs):
        n, hh, ww, c = x.shape
        if c % heads:
            raise ValueError(f"UNetBlock: {c} channels not divisible by {heads} heads")
        ch = c // heads
        t = Conv2d(3 * c, 1, init_scale=self.attn_scale, name="qkv", **rs)(norm(x))
        t = t.reshape(n, hh * ww, heads, ch, 3)  # qkv rows interleave (q, k, v) per channel (spec 1.5)
        q, k, v = t[..., 0], t[..., 1], t[..., 2]
        k = k / np.sqrt(ch).astype(np.float32)
        logits = jnp.einsum("nihc,njhc->nhij", q.astype(jnp.float32), k.astype(jnp.float32))
        w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        a = jnp.einsum("nhij,njhc->nihc", w, v).reshape(n, hh, ww, c)
        return (Conv2d(c, 1, init_scale=self.zero_scale, name="proj", **rs)(a) + x) * self.skip_scale
