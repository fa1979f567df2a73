"""Diffusion marginals, schedules, samplers, weightings and conversions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from di_jax import diffusion


def test_perturb_moments_and_broadcast():
    x0 = jnp.ones((20000, 2))
    sigma = jnp.where(jnp.arange(20000) % 2 == 0, 0.5, 2.0)
    x = diffusion.perturb(x0, sigma, jax.random.normal(jax.random.PRNGKey(0), x0.shape))
    np.testing.assert_allclose(x[::2].std(0), 0.5, rtol=0.03)
    np.testing.assert_allclose(x[1::2].std(0), 2.0, rtol=0.03)
    img = diffusion.perturb(jnp.zeros((3, 4, 4, 1)), jnp.array([1.0, 2.0, 3.0]), jnp.ones((3, 4, 4, 1)))
    np.testing.assert_allclose(img[:, 0, 0, 0], [1.0, 2.0, 3.0])


def test_general_form_equals_scaled_edm_form():
    t = jnp.array([0.1, 0.5, 1.0])
    x0, eps = jnp.ones((3, 5)), jax.random.normal(jax.random.PRNGKey(1), (3, 5))
    alpha, beta = diffusion.vp_alpha_beta(t)
    scale, sigma = diffusion.alpha_beta_to_sigma(alpha, beta)
    np.testing.assert_allclose(diffusion.perturb_general(x0, alpha, beta, eps),
                               scale[:, None] * diffusion.perturb(x0, sigma, eps), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, diffusion.vp_sigma(t), rtol=1e-6)
    np.testing.assert_allclose(alpha**2 + beta**2, 1.0, rtol=1e-6)       # variance preserving
    np.testing.assert_allclose(diffusion.vp_sigma_inv(diffusion.vp_sigma(t)), t, rtol=1e-5)
    a, b = diffusion.ve_alpha_beta(jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(b, [0.02, 100.0], rtol=1e-6)
    # VP sigma_max = sigma(1) = 152.167 (EDM's VPPrecond attribute)
    np.testing.assert_allclose(diffusion.vp_sigma(1.0), 152.16697692871094, rtol=1e-5)


def test_sigma_samplers():
    rng = jax.random.PRNGKey(0)
    s = diffusion.sample_sigma(rng, (100_000,), "edm")
    np.testing.assert_allclose([jnp.log(s).mean(), jnp.log(s).std()], [-1.2, 1.2], atol=0.02)
    s = diffusion.sample_sigma(rng, (100_000,), "sim")
    np.testing.assert_allclose([jnp.log(s).mean(), jnp.log(s).std()], [-3.5, 2.5], atol=0.03)
    grid = diffusion.karras_sigmas(1000)
    np.testing.assert_allclose([grid[0], grid[-1]], [80.0, 0.002], rtol=1e-5)
    s = diffusion.sample_sigma(rng, (50_000,), "karras")          # DMD2: k ~ U{19..979} descending
    np.testing.assert_allclose([s.min(), s.max()], [grid[979], grid[19]], rtol=1e-6)
    s = diffusion.sample_sigma(rng, (50_000,), "log_uniform", sigma_min=0.01, sigma_max=10.0)
    np.testing.assert_allclose(jnp.log(s).mean(), 0.5 * np.log(0.01 * 10.0), atol=0.02)
    with pytest.raises(ValueError, match="kind"):
        diffusion.sample_sigma(rng, (2,), "uniform")
    with pytest.raises(ValueError, match="index_range"):
        diffusion.sample_sigma_karras(rng, (2,), index_range=(0, 1000))


def _sid_official_sigma(t):
    """sid_loss.py: sigma = (max_inv_rho + (1 - t) (min_inv_rho - max_inv_rho))^rho, t = U[0, 1) * 800 / 1000."""
    max_inv_rho, min_inv_rho = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
    return (max_inv_rho + (1 - t) * (min_inv_rho - max_inv_rho)) ** 7


def test_sid_sigma_distribution_is_the_official_formula():
    """SiD's generator-phase sigma (spec §5, §7): range [0.002, 24.4], quantiles of the official formula."""
    from di_jax import methods
    from di_jax.configs.base import base_config

    config = base_config()
    config.method = "sid"
    spec = methods.sigma_spec(config, "sigma_gen")
    n = 200_000
    s = np.asarray(diffusion.sample_sigma(jax.random.PRNGKey(3), (n,), **spec), np.float64)
    assert s.min() >= 0.002 * (1 - 1e-5) and s.max() <= _sid_official_sigma(0.8)
    np.testing.assert_allclose(_sid_official_sigma(0.8), 24.4, atol=0.05)
    # sigma increases with t ~ U[0, 0.8), so the formula's q-quantile is sigma(t = 0.8 q).
    for q in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        frac = np.mean(s <= _sid_official_sigma(0.8 * q))
        assert abs(frac - q) < 5 * np.sqrt(q * (1 - q) / n), (q, frac)
    assert 0.9 < np.median(s) < 1.0          # median 0.96; the old grid index sampler's was 5.8
    with pytest.raises(ValueError, match="t_max"):
        diffusion.sample_sigma(jax.random.PRNGKey(0), (2,), "sid", t_max=1.5)


def test_weights_and_conversions():
    np.testing.assert_allclose(diffusion.edm_weight(0.5), 8.0)        # (0.25+0.25)/(0.0625)
    x, d = jnp.array([[1.0, 2.0]]), jnp.array([[0.5, 0.5]])
    s = diffusion.denoiser_to_score(d, x, 2.0)
    np.testing.assert_allclose(diffusion.score_to_denoiser(s, x, 2.0), d)
    e = diffusion.denoiser_to_eps(d, x, 2.0)
    np.testing.assert_allclose(e, -2.0 * s)
    np.testing.assert_allclose(diffusion.eps_to_denoiser(e, x, 2.0), d)
    np.testing.assert_allclose(diffusion.conditional_score(x, d, 2.0), -(x - d) / 4.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="sigma"):
        diffusion.perturb(jnp.zeros((2, 3)), -1.0, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="x0 and noise"):
        diffusion.perturb(jnp.zeros((2, 3)), 1.0, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="sigma"):
        diffusion.expand_sigma(jnp.ones(3), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="num"):
        diffusion.karras_sigmas(1)
