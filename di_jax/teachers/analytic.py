"""Teachers with exact denoisers at every noise level: Gaussians and Gaussian mixtures.

Data x0 in R^D; the EDM-diffused marginal p_sigma = p_0 * N(0, sigma^2 I) is again Gaussian (or a
mixture), so denoiser, score and log-density are closed-form (spec distillation.md §6). All are
pytrees (NamedTuples), so their fields can be differentiated: `AffineGaussianGenerator` uses this to
give tests the *exact* fake score of a generator x0 = mu + s z.

Shapes: x [B, D]; sigma a scalar or [B]. Denoisers follow the library's callable convention
`denoiser(x, sigma, labels) -> x0_hat` (labels ignored).
"""

from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from di_jax import diffusion

Array = jax.Array
_LOG_2PI = float(np.log(2 * np.pi))


def _sigma2(sigma, x: Array) -> Array:
    diffusion.check_positive("sigma", sigma, allow_zero=True)
    return diffusion.expand_sigma(sigma, x) ** 2


class IsotropicGaussian(NamedTuple):
    """p_0 = N(mean, std^2 I); p_sigma = N(mean, (std^2 + sigma^2) I)."""
    mean: Array   # [D]
    std: Array    # scalar

    @property
    def dim(self) -> int:
        return self.mean.shape[-1]

    def sample(self, rng: Array, n: int) -> Array:
        return self.mean + self.std * jax.random.normal(rng, (n, self.dim), jnp.result_type(self.mean))

    def denoise(self, x: Array, sigma) -> Array:
        """E[x0 | x_sigma = x] = m + r^2 / (r^2 + sigma^2) (x - m)."""
        chex.assert_shape(x, (None, self.dim))
        r2 = self.std**2
        return self.mean + r2 / (r2 + _sigma2(sigma, x)) * (x - self.mean)

    def score(self, x: Array, sigma) -> Array:
        chex.assert_shape(x, (None, self.dim))
        return -(x - self.mean) / (self.std**2 + _sigma2(sigma, x))

    def log_prob(self, x: Array, sigma=0.0) -> Array:
        chex.assert_shape(x, (None, self.dim))
        diffusion.check_positive("sigma", sigma, allow_zero=True)
        var = self.std**2 + jnp.broadcast_to(jnp.asarray(sigma, x.dtype) ** 2, x.shape[:1])
        return -0.5 * (jnp.sum((x - self.mean) ** 2, -1) / var + self.dim * (jnp.log(var) + _LOG_2PI))

    def denoiser(self, x: Array, sigma, labels: Optional[Array] = None) -> Array:
        return self.denoise(x, sigma)


def gaussian_kl(q: IsotropicGaussian, p: IsotropicGaussian, sigma=0.0) -> Array:
    """KL(q_sigma || p_sigma) between two diffused isotropic Gaussians (closed form)."""
    a = q.std**2 + jnp.asarray(sigma) ** 2
    b = p.std**2 + jnp.asarray(sigma) ** 2
    d = q.dim
    return 0.5 * (d * a / b + jnp.sum((q.mean - p.mean) ** 2) / b - d + d * jnp.log(b / a))


class GaussianMixture(NamedTuple):
    """p_0 = sum_k w_k N(mean_k, std_k^2 I) in any dimension; each diffused component N(m_k, (r_k^2 + sigma^2) I)."""
    means: Array    # [K, D]
    stds: Array     # [K]
    weights: Array  # [K], positive, summing to 1

    @classmethod
    def create(cls, means, stds, weights=None) -> "GaussianMixture":
        means = jnp.asarray(means)
        if means.ndim != 2:
            raise ValueError(f"means must have shape [K, D]; got {means.shape}")
        k = means.shape[0]
        stds = jnp.broadcast_to(jnp.asarray(stds, means.dtype), (k,))
        weights = jnp.full((k,), 1.0 / k, means.dtype) if weights is None else jnp.asarray(weights, means.dtype)
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape [K]={k}; got {weights.shape}")
        diffusion.check_positive("stds", stds)
        diffusion.check_positive("weights", weights)
        return cls(means, stds, weights / jnp.sum(weights))

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def sample(self, rng: Array, n: int, return_component: bool = False):
        k_rng, z_rng = jax.random.split(rng)
        k = jax.random.choice(k_rng, self.num_components, (n,), p=self.weights)
        x = self.means[k] + self.stds[k, None] * jax.random.normal(z_rng, (n, self.dim), self.means.dtype)
        return (x, k) if return_component else x

    def _component_log_probs(self, x: Array, sigma) -> tuple:
        """log(w_k N(x; m_k, v_k I)) [B, K] and variances v_k [B, K]."""
        chex.assert_shape(x, (None, self.dim))
        s2 = jnp.broadcast_to(jnp.asarray(sigma, x.dtype) ** 2, x.shape[:1])
        var = self.stds[None, :] ** 2 + s2[:, None]                                  # [B, K]
        sq = jnp.sum((x[:, None, :] - self.means[None]) ** 2, -1)                   # [B, K]
        logp = jnp.log(self.weights) - 0.5 * (sq / var + self.dim * (jnp.log(var) + _LOG_2PI))
        return logp, var

    def responsibilities(self, x: Array, sigma=0.0) -> Array:
        """Posterior component probabilities p(k | x_sigma) [B, K]."""
        return jax.nn.softmax(self._component_log_probs(x, sigma)[0], axis=-1)

    def log_prob(self, x: Array, sigma=0.0) -> Array:
        diffusion.check_positive("sigma", sigma, allow_zero=True)
        return jax.nn.logsumexp(self._component_log_probs(x, sigma)[0], axis=-1)

    def denoise(self, x: Array, sigma) -> Array:
        """E[x0 | x] = sum_k gamma_k(x) (m_k + r_k^2 / (r_k^2 + sigma^2) (x - m_k))."""
        diffusion.check_positive("sigma", sigma, allow_zero=True)
        logp, var = self._component_log_probs(x, sigma)
        gamma = jax.nn.softmax(logp, axis=-1)
        shrink = self.stds[None, :] ** 2 / var                                       # [B, K]
        post = self.means[None] + shrink[..., None] * (x[:, None, :] - self.means[None])
        return jnp.sum(gamma[..., None] * post, axis=1)

    def score(self, x: Array, sigma) -> Array:
        diffusion.check_positive("sigma", sigma)
        return diffusion.denoiser_to_score(self.denoise(x, sigma), x, jnp.broadcast_to(sigma, x.shape[:1]))

    def denoiser(self, x: Array, sigma, labels: Optional[Array] = None) -> Array:
        return self.denoise(x, sigma)


class AffineGaussianGenerator(NamedTuple):
    """Generator x0 = mu + s z, z ~ N(0, I): its diffused marginal is N(mu, (s^2 + sigma^2) I) in closed form.

    Params are the fields, so `jax.grad` with respect to a generator instance gives d/dmu and d/ds.
    """
    mu: Array   # [D]
    s: Array    # scalar

    def __call__(self, z: Array) -> Array:
        chex.assert_shape(z, (None, self.mu.shape[-1]))
        return self.mu + self.s * z

    def marginal(self) -> IsotropicGaussian:
        return IsotropicGaussian(self.mu, jnp.abs(self.s))

    def denoiser(self, x: Array, sigma, labels: Optional[Array] = None) -> Array:
        """The exact fake denoiser E[x0 | x_sigma] of this generator."""
        return self.marginal().denoise(x, sigma)
