"""Images -> Inception features on all devices, streamed into statistics; `compute_fid` for training loops.

Image convention: uint8 NHWC in [0, 255], or float NHWC in [-1, 1] (generator output), which is
quantised exactly like EDM's fid.py: `clip(x * 127.5 + 128, 0, 255)` truncated to uint8. The
detector is jitted with the batch split over the 'data' axis of the project mesh
(`di_jax.train.sharding`) and its weights replicated.
"""

import os
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from di_jax.eval import inception
from di_jax.eval.fid.stats import (
    FeatureStats,
    FidError,
    ISState,
    frechet_distance,
    is_finalize,
    is_init,
    is_update,
    load_stats,
    stats_finalize,
    stats_init,
    stats_update,
)
from di_jax.train import sharding

FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def to_uint8(images: jnp.ndarray) -> jnp.ndarray:
    """uint8 passes through; floats in [-1, 1] are quantised with EDM's rule."""
    if images.dtype == jnp.uint8:
        return images
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise FidError(f"images must be uint8 in [0, 255] or float in [-1, 1], got dtype {images.dtype}")
    return jnp.clip(images.astype(jnp.float32) * 127.5 + 128.0, 0.0, 255.0).astype(jnp.uint8)


def make_feature_fn(variables, mesh: Mesh | None = None, model=None) -> FeatureFn:
    """Jitted detector with the batch sharded over the mesh's 'data' axis and replicated weights.

    Any batch size works: the batch is padded (repeating its last image) to a multiple of the
    device count and cropped.

    Args:
      variables: Flax variables of `model` (`inception_convert.load_inception(path)`).
      mesh: a `sharding.make_mesh(...)` mesh; default: all devices.
      model: the detector, `images -> (features, logits)`; default `InceptionV3()` (pool3
        features, bias-free logits for IS).
    Returns: `fn(images) -> (features, logits)` as host float32 numpy arrays.
    """
    mesh = sharding.make_mesh() if mesh is None else mesh
    model = inception.InceptionV3() if model is None else model
    replicated, sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    variables = sharding.replicate(variables, mesh)
    ndev = mesh.size

    def apply(v, images):
        finite = jnp.all(jnp.isfinite(images)) if jnp.issubdtype(images.dtype, jnp.floating) else True
        feats, logits = model.apply(v, to_uint8(images))
        return feats, logits, finite

    apply = jax.jit(apply, in_shardings=(replicated, sharded), out_shardings=(sharded, sharded, replicated))

    def fn(images):
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise FidError(f"images must be NHWC with 1 or 3 channels, got shape {tuple(images.shape)}")
        xp = jnp if isinstance(images, jax.Array) else np
        if images.shape[-1] == 1:
            images = xp.repeat(images, 3, axis=-1)
        n = images.shape[0]
        if n % ndev:
            images = xp.concatenate([images, xp.repeat(images[-1:], ndev - n % ndev, axis=0)])
        feats, logits, finite = apply(variables, jax.device_put(images, sharded))
        if not bool(finite):
            raise FidError("images contain NaN or Inf")
        return np.asarray(feats)[:n], np.asarray(logits)[:n]

    return fn


def accumulate(batches: Iterable, feature_fn: FeatureFn, num: int,
               splits: int = 10) -> tuple[FeatureStats, ISState | None]:
    """Feed the first `num` images of `batches` through `feature_fn` into running statistics.

    `splits=0` skips the Inception Score. Raises if fewer than `num` images arrive.
    """
    stats = is_state = None
    for images in batches:
        images = images[: num - (stats.n if stats else 0)]
        if images.shape[0] == 0:
            break
        feats, logits = feature_fn(images)
        if stats is None:
            stats = stats_init(feats.shape[1])
            is_state = is_init(num, splits, logits.shape[1]) if splits else None
        stats = stats_update(stats, feats)
        if splits:
            is_state = is_update(is_state, logits)
        if stats.n >= num:
            break
    if stats is None or stats.n < num:
        raise FidError(f"asked for {num} images but only {stats.n if stats else 0} were available")
    return stats, is_state


def compute_fid(sample_fn: Callable, num: int, ref_stats, *, variables=None, feature_fn: FeatureFn | None = None,
                batch_size: int = 256, rng=None, mesh: Mesh | None = None, splits: int = 10) -> dict:
    """FID (and IS) of `num` samples against reference stats, for use from a training loop.

    Args:
      sample_fn: `sample_fn(rng, batch_size) -> images [batch_size, H, W, C]`, float in [-1, 1] or
        uint8; called with `jax.random.fold_in(rng, i)` for batch i, always with `batch_size` (the
        surplus of the last batch is dropped, so shapes never change).
      num: number of samples (50000 for the published numbers).
      ref_stats: `(mu, sigma)` or a path to an EDM `.npz`.
      variables: Inception variables (`inception_convert.load_inception(path)`), unless `feature_fn`.
      feature_fn: a ready `make_feature_fn(...)` result, to reuse its compilation across calls.
      batch_size: images per `sample_fn` call.
      rng: base key (default `jax.random.key(0)`).
      mesh: mesh for a new feature function (default: all devices); unused with `feature_fn`.
      splits: IS splits (0: no IS).
    Returns: {'fid', 'is_mean', 'is_std', 'num'} (IS entries only when splits > 0).
    """
    if feature_fn is None:
        if variables is None:
            raise FidError("compute_fid needs Inception `variables` or a `feature_fn`")
        feature_fn = make_feature_fn(variables, mesh)
    ref_mu, ref_sigma = load_stats(ref_stats) if isinstance(ref_stats, (str, os.PathLike)) else ref_stats
    rng = jax.random.key(0) if rng is None else rng
    batches = (sample_fn(jax.random.fold_in(rng, i), batch_size) for i in range(-(-num // batch_size)))
    stats, is_state = accumulate(batches, feature_fn, num, splits)
    out = {"fid": frechet_distance(*stats_finalize(stats), ref_mu, ref_sigma), "num": num}
    if splits:
        out["is_mean"], out["is_std"] = is_finalize(is_state)
    return out
