"""FID and Inception Score: sharded feature extraction, streaming float64 statistics, EDM .npz stats.

Pipeline: images -> `to_uint8` -> `InceptionV3` (jitted, batch sharded over the 'data' axis of a
mesh over all devices) -> host float64 running sums (`FeatureStats`, `ISState`) -> (mu, sigma) and
IS. Reference statistics use EDM's `.npz` format (keys `mu`, `sigma`), so EDM's published CIFAR-10
reference file can be used directly.

Image convention: uint8 NHWC in [0, 255], or float NHWC in [-1, 1] (generator output), which is
quantised exactly like EDM's fid.py: `clip(x * 127.5 + 128, 0, 255)` truncated to uint8.
"""

import os
from typing import Callable, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from scipy import special

from di_jax.eval import inception

FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class FidError(ValueError):
    """Bad input to the FID pipeline (stats file, images, dataset); the message is one line."""


# ----------------------------------------------------------------------------- images -> features


def to_uint8(images: jnp.ndarray) -> jnp.ndarray:
    """uint8 passes through; floats in [-1, 1] are quantised with EDM's rule."""
    if images.dtype == jnp.uint8:
        return images
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise FidError(f"images must be uint8 in [0, 255] or float in [-1, 1], got dtype {images.dtype}")
    return jnp.clip(images.astype(jnp.float32) * 127.5 + 128.0, 0.0, 255.0).astype(jnp.uint8)


def data_mesh(devices=None) -> Mesh:
    """1-D mesh with axis 'data' over `devices` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("data",))


def make_feature_fn(variables, mesh: Mesh | None = None, model=None) -> FeatureFn:
    """Jitted detector with the batch sharded over mesh axis 'data' and replicated weights.

    Returns `fn(images) -> (features, logits)` as host float32 numpy arrays. Any batch size works:
    the batch is padded (repeating its last image) to a multiple of the device count and cropped.
    `model` defaults to `InceptionV3()` (pool3 features, bias-free logits for IS).
    """
    mesh = data_mesh() if mesh is None else mesh
    model = inception.InceptionV3() if model is None else model
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    variables = jax.device_put(variables, replicated)
    ndev = mesh.shape["data"]

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


# ----------------------------------------------------------------------------- streaming statistics


class FeatureStats(NamedTuple):
    """Running sums of features on host in float64: count, sum [D] and sum of outer products [D, D]."""

    n: int
    total: np.ndarray
    outer: np.ndarray


def stats_init(dim: int = inception.NUM_FEATURES) -> FeatureStats:
    return FeatureStats(0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))


def stats_update(stats: FeatureStats, feats) -> FeatureStats:
    f = np.asarray(feats, np.float64)
    if f.ndim != 2 or f.shape[1] != stats.total.shape[0]:
        raise FidError(f"features must be [N, {stats.total.shape[0]}], got {f.shape}")
    return FeatureStats(stats.n + f.shape[0], stats.total + f.sum(0), stats.outer + f.T @ f)


def stats_finalize(stats: FeatureStats) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) with the unbiased covariance, as in EDM's fid.py."""
    if stats.n < 2:
        raise FidError(f"need at least 2 images for feature statistics, got {stats.n}")
    mu = stats.total / stats.n
    sigma = (stats.outer - stats.n * np.outer(mu, mu)) / (stats.n - 1)
    return mu, sigma


class ISState(NamedTuple):
    """Inception Score running sums per split: split i holds images [bounds[i], bounds[i+1])."""

    bounds: np.ndarray  # [splits + 1] int
    seen: int
    count: np.ndarray  # [splits]
    sum_p: np.ndarray  # [splits, C] float64
    sum_plogp: np.ndarray  # [splits] float64


def is_init(num: int, splits: int = 10, num_classes: int = inception.NUM_CLASSES) -> ISState:
    if num < splits:
        raise FidError(f"Inception Score needs at least {splits} images for {splits} splits, got {num}")
    bounds = np.array([i * num // splits for i in range(splits + 1)])
    return ISState(bounds, 0, np.zeros(splits, np.int64), np.zeros((splits, num_classes)), np.zeros(splits))


def is_update(state: ISState, logits) -> ISState:
    """Add the next images' logits; splits are contiguous in the order images arrive."""
    logits = np.asarray(logits, np.float64)
    idx = state.seen + np.arange(logits.shape[0])
    if idx.size and idx[-1] >= state.bounds[-1]:
        raise FidError(f"more images than the {state.bounds[-1]} declared for Inception Score")
    logp = special.log_softmax(logits, axis=1)
    p = np.exp(logp)
    split = np.searchsorted(state.bounds, idx, side="right") - 1
    count, sum_p, sum_plogp = state.count.copy(), state.sum_p.copy(), state.sum_plogp.copy()
    np.add.at(count, split, 1)
    np.add.at(sum_p, split, p)
    np.add.at(sum_plogp, split, special.xlogy(p, p).sum(1))
    return ISState(state.bounds, state.seen + logits.shape[0], count, sum_p, sum_plogp)


def is_finalize(state: ISState) -> tuple[float, float]:
    """(mean, std) over splits of exp(E_x KL(p(y|x) || p(y)))."""
    if state.seen != state.bounds[-1]:
        raise FidError(f"Inception Score declared {state.bounds[-1]} images but got {state.seen}")
    py = state.sum_p / state.count[:, None]
    kl = state.sum_plogp / state.count - special.xlogy(py, py).sum(1)
    scores = np.exp(kl)
    return float(scores.mean()), float(scores.std())


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """IS of in-memory logits [N, C] with `splits` contiguous splits."""
    logits = np.asarray(logits)
    return is_finalize(is_update(is_init(len(logits), splits, logits.shape[1]), logits))


# ----------------------------------------------------------------------------- Fréchet distance


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64.

    tr((S1 S2)^(1/2)) is computed as sum sqrt(eig(A S2 A)) with A = S1^(1/2) from a symmetric
    eigendecomposition: A S2 A is symmetric PSD and similar to S1 S2, so this is real and stable
    for singular (N < D) covariances, where `scipy.linalg.sqrtm(S1 @ S2)` may go complex.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise FidError(f"inconsistent stats shapes: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise FidError("feature statistics contain NaN or Inf")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = a @ s2 @ a
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


# ----------------------------------------------------------------------------- stats files


def save_stats(path: str | os.PathLike, mu, sigma) -> None:
    """Write EDM-format reference statistics (`np.savez(path, mu=..., sigma=...)`)."""
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read EDM-format reference statistics; checks keys, shapes and finiteness."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FidError(f"reference statistics not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data.files or "sigma" not in data.files:
                raise FidError(f"{path} is not an EDM stats file (keys {sorted(data.files)}, need mu, sigma)")
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    except FidError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise FidError(f"cannot read reference statistics {path}: {type(e).__name__}") from e
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise FidError(f"{path}: bad shapes mu {mu.shape}, sigma {sigma.shape}")
    return mu, sigma


# ----------------------------------------------------------------------------- drivers


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


def tfds_builder(name: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - unknown name, bad config
        raise FidError(f"unknown tfds dataset {name!r}: {type(e).__name__}") from e
    if not builder.is_prepared():
        raise FidError(f"tfds dataset {name!r} is not prepared under {builder.data_dir}; build it on a machine "
                       f"with internet (`tfds build {name} --data_dir DIR`) and pass its data_dir")
    return builder


def tfds_batches(name: str, *, split: str = "train", data_dir: str | None = None,
                 batch_size: int = 500) -> Iterator[np.ndarray]:
    """uint8 NHWC image batches of a locally prepared tfds dataset (never downloads)."""
    import tensorflow_datasets as tfds

    ds = tfds_builder(name, data_dir).as_dataset(split=split, shuffle_files=False)
    if "image" not in ds.element_spec:
        raise FidError(f"tfds dataset {name!r} has no 'image' feature")
    yield from tfds.as_numpy(ds.map(lambda ex: ex["image"]).batch(batch_size))


def stats_from_tfds(name: str, feature_fn: FeatureFn, *, split: str = "train", data_dir: str | None = None,
                    num: int | None = None, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Reference (mu, sigma) of a tfds dataset split (all of it, or its first `num` images)."""
    builder = tfds_builder(name, data_dir)
    if num is None:
        try:
            num = builder.info.splits[split].num_examples
        except Exception as e:  # noqa: BLE001 - unknown split
            raise FidError(f"tfds dataset {name!r} has no split {split!r}") from e
    batches = tfds_batches(name, split=split, data_dir=data_dir, batch_size=batch_size)
    stats, _ = accumulate(batches, feature_fn, num, splits=0)
    return stats_finalize(stats)
