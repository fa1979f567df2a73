"""Exact sample-quality metrics against an analytic Gaussian-mixture teacher (toy experiments)."""

from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from di_jax.teachers.analytic import GaussianMixture


def mode_counts(mixture: GaussianMixture, x: jax.Array) -> np.ndarray:
    """Fraction of samples assigned to each component (highest posterior at sigma = 0)."""
    k = np.asarray(jnp.argmax(mixture.responsibilities(x), axis=-1))
    return np.bincount(k, minlength=mixture.num_components) / len(k)


def share_metrics(mixture: GaussianMixture, x: jax.Array, tolerance: float = 0.25) -> Dict[str, float]:
    """The metrics of the samples' mode shares (one assignment pass):

      mode_coverage  fraction of modes holding at least 1/(4K) of the samples
      mode_recall    fraction of modes whose share is within `tolerance` (relative) of the mode's weight:
                     1.0 means every mode is present with its mass within 25 % (default), a stricter
                     recall than coverage, and the one that sees unequal weights
      weight_error   total variation 0.5 sum_k |share_k - w_k| between the shares and the weights
    """
    shares = mode_counts(mixture, x)
    w = np.asarray(mixture.weights, np.float64)
    return dict(mode_coverage=float(np.mean(shares >= 1.0 / (4 * len(w)))),
                mode_recall=float(np.mean(np.abs(shares - w) <= tolerance * w)),
                weight_error=float(0.5 * np.sum(np.abs(shares - w))))


def mode_coverage(mixture: GaussianMixture, x: jax.Array) -> float:
    """Fraction of modes holding at least 1/(4K) of the samples (`share_metrics`)."""
    return share_metrics(mixture, x)["mode_coverage"]


def mode_recall(mixture: GaussianMixture, x: jax.Array, tolerance: float = 0.25) -> float:
    """Fraction of modes whose share of the samples is within `tolerance` (relative) of its weight (`share_metrics`)."""
    return share_metrics(mixture, x, tolerance)["mode_recall"]


def weight_error(mixture: GaussianMixture, x: jax.Array) -> float:
    """Total variation between the samples' mode shares and the weights (`share_metrics`)."""
    return share_metrics(mixture, x)["weight_error"]


@jax.jit
def _energy_distance(x: jax.Array, y: jax.Array) -> jax.Array:
    dist = lambda a, b: jnp.mean(jnp.sqrt(jnp.sum((a[:, None] - b[None]) ** 2, -1) + 1e-12))
    return 2 * dist(x, y) - dist(x, x) - dist(y, y)


def energy_distance(x: jax.Array, y: jax.Array) -> float:
    """Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (>= 0, zero iff equal laws), V-statistic.

    Compiled, so that the pairwise distances are fused instead of materialised op by op.
    """
    return float(_energy_distance(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))


def mixture_metrics(mixture: GaussianMixture, x: jax.Array, rng: jax.Array, num_ref: int = 2000) -> Dict[str, float]:
    """Mode coverage and recall, precision (within 3 std of a mode), weight error, mean teacher
    log-likelihood and energy distance of samples x [N, D]."""
    ref = mixture.sample(rng, num_ref)
    x = x[:num_ref]
    return dict(**share_metrics(mixture, x), precision=near_mode_fraction(mixture, x, 3.0),
                teacher_loglik=float(jnp.mean(mixture.log_prob(x))),
                teacher_loglik_of_teacher=float(jnp.mean(mixture.log_prob(ref))),
                energy_distance=energy_distance(x, ref))


def near_mode_fraction(mixture: GaussianMixture, x: jax.Array, num_std: float = 3.0) -> float:
    """Fraction of samples within `num_std` standard deviations of the nearest mode (a 'high-quality' rate).

    Per sample, the Euclidean distance to each mean is divided by that component's std; a teacher
    sample in 2-D lies within 3 std with probability 1 - exp(-9/2) = 0.989.
    """
    d = jnp.sqrt(jnp.sum((x[:, None, :] - mixture.means[None]) ** 2, -1)) / mixture.stds[None, :]
    return float(jnp.mean(jnp.min(d, axis=-1) <= num_std))
