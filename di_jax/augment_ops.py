"""The image operations of `di_jax.augment`, given explicit per-example parameters (no randomness).

Exact pixel blits (flips are in the pipeline; quarter turns, integer translation with reflection),
the 3x3 geometric matrices and EDM's resampler (reflect pad, sym6 2x upsampling, bilinear sampling
as torch `grid_sample(align_corners=False)`, sym6 2x downsampling), and the 4x4 colour matrix. The
conventions (matrix directions, label meaning) are documented in `di_jax.augment`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

if TYPE_CHECKING:
    from di_jax.augment import AugmentConfig

# Low-pass decomposition filter of the Symlet-6 wavelet (orthonormal: sums to sqrt(2), unit norm).
SYM6 = np.array([
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
])

_HIGHEST = lax.Precision.HIGHEST


def per_example(v):
    return v.reshape(v.shape[:1] + (1, 1, 1))


def rotate_int_pixels(images, k):
    """Rotate each [C, H, W] image by k[i] quarter turns counter-clockwise (np.rot90 on axes (H, W))."""
    if images.shape[2] != images.shape[3]:
        raise ValueError(f"rotate_int needs square images, got {images.shape}")
    k = per_example(k)
    images = jnp.where((k == 1) | (k == 2), images[:, :, :, ::-1], images)
    images = jnp.where((k == 2) | (k == 3), images[:, :, ::-1, :], images)
    return jnp.where((k == 1) | (k == 3), jnp.swapaxes(images, 2, 3), images)


def _reflect_index(i, size):
    """Map any integer index into [0, size) by mirroring about the edge pixels (no edge repeat)."""
    period = 2 * size - 2
    return size - 1 - jnp.abs(size - 1 - jnp.mod(i, period))


def translate_int_pixels(images, txy):
    """EDM's integer translation: out[y, x] = in[refl(y + ty), refl(x - tx)] with txy [N, 2] = (tx, ty).

    Note the signs: content moves right by tx but *up* by ty (EDM's convention, kept).
    """
    n, c, h, w = images.shape
    x_src = _reflect_index(jnp.arange(w)[None, :] - txy[:, :1], w)  # [N, W]
    y_src = _reflect_index(jnp.arange(h)[None, :] + txy[:, 1:], h)  # [N, H]
    images = jnp.take_along_axis(images, x_src[:, None, None, :], axis=3)
    return jnp.take_along_axis(images, y_src[:, None, :, None], axis=2)


# ----------------------------------------------------------------------------------------------------
# Geometric transformations.

def _mat3(rows):
    """Stack a 3x3 nested list of scalars / [N] arrays into [N, 3, 3]."""
    ref = next(x for row in rows for x in row if isinstance(x, jax.Array))
    rows = [jnp.stack([jnp.broadcast_to(jnp.asarray(x, ref.dtype), ref.shape) for x in row], -1) for row in rows]
    return jnp.stack(rows, -2)


def translate2d(tx, ty):
    return _mat3([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def scale2d(sx, sy):
    return _mat3([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def rotate2d(theta):
    """Counter-clockwise in (x right, y down) pixel axes, i.e. [[cos, -sin], [sin, cos]]."""
    c, s = jnp.cos(theta), jnp.sin(theta)
    return _mat3([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _matmul(a, b):
    return jnp.matmul(a, b, precision=_HIGHEST)


def geometric_matrix(params: Dict[str, jax.Array], cfg: AugmentConfig, height: int, width: int,
                     dtype=jnp.float32) -> jax.Array:
    """EDM's `G_inv` [N, 3, 3]: maps output to input pixel coordinates (x right, y down, origin at the centre).

    The product, in EDM's order, of the inverses of: scale s = 2^(w * scale_std); rotation by the angle;
    stretch by (s, 1/s) with s = 2^(w * aniso_std) in a frame rotated by r; translation by
    (wx * W, wy * H) * translate_frac_std. Disabled groups contribute the identity.
    """
    n = next(iter(params.values())).shape[0]
    g = jnp.broadcast_to(jnp.eye(3, dtype=dtype), (n, 3, 3))
    if cfg.scale > 0:
        s = jnp.exp2(params["scale"].astype(dtype) * cfg.scale_std)
        g = _matmul(g, scale2d(1 / s, 1 / s))
    if cfg.rotate_frac > 0:
        g = _matmul(g, rotate2d(params["rotate_frac"].astype(dtype)))
    if cfg.aniso > 0:
        w, r = params["aniso"][:, 0].astype(dtype), params["aniso"][:, 1].astype(dtype)
        s = jnp.exp2(w * cfg.aniso_std)
        g = _matmul(_matmul(_matmul(g, rotate2d(-r)), scale2d(1 / s, s)), rotate2d(r))
    if cfg.translate_frac > 0:
        t = params["translate_frac"].astype(dtype)
        g = _matmul(g, translate2d(-t[:, 0] * (width * cfg.translate_frac_std),
                                   -t[:, 1] * (height * cfg.translate_frac_std)))
    return g


def _conv1d(x, kernel, axis, *, lhs_dilation=1, stride=1, pad=0):
    """Per-channel 1-D cross-correlation of [N, C, H, W] along axis 2 or 3 (zero padding)."""
    n, c, h, w = x.shape
    k = jnp.asarray(kernel, x.dtype)
    k = k.reshape((1, 1, 1, -1) if axis == 3 else (1, 1, -1, 1))
    ones, padding = (1, 1), [(0, 0), (0, 0)]
    padding[axis - 2] = (pad, pad)
    dil, strides = list(ones), list(ones)
    dil[axis - 2], strides[axis - 2] = lhs_dilation, stride
    y = lax.conv_general_dilated(x.reshape(n * c, 1, h, w), k, window_strides=strides, padding=padding,
                                 lhs_dilation=dil, dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=_HIGHEST)
    return y.reshape((n, c) + y.shape[2:])


def _bilinear(images, ix, iy):
    """torch grid_sample(mode='bilinear', padding_mode='zeros') at pixel-index positions ix, iy [N, Ho, Wo]."""
    n, c, h, w = images.shape
    x0, y0 = jnp.floor(ix), jnp.floor(iy)
    fx, fy = ix - x0, iy - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)

    def tap(img, xi, yi, weight):
        valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        flat = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)
        return img.reshape(c, h * w)[:, flat] * jnp.where(valid, weight, 0).astype(img.dtype)

    def one(img, x0, y0, fx, fy):
        return (tap(img, x0, y0, (1 - fx) * (1 - fy)) + tap(img, x0 + 1, y0, fx * (1 - fy))
                + tap(img, x0, y0 + 1, (1 - fx) * fy) + tap(img, x0 + 1, y0 + 1, fx * fy))

    return jax.vmap(one)(images, x0, y0, fx, fy)


def resample(images, g_inv, filt=SYM6):
    """Apply the affine maps `g_inv` [N, 3, 3] (output -> input, see `geometric_matrix`) to [N, C, H, W] images.

    Reflect-pad by (H - 1, W - 1), upsample 2x with `filt`, sample bilinearly (torch grid_sample with
    align_corners=False, zeros outside), downsample 2x with `filt` and crop: EDM's procedure with its largest
    padding. Computes in at least float32. The identity map returns the input up to rounding (the filter
    is orthonormal).
    """
    n, c, h, w = images.shape
    if h < 2 or w < 2:
        raise ValueError(f"resample needs images of at least 2x2 pixels, got {images.shape}")
    cdt = jnp.promote_types(images.dtype, jnp.float32)
    taps = len(filt)
    hz_pad = taps // 4
    pad_y, pad_x = h - 1, w - 1

    x = jnp.pad(images.astype(cdt), ((0, 0), (0, 0), (pad_y, pad_y), (pad_x, pad_x)), mode="reflect")
    # Upsample: zero-interleave and convolve (correlate with the reversed filter), x then y.
    x = _conv1d(x, filt[::-1], 3, lhs_dilation=2, pad=(taps + 1) // 2)
    x = _conv1d(x, filt[::-1], 2, lhs_dilation=2, pad=(taps + 1) // 2)
    hu, wu = x.shape[2:]

    # Output grid: the image plus hz_pad pixels each side, at twice the resolution. EDM expresses the maps in
    # normalised coordinates; composed out, output index j samples upsampled index 2 g((j - (Wo-1)/2 + 1/2) / 2)
    # - 1/2 + (Wu-1)/2, g being g_inv in centred pixel units of the original image (likewise for y).
    ho, wo = 2 * (h + 2 * hz_pad), 2 * (w + 2 * hz_pad)
    px = (jnp.arange(wo, dtype=cdt) - (wo - 1) / 2 + 0.5) / 2
    py = (jnp.arange(ho, dtype=cdt) - (ho - 1) / 2 + 0.5) / 2
    g = jnp.moveaxis(g_inv.astype(cdt)[:, :2, :, None, None], 1, 0)  # [2, N, 3, 1, 1]
    gx, gy = g[:, :, 0] * px + g[:, :, 1] * py[:, None] + g[:, :, 2]  # each [N, Ho, Wo]
    x = _bilinear(x, 2 * gx - 0.5 + (wu - 1) / 2, 2 * gy - 0.5 + (hu - 1) / 2).reshape(n, c, ho, wo)

    # Downsample (correlate with the filter, stride 2) and crop hz_pad, x then y.
    x = _conv1d(x, filt, 3, stride=2, pad=(taps - 1) // 2)[:, :, :, hz_pad:-hz_pad]
    x = _conv1d(x, filt, 2, stride=2, pad=(taps - 1) // 2)[:, :, hz_pad:-hz_pad, :]
    return x.astype(images.dtype)


# ----------------------------------------------------------------------------------------------------
# Colour transformations.

def color_matrix(params: Dict[str, jax.Array], cfg: AugmentConfig, dtype=jnp.float32) -> jax.Array:
    """EDM's per-example 4x4 homogeneous RGB matrix [N, 4, 4], composed brightness -> ... -> saturation."""
    n = next(iter(params.values())).shape[0]
    eye = jnp.eye(4, dtype=dtype)
    a = jnp.asarray(np.array([1, 1, 1, 0]) / np.sqrt(3), dtype)
    aa = jnp.outer(a, a)
    m = jnp.broadcast_to(eye, (n, 4, 4))
    if cfg.brightness > 0:
        b = params["brightness"].astype(dtype) * cfg.brightness_std
        m = m.at[:, :3, 3].add(b[:, None])  # translate3d(b, b, b) @ m: bottom row of m is (0, 0, 0, 1)
    if cfg.contrast > 0:
        c = jnp.exp2(params["contrast"].astype(dtype) * cfg.contrast_std)
        m = m * jnp.concatenate([jnp.broadcast_to(c[:, None], (n, 3)), jnp.ones((n, 1), dtype)], -1)[:, :, None]
    if cfg.lumaflip > 0:
        f = eye - 2 * aa * params["lumaflip"].astype(dtype)[:, None, None]
        m = _matmul(f, m)
    if cfg.hue > 0:
        t = params["hue"].astype(dtype)[:, None, None]
        cross = jnp.array([[0, -1, 1, 0], [1, 0, -1, 0], [-1, 1, 0, 0], [0, 0, 0, 0]], dtype) / np.sqrt(3)
        # Rodrigues about the unit axis a: a a^T (1 - cos) + cos I + sin [a]_x, with the homogeneous 1 kept.
        rot = aa * (1 - jnp.cos(t)) + jnp.cos(t) * jnp.diag(jnp.array([1, 1, 1, 0], dtype)) + jnp.sin(t) * cross
        rot = rot.at[:, 3, 3].set(1)
        m = _matmul(rot, m)
    if cfg.saturation > 0:
        s = jnp.exp2(params["saturation"].astype(dtype) * cfg.saturation_std)[:, None, None]
        m = _matmul(aa + (eye - aa) * s, m)
    return m


def apply_color_matrix(images, m):
    n, c, h, w = images.shape
    m = m.astype(jnp.promote_types(images.dtype, jnp.float32))
    x = images.reshape(n, c, h * w)
    if c == 3:
        x = jnp.einsum("nij,njp->nip", m[:, :3, :3], x, precision=_HIGHEST) + m[:, :3, 3:]
    elif c == 1:
        row = m[:, :3, :].mean(axis=1)  # [N, 4]: average of the R, G, B output rows
        x = x * row[:, :3].sum(-1)[:, None, None] + row[:, 3, None, None]
    else:
        raise ValueError(f"colour augmentation needs 1 or 3 channels, got {c}")
    return x.reshape(n, c, h, w).astype(images.dtype)
