"""Per-example surrogate losses of data-free distillation, as pure functions returning (value, aux).

Every generator loss has one signature,

    loss(x0, sigma, noise, fake_denoise, teacher_denoise, labels=None, weight=None, **options)
        -> (value [B], aux: dict of [B] diagnostics)

with denoisers as callables `denoise(x, sigma, labels) -> x0_hat` whose parameters the caller has
already bound (e.g. `functools.partial(net.apply, params)`), explicit noise levels `sigma` (scalar
or [B]) and Gaussian noise `noise` (x0's shape). The *value* of a generator surrogate means nothing;
its gradient with respect to the generator's output `x0` (and, through it, the generator's
parameters) is the method's update. The *aux* values are what to watch instead: `denoiser_gap`
= ||D_fake - D_teacher||^2 = sigma^4 ||s_fake - s_teacher||^2 per example (zero when the fake
score has matched the teacher), plus each method's own normaliser or d'(y) norm. Aux values carry
no gradient. `methods.METHODS` binds each loss to a method name and its options.

Where gradients flow is part of each loss's contract (spec distillation.md §3, §4, §6, §7):

| loss                 | into x0 | through x_t into the networks' *inputs*          |
|----------------------|---------|--------------------------------------------------|
| dsm_loss             | no      | (into the score network's parameters only)       |
| di_generator_loss    | yes     | no: the score difference is a constant           |
| sds_generator_loss   | yes     | no (no fake network: `fake_denoise` is unused)   |
| dmd_generator_loss   | yes     | no                                               |
| sim_generator_loss   | yes     | yes, into both networks and into d'(y)           |
| sid_generator_loss   | yes     | yes, into both networks (normaliser stopped)     |

No loss differentiates the networks' *parameters*: the caller differentiates with respect to the
generator's parameters only. `weight` is an optional per-example weight [B] in denoiser units
(default 1, as in the reference implementations); the score-space weighting it implies is stated
in each docstring.
"""

from typing import Callable, Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp

from di_jax import diffusion
from di_jax.distances import Distance, get_distance

Array = jax.Array
Denoiser = Callable[[Array, Array, Optional[Array]], Array]
LossOutput = Tuple[Array, Dict[str, Array]]     # (per-example value [B], per-example diagnostics)
sg = jax.lax.stop_gradient

_NORMALISER_MIN = 1e-5  # SiD / DMD2 clamp of the mean-absolute-error normaliser


def _sum(v: Array) -> Array:
    return jnp.sum(v, axis=tuple(range(1, v.ndim)))


def _mean_abs(v: Array) -> Array:
    return jnp.mean(jnp.abs(v), axis=tuple(range(1, v.ndim)))


def _sq(v: Array) -> Array:
    """Per-example squared norm, gradient-free (a diagnostic)."""
    return sg(_sum(v ** 2))


def _prepare(x0: Array, sigma, noise: Array, weight) -> tuple:
    """Checks shapes and returns (x_t, sigma [B], weight [B])."""
    if x0.ndim < 2:
        raise ValueError(f"x0 must be batched, shape [B, ...]; got {x0.shape}")
    diffusion.check_floating(x0=x0, noise=noise)
    diffusion.check_same_shape(x0=x0, noise=noise)
    diffusion.check_positive("sigma", sigma)
    batch = x0.shape[0]
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x0.dtype), (batch,))
    weight = jnp.ones((batch,), x0.dtype) if weight is None else jnp.broadcast_to(weight, (batch,))
    return diffusion.perturb(x0, sigma, noise), sigma, weight


def dsm_loss(denoise: Denoiser, x0: Array, sigma, noise: Array, labels: Optional[Array] = None,
             weight: Optional[Array] = None) -> LossOutput:
    """Denoising score matching, EDM form: lambda(sigma) ||D(x0 + sigma eps; sigma) - x0||^2.

    DI Alg. 1 phase 1 / SIM Alg. 2 (fake-score phase); EDM eq. 2 with weight lambda (default
    `diffusion.edm_weight`). x0 (generated samples) is stopped: gradients reach only the
    parameters bound into `denoise`. Summed over elements, as EDM does. aux: `error` =
    ||D - x0||^2 without the weight.
    """
    x0 = sg(x0)
    x_t, sigma, _ = _prepare(x0, sigma, noise, None)
    weight = diffusion.edm_weight(sigma) if weight is None else weight
    error = _sum((denoise(x_t, sigma, labels) - x0) ** 2)
    return weight * error, dict(error=sg(error))


def di_generator_loss(x0: Array, sigma, noise: Array, fake_denoise: Denoiser, teacher_denoise: Denoiser,
                      labels: Optional[Array] = None, weight: Optional[Array] = None) -> LossOutput:
    """Diff-Instruct (IKL) surrogate: sum sg(w (D_fake - D_teacher)(x_t)) . x_t.

    DI eq. 3.2 / Theorem 3.3: grad = E[w_s(sigma) (s_fake - s_teacher)(x_t) . dx_t/dtheta] with the
    score-space weight w_s = sigma^2 w, since s_fake - s_teacher = (D_fake - D_teacher) / sigma^2.
    With w = 1 this is the official implementation (spec §7): its gradient is
    sigma^2 grad_theta KL(q_sigma || p_sigma) when D_fake is the generator's exact denoiser.
    The score difference is a constant: no gradient enters either network.
    """
    x_t, sigma, weight = _prepare(x0, sigma, noise, weight)
    x_in = sg(x_t)
    diff = fake_denoise(x_in, sigma, labels) - teacher_denoise(x_in, sigma, labels)
    return _sum(sg(diffusion.expand_sigma(weight, diff) * diff) * x_t), dict(denoiser_gap=_sq(diff))


def sds_generator_loss(x0: Array, sigma, noise: Array, fake_denoise: Optional[Denoiser],
                       teacher_denoise: Denoiser, labels: Optional[Array] = None,
                       weight: Optional[Array] = None) -> LossOutput:
    """Score distillation sampling: DI with a Dirac generator (DI Cor. 3.4, eq. A.11).

    The fake score is the forward kernel's, s_q(x_t) = -(x_t - x0)/sigma^2 = -eps/sigma, so
    grad = E[w sigma (eps_teacher(x_t) - eps) . dx_t/dtheta] (score-space weight sigma^2 w, as DI).
    No fake network (`fake_denoise` is ignored; pass None), no gradient into the teacher.
    aux: `eps_gap` = ||eps_teacher - eps||^2.
    """
    x_t, sigma, weight = _prepare(x0, sigma, noise, weight)
    x_in = sg(x_t)
    eps_teacher = diffusion.denoiser_to_eps(teacher_denoise(x_in, sigma, labels), x_in, sigma)
    g = diffusion.expand_sigma(weight * sigma, x0) * (eps_teacher - noise)
    return _sum(sg(g) * x_t), dict(eps_gap=_sq(eps_teacher - noise))


def dmd_generator_loss(x0: Array, sigma, noise: Array, fake_denoise: Denoiser, teacher_denoise: Denoiser,
                       labels: Optional[Array] = None, weight: Optional[Array] = None) -> LossOutput:
    """DMD / DMD2 distribution-matching loss: 1/2 ||x0 - sg(x0 - g)||^2,

        g = w (D_fake - D_teacher) / sg(mean|x0 - D_teacher|).

    Its gradient with respect to x0 is g: the IKL gradient at one sigma with the per-example
    normaliser of DMD2 (spec §7). No gradient enters either network. aux: `denoiser_gap`,
    `normaliser`.
    """
    x_t, sigma, weight = _prepare(x0, sigma, noise, weight)
    x_in = sg(x_t)
    d_teacher = teacher_denoise(x_in, sigma, labels)
    diff = fake_denoise(x_in, sigma, labels) - d_teacher
    norm = jnp.maximum(_mean_abs(x0 - d_teacher), _NORMALISER_MIN)
    g = sg(diffusion.expand_sigma(weight / norm, x0) * diff)
    return 0.5 * _sum((x0 - sg(x0 - g)) ** 2), dict(denoiser_gap=_sq(diff), normaliser=sg(norm))


def sim_generator_loss(x0: Array, sigma, noise: Array, fake_denoise: Denoiser, teacher_denoise: Denoiser,
                       labels: Optional[Array] = None, weight: Optional[Array] = None,
                       distance: Union[Distance, str] = "pseudo_huber") -> LossOutput:
    """Score Implicit Matching surrogate in denoiser units (SIM eq. 3.7; Alg. 2, eq. B.13):

        L = -w d'(y) . (D_fake(x_t) - x0),   y = D_fake(x_t) - D_teacher(x_t).

    Since D_fake - D_teacher = sigma^2 (s_fake - s_teacher) and D_fake - x0 = sigma^2 (s_fake -
    grad log q(x_t|x0)), this is sigma^2 times the score-space loss of eq. 3.7 with the distance
    evaluated on sigma^2 y_score (for pseudo-Huber: c_score = c / sigma^2). Its gradient is
    E_{x_t ~ p_sg(theta)}[w d'(y) . dD_{p_theta}/dtheta] (SIM Theorem 3.1).

    Gradient flow: into x0 AND through x_t into both networks and into d'(y) — only the networks'
    parameters are constant. Stopping d'(y) gives the right mean-gradient but half the
    scale-gradient (spec §6); tests/test_losses.py pins this. aux: `denoiser_gap` (= ||y||^2),
    `dprime_norm` = ||d'(y)||.
    """
    if isinstance(distance, str):
        distance = get_distance(distance)
    x_t, sigma, weight = _prepare(x0, sigma, noise, weight)
    d_fake = fake_denoise(x_t, sigma, labels)
    y = d_fake - teacher_denoise(x_t, sigma, labels)
    dprime = distance.grad(y)
    return -weight * _sum(dprime * (d_fake - x0)), dict(denoiser_gap=_sq(y), dprime_norm=jnp.sqrt(_sq(dprime)))


def sid_generator_loss(x0: Array, sigma, noise: Array, fake_denoise: Denoiser, teacher_denoise: Denoiser,
                       labels: Optional[Array] = None, weight: Optional[Array] = None,
                       alpha: float = 1.2) -> LossOutput:
    """Score identity Distillation (SiD) loss as its official code computes it (spec §5, §7):

        L = w (D_t - D_f) . [(D_t - x0) - alpha (D_t - D_f)] / sg(max(mean|x0 - D_t|, 1e-5)),

    D_t, D_f the teacher and fake denoisers at x_t. Gradients flow into x0 and through x_t into
    both networks; the normaliser is stopped. With alpha = 1 this is one half of SIM with the L2
    distance, divided by the normaliser. (The official code also multiplies by 100 / batch.)
    aux: `denoiser_gap`, `normaliser`.
    """
    x_t, sigma, weight = _prepare(x0, sigma, noise, weight)
    d_teacher = teacher_denoise(x_t, sigma, labels)
    gap = d_teacher - fake_denoise(x_t, sigma, labels)
    norm = sg(jnp.maximum(_mean_abs(x0 - d_teacher), _NORMALISER_MIN))
    value = weight * _sum(gap * ((d_teacher - x0) - alpha * gap)) / norm
    return value, dict(denoiser_gap=_sq(gap), normaliser=norm)
