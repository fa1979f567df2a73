"""Diffusion marginals, noise schedules, sigma samplers and weightings as pure functions.

Conventions (spec distillation.md §1, EDM paper):
  * EDM form: x_sigma = x0 + sigma * eps, eps ~ N(0, I). Every teacher here is a *denoiser*
    D(x; sigma) ~= E[x0 | x_sigma].
  * General form: x_t = alpha(t) x0 + beta(t) eps (VP, VE, ...). It is the EDM form scaled by alpha
    with sigma = beta / alpha, so everything below is written for sigma and converted at the edge.
  * `sigma` is a scalar or one value per example, shape [B]; it broadcasts against x of shape
    [B, ...] (see `expand_sigma`).
"""

from typing import Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# EDM's defaults (Karras et al. 2022, Table 1; spec distillation.md §2, §5).
SIGMA_DATA = 0.5
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2
SIM_P_MEAN, SIM_P_STD = -3.5, 2.5  # SIM eq. B.9-B.10
KARRAS_SIGMA_MIN, KARRAS_SIGMA_MAX, KARRAS_RHO = 0.002, 80.0, 7.0
VP_BETA_D, VP_BETA_MIN = 19.9, 0.1


# --------------------------------------------------------------------------------------------
# Argument checks (active on concrete values only: inside jit they are no-ops).


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_positive(name: str, value, allow_zero: bool = False) -> None:
    """Raises ValueError naming `name` if a concrete `value` has an entry <= 0 (or < 0) or a NaN."""
    if value is None or not _is_concrete(value):
        return
    v = np.asarray(value)
    bad = (v < 0) if allow_zero else (v <= 0)
    if np.any(bad | np.isnan(v)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} everywhere; got min {np.nanmin(v)!r}"
                         f"{' and NaN' if np.any(np.isnan(v)) else ''}")


def check_same_shape(**arrays) -> None:
    """chex shape check that raises ValueError naming the arguments, e.g. check_same_shape(x0=a, noise=b)."""
    try:
        chex.assert_equal_shape(list(arrays.values()))
    except AssertionError:
        got = ", ".join(f"{k} {tuple(jnp.shape(v))}" for k, v in arrays.items())
        raise ValueError(f"{' and '.join(arrays)} must have the same shape; got {got}") from None


def check_floating(**arrays) -> None:
    """chex dtype check that raises ValueError naming the argument."""
    for k, v in arrays.items():
        try:
            chex.assert_type(v, float)
        except AssertionError:
            raise ValueError(f"{k} must be a floating-point array; got dtype {jnp.result_type(v)}") from None


def expand_sigma(sigma, x: Array) -> Array:
    """Broadcasts a scalar or per-example sigma [B] against x [B, ...] -> shape [B, 1, ..., 1] or []."""
    sigma = jnp.asarray(sigma, dtype=x.dtype)
    if sigma.ndim == 0:
        return sigma
    if sigma.ndim != 1 or sigma.shape[0] != x.shape[0]:
        raise ValueError(f"sigma must be a scalar or have shape [batch]={x.shape[:1]}; got {sigma.shape}")
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - 1))


# --------------------------------------------------------------------------------------------
# Marginals.


def perturb(x0: Array, sigma, noise: Array) -> Array:
    """EDM forward marginal sample x_sigma = x0 + sigma * eps (spec §1)."""
    check_same_shape(x0=x0, noise=noise)
    check_positive("sigma", sigma, allow_zero=True)
    return x0 + expand_sigma(sigma, x0) * noise


def perturb_general(x0: Array, alpha, beta, noise: Array) -> Array:
    """General forward marginal sample x_t = alpha(t) x0 + beta(t) eps."""
    check_same_shape(x0=x0, noise=noise)
    check_positive("alpha", alpha)
    check_positive("beta", beta, allow_zero=True)
    return expand_sigma(alpha, x0) * x0 + expand_sigma(beta, x0) * noise


def alpha_beta_to_sigma(alpha, beta) -> Tuple[Array, Array]:
    """(alpha, beta) -> (scale, sigma): x_t = scale * (x0 + sigma eps), sigma = beta / alpha."""
    check_positive("alpha", alpha)
    return jnp.asarray(alpha), jnp.asarray(beta) / jnp.asarray(alpha)


def vp_sigma(t, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN) -> Array:
    """VP (DDPM++) noise level sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (EDM Table 1)."""
    t = jnp.asarray(t)
    return jnp.sqrt(jnp.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_sigma_inv(sigma, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN) -> Array:
    """Inverse of `vp_sigma`."""
    sigma = jnp.asarray(sigma)
    return (jnp.sqrt(beta_min**2 + 2 * beta_d * jnp.log1p(sigma**2)) - beta_min) / beta_d


def vp_alpha_beta(t, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN) -> Tuple[Array, Array]:
    """VP schedule in the general form: alpha = 1/sqrt(1 + sigma^2), beta = sigma * alpha."""
    s = vp_sigma(t, beta_d, beta_min)
    alpha = 1.0 / jnp.sqrt(1.0 + s**2)
    return alpha, s * alpha


def ve_alpha_beta(t, sigma_min: float = 0.02, sigma_max: float = 100.0) -> Tuple[Array, Array]:
    """VE (NCSN++) schedule: alpha = 1, beta = sigma_min (sigma_max / sigma_min)^t (geometric)."""
    t = jnp.asarray(t)
    return jnp.ones_like(t), sigma_min * (sigma_max / sigma_min) ** t


# --------------------------------------------------------------------------------------------
# Sigma samplers. Each returns float32 sigma of `shape`.


def sample_sigma_lognormal(rng: Array, shape, p_mean: float = EDM_P_MEAN, p_std: float = EDM_P_STD) -> Array:
    """ln sigma ~ N(p_mean, p_std^2). EDM training (-1.2, 1.2); SIM generator phase (-3.5, 2.5)."""
    check_positive("p_std", p_std)
    return jnp.exp(p_mean + p_std * jax.random.normal(rng, shape))


def sample_sigma_sim(rng: Array, shape) -> Array:
    """SIM's generator-phase distribution, ln sigma ~ N(-3.5, 2.5^2) (SIM eq. B.9-B.10)."""
    return sample_sigma_lognormal(rng, shape, SIM_P_MEAN, SIM_P_STD)


def karras_sigmas(num: int, sigma_min: float = KARRAS_SIGMA_MIN, sigma_max: float = KARRAS_SIGMA_MAX,
                  rho: float = KARRAS_RHO) -> Array:
    """Karras grid sigma_k = (smax^(1/rho) + k/(K-1) (smin^(1/rho) - smax^(1/rho)))^rho, k = 0..K-1 (descending)."""
    if num < 2:
        raise ValueError(f"num must be >= 2; got {num}")
    check_positive("sigma_min", sigma_min)
    if sigma_max <= sigma_min:
        raise ValueError(f"sigma_max must exceed sigma_min; got {sigma_max} <= {sigma_min}")
    return karras_curve(jnp.arange(num, dtype=jnp.float32) / (num - 1), sigma_min, sigma_max, rho)


def karras_curve(u, sigma_min: float = KARRAS_SIGMA_MIN, sigma_max: float = KARRAS_SIGMA_MAX,
                 rho: float = KARRAS_RHO) -> Array:
    """The continuous Karras curve sigma(u) = (smax^(1/rho) + u (smin^(1/rho) - smax^(1/rho)))^rho, u in [0, 1]."""
    check_positive("sigma_min", sigma_min)
    if sigma_max <= sigma_min:
        raise ValueError(f"sigma_max must exceed sigma_min; got {sigma_max} <= {sigma_min}")
    return (sigma_max ** (1 / rho) + u * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def sample_sigma_karras(rng: Array, shape, index_range: Tuple[int, int] = (19, 979), num: int = 1000,
                        sigma_min: float = KARRAS_SIGMA_MIN, sigma_max: float = KARRAS_SIGMA_MAX,
                        rho: float = KARRAS_RHO) -> Array:
    """sigma = karras_sigmas(num)[k], k ~ U{lo..hi} inclusive, on the *descending* grid (k = 0 is sigma_max).

    The default is DMD2's: its grid is ascending and it draws k ~ U{20..980} (randint(20, 981)), which is
    k ~ U{19..979} on this descending grid, sigma in [0.0029, 72.9] (official DMD2 edm_guidance.py).
    """
    lo, hi = index_range
    if not 0 <= lo <= hi < num:
        raise ValueError(f"index_range must satisfy 0 <= lo <= hi < num={num}; got {index_range}")
    k = jax.random.randint(rng, shape, lo, hi + 1)
    return karras_sigmas(num, sigma_min, sigma_max, rho)[k]


def sample_sigma_sid(rng: Array, shape, t_max: float = 0.8, sigma_min: float = KARRAS_SIGMA_MIN,
                     sigma_max: float = KARRAS_SIGMA_MAX, rho: float = KARRAS_RHO) -> Array:
    """SiD's generator-phase noise levels: t ~ U[0, t_max), sigma = karras_curve(1 - t).

    The official SiD code (sid_loss.py, `tmax` = 800 of 1000) evaluates the continuous Karras curve at
    1 - t, so sigma lies in [sigma_min, karras_curve(1 - t_max)] = [0.002, 24.4] with median 0.96 for
    t_max = 0.8: small noise levels, not the large ones a literal reading of SIM eq. B.8 gives.
    """
    if not 0 < t_max <= 1:
        raise ValueError(f"t_max must lie in (0, 1]; got {t_max}")
    t = t_max * jax.random.uniform(rng, shape)
    return karras_curve(1.0 - t, sigma_min, sigma_max, rho)


def sample_sigma_log_uniform(rng: Array, shape, sigma_min: float = KARRAS_SIGMA_MIN,
                             sigma_max: float = KARRAS_SIGMA_MAX) -> Array:
    """ln sigma ~ U[ln sigma_min, ln sigma_max]."""
    check_positive("sigma_min", sigma_min)
    if sigma_max <= sigma_min:
        raise ValueError(f"sigma_max must exceed sigma_min; got {sigma_max} <= {sigma_min}")
    u = jax.random.uniform(rng, shape)
    return sigma_min * (sigma_max / sigma_min) ** u


SIGMA_SAMPLERS = ("edm", "sim", "sid", "karras", "log_uniform")


def sample_sigma(rng: Array, shape, kind: str, **kwargs) -> Array:
    """Dispatches to a sigma sampler by name: 'edm', 'sim', 'sid', 'karras', 'log_uniform'."""
    if kind == "edm":
        return sample_sigma_lognormal(rng, shape, **kwargs)
    if kind == "sim":
        return sample_sigma_lognormal(rng, shape, **{"p_mean": SIM_P_MEAN, "p_std": SIM_P_STD, **kwargs})
    if kind == "sid":
        return sample_sigma_sid(rng, shape, **kwargs)
    if kind == "karras":
        return sample_sigma_karras(rng, shape, **kwargs)
    if kind == "log_uniform":
        return sample_sigma_log_uniform(rng, shape, **kwargs)
    raise ValueError(f"sigma sampler kind must be one of {SIGMA_SAMPLERS}; got {kind!r}")


# --------------------------------------------------------------------------------------------
# Weightings.


def edm_weight(sigma, sigma_data: float = SIGMA_DATA) -> Array:
    """EDM loss weight lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 (EDM eq. 8)."""
    sigma = jnp.asarray(sigma)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def unit_weight(sigma) -> Array:
    """w(sigma) = 1."""
    return jnp.ones_like(jnp.asarray(sigma))


# --------------------------------------------------------------------------------------------
# Denoiser <-> score <-> epsilon (Tweedie; spec §1).


def denoiser_to_score(denoised: Array, x: Array, sigma) -> Array:
    """s(x; sigma) = (D(x; sigma) - x) / sigma^2."""
    return (denoised - x) / expand_sigma(sigma, x) ** 2


def score_to_denoiser(score: Array, x: Array, sigma) -> Array:
    """D(x; sigma) = x + sigma^2 s(x; sigma)."""
    return x + expand_sigma(sigma, x) ** 2 * score


def denoiser_to_eps(denoised: Array, x: Array, sigma) -> Array:
    """eps_hat = (x - D) / sigma = -sigma s."""
    return (x - denoised) / expand_sigma(sigma, x)


def eps_to_denoiser(eps: Array, x: Array, sigma) -> Array:
    """D = x - sigma eps_hat."""
    return x - expand_sigma(sigma, x) * eps


def conditional_score(x_t: Array, x0: Array, sigma) -> Array:
    """Score of the forward kernel, grad_{x_t} log q(x_t | x0) = -(x_t - x0) / sigma^2."""
    return -(x_t - x0) / expand_sigma(sigma, x_t) ** 2
