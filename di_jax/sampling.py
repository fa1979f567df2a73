"""EDM samplers (Karras et al. 2022, Algorithm 2; spec edm_architecture.md section 8) and one-step generation.

`denoise(x, sigma, class_labels) -> D(x; sigma)` is any callable (e.g. a closure over `module.apply`).
The state x is kept in float64 like the official sampler when jax x64 is enabled (otherwise float32);
the denoiser output is cast to the state dtype.
"""

from typing import Any, Callable, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np


def edm_sigma_steps(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                    round_sigma: Optional[Callable] = None) -> np.ndarray:
    """t_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, rounded, then t_N = 0 (float64)."""
    if not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an int >= 2; got {num_steps!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}")
    i = np.arange(num_steps, dtype=np.float64)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    if round_sigma is not None:
        t = np.asarray(round_sigma(t), np.float64)
    return np.concatenate([t, [0.0]])


def edm_sampler(denoise: Callable, latents: jax.Array, key: Optional[jax.Array] = None, class_labels=None,
                num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                S_churn: float = 0.0, S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0,
                solver: str = "heun", round_sigma: Optional[Callable] = None,
                net_sigma_range: tuple = (0.0, float("inf")), return_calls: bool = False) -> Any:
    """Heun (or Euler) EDM sampler, deterministic or stochastic (S_churn > 0 needs `key`).

    sigma_min/max are clamped to the net's `net_sigma_range` (VE: 0.02; iDDPM: u[M-1]). Returns the final x,
    or (x, calls) with calls = dict(t_steps, x_hat, t_hat, d_hat, x_euler, d_next, x_next) per step when
    `return_calls`: call 2i is (x_hat, t_hat) -> d_hat, call 2i+1 is (x_euler, t_{i+1}) -> d_next
    (d_next of the last step is not evaluated: zeros). Noise eps is drawn every step, as
    in the official code. Jittable with `denoise` closed over.
    """
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver must be 'heun' or 'euler'; got {solver!r}")
    chex.assert_rank(latents, 4)
    if S_churn > 0 and key is None:
        raise ValueError("key is required when S_churn > 0")
    rs = round_sigma if round_sigma is not None else (lambda s: s)
    lo, hi = max(sigma_min, net_sigma_range[0]), min(sigma_max, net_sigma_range[1])
    t_steps = edm_sigma_steps(num_steps, lo, hi, rho, round_sigma)
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float64 under x64, else float32
    ts = jnp.asarray(t_steps, dtype)
    keys = jax.random.split(key if key is not None else jax.random.PRNGKey(0), num_steps)
    gamma_max = min(S_churn / num_steps, np.sqrt(2) - 1)

    def step(x, inp):
        i, k = inp
        t, t_next = ts[i], ts[i + 1]
        gamma = jnp.where((S_min <= t) & (t <= S_max), gamma_max, 0.0)
        t_hat = jnp.asarray(rs(t + gamma * t), dtype)
        eps = jax.random.normal(k, x.shape, dtype)
        # (t_hat - t)(t_hat + t), not t_hat^2 - t^2: XLA may fuse the latter into an FMA that is != 0 at t_hat == t
        x_hat = x + jnp.sqrt(jnp.maximum((t_hat - t) * (t_hat + t), 0.0)) * S_noise * eps
        d_hat = jnp.asarray(denoise(x_hat, t_hat, class_labels), dtype)
        d = (x_hat - d_hat) / t_hat
        x_euler = x_hat + (t_next - t_hat) * d

        def heun(_):
            d_next = jnp.asarray(denoise(x_euler, t_next, class_labels), dtype)
            return x_hat + (t_next - t_hat) * (0.5 * d + 0.5 * (x_euler - d_next) / t_next), d_next

        x_next, d_next = x_euler, jnp.zeros_like(x)
        if solver == "heun":
            x_next, d_next = jax.lax.cond(i < num_steps - 1, heun, lambda _: (x_euler, jnp.zeros_like(x)), None)
        else:
            d_next = jnp.zeros_like(x)
        return x_next, dict(x_hat=x_hat, t_hat=t_hat, d_hat=d_hat, x_euler=x_euler, d_next=d_next, x_next=x_next)

    x0 = jnp.asarray(latents, dtype) * ts[0]
    x, calls = jax.lax.scan(step, x0, (jnp.arange(num_steps), keys))
    return (x, dict(t_steps=ts, **calls)) if return_calls else x


def one_step_generate(generator_apply: Callable, params: Any, z: jax.Array, sigma_init: float, labels=None):
    """x0 = g(z) = D_theta(sigma_init z; sigma_init, labels) (DI eq. B.3; SIM eq. B.4).

    generator_apply(params, x, sigma [N], labels) -> D; z ~ N(0, I) with the image shape.
    """
    if not sigma_init > 0:
        raise ValueError(f"sigma_init must be > 0; got {sigma_init}")
    chex.assert_rank(z, 4)
    sigma = jnp.full((z.shape[0],), sigma_init, z.dtype)
    return generator_apply(params, sigma_init * z, sigma, labels)


def sample_network(net: Any, params: Any, latents: jax.Array, key: Optional[jax.Array] = None, class_labels=None,
                   **sampler_kwargs) -> Any:
    """`edm_sampler` for a `di_jax.nets.Precond` module: its sigma range and round_sigma (iDDPM) applied.

    Args:
      net: the preconditioned EDM module (`di_jax.convert.load_teacher`).
      params: its parameters.
      latents: N(0, I) draws [N, C, H, W], scaled by the first sigma inside.
      key: rng for stochastic sampling (S_churn > 0).
      class_labels: one-hot [N, label_dim] for conditional networks.
      **sampler_kwargs: `edm_sampler` options (num_steps, solver, sigma_min/max, rho, S_*).
    """
    denoise = lambda x, sigma, labels: net.apply({"params": params}, x, sigma, class_labels=labels)
    rs = None
    if net.precond == "iDDPMPrecond":
        rs = lambda s: net.round_sigma(s).astype(jnp.asarray(s).dtype)
    return edm_sampler(denoise, latents, key, class_labels, round_sigma=rs, net_sigma_range=net.sigma_range(),
                       **sampler_kwargs)


def generate_samples(nets: Any, params: Any, num: int, seed: int = 1234, batch: int = 4096, labels=None) -> np.ndarray:
    """`num` one-step samples of a run's generator (`nets.generate`) with latents fixed by `seed`.

    The latents of samples i..i+batch are drawn from fold_in(PRNGKey(seed), i), so pictures of
    different steps (and runs) are comparable.

    Args:
      nets: the run's `Networks` (`di_jax.nets.families`).
      params: generator parameters (e.g. `state.ema_params`).
      num: number of samples.
      seed: latent seed.
      batch: samples per compiled call.
      labels: one-hot [num, label_dim], or None for unconditional generators.
    """
    gen = jax.jit(lambda p, z, l: nets.generate(p, z, l, None))
    out = []
    for i in range(0, num, batch):
        n = min(batch, num - i)
        z = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), i), (n,) + tuple(nets.latent_shape))
        out.append(np.asarray(gen(params, z, None if labels is None else labels[i:i + n])))
    return np.concatenate(out)
