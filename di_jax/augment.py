"""EDM's non-leaking data augmentation ("AugmentPipe") as pure JAX functions.

Reimplements the augmentation of Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models" (appendix, and `training/augment.py` of NVlabs/edm), itself a trimmed version of the
ADA pipeline of Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data". The
network is conditioned on `augment_labels`, so it learns to tell augmented images apart and samples
un-augmented ones with zero labels.

Each transform group is *enabled* when its multiplier is > 0 and then *applied* to an example with
probability `min(1, p * multiplier)`, drawn independently per example. The official CIFAR-10 recipe
(`AugmentConfig.edm_cifar10()`) has p = 0.12 and xflip = 1e8, so x-flip is always eligible and each image is
mirrored with probability 1/2 regardless of p; y-flip is applied with probability p / 2 = 0.06; scale,
rotate_frac, aniso and translate_frac each with probability p.

Labels are the concatenation, in this order, of the entries of the *enabled* groups only, as float32
(EDM's layout; `augment_dim(cfg)` gives the width, 9 for the CIFAR-10 recipe = `AUGMENT_DIM`):

| group          | width | entries (0 when the group is not applied to the example)                  |
|----------------|-------|---------------------------------------------------------------------------|
| xflip          | 1     | 1 if mirrored left-right                                                  |
| yflip          | 1     | 1 if mirrored top-bottom                                                  |
| rotate_int     | 2     | k in {0..3} quarter turns (np.rot90 sense): [k in (1, 2), k in (2, 3)]    |
| translate_int  | 2     | shift (tx, ty) px / (size * translate_int_max); content moves right, *up* |
| scale          | 1     | w, with scale factor 2^(w * scale_std)                                    |
| rotate_frac    | 2     | [cos(a) - 1, sin(a)], angle a ~ U(-pi, pi) * rotate_frac_max              |
| aniso          | 2     | [w cos(r), w sin(r)], stretch (2^(w * aniso_std), inverse) turned by r    |
| translate_frac | 2     | [wx, wy], shift (wx, wy) * size * translate_frac_std; right, *down*       |
| brightness     | 1     | w, offset w * brightness_std                                              |
| contrast       | 1     | w, gain 2^(w * contrast_std) about 0                                      |
| lumaflip       | 1     | 1 if reflected through the plane normal to (1, 1, 1)                      |
| hue            | 2     | [cos(a) - 1, sin(a)], rotation about (1, 1, 1), a ~ U(-pi, pi) * hue_max  |
| saturation     | 1     | w, chroma gain 2^(w * saturation_std)                                     |

With the CIFAR-10 recipe the 9 entries are [xflip, yflip, scale, cos-1, sin, aniso_x, aniso_y, tx, ty].

Order of operations (EDM's): flips, quarter turns and integer translation are exact pixel gathers (integer
translation reflects at the borders, without repeating the edge pixel); then one combined affine map
`G_inv` (output -> input coordinates, pixel units about the image centre) for all geometric groups is
executed by reflect padding, 2x upsampling with the sym6 wavelet low-pass filter, bilinear sampling
(torch `grid_sample`, `align_corners=False`, zeros outside) and 2x downsampling with the same filter; then a
4x4 colour matrix per example acts on RGB (or, for one channel, its row-average acts on the grey value).

Differences from the official code: EDM reflect-pads by a margin computed from the whole batch (the
transformed corners of every example plus 6 pixels, at most size - 1); here the padding is always that
maximum, so shapes are static and an example does not depend on the rest of its batch. The two agree exactly
when EDM's margin reaches the maximum (usual once a batch holds a large rotation) and otherwise differ only
where EDM's smaller pad lets its zero-filled filter border reach the outermost filter taps: below 1e-4 in
every case tried, against rounding differences of ~1e-5 in float32. Random numbers are JAX's, from one
`fold_in` stream per group (`_group_uniforms`), so only the distributions match EDM's.

API: `augment(rng, images, cfg) -> (images, labels)`; its deterministic halves `sample_params`,
`params_to_labels` and `apply_params`, and the building blocks `geometric_matrix`, `color_matrix`,
`resample`, `translate_int_pixels`, `rotate_int_pixels`. `cfg` is a static (hashable) `AugmentConfig`.
"""

import dataclasses
import zlib
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "AUGMENT_DIM", "AugmentConfig", "LABEL_WIDTHS", "augment", "augment_dim", "from_config", "label_slices",
    "sample_params",
    "params_to_labels", "apply_params", "geometric_matrix", "color_matrix", "resample", "translate_int_pixels",
    "rotate_int_pixels", "translate2d", "scale2d", "rotate2d", "SYM6",
]

# Low-pass decomposition filter of the Symlet-6 wavelet (orthonormal: sums to sqrt(2), unit norm).
SYM6 = np.array([
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
])

# Label width of each transform group, in label order.
LABEL_WIDTHS: Dict[str, int] = {
    "xflip": 1, "yflip": 1, "rotate_int": 2, "translate_int": 2,
    "scale": 1, "rotate_frac": 2, "aniso": 2, "translate_frac": 2,
    "brightness": 1, "contrast": 1, "lumaflip": 1, "hue": 2, "saturation": 1,
}
_GEOMETRIC = ("scale", "rotate_frac", "aniso", "translate_frac")
_COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
_HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probability multipliers and ranges; field names and defaults are those of EDM's `AugmentPipe`."""

    p: float = 1.0                      # overall multiplier of every group's probability
    # Pixel blitting.
    xflip: float = 0.0
    yflip: float = 0.0
    rotate_int: float = 0.0
    translate_int: float = 0.0
    translate_int_max: float = 0.125    # range of integer translation, relative to the image size
    # Geometric transformations.
    scale: float = 0.0
    rotate_frac: float = 0.0
    aniso: float = 0.0
    translate_frac: float = 0.0
    scale_std: float = 0.2              # log2 std of isotropic scaling
    rotate_frac_max: float = 1.0        # range of fractional rotation, 1 = full circle
    aniso_std: float = 0.2              # log2 std of anisotropic scaling
    aniso_rotate_prob: float = 0.5      # probability that the stretch axis is rotated (not scaled by p)
    translate_frac_std: float = 0.125   # std of fractional translation, relative to the image size
    # Colour transformations.
    brightness: float = 0.0
    contrast: float = 0.0
    lumaflip: float = 0.0
    hue: float = 0.0
    saturation: float = 0.0
    brightness_std: float = 0.2
    contrast_std: float = 0.5           # log2
    hue_max: float = 1.0                # 1 = full circle
    saturation_std: float = 1.0         # log2

    @classmethod
    def edm_cifar10(cls, p: float = 0.12) -> "AugmentConfig":
        """EDM's `train.py --augment=p` (default 0.12): the recipe of the official CIFAR-10/FFHQ/AFHQ runs."""
        return cls(p=p, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)

    def enabled(self) -> Tuple[str, ...]:
        """Names of the enabled groups (multiplier > 0), in label order."""
        return tuple(name for name in LABEL_WIDTHS if getattr(self, name) > 0)

    def prob(self, name: str) -> float:
        """Probability that group `name` is applied to an example (before its own coin, for flips)."""
        return min(1.0, getattr(self, name) * self.p)


def augment_dim(cfg: AugmentConfig) -> int:
    """Width of the augment labels for `cfg` (the network's `augment_dim`)."""
    return sum(LABEL_WIDTHS[name] for name in cfg.enabled())


def label_slices(cfg: AugmentConfig) -> Dict[str, slice]:
    """Where each enabled group's entries sit in the label vector."""
    out, start = {}, 0
    for name in cfg.enabled():
        out[name] = slice(start, start + LABEL_WIDTHS[name])
        start += LABEL_WIDTHS[name]
    return out


AUGMENT_DIM = augment_dim(AugmentConfig.edm_cifar10())


def from_config(cfg) -> "AugmentConfig | None":
    """The `AugmentConfig` of a run's `config.augment` (any subset of the fields); None when p = 0 or absent."""
    if cfg is None or not cfg.get("p", 0.0):
        return None
    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    unknown = sorted(set(cfg.keys()) - fields)
    if unknown:
        raise ValueError(f"config.augment has unknown fields {unknown}; known: {sorted(fields)}")
    return AugmentConfig(**{k: float(v) for k, v in cfg.items()})


# ----------------------------------------------------------------------------------------------------
# Random parameters.

_STREAM_IDS = {name: zlib.crc32(name.encode()) & 0x7FFFFFFF for name in LABEL_WIDTHS}


def _group_uniforms(rng, names, n):
    """U[0, 1) draws [len(names), 4, n]: group g's block comes from its own stream fold_in(rng, crc32(name)).

    Vectorised over the groups so the compiled graph holds one Threefry computation instead of one per draw.
    """
    ids = jnp.array([_STREAM_IDS[name] for name in names], jnp.uint32)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, ids)
    return jax.vmap(lambda k: jax.random.uniform(k, (4, n)))(keys)


def _normal(u):
    """Standard normal from U[0, 1) by the inverse CDF (as jax.random.normal does)."""
    v = jnp.maximum(2 * u - 1, np.nextafter(np.float32(-1), np.float32(0)))
    return np.sqrt(2) * lax.erf_inv(v)


def sample_params(rng, cfg: AugmentConfig, shape) -> Dict[str, jax.Array]:
    """Per-example parameters of every enabled group, already zeroed where the group is not applied.

    `shape` is the image batch shape [N, C, H, W] (H and W set the integer translation range). Returns a dict
    name -> array: xflip/yflip/lumaflip int32 [N] in {0, 1}; rotate_int int32 [N] quarter turns;
    translate_int int32 [N, 2] pixels (x, y); scale, rotate_frac (angle), brightness, contrast, hue (angle),
    saturation float32 [N]; aniso float32 [N, 2] (w, r); translate_frac float32 [N, 2] (wx, wy).
    """
    n, _, h, w = shape
    names = cfg.enabled()
    if not names:
        return {}
    draws = _group_uniforms(rng, names, n)
    params = {}
    for name, u in zip(names, draws):  # u [4, n]: row 0 is the gate, rows 1-3 the group's own values
        gate = u[0] < getattr(cfg, name) * cfg.p
        if name in ("xflip", "yflip", "lumaflip"):  # a fair coin
            value = (u[1] < 0.5).astype(jnp.int32)
        elif name == "rotate_int":  # uniform on {0, 1, 2, 3}
            value = jnp.minimum(jnp.floor(u[1] * 4), 3).astype(jnp.int32)
        elif name == "translate_int":  # round(U(-1, 1) * size * max), x then y
            ranges = jnp.array([w * cfg.translate_int_max, h * cfg.translate_int_max], u.dtype)
            value = jnp.round((u[1:3].T * 2 - 1) * ranges).astype(jnp.int32)
        elif name in ("rotate_frac", "hue"):  # angle ~ U(-pi, pi) * max
            value = (u[1] * 2 - 1) * (np.pi * (cfg.rotate_frac_max if name == "rotate_frac" else cfg.hue_max))
        elif name == "aniso":  # EDM gates the stretch only; the direction has its own gate, aniso_rotate_prob
            r = jnp.where(u[2] < cfg.aniso_rotate_prob, (u[1] * 2 - 1) * np.pi, 0.0)
            value = jnp.stack([jnp.where(gate, _normal(u[3]), 0.0), r], axis=-1)
            gate = jnp.ones_like(gate)
        elif name == "translate_frac":
            value = _normal(u[1:3]).T
        else:  # scale, brightness, contrast, saturation: a standard normal
            value = _normal(u[1])
        gate = gate.reshape((n,) + (1,) * (value.ndim - 1))
        params[name] = jnp.where(gate, value, jnp.zeros_like(value))
    return params


def params_to_labels(params: Dict[str, jax.Array], cfg: AugmentConfig, shape) -> jax.Array:
    """The [N, augment_dim(cfg)] float32 labels EDM attaches to the parameters (layout: module docstring)."""
    n, _, h, w = shape
    cols = []
    for name in cfg.enabled():
        v = params[name]
        if name == "rotate_int":
            cols += [(v == 1) | (v == 2), (v == 2) | (v == 3)]
        elif name == "translate_int":
            v = v.astype(jnp.float32)
            cols += [v[:, 0] / (w * cfg.translate_int_max), v[:, 1] / (h * cfg.translate_int_max)]
        elif name in ("rotate_frac", "hue"):
            cols += [jnp.cos(v) - 1, jnp.sin(v)]
        elif name == "aniso":
            cols += [v[:, 0] * jnp.cos(v[:, 1]), v[:, 0] * jnp.sin(v[:, 1])]
        elif name == "translate_frac":
            cols += [v[:, 0], v[:, 1]]
        else:
            cols += [v]
    if not cols:
        return jnp.zeros((n, 0), jnp.float32)
    return jnp.stack([jnp.asarray(c).astype(jnp.float32) for c in cols], axis=-1)


# ----------------------------------------------------------------------------------------------------
# Pixel blitting (exact).

def _bcast(v):
    return v.reshape(v.shape[:1] + (1, 1, 1))


def rotate_int_pixels(images, k):
    """Rotate each [C, H, W] image by k[i] quarter turns counter-clockwise (np.rot90 on axes (H, W))."""
    if images.shape[2] != images.shape[3]:
        raise ValueError(f"rotate_int needs square images, got {images.shape}")
    k = _bcast(k)
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


def _apply_color(images, m):
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


# ----------------------------------------------------------------------------------------------------
# The pipeline.

def apply_params(images, params: Dict[str, jax.Array], cfg: AugmentConfig):
    """Apply the enabled groups of `cfg` with the given per-example parameters (as from `sample_params`)."""
    n, c, h, w = images.shape
    if cfg.xflip > 0:
        images = jnp.where(_bcast(params["xflip"]) == 1, images[:, :, :, ::-1], images)
    if cfg.yflip > 0:
        images = jnp.where(_bcast(params["yflip"]) == 1, images[:, :, ::-1, :], images)
    if cfg.rotate_int > 0:
        images = rotate_int_pixels(images, params["rotate_int"])
    if cfg.translate_int > 0:
        images = translate_int_pixels(images, params["translate_int"])
    if any(getattr(cfg, name) > 0 for name in _GEOMETRIC):
        cdt = jnp.promote_types(images.dtype, jnp.float32)
        images = resample(images, geometric_matrix(params, cfg, h, w, dtype=cdt))
    if any(getattr(cfg, name) > 0 for name in _COLOR):
        images = _apply_color(images, color_matrix(params, cfg, dtype=jnp.promote_types(images.dtype, jnp.float32)))
    return images


def augment(rng, images, cfg: AugmentConfig):
    """Augment a batch of NCHW images: returns (images, labels [N, augment_dim(cfg)] float32).

    Pure and deterministic in `rng`; `cfg` must be static under jit. With p == 0 (or nothing enabled) the
    images come back untouched and the labels are zero, without running the resampler.
    """
    n = images.shape[0]
    if cfg.p == 0 or not cfg.enabled():
        return images, jnp.zeros((n, augment_dim(cfg)), jnp.float32)
    params = sample_params(rng, cfg, images.shape)
    return apply_params(images, params, cfg), params_to_labels(params, cfg, images.shape)
