"""Teachers: exact analytic ones (`analytic`) and converted EDM networks (see `di_jax.convert`)."""

from di_jax.teachers.analytic import (AffineGaussianGenerator, GaussianMixture, IsotropicGaussian,
                                      gaussian_kl)

__all__ = ["AffineGaussianGenerator", "GaussianMixture", "IsotropicGaussian", "gaussian_kl"]
