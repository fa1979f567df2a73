"""The analytic teachers of the toy runs: Gaussian mixtures on a ring or a grid (exact denoisers)."""

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


def from_config(cfg) -> GaussianMixture:
    """The mixture of a `config.teacher` section of kind 'ring' or 'grid'."""
    if cfg.kind == "ring":
        return ring_mixture(cfg.num_modes, cfg.radius, cfg.std)
    if cfg.kind == "grid":
        return grid_mixture(int(round(np.sqrt(cfg.num_modes))), cfg.get("spacing", 1.0), cfg.std)
    raise ValueError(f"config.teacher.kind must be 'ring' or 'grid' for a mixture; got {cfg.kind!r}")
