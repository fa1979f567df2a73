"""The FID Inception-v3 detector (TF graph `inception-2015-12-05`) in Flax.

This is the network behind every published FID/IS number (TF FID code, EDM's TorchScript
detector, pytorch-fid's `FIDInception*` blocks). It differs from the stock Inception-v3:

  * the input is resized to 299x299 with TensorFlow-1 bilinear resizing
    (`align_corners=False`, no half-pixel centres) and normalised as `(x - 128) / 128`;
  * the 3x3 average pools inside Mixed_5b..7b ignore padding (`count_include_pad=False`);
  * the pool branch of the last block (Mixed_7c) is a 3x3 *max* pool;
  * the classifier has 1008 outputs; Inception Score uses it without its bias.

Resizing follows the TF graph (as do EDM's detector and torch-fidelity), not pytorch-fid's
`F.interpolate`, so numbers for non-299 inputs match the TF/EDM ones; at 299x299 all agree.

Input convention: **uint8 images in [0, 255], NHWC, any spatial size** (exactly what the TF graph
consumes). Generators produce floats in [-1, 1]; quantise them first with `fid.to_uint8` (EDM's
rule). Output: `(pool3 [N, 2048] float32, logits [N, 1008] float32)`.

Variables are `{'params': ..., 'batch_stats': ...}` (BatchNorm eps 1e-3, inference mode only);
`inception_convert.py` fills them from the pytorch-fid weight file.
"""

from typing import Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

SIZE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3


def _tf1_taps(n_in: int, n_out: int):
    """Source rows/weights of TF1 bilinear resize (align_corners=False, half_pixel_centers=False)."""
    scale = np.float32(n_in / n_out)
    src = np.arange(n_out, dtype=np.float32) * scale  # float32 like the TF kernel
    lo = np.floor(src).astype(np.int32)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo.astype(np.float32)).astype(np.float32)


def resize_tf1(x: jnp.ndarray, size: int = SIZE) -> jnp.ndarray:
    """TF1 `ResizeBilinear` of a float NHWC batch to `size` x `size` (bit-faithful formulation)."""
    chex.assert_rank(x, 4)
    h, w = x.shape[1:3]
    ylo, yhi, dy = _tf1_taps(h, size)
    xlo, xhi, dx = _tf1_taps(w, size)
    dx = jnp.asarray(dx)[None, None, :, None]
    dy = jnp.asarray(dy)[None, :, None, None]
    top, bot = x[:, ylo], x[:, yhi]
    top = top[:, :, xlo] + (top[:, :, xhi] - top[:, :, xlo]) * dx
    bot = bot[:, :, xlo] + (bot[:, :, xhi] - bot[:, :, xlo]) * dx
    return top + (bot - top) * dy


def _pad(padding) -> tuple:
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return ((ph, ph), (pw, pw))


class BasicConv(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU."""

    features: int
    kernel: Sequence[int] = (1, 1)
    stride: int = 1
    padding: int | Sequence[int] = 0

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, tuple(self.kernel), strides=(self.stride, self.stride),
                    padding=_pad(self.padding), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same(x):
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x):
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_down(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d), pool branch: avg pool without padding."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, name="branch1x1")(x)
        b5 = BasicConv(48, name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (Mixed_6a)."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv(64, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_down(x)], axis=-1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        b1 = BasicConv(192, name="branch1x1")(x)
        b7 = BasicConv(c, name="branch7x7_1")(x)
        b7 = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c, name="branch7x7dbl_1")(x)
        bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction (Mixed_7a)."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_down(x)], axis=-1)


class InceptionE(nn.Module):
    """8x8 block (Mixed_7b: avg-pool branch; Mixed_7c: max-pool branch, as in the FID graph)."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, name="branch1x1")(x)
        b3 = BasicConv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
        bd = BasicConv(448, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
        pooled = _max_pool_same(x) if self.max_pool else _avg_pool_same(x)
        bp = BasicConv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Classifier(nn.Module):
    """The 1008-way fc layer; its bias is always a parameter but only added if `use_bias`."""

    use_bias: bool

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], NUM_CLASSES))
        bias = self.param("bias", nn.initializers.zeros, (NUM_CLASSES,))
        y = x @ kernel
        return y + bias if self.use_bias else y


class InceptionV3(nn.Module):
    """FID Inception-v3: uint8 NHWC images -> (pool3 features [N, 2048], logits [N, 1008]).

    `output_bias=False` (default) returns the classifier logits *without* the fc bias, as used
    for Inception Score by the original IS code and StyleGAN/ADA metrics; set True for `fc(x)`.
    """

    output_bias: bool = False

    @nn.compact
    def __call__(self, images):
        if images.dtype != jnp.uint8:
            raise TypeError(f"InceptionV3 expects uint8 images in [0, 255], got dtype {images.dtype}; "
                            "quantise [-1, 1] floats with di_jax.eval.fid.to_uint8 first")
        chex.assert_rank(images, 4)
        if images.shape[-1] != 3:
            raise ValueError(f"InceptionV3 expects NHWC RGB images, got shape {images.shape}")
        x = resize_tf1(images.astype(jnp.float32))
        x = (x - 128.0) / 128.0
        x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_down(x)
        x = BasicConv(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_down(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        logits = Classifier(self.output_bias, name="fc")(pool3)
        chex.assert_shape(pool3, (images.shape[0], NUM_FEATURES))
        return pool3, logits
