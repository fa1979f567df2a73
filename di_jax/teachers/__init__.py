"""Teachers: the registry of teacher families, and the teachers themselves.

`build_teacher(config)` looks `config.teacher.kind` up in `TEACHERS` (kind -> config -> `Teacher`):

  ring, grid  analytic Gaussian mixtures with exact denoisers (`mixtures`, `analytic`)
  mixture     the same, listed mode by mode (teacher.means, stds, weights: unequal weights and widths)
  edm         EDM networks read through the converter (`edm`; the embedded `digits` teacher by default)
  pixart      text-to-image ε-prediction DiTs (PixArt-α) in diffusers folders, as EDM denoisers with σ rounded
              to the 1000 DDPM levels (`discrete`; the embedded digits text-to-image teacher by default);
              their labels are `discrete.TextCondition`s

A new family registers a builder here.
"""

from typing import Callable, Dict

from di_jax.teachers import mixtures
from di_jax.teachers.analytic import AffineGaussianGenerator, GaussianMixture, IsotropicGaussian, gaussian_kl
from di_jax.teachers.base import Teacher


def _mixture(config) -> Teacher:
    mixture = mixtures.from_config(config.teacher)
    return Teacher(params=mixture, denoise=lambda mix, x, sigma, labels, rng=None: mix.denoise(x, sigma),
                   data_shape=(mixture.dim,))


def _edm(config) -> Teacher:
    from di_jax.teachers import edm  # imports the converter and the networks: only when used
    return edm.load(config)


def _pixart(config) -> Teacher:
    from di_jax.teachers import discrete
    return discrete.load(config)


TEACHERS: Dict[str, Callable[..., Teacher]] = {"ring": _mixture, "grid": _mixture, "mixture": _mixture,
                                               "edm": _edm, "pixart": _pixart}


def build_teacher(config) -> Teacher:
    """The teacher of `config.teacher.kind` (one of TEACHERS)."""
    kind = config.teacher.kind
    if kind not in TEACHERS:
        raise ValueError(f"config.teacher.kind must be one of {tuple(TEACHERS)}; got {kind!r}")
    return TEACHERS[kind](config)


__all__ = ["AffineGaussianGenerator", "GaussianMixture", "IsotropicGaussian", "Teacher", "TEACHERS",
           "build_teacher", "gaussian_kl"]
