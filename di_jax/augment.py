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
`resample`, `translate_int_pixels`, `rotate_int_pixels` (in `di_jax.augment_ops`, re-exported here).
`cfg` is a static (hashable) `AugmentConfig`.
"""

import dataclasses
import zlib
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from di_jax.augment_ops import (  # noqa: F401  (re-exported: the public building blocks)
    SYM6,
    apply_color_matrix,
    color_matrix,
    geometric_matrix,
    per_example,
    resample,
    rotate2d,
    rotate_int_pixels,
    scale2d,
    translate2d,
    translate_int_pixels,
)

__all__ = [
    "AUGMENT_DIM", "AugmentConfig", "LABEL_WIDTHS", "augment", "augment_dim", "from_config", "label_slices",
    "sample_params",
    "params_to_labels", "apply_params", "geometric_matrix", "color_matrix", "resample", "translate_int_pixels",
    "rotate_int_pixels", "translate2d", "scale2d", "rotate2d", "SYM6",
]

# Label width of each transform group, in label order.
LABEL_WIDTHS: Dict[str, int] = {
    "xflip": 1, "yflip": 1, "rotate_int": 2, "translate_int": 2,
    "scale": 1, "rotate_frac": 2, "aniso": 2, "translate_frac": 2,
    "brightness": 1, "contrast": 1, "lumaflip": 1, "hue": 2, "saturation": 1,
}
_GEOMETRIC = ("scale", "rotate_frac", "aniso", "translate_frac")
_COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")


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
# The pipeline.

def apply_params(images, params: Dict[str, jax.Array], cfg: AugmentConfig):
    """Apply the enabled groups of `cfg` with the given per-example parameters (as from `sample_params`)."""
    n, c, h, w = images.shape
    if cfg.xflip > 0:
        images = jnp.where(per_example(params["xflip"]) == 1, images[:, :, :, ::-1], images)
    if cfg.yflip > 0:
        images = jnp.where(per_example(params["yflip"]) == 1, images[:, :, ::-1, :], images)
    if cfg.rotate_int > 0:
        images = rotate_int_pixels(images, params["rotate_int"])
    if cfg.translate_int > 0:
        images = translate_int_pixels(images, params["translate_int"])
    if any(getattr(cfg, name) > 0 for name in _GEOMETRIC):
        cdt = jnp.promote_types(images.dtype, jnp.float32)
        images = resample(images, geometric_matrix(params, cfg, h, w, dtype=cdt))
    if any(getattr(cfg, name) > 0 for name in _COLOR):
        cdt = jnp.promote_types(images.dtype, jnp.float32)
        images = apply_color_matrix(images, color_matrix(params, cfg, dtype=cdt))
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
