"""One compiled, sharded distillation train step (DI Alg. 1; SIM Alg. 1-2).

`make_train_step(config, nets, mesh)` returns a single `jax.jit` function

    step(state, teacher_params, labels) -> (state, metrics)

that performs `config.fake_steps` fake-score (DSM) updates on stopped generator samples, then one
generator update with the configured method (DI, SIM with any distance, SiD, SDS, DMD), then the
EMA update. The generator's forward pass is run once: the fake phase uses its stopped output and
the generator phase pulls the loss gradient with respect to x0 back through the stored VJP.

Randomness is stateless: the step key is fold_in(state.rng, state.step) and every draw is made for
the *global* batch and then sharded, so the result does not depend on the number of devices
(a per-device fold_in, as pmap code needs, would break that). A non-finite loss or gradient leaves
parameters and optimiser state unchanged and increments a counter. The state is donated; the
teacher's parameters are a separate, replicated, never-donated argument.
"""

import functools
import time
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.flatten_util import ravel_pytree

from di_jax import diffusion, distances, losses
from di_jax.train import sharding
from di_jax.train import config as config_lib
from di_jax.train.config import validate
from di_jax.train.networks import Networks, one_hot_labels
from di_jax.train.state import TrainState, create_state, ema_decay, make_optimizer

sg = jax.lax.stop_gradient
PyTree = Any

# fold_in tags of the per-step random streams
_Z, _FAKE, _SIGMA, _NOISE, _DROPOUT = range(5)


def generator_loss_fn(config: ml_collections.ConfigDict) -> Callable:
    """Per-example generator loss (x0, sigma, noise, fake_den, teacher_den, labels) -> [B] for config.method."""
    method = config.method
    if method == "sim":
        kwargs = {k: v for k, v in config.distance.items() if k != "name"}
        return functools.partial(losses.sim_generator_loss,
                                 distance=distances.get_distance(config.distance.name, **kwargs))
    if method == "sid":
        return functools.partial(losses.sid_generator_loss, alpha=config.sid_alpha)
    if method == "sds":
        return lambda x0, sigma, noise, fake, teacher, labels: losses.sds_generator_loss(
            x0, sigma, noise, teacher, labels)
    return losses.GENERATOR_LOSSES[method]


def _select(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def _apply(tx: optax.GradientTransformation, loss, grads, params, opt_state):
    """One optimiser update, skipped (params and state unchanged) if the loss or a gradient is non-finite.

    The optimiser runs on the raveled gradient vector and its state lives on that vector
    (state.flat_params): Adam is element-wise, so this is the same update as per leaf, compiled as a
    handful of kernels instead of several per parameter leaf. Only the final `p + u` is per leaf,
    where it can update the donated parameters in place. The transformations of `make_optimizer`
    do not read the parameters, so none are passed. Returns (params, opt state, ok, grad norm,
    update norm).
    """
    flat_grads, unravel = ravel_pytree(grads)
    updates, new_opt_state = tx.update(flat_grads, opt_state)
    ok = jnp.isfinite(loss) & jnp.all(jnp.isfinite(flat_grads))
    new_params = jax.tree.map(lambda p, u: jnp.where(ok, p + u, p), params, unravel(updates))
    update_norm = jnp.where(ok, jnp.linalg.norm(updates), 0.0)
    return new_params, _select(ok, new_opt_state, opt_state), ok, jnp.linalg.norm(flat_grads), update_norm


REMAT_MODES = ("none", "generator", "all")


def remat_networks(nets: Networks, mode: str) -> Networks:
    """Wraps network calls in `jax.checkpoint` (config.remat): their backward pass recomputes the forward.

    "generator": only the generator, whose VJP residuals otherwise stay alive through the whole fake
    phase; "all": generator, fake score and teacher (peak memory ~ one network's activations, at the
    price of one extra forward per differentiated network call). Values and gradients are unchanged.
    """
    if mode not in REMAT_MODES:
        raise ValueError(f"config.remat must be one of {REMAT_MODES}; got {mode!r}")
    if mode == "none":
        return nets
    ckpt = jax.checkpoint
    if mode == "generator":
        return nets._replace(generate=ckpt(nets.generate))
    return nets._replace(generate=ckpt(nets.generate), fake_denoise=ckpt(nets.fake_denoise),
                         teacher_denoise=ckpt(nets.teacher_denoise))


def make_train_step(config: ml_collections.ConfigDict, nets: Networks,
                    mesh: Optional[jax.sharding.Mesh] = None) -> Callable:
    """Builds the jitted train step (validated before anything is traced)."""
    mesh = mesh or sharding.make_mesh()
    validate(config, mesh.size)
    nets = remat_networks(nets, config.get("remat", "none"))
    gen_tx, fake_tx = make_optimizer(config.gen_optim), make_optimizer(config.fake_optim)
    gen_loss = generator_loss_fn(config)
    batch = config.batch_size
    sigma_gen = config_lib.sigma_gen(config)
    sigma_fake = dict(config.sigma_fake)
    shard = functools.partial(sharding.shard_batch, mesh=mesh)
    use_fake = config.method != "sds"

    def draw_sigma(rng, spec):
        spec = dict(spec)
        return shard(diffusion.sample_sigma(rng, (batch,), spec.pop("kind"), **spec))

    def fake_update(params, opt_state, x0, labels, rng):
        """DSM on stopped generator samples (DI Alg. 1 phase 1)."""
        sigma = draw_sigma(jax.random.fold_in(rng, _SIGMA), sigma_fake)
        noise = shard(jax.random.normal(jax.random.fold_in(rng, _NOISE), x0.shape, x0.dtype))
        drop = jax.random.fold_in(rng, _DROPOUT)

        def loss_fn(p):
            denoise = lambda x, s, l: nets.fake_denoise(p, x, s, l, drop)
            return jnp.mean(losses.dsm_loss(denoise, x0, sigma, noise, labels))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        params, opt_state, ok, gnorm, _ = _apply(fake_tx, loss, grads, params, opt_state)
        return params, opt_state, loss, ok, gnorm

    def step(state: TrainState, teacher_params: PyTree, labels: Optional[jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)
        labels = one_hot_labels(labels, nets.label_dim)
        gen_rng, fake_rng = jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1)

        def latents(r):
            return shard(jax.random.normal(jax.random.fold_in(r, _Z), (batch,) + tuple(nets.latent_shape)))

        gen_drop = jax.random.fold_in(gen_rng, _DROPOUT)
        x0, gen_vjp = jax.vjp(lambda p: nets.generate(p, latents(gen_rng), labels, gen_drop), state.gen_params)
        x0 = shard(x0)

        # Phase 1: fake-score updates. The first reuses the generator pass; later ones draw afresh.
        fake_params, fake_opt_state = state.fake_params, state.fake_opt_state
        fake_skipped = jnp.zeros((), jnp.int32)
        fake_loss = fake_gnorm = jnp.zeros(())
        for i in range(config.fake_steps if use_fake else 0):
            r = jax.random.fold_in(fake_rng, i)
            xi = sg(x0) if i == 0 else sg(shard(nets.generate(state.gen_params, latents(r), labels,
                                                              jax.random.fold_in(r, _DROPOUT))))
            fake_params, fake_opt_state, fake_loss, ok, fake_gnorm = fake_update(
                fake_params, fake_opt_state, xi, labels, r)
            fake_skipped += (~ok).astype(jnp.int32)

        # Phase 2: generator update through d loss / d x0, pulled back by the stored VJP.
        sigma = draw_sigma(jax.random.fold_in(gen_rng, _SIGMA), sigma_gen)
        noise = shard(jax.random.normal(jax.random.fold_in(gen_rng, _NOISE), x0.shape, x0.dtype))
        net_drop = jax.random.fold_in(gen_rng, _DROPOUT + 1)     # the same dropout mask for both networks
        fake_den = lambda x, s, l: nets.fake_denoise(sg(fake_params), x, s, l, net_drop)
        teacher_den = lambda x, s, l: nets.teacher_denoise(teacher_params, x, s, l, net_drop)
        gen_loss_value, g_x0 = jax.value_and_grad(
            lambda x: jnp.mean(gen_loss(x, sigma, noise, fake_den, teacher_den, labels)))(x0)
        (grads,) = gen_vjp(g_x0)
        gen_params, gen_opt_state, gen_ok, gen_gnorm, gen_unorm = _apply(
            gen_tx, gen_loss_value, grads, state.gen_params, state.gen_opt_state)

        beta = ema_decay(state.step, batch, config.ema.halflife_kimg, config.ema.rampup)
        ema_params = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, state.ema_params, gen_params)

        new_state = state.replace(
            step=state.step + 1, gen_params=gen_params, fake_params=fake_params, ema_params=ema_params,
            gen_opt_state=gen_opt_state, fake_opt_state=fake_opt_state,
            skipped_gen=state.skipped_gen + (~gen_ok).astype(jnp.int32),
            skipped_fake=state.skipped_fake + fake_skipped)
        metrics = dict(gen_loss=gen_loss_value, fake_loss=fake_loss, gen_grad_norm=gen_gnorm,
                       fake_grad_norm=fake_gnorm, gen_update_norm=gen_unorm,
                       ema_beta=beta, skipped_gen=new_state.skipped_gen, skipped_fake=new_state.skipped_fake,
                       x0_std=jnp.std(x0))
        return new_state, metrics

    rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(step, in_shardings=(rep, rep, data), out_shardings=(rep, rep), donate_argnums=(0,))


def compile_step(step: Callable, state: TrainState, teacher_params: PyTree,
                 labels: Optional[jax.Array]) -> Tuple[Callable, float]:
    """Ahead-of-time compilation: returns (compiled step, seconds spent lowering + compiling)."""
    t0 = time.perf_counter()
    compiled = step.lower(state, teacher_params, labels).compile()
    return compiled, time.perf_counter() - t0


def init_state(config: ml_collections.ConfigDict, nets: Networks, teacher_params: PyTree,
               mesh: Optional[jax.sharding.Mesh] = None) -> TrainState:
    """Fresh state from config.seed (generator and fake initialised by `nets`), replicated on the mesh."""
    mesh = mesh or sharding.make_mesh()
    rng = jax.random.PRNGKey(config.seed)
    k_state, k_gen, k_fake = jax.random.split(rng, 3)
    state = create_state(k_state, nets.init_generator(k_gen, teacher_params),
                         nets.init_fake(k_fake, teacher_params),
                         make_optimizer(config.gen_optim), make_optimizer(config.fake_optim))
    return sharding.replicate(state, mesh)
