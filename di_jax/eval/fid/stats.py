"""FID / IS statistics on host in float64: running feature sums, Inception Score, Fréchet distance, EDM .npz files.

Reference statistics use EDM's `.npz` format (keys `mu`, `sigma`), so EDM's published CIFAR-10
reference file can be used directly.
"""

import os
from typing import NamedTuple

import numpy as np
from scipy import special

from di_jax.eval import inception


class FidError(ValueError):
    """Bad input to the FID pipeline (stats file, images, dataset); the message is one line."""


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
    """Read EDM-format reference statistics; checks keys and shapes (`frechet_distance` checks finiteness)."""
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
