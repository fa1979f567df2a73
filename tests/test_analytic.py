"""Analytic teachers: denoisers, scores and diffused log-densities against autodiff and sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from di_jax.teachers import AffineGaussianGenerator, GaussianMixture, IsotropicGaussian, gaussian_kl


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _mixture(dim=3, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return GaussianMixture.create(rng.normal(size=(k, dim)) * 2, rng.uniform(0.2, 0.8, k), rng.uniform(0.5, 2, k))


@pytest.mark.parametrize("sigma", [0.05, 0.7, 3.0])
@pytest.mark.parametrize("dist", ["gauss", "mixture"])
def test_score_is_gradient_of_log_prob(dist, sigma):
    p = IsotropicGaussian(jnp.array([0.3, -1.0, 2.0]), jnp.array(0.6)) if dist == "gauss" else _mixture()
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 3)) * 2
    auto = jax.vmap(jax.grad(lambda v: p.log_prob(v[None], sigma)[0]))(x)
    np.testing.assert_allclose(p.score(x, sigma), auto, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p.denoise(x, sigma), x + sigma**2 * auto, rtol=1e-9, atol=1e-12)


def test_log_prob_normalised_and_denoiser_is_posterior_mean():
    p = _mixture(dim=1, k=3)
    grid = jnp.linspace(-15, 15, 20001)[:, None]
    for sigma in (0.0, 0.5, 2.0):
        mass = jnp.trapezoid(jnp.exp(p.log_prob(grid, sigma)), grid[:, 0])
        np.testing.assert_allclose(mass, 1.0, atol=1e-6)
    # Tweedie by simulation: E[x0 | x_sigma in a small bin] ~= D(bin centre).
    x0 = p.sample(jax.random.PRNGKey(0), 400_000)
    xs = x0 + 0.8 * jax.random.normal(jax.random.PRNGKey(1), x0.shape)
    sel = jnp.abs(xs[:, 0] - 0.5) < 0.02
    est = x0[sel, 0].mean()
    se = x0[sel, 0].std() / np.sqrt(sel.sum())
    assert abs(est - p.denoise(jnp.array([[0.5]]), 0.8)[0, 0]) < 5 * se + 5e-3


def test_sampling_matches_weights_and_components():
    p = _mixture(k=3)
    x, k = p.sample(jax.random.PRNGKey(3), 100_000, return_component=True)
    np.testing.assert_allclose(np.bincount(np.asarray(k), minlength=3) / 100_000, p.weights, atol=0.01)
    for j in range(3):
        np.testing.assert_allclose(x[k == j].mean(0), p.means[j], atol=0.02)


def test_affine_generator_marginal_and_kl():
    gen = AffineGaussianGenerator(jnp.array([1.0, 2.0]), jnp.array(-0.5))
    z = jax.random.normal(jax.random.PRNGKey(0), (200_000, 2))
    np.testing.assert_allclose(gen(z).std(0), 0.5, rtol=0.01)
    assert gen.marginal().std == 0.5
    q, p = gen.marginal(), IsotropicGaussian(jnp.zeros(2), jnp.array(1.0))
    # KL by Monte Carlo on the diffused marginals
    sigma = 0.7
    x = gen(z) + sigma * jax.random.normal(jax.random.PRNGKey(1), z.shape)
    mc = jnp.mean(q.log_prob(x, sigma) - p.log_prob(x, sigma))
    np.testing.assert_allclose(mc, gaussian_kl(q, p, sigma), rtol=0.01)
    np.testing.assert_allclose(gaussian_kl(q, q, sigma), 0.0, atol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture.create(jnp.zeros((2, 2)), 1.0, [1.0, 0.0])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture.create(jnp.zeros(2), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        _mixture().score(jnp.zeros((2, 3)), 0.0)
