"""SIM distances: closed-form d'(y) equals jax.grad of d(y); d(0) = 0, d >= 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from di_jax import distances

FAMILY = [distances.pseudo_huber(0.7), distances.l2(), distances.alpha_power(4), distances.alpha_power(6),
          distances.exp_power(2, 0.1), distances.exp_power(4, 0.05), distances.l1(), distances.huber(0.5)]


@pytest.mark.parametrize("dist", FAMILY, ids=lambda d: d.name)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.05, 2.0))
def test_grad_matches_autodiff(dist, seed, scale):
    with jax.enable_x64(True):
        y = scale * jax.random.normal(jax.random.PRNGKey(seed), (3, 2, 5))
        y = jnp.where(jnp.abs(y) < 1e-6, 1e-3, y)   # L1 / Huber kinks are measure-zero
        auto = jax.grad(lambda v: jnp.sum(dist.d(v)))(y)
        np.testing.assert_allclose(dist.grad(y), auto, rtol=1e-10, atol=1e-12)
        assert dist.d(y).shape == (3,)
        assert np.all(np.asarray(dist.d(y)) >= 0)
        np.testing.assert_allclose(dist.d(jnp.zeros((1, 4))), 0.0, atol=1e-15)


def test_pseudo_huber_is_bounded_and_l2_like_near_zero():
    ph = distances.pseudo_huber(1.0)
    big = jnp.full((1, 10), 1e3)
    assert float(jnp.linalg.norm(ph.grad(big))) <= 1.0 + 1e-6      # |d'| < 1: normalised update
    small = jnp.full((1, 3), 1e-3)
    np.testing.assert_allclose(ph.d(small), 0.5 * jnp.sum(small**2), rtol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="distance"):
        distances.get_distance("cosine")
    with pytest.raises(ValueError, match="alpha"):
        distances.alpha_power(3)
    with pytest.raises(ValueError, match="c"):
        distances.pseudo_huber(0.0)
    with pytest.raises(ValueError, match="delta"):
        distances.huber(-1.0)
    with pytest.raises(ValueError, match="bad arguments"):
        distances.get_distance("l2", c=1.0)
    assert distances.get_distance("pseudo_huber", c=0.03).name == "pseudo_huber(c=0.03)"
