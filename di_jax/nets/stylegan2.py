"""StyleGAN2-ADA generator in Flax linen, NCHW like the official PyTorch code.

Architecture of StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of
StyleGAN", arXiv:1912.04958) as configured and implemented by StyleGAN2-ADA (Karras et al. 2020,
"Training Generative Adversarial Networks with Limited Data", arXiv:2006.06676; official code
NVlabs/stylegan2-ada-pytorch, `training/networks.py`). DI's GAN refinement (DI section 4.2) starts
from these generators.

Variables mirror the official `state_dict()` one to one, with the same names and shapes (weights
stay [out, in, kh, kw] / [out, in]): the torch key `synthesis.b8.conv0.affine.weight` is
`variables['params']['synthesis']['b8']['conv0']['affine']['weight']`. Torch parameters live in the
'params' collection, torch buffers in 'buffers': `mapping.w_avg` (moving average of W, used for
truncation), `...noise_const` (the fixed noise of noise_mode 'const') and every `resample_filter`
(the normalised 2-D FIR filter, [1, 3, 3, 1] outer itself / 64 by default), which the computation
reads from the variables exactly as the official code reads its buffers.

Numerics follow the official reference ops (`torch_utils/ops`): `upfirdn2d` (zero insertion, pad or
crop, correlation with the flipped filter times gain^(ndim/2), stride), `conv2d_resample`
(up-sampling 3x3 convs as a stride-2 transposed convolution followed by the FIR filter with gain 4;
1x1 up-sampling convs as conv then FIR), `bias_act` (bias, activation, gain, clamp) and
`modulated_conv2d`. The modulated convolution is computed in its non-fused form (modulate the
activations, convolve with the shared weight, demodulate the outputs), which the official code uses
in training and for float16; it equals the fused grouped convolution up to float rounding.

Blocks the official network runs in float16 (the `num_fp16_res` highest resolutions) run here in
`dtype` (float32 by default, or bfloat16), so the float16-only pre-normalisation of the modulated
convolution is not needed; the mapping network, styles, demodulation coefficients and the RGB image
accumulation always run in float32, like the official code. `conv_clamp` is applied everywhere, as
the official code does.
"""

from typing import Any, Mapping, NamedTuple, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict
from jax import lax

Dtype = Any
_DN = ("NCHW", "OIHW", "NCHW")
NOISE_MODES = ("random", "const", "none")
ARCHITECTURES = ("orig", "skip", "resnet")

# name -> (function of (x, alpha), default alpha, default gain); official `bias_act.activation_funcs`.
ACTIVATIONS = {
    "linear": (lambda x, a: x, 0.0, 1.0),
    "relu": (lambda x, a: jnp.maximum(x, 0), 0.0, float(np.sqrt(2))),
    "lrelu": (lambda x, a: jnp.where(x >= 0, x, x * a), 0.2, float(np.sqrt(2))),
    "tanh": (lambda x, a: jnp.tanh(x), 0.0, 1.0),
    "sigmoid": (lambda x, a: jax.nn.sigmoid(x), 0.0, 1.0),
    "elu": (lambda x, a: jax.nn.elu(x), 0.0, 1.0),
    "selu": (lambda x, a: jax.nn.selu(x), 0.0, 1.0),
    "softplus": (lambda x, a: jax.nn.softplus(x), 0.0, 1.0),
    "swish": (lambda x, a: jax.nn.sigmoid(x) * x, 0.0, float(np.sqrt(2))),
}


# ---------------------------------------------------------------------------------------- ops

def setup_filter(taps: Sequence[float]) -> np.ndarray:
    """The official `upfirdn2d.setup_filter` (normalised, no flip, gain 1) in float32.

    1-D taps become their outer product unless there are 8 or more (then the filter stays 1-D and
    is applied separably); the result is divided by its sum.
    """
    f = np.asarray(taps, np.float32)
    if f.ndim not in (1, 2) or f.size == 0:
        raise ValueError(f"resample_filter must be 1-D or 2-D taps; got shape {f.shape}")
    if f.ndim == 1 and f.size < 8:
        f = np.outer(f, f)
    total = f.sum(dtype=np.float32)
    if total == 0:
        raise ValueError("resample_filter taps must not sum to 0")
    return (f / total).astype(np.float32)


def _filter_size(f) -> tuple[int, int]:
    """(width, height) of a 1-D (separable) or 2-D filter."""
    return (f.shape[-1], f.shape[0]) if f.ndim == 2 else (f.shape[0], f.shape[0])


def _depthwise(x, k):
    """Per-channel correlation of NCHW `x` with the 2-D kernel `k` [kh, kw] (VALID)."""
    c = x.shape[1]
    w = jnp.broadcast_to(k[None, None], (c, 1) + k.shape)
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_DN, feature_group_count=c)


def upfirdn2d(x, f, up: int = 1, down: int = 1, padding: Sequence[int] = (0, 0, 0, 0), gain: float = 1.0,
              flip_filter: bool = False):
    """Up-sample by zero insertion, pad (negative: crop), FIR-filter, down-sample; official reference op.

    Args:
      x: [N, C, H, W].
      f: float32 filter [fh, fw] or separable [taps] (e.g. a `resample_filter` buffer).
      up, down: integer factors (both axes).
      padding: (x_before, x_after, y_before, y_after) in up-sampled pixels.
      gain: signal gain; the filter is scaled by gain ** (f.ndim / 2).
      flip_filter: False = convolution (the filter is flipped before the correlation), True = correlation.
    """
    chex.assert_rank(x, 4)
    n, c, h, w = x.shape
    px0, px1, py0, py1 = (int(p) for p in padding)
    if up > 1:
        x = jnp.pad(x.reshape(n, c, h, 1, w, 1), ((0, 0), (0, 0), (0, 0), (0, up - 1), (0, 0), (0, up - 1)))
        x = x.reshape(n, c, h * up, w * up)
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (0, 0, 0), (py0, py1, 0), (px0, px1, 0)))
    f = (jnp.asarray(f, jnp.float32) * np.float32(gain ** (f.ndim / 2))).astype(x.dtype)
    if not flip_filter:
        f = f[::-1, ::-1] if f.ndim == 2 else f[::-1]
    if f.ndim == 2:
        x = _depthwise(x, f)
    else:
        x = _depthwise(_depthwise(x, f[None, :]), f[:, None])
    return x[:, :, ::down, ::down]


def upsample2d(x, f, up: int = 2):
    """Official `upfirdn2d.upsample2d`: output `up` times larger, gain up**2 (DC preserved)."""
    fw, fh = _filter_size(f)
    pad = ((fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2)
    return upfirdn2d(x, f, up=up, padding=pad, gain=up * up)


def conv2d_resample(x, w, f=None, up: int = 1, padding: int = 0, flip_weight: bool = True):
    """Official `conv2d_resample` without down-sampling (all the generator needs).

    up == 1: correlation (flip_weight=True) or convolution with `w` [O, I, kh, kw], padding `padding`.
    up > 1: padding is with respect to the up-sampled image; a 1x1 kernel convolves first and then
    up-samples with `f`; larger kernels run a stride-`up` transposed convolution and then filter
    with `f` (gain up**2), with the official padding arithmetic.
    """
    chex.assert_rank([x, w], 4)
    kh, kw = w.shape[2], w.shape[3]
    if up == 1:
        k = w if flip_weight else w[:, :, ::-1, ::-1]
        return lax.conv_general_dilated(x, k, (1, 1), ((padding, padding), (padding, padding)), dimension_numbers=_DN)
    fw, fh = _filter_size(f)
    px0, px1 = padding + (fw + up - 1) // 2, padding + (fw - up) // 2
    py0, py1 = padding + (fh + up - 1) // 2, padding + (fh - up) // 2
    if kh == 1 and kw == 1:
        k = w if flip_weight else w[:, :, ::-1, ::-1]
        x = lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=_DN)
        return upfirdn2d(x, f, up=up, padding=(px0, px1, py0, py1), gain=up * up)
    px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
    pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
    # torch's conv_transpose2d(x, w^T, stride=up, padding=p) is a correlation of the zero-dilated x,
    # padded by k-1-p, with the spatially flipped kernel; the official code flips w for the transposed
    # convolution exactly when flip_weight is True, so the correlation kernel is w itself then.
    k = w if flip_weight else w[:, :, ::-1, ::-1]
    x = lax.conv_general_dilated(x, k, (1, 1), ((kh - 1 - pyt, kh - 1 - pyt), (kw - 1 - pxt, kw - 1 - pxt)),
                                 lhs_dilation=(up, up), dimension_numbers=_DN)
    return upfirdn2d(x, f, padding=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=up * up)


def bias_act(x, b=None, act: str = "linear", gain: Optional[float] = None, clamp: Optional[float] = None):
    """Official `bias_act` reference: x + b (along axis 1), activation, times gain, clamp to +-clamp."""
    fn, alpha, def_gain = ACTIVATIONS[act]
    gain = def_gain if gain is None else float(gain)
    if b is not None:
        chex.assert_shape(b, (x.shape[1],))
        x = x + b.reshape((-1,) + (1,) * (x.ndim - 2)).astype(x.dtype)
    x = fn(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = jnp.clip(x, -clamp, clamp)
    return x


def normalize_2nd_moment(x, eps: float = 1e-8):
    """x / sqrt(mean(x^2) + eps) over axis 1 (StyleGAN's pixel norm of z and of the label embedding)."""
    return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=1, keepdims=True) + eps)


def lerp(start, end, weight):
    """torch.lerp: start + weight (end - start) for |weight| < 0.5, else end - (end - start)(1 - weight)."""
    if isinstance(weight, (int, float)):
        return start + weight * (end - start) if abs(weight) < 0.5 else end - (end - start) * (1 - weight)
    weight = jnp.asarray(weight, jnp.result_type(start, end))
    return jnp.where(jnp.abs(weight) < 0.5, start + weight * (end - start), end - (end - start) * (1 - weight))


def modulated_conv2d(x, weight, styles, up: int = 1, padding: int = 0, resample_filter=None,
                     demodulate: bool = True, flip_weight: bool = True):
    """StyleGAN2 weight (de)modulation (paper section 2.2), non-fused form.

    Computes conv(x * s, W) * d with d_o = rsqrt(sum_{i,k} (W_oik s_i)^2 + 1e-8) (if `demodulate`),
    which equals the official fused grouped convolution with the per-sample weights W_oik s_i d_o.
    x [N, I, H, W] in the compute dtype, weight [O, I, kh, kw], styles [N, I] (float32); the
    demodulation coefficients are computed in float32.
    """
    n, cin = x.shape[0], x.shape[1]
    chex.assert_shape(weight, (None, cin, None, None))
    chex.assert_shape(styles, (n, cin))
    dtype = x.dtype
    x = x * styles.astype(dtype)[:, :, None, None]
    x = conv2d_resample(x, weight.astype(dtype), resample_filter, up=up, padding=padding, flip_weight=flip_weight)
    if demodulate:
        w32, s32 = weight.astype(jnp.float32), styles.astype(jnp.float32)
        dcoefs = lax.rsqrt(jnp.square(s32) @ jnp.square(w32).sum((2, 3)).T + 1e-8)  # [N, O]
        x = x * dcoefs.astype(dtype)[:, :, None, None]
    return x


# ------------------------------------------------------------------------------------- layers

def _randn(scale: float = 1.0):
    return lambda key, shape: jax.random.normal(key, shape, jnp.float32) * np.float32(scale)


def _full(value: float):
    return lambda key, shape: jnp.full(shape, value, jnp.float32)


class FullyConnectedLayer(nn.Module):
    """Equalized-learning-rate dense layer: y = act(x (W g)^T + b m), g = m / sqrt(in), m = lr_multiplier.

    `weight` [out, in] is stored divided by m (initialised N(0, 1) / m), as officially.
    """
    features: int
    bias: bool = True
    activation: str = "linear"
    lr_multiplier: float = 1.0
    bias_init: float = 0.0

    @nn.compact
    def __call__(self, x):
        chex.assert_rank(x, 2)
        fan_in = x.shape[1]
        weight = self.param("weight", _randn(1.0 / self.lr_multiplier), (self.features, fan_in))
        w = weight.astype(x.dtype) * float(self.lr_multiplier / np.sqrt(fan_in))
        b = self.param("bias", _full(self.bias_init), (self.features,)) if self.bias else None
        if b is not None:
            b = b.astype(x.dtype)
            if self.lr_multiplier != 1:
                b = b * float(self.lr_multiplier)
        if self.activation == "linear" and b is not None:
            return x @ w.T + b
        return bias_act(x @ w.T, b, act=self.activation)


class Conv2dLayer(nn.Module):
    """Equalized-learning-rate conv (weight gain 1/sqrt(in k^2)) with optional FIR up-sampling.

    The generator uses it only as the 1x1 up-sampling `skip` of 'resnet' blocks; down-sampling
    (the discriminator's) is not implemented.
    """
    out_channels: int
    kernel_size: int
    bias: bool = True
    activation: str = "linear"
    up: int = 1
    resample_filter: Sequence[float] = (1, 3, 3, 1)
    conv_clamp: Optional[float] = None

    @nn.compact
    def __call__(self, x, gain: float = 1.0):
        cin, k = x.shape[1], self.kernel_size
        f = self.variable("buffers", "resample_filter", lambda: jnp.asarray(setup_filter(self.resample_filter))).value
        weight = self.param("weight", _randn(), (self.out_channels, cin, k, k))
        b = self.param("bias", nn.initializers.zeros, (self.out_channels,)) if self.bias else None
        w = (weight * float(1 / np.sqrt(cin * k * k))).astype(x.dtype)
        x = conv2d_resample(x, w, f, up=self.up, padding=k // 2, flip_weight=self.up == 1)
        act_gain = ACTIVATIONS[self.activation][2] * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)


class MappingNetwork(nn.Module):
    """z, c -> w (StyleGAN2-ADA `MappingNetwork`): 2nd-moment normalised z and label embedding, then
    `num_layers` FC layers (lr multiplier 0.01, lrelu with gain sqrt 2), broadcast to `num_ws` copies,
    optional truncation towards the tracked average `w_avg` (a 'buffers' variable)."""
    z_dim: int
    c_dim: int
    w_dim: int
    num_ws: Optional[int]
    num_layers: int = 8
    embed_features: Optional[int] = None
    layer_features: Optional[int] = None
    activation: str = "lrelu"
    lr_multiplier: float = 0.01
    w_avg_beta: Optional[float] = 0.995

    @nn.compact
    def __call__(self, z, c, truncation_psi=1, truncation_cutoff: Optional[int] = None, update_w_avg: bool = False):
        """z [N, z_dim], c [N, c_dim] (None when c_dim = 0) -> ws [N, num_ws, w_dim] (or [N, w_dim]).

        truncation_psi: a Python number or a traced scalar; the exact Python value 1 skips truncation.
        truncation_cutoff: truncate only the first `truncation_cutoff` ws (None: all).
        update_w_avg: the official training-mode update w_avg <- lerp(mean_N(w), w_avg, w_avg_beta);
          needs `mutable=['buffers']`.
        """
        embed = self.w_dim if self.embed_features is None else self.embed_features
        embed = 0 if self.c_dim == 0 else embed
        layer = self.w_dim if self.layer_features is None else self.layer_features
        features = [self.z_dim + embed] + [layer] * (self.num_layers - 1) + [self.w_dim]
        x = None
        if self.z_dim > 0:
            chex.assert_shape(z, (None, self.z_dim))
            x = normalize_2nd_moment(z.astype(jnp.float32))
        if self.c_dim > 0:
            chex.assert_shape(c, (None, self.c_dim))
            y = normalize_2nd_moment(FullyConnectedLayer(embed, name="embed")(c.astype(jnp.float32)))
            x = jnp.concatenate([x, y], axis=1) if x is not None else y
        if x is None:
            raise ValueError("MappingNetwork needs z_dim > 0 or c_dim > 0")
        for idx in range(self.num_layers):
            x = FullyConnectedLayer(features[idx + 1], activation=self.activation, lr_multiplier=self.lr_multiplier,
                                    name=f"fc{idx}")(x)
        w_avg = None
        if self.num_ws is not None and self.w_avg_beta is not None:
            w_avg = self.variable("buffers", "w_avg", lambda: jnp.zeros((self.w_dim,), jnp.float32))
            if update_w_avg:
                w_avg.value = lerp(lax.stop_gradient(x).mean(0), w_avg.value, self.w_avg_beta)
        elif update_w_avg:
            raise ValueError("update_w_avg needs num_ws and w_avg_beta")
        if self.num_ws is not None:
            x = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, x.shape[1]))
        if not (isinstance(truncation_psi, (int, float)) and truncation_psi == 1):
            if w_avg is None:
                raise ValueError("truncation needs the tracked w_avg (num_ws and w_avg_beta must be set)")
            avg = w_avg.value
            if self.num_ws is None or truncation_cutoff is None:
                x = lerp(avg, x, truncation_psi)
            else:
                x = x.at[:, :truncation_cutoff].set(lerp(avg, x[:, :truncation_cutoff], truncation_psi))
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+ optional 2x up-sampling), noise input, bias, lrelu with gain sqrt 2, clamp."""
    out_channels: int
    resolution: int
    kernel_size: int = 3
    up: int = 1
    use_noise: bool = True
    activation: str = "lrelu"
    resample_filter: Sequence[float] = (1, 3, 3, 1)
    conv_clamp: Optional[float] = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, w, noise_mode: str = "random", gain: float = 1.0):
        """x [N, I, R/up, R/up] (compute dtype), w [N, w_dim] -> [N, out, R, R].

        noise_mode 'random' draws N(0, 1) noise [N, 1, R, R] from the 'noise' rng stream; 'const'
        uses the `noise_const` buffer; both are scaled by `noise_strength`. 'none' adds no noise.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}; got {noise_mode!r}")
        n, cin, r = x.shape[0], x.shape[1], self.resolution
        chex.assert_shape(x, (n, cin, r // self.up, r // self.up))
        f = self.variable("buffers", "resample_filter", lambda: jnp.asarray(setup_filter(self.resample_filter))).value
        styles = FullyConnectedLayer(cin, bias_init=1.0, name="affine")(w)
        k = self.kernel_size
        weight = self.param("weight", _randn(), (self.out_channels, cin, k, k))
        noise = None
        if self.use_noise:
            noise_const = self.variable("buffers", "noise_const",
                                        lambda: jax.random.normal(self.make_rng("params"), (r, r), jnp.float32))
            strength = self.param("noise_strength", nn.initializers.zeros, ())
            if noise_mode == "random":
                noise = jax.random.normal(self.make_rng("noise"), (n, 1, r, r), jnp.float32) * strength
            elif noise_mode == "const":
                noise = noise_const.value * strength
        bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
        x = modulated_conv2d(x, weight, styles, up=self.up, padding=k // 2, resample_filter=f,
                             flip_weight=self.up == 1)
        if noise is not None:
            x = x + noise.astype(x.dtype)
        act_gain = ACTIVATIONS[self.activation][2] * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, bias, act=self.activation, gain=act_gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation (styles times weight gain 1/sqrt(in k^2)), bias, clamp."""
    out_channels: int
    kernel_size: int = 1
    conv_clamp: Optional[float] = None

    @nn.compact
    def __call__(self, x, w):
        cin, k = x.shape[1], self.kernel_size
        styles = FullyConnectedLayer(cin, bias_init=1.0, name="affine")(w) * float(1 / np.sqrt(cin * k * k))
        weight = self.param("weight", _randn(), (self.out_channels, cin, k, k))
        bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
        x = modulated_conv2d(x, weight, styles, demodulate=False)  # padding 0, as officially
        return bias_act(x, bias, clamp=self.conv_clamp)


class BlockSpec(NamedTuple):
    resolution: int
    in_channels: int     # 0: the first (4x4, constant input) block
    out_channels: int
    use_fp16: bool
    is_last: bool
    num_conv: int
    num_torgb: int


def synthesis_blocks(img_resolution: int, channel_base: int = 32768, channel_max: int = 512,
                     num_fp16_res: int = 0, architecture: str = "skip") -> tuple[tuple[BlockSpec, ...], int]:
    """(blocks, num_ws) of the official SynthesisNetwork: resolutions 4..img_resolution, channels
    min(channel_base // res, channel_max), float16 for res >= max(2^(log2 R + 1 - num_fp16_res), 8)."""
    if img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise ValueError(f"img_resolution must be a power of two >= 4; got {img_resolution}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {architecture!r}")
    log2 = int(img_resolution).bit_length() - 1
    resolutions = [2 ** i for i in range(2, log2 + 1)]
    channels = {res: min(channel_base // res, channel_max) for res in resolutions}
    fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
    blocks, num_ws = [], 0
    for res in resolutions:
        cin = channels[res // 2] if res > 4 else 0
        is_last = res == img_resolution
        spec = BlockSpec(res, cin, channels[res], res >= fp16_resolution, is_last,
                         num_conv=1 if cin == 0 else 2, num_torgb=1 if (is_last or architecture == "skip") else 0)
        num_ws += spec.num_conv + (spec.num_torgb if is_last else 0)
        blocks.append(spec)
    return tuple(blocks), num_ws


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network ('orig', 'skip' or 'resnet' architecture, paper fig. 7)."""
    in_channels: int
    out_channels: int
    resolution: int
    img_channels: int
    is_last: bool
    architecture: str = "skip"
    resample_filter: Sequence[float] = (1, 3, 3, 1)
    conv_clamp: Optional[float] = None
    use_fp16: bool = False
    kernel_size: int = 3
    use_noise: bool = True
    activation: str = "lrelu"
    dtype: Dtype = jnp.float32   # compute dtype of a block the official code runs in float16

    @property
    def num_conv(self) -> int:
        return 1 if self.in_channels == 0 else 2

    @property
    def num_torgb(self) -> int:
        return 1 if (self.is_last or self.architecture == "skip") else 0

    @nn.compact
    def __call__(self, x, img, ws, noise_mode: str = "random"):
        """x [N, in, R/2, R/2] or None (first block), img [N, C, R/2, R/2] float32 or None,
        ws [N, num_conv + num_torgb, w_dim] -> (x [N, out, R, R], img [N, C, R, R] or None)."""
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {self.architecture!r}")
        n, r = ws.shape[0], self.resolution
        chex.assert_shape(ws, (n, self.num_conv + self.num_torgb, None))
        dtype = self.dtype if self.use_fp16 else jnp.float32
        f = self.variable("buffers", "resample_filter", lambda: jnp.asarray(setup_filter(self.resample_filter))).value
        layer = dict(resolution=r, kernel_size=self.kernel_size, use_noise=self.use_noise, activation=self.activation,
                     resample_filter=self.resample_filter, conv_clamp=self.conv_clamp, dtype=dtype)
        w_iter = iter(range(ws.shape[1]))
        next_w = lambda: ws[:, next(w_iter)]
        if self.in_channels == 0:
            const = self.param("const", _randn(), (self.out_channels, r, r))
            x = jnp.broadcast_to(const.astype(dtype)[None], (n, self.out_channels, r, r))
            x = SynthesisLayer(self.out_channels, name="conv1", **layer)(x, next_w(), noise_mode)
        else:
            chex.assert_shape(x, (n, self.in_channels, r // 2, r // 2))
            x = x.astype(dtype)
            if self.architecture == "resnet":
                y = Conv2dLayer(self.out_channels, 1, bias=False, up=2, resample_filter=self.resample_filter,
                                name="skip")(x, gain=float(np.sqrt(0.5)))
                x = SynthesisLayer(self.out_channels, up=2, name="conv0", **layer)(x, next_w(), noise_mode)
                x = SynthesisLayer(self.out_channels, name="conv1", **layer)(x, next_w(), noise_mode,
                                                                            gain=float(np.sqrt(0.5)))
                x = y + x
            else:
                x = SynthesisLayer(self.out_channels, up=2, name="conv0", **layer)(x, next_w(), noise_mode)
                x = SynthesisLayer(self.out_channels, name="conv1", **layer)(x, next_w(), noise_mode)
        if img is not None:
            chex.assert_shape(img, (n, self.img_channels, r // 2, r // 2))
            img = upsample2d(img, f)
        if self.num_torgb:
            y = ToRGBLayer(self.img_channels, conv_clamp=self.conv_clamp, name="torgb")(x, next_w())
            y = y.astype(jnp.float32)
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws -> image: blocks b4, b8, ..., b{img_resolution}; block i reads ws[w_idx : w_idx + num_conv +
    num_torgb] and advances w_idx by num_conv (the ToRGB of a 'skip' block shares the next block's
    first w)."""
    w_dim: int
    img_resolution: int
    img_channels: int
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 0
    architecture: str = "skip"
    resample_filter: Sequence[float] = (1, 3, 3, 1)
    conv_clamp: Optional[float] = None
    fp16_channels_last: bool = False   # a torch memory-format option: accepted, no effect here
    kernel_size: int = 3
    use_noise: bool = True
    activation: str = "lrelu"
    dtype: Dtype = jnp.float32

    @property
    def layout(self) -> tuple[tuple[BlockSpec, ...], int]:
        return synthesis_blocks(self.img_resolution, self.channel_base, self.channel_max, self.num_fp16_res,
                                self.architecture)

    @nn.compact
    def __call__(self, ws, noise_mode: str = "random"):
        """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R] float32."""
        blocks, num_ws = self.layout
        chex.assert_shape(ws, (None, num_ws, self.w_dim))
        ws = ws.astype(jnp.float32)
        x = img = None
        w_idx = 0
        for b in blocks:
            cur = ws[:, w_idx:w_idx + b.num_conv + b.num_torgb]
            w_idx += b.num_conv
            block = SynthesisBlock(b.in_channels, b.out_channels, b.resolution, self.img_channels, b.is_last,
                                   architecture=self.architecture, resample_filter=tuple(self.resample_filter),
                                   conv_clamp=self.conv_clamp, use_fp16=b.use_fp16, kernel_size=self.kernel_size,
                                   use_noise=self.use_noise, activation=self.activation, dtype=self.dtype,
                                   name=f"b{b.resolution}")
            x, img = block(x, img, cur, noise_mode)
        return img


MAPPING_KEYS = ("num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta")
SYNTHESIS_KEYS = ("channel_base", "channel_max", "num_fp16_res", "architecture", "resample_filter", "conv_clamp",
                  "fp16_channels_last", "kernel_size", "use_noise", "activation")


def _kwargs(given: Optional[Mapping], allowed: Sequence[str], what: str) -> dict:
    out = dict(given or {})
    unknown = sorted(set(out) - set(allowed))
    if unknown:
        raise ValueError(f"{what} has keys unknown to StyleGAN2-ADA: {unknown}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


class Generator(nn.Module):
    """StyleGAN2-ADA `Generator(z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs,
    synthesis_kwargs)`: mapping then synthesis; image NCHW float32 in about [-1, 1].

    Constructor arguments are the official ones (a snapshot's `G_ema` init kwargs), plus `dtype`,
    the compute dtype of the blocks the official code runs in float16 (float32 by default).
    Apply with `{'params': ..., 'buffers': ...}`; noise_mode 'random' needs `rngs={'noise': key}`.
    `method=Generator.map` / `Generator.synthesize` run the two halves alone.
    """
    z_dim: int
    c_dim: int
    w_dim: int
    img_resolution: int
    img_channels: int
    mapping_kwargs: Mapping[str, Any] = FrozenDict()
    synthesis_kwargs: Mapping[str, Any] = FrozenDict()
    dtype: Dtype = jnp.float32

    def setup(self):
        syn = _kwargs(self.synthesis_kwargs, SYNTHESIS_KEYS, "synthesis_kwargs")
        self.synthesis = SynthesisNetwork(w_dim=self.w_dim, img_resolution=self.img_resolution,
                                          img_channels=self.img_channels, dtype=self.dtype, **syn)
        self.mapping = MappingNetwork(z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim, num_ws=self.num_ws,
                                      **_kwargs(self.mapping_kwargs, MAPPING_KEYS, "mapping_kwargs"))

    @property
    def num_ws(self) -> int:
        syn = _kwargs(self.synthesis_kwargs, SYNTHESIS_KEYS, "synthesis_kwargs")
        keys = ("channel_base", "channel_max", "num_fp16_res", "architecture")
        return synthesis_blocks(self.img_resolution, **{k: syn[k] for k in keys if k in syn})[1]

    def map(self, z, c=None, truncation_psi=1, truncation_cutoff: Optional[int] = None, update_w_avg: bool = False):
        """z [N, z_dim], c [N, c_dim] -> ws [N, num_ws, w_dim] (float32)."""
        return self.mapping(z, c, truncation_psi, truncation_cutoff, update_w_avg)

    def synthesize(self, ws, noise_mode: str = "random"):
        """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R]."""
        return self.synthesis(ws, noise_mode)

    def __call__(self, z, c=None, truncation_psi=1, truncation_cutoff: Optional[int] = None,
                 noise_mode: str = "random", update_w_avg: bool = False):
        """z [N, z_dim], c [N, c_dim] (one-hot labels; None if c_dim = 0) -> image [N, C, R, R] float32."""
        ws = self.map(z, c, truncation_psi, truncation_cutoff, update_w_avg)
        return self.synthesize(ws, noise_mode)
