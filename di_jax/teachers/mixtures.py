"""The analytic teachers of the toy runs: Gaussian mixtures on a ring, on a grid, or listed mode by mode."""

import numpy as np

from di_jax.teachers.analytic import GaussianMixture


def ring_mixture(num_modes: int = 8, radius: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """K equal-weight isotropic Gaussians evenly spaced on a circle."""
    angle = 2 * np.pi * np.arange(num_modes) / num_modes
    return GaussianMixture.create(radius * np.stack([np.cos(angle), np.sin(angle)], -1).astype(np.float32), std)


def grid_mixture(side: int = 5, spacing: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """side x side equal-weight Gaussians on a square grid centred at 0."""
    coords = (np.arange(side) - (side - 1) / 2) * spacing
    means = np.stack(np.meshgrid(coords, coords, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    return GaussianMixture.create(means, std)


def listed_mixture(means, stds, weights) -> GaussianMixture:
    """Isotropic Gaussians given mode by mode: means [K][D], stds [K], weights [K] (normalised to sum 1).

    Raises ValueError naming the field for ragged, non-finite or non-positive entries.
    """
    try:
        m = np.asarray(means, np.float64)
        s = np.asarray(stds, np.float64)
        w = np.asarray(weights, np.float64)
    except (TypeError, ValueError):
        raise ValueError("config.teacher.means/stds/weights must be lists of numbers (means: one list per mode)") \
            from None
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"config.teacher.means must be a [K][D] list of mode centres; got shape {m.shape}")
    k = m.shape[0]
    for name, v in (("stds", s), ("weights", w)):
        if v.shape != (k,):
            raise ValueError(f"config.teacher.{name} must list one value per mode ({k}); got shape {v.shape}")
        if not np.all(np.isfinite(v) & (v > 0)):
            raise ValueError(f"config.teacher.{name} must be finite and > 0; got {v.tolist()}")
    if not np.all(np.isfinite(m)):
        raise ValueError("config.teacher.means must be finite")
    return GaussianMixture.create(m.astype(np.float32), s.astype(np.float32), w.astype(np.float32))


def from_config(cfg) -> GaussianMixture:
    """The mixture of a `config.teacher` section of kind 'ring', 'grid' or 'mixture' (listed modes)."""
    if cfg.kind == "ring":
        return ring_mixture(cfg.num_modes, cfg.radius, cfg.std)
    if cfg.kind == "grid":
        return grid_mixture(int(round(np.sqrt(cfg.num_modes))), cfg.get("spacing", 1.0), cfg.std)
    if cfg.kind == "mixture":
        missing = [k for k in ("means", "stds", "weights") if k not in cfg]
        if missing:
            raise ValueError(f"config.teacher.kind='mixture' needs config.teacher.{', '.join(missing)}")
        return listed_mixture(cfg.means, cfg.stds, cfg.weights)
    raise ValueError(f"config.teacher.kind must be 'ring', 'grid' or 'mixture' for a mixture; got {cfg.kind!r}")
