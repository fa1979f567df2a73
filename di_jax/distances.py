"""The SIM distance family d(y) >= 0, d(0) = 0, with its gradient d'(y) (SIM §3.2, Table 4).

Each distance is reduced per example: for y of shape [B, ...], `d(y)` has shape [B] and `grad(y)`
has y's shape. `grad` is written in closed form and tested against `jax.grad` of `d`.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Distance(NamedTuple):
    name: str
    d: Callable[[Array], Array]      # y [B, ...] -> [B]
    grad: Callable[[Array], Array]   # y [B, ...] -> [B, ...], equal to d/dy of d


def _sum(y: Array) -> Array:
    return jnp.sum(y, axis=tuple(range(1, y.ndim)))


def _per_example(v: Array, y: Array) -> Array:
    return v.reshape(v.shape + (1,) * (y.ndim - 1))


def pseudo_huber(c: float = 1.0) -> Distance:
    """d(y) = sqrt(||y||^2 + c^2) - c;  d'(y) = y / sqrt(||y||^2 + c^2). SIM's default."""
    if not c > 0:
        raise ValueError(f"pseudo-Huber c must be > 0; got {c}")
    norm = lambda y: jnp.sqrt(_sum(y**2) + c**2)
    # sqrt(r^2 + c^2) - c written as r^2 / (sqrt(r^2 + c^2) + c): no cancellation for small y.
    d = lambda y: _sum(y**2) / (norm(y) + c)
    return Distance(f"pseudo_huber(c={c})", d, lambda y: y / _per_example(norm(y), y))


def l2() -> Distance:
    """d(y) = ||y||^2;  d'(y) = 2y. SIM with this distance is SiD (alpha = 1)."""
    return Distance("l2", lambda y: _sum(y**2), lambda y: 2 * y)


def _check_even(alpha) -> int:
    if int(alpha) != alpha or alpha < 2 or int(alpha) % 2:
        raise ValueError(f"alpha must be an even integer >= 2; got {alpha}")
    return int(alpha)


def alpha_power(alpha: int = 4) -> Distance:
    """d(y) = ||y||_alpha^alpha = sum y^alpha (alpha even);  d'(y) = alpha y^(alpha-1)."""
    a = _check_even(alpha)
    return Distance(f"alpha_power(alpha={a})", lambda y: _sum(y**a), lambda y: a * y ** (a - 1))


def exp_power(alpha: int = 2, beta: float = 1.0) -> Distance:
    """d(y) = exp(beta ||y||_alpha^alpha) - 1;  d'(y) = alpha beta exp(beta ||y||_alpha^alpha) y^(alpha-1)."""
    a = _check_even(alpha)
    if not beta > 0:
        raise ValueError(f"exp-power beta must be > 0; got {beta}")
    inner = lambda y: beta * _sum(y**a)
    return Distance(f"exp_power(alpha={a}, beta={beta})", lambda y: jnp.expm1(inner(y)),
                    lambda y: a * beta * _per_example(jnp.exp(inner(y)), y) * y ** (a - 1))


def l1() -> Distance:
    """d(y) = ||y||_1;  d'(y) = sign(y)."""
    return Distance("l1", lambda y: _sum(jnp.abs(y)), jnp.sign)


def huber(delta: float = 1.0) -> Distance:
    """Element-wise Huber L_delta summed per example;  d'(y) = clip(y, -delta, delta)."""
    if not delta > 0:
        raise ValueError(f"Huber delta must be > 0; got {delta}")

    def d(y):
        a = jnp.abs(y)
        return _sum(jnp.where(a <= delta, 0.5 * y**2, delta * (a - 0.5 * delta)))

    return Distance(f"huber(delta={delta})", d, lambda y: jnp.clip(y, -delta, delta))


_FAMILY = {"pseudo_huber": pseudo_huber, "l2": l2, "alpha_power": alpha_power, "exp_power": exp_power,
           "l1": l1, "huber": huber}
NAMES = tuple(_FAMILY)


def get_distance(name: str, **kwargs) -> Distance:
    """Builds a distance by name, e.g. get_distance('pseudo_huber', c=0.03)."""
    if name not in _FAMILY:
        raise ValueError(f"distance must be one of {NAMES}; got {name!r}")
    try:
        return _FAMILY[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments {kwargs} for distance {name!r}: {e}") from None


def from_config(cfg) -> Distance:
    """The distance of a config section {name: ..., **kwargs} (e.g. config.distance)."""
    return get_distance(cfg["name"], **{k: v for k, v in dict(cfg).items() if k != "name"})
