"""One compiled, sharded distillation train step (DI Alg. 1; SIM Alg. 1-2).

`make_train_step(config, nets, mesh)` returns a single `jax.jit` function

    step(state, teacher_params) -> (state, metrics)

that draws the step's class labels, performs `config.fake_steps` fake-score (DSM) updates on
stopped generator samples, then one generator update with the method of `config.method` (looked up
in `di_jax.methods`), then the EMA update. As in the official DI and SiD loops, every fake update
draws its own z and runs the generator in eval mode, and the generator phase draws a fresh z (its
pass in train mode); the generator phase pulls the loss gradient with respect to x0 back through
the VJP of its pass. `config.share_generator_pass` instead reuses the generator phase's pass, stopped,
for the first fake update (one generator forward fewer per step; the two phases then see the same
samples). Dropout follows the method's convention (table in `di_jax.methods`); with
`config.augment.p > 0` the fake phase trains on EDM-augmented samples with their augment labels
(`di_jax.augment`), the generator phase passes none (zeros).

Randomness is stateless and named: the step key is fold_in(state.rng, state.step); `Stream` and
`Draw` below name every fold_in. Every draw is made for the *global* batch and then sharded, so the
result does not depend on the number of devices (a per-device fold_in, as pmap code needs, would
break that). A non-finite loss or gradient leaves parameters and optimiser state unchanged and
increments a counter. The state is donated; the teacher's parameters are a separate, never-donated
argument. Parameter trees are replicated or FSDP-sharded (`config.mesh`, `di_jax.train.sharding`);
the optimiser updates run on raveled vectors (`di_jax.train.flat_update`).

Metrics: `fake_loss` (the DSM loss), `fake/<aux>` and `gen/<aux>` (the losses' diagnostics, e.g.
`gen/denoiser_gap`; the generator surrogate's value means nothing and is not logged), gradient and
update norms, the EMA decay, the skip counters and the std of the generated batch.
"""

import enum
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from di_jax import augment, diffusion, losses, methods
from di_jax.configs.base import validate
from di_jax.nets.families import Networks
from di_jax.train import flat_update, sharding
from di_jax.train.remat import remat_networks
from di_jax.train.state import TrainState, ema_decay

sg = jax.lax.stop_gradient
PyTree = Any


class Stream(enum.IntEnum):
    """fold_in tags of the step key: one stream per phase, and the step's class labels."""
    GENERATOR = 0
    FAKE = 1            # fake update i uses fold_in(FAKE stream, i)
    LABELS = 2


class Draw(enum.IntEnum):
    """fold_in tags of the draws within a phase's stream."""
    LATENTS = 0
    SIGMA = 2
    NOISE = 3
    GEN_DROPOUT = 4     # the generator's dropout mask (generator phase, or the shared pass)
    NET_DROPOUT = 5     # generator phase: the mask shared by teacher and fake score ('shared' convention)
    FAKE_DROPOUT = 6    # fake phase: the fake network's dropout mask
    AUGMENT = 7         # fake phase: EDM augmentation (di_jax.augment)


def _mean_aux(aux: dict, prefix: str) -> dict:
    return {f"{prefix}/{k}": jnp.mean(v) for k, v in aux.items()}


def make_train_step(config: ml_collections.ConfigDict, nets: Networks,
                    mesh: Optional[jax.sharding.Mesh] = None, steps: int = 1) -> Callable:
    """Builds the jitted train step (the config is validated before anything is traced).

    Args:
      config: the run's config (`di_jax.configs.base`).
      nets: the run's networks (`di_jax.nets.families`).
      mesh: the device mesh (default: all devices); the batch is split over its data axis.
      steps: train steps per call. With steps > 1 one call runs them in a `lax.scan` (one dispatch
        instead of `steps`: what small, dispatch-bound problems need); the state is the same as after
        `steps` single calls (tested), the metrics are their means over the block (the skip counters:
        their values after it).
    Returns:
      step(state, teacher_params) -> (state, metrics), jitted with the state donated.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps per call must be an integer >= 1; got {steps!r}")
    mesh = mesh or sharding.make_mesh()
    validate(config, mesh.size)
    method = methods.get(config.method)
    nets = remat_networks(nets, config.get("remat", "none"))
    rules, min_size = sharding.mesh_rules(config)
    gen_loss = functools.partial(method.generator_loss, **method.options(config))
    batch = config.batch_size
    sigma_gen, sigma_fake = methods.sigma_spec(config, "sigma_gen"), methods.sigma_spec(config, "sigma_fake")
    shard = functools.partial(sharding.shard_batch, mesh=mesh)
    share = bool(config.get("share_generator_pass", False))
    fold = jax.random.fold_in

    def draw_sigma(rng, spec):
        spec = dict(spec)
        return shard(diffusion.sample_sigma(fold(rng, Draw.SIGMA), (batch,), spec.pop("kind"), **spec))

    def draw_noise(rng, like):
        return shard(jax.random.normal(fold(rng, Draw.NOISE), like.shape, like.dtype))

    def draw_latents(rng):
        return shard(jax.random.normal(fold(rng, Draw.LATENTS), (batch,) + tuple(nets.latent_shape)))

    def draw_labels(rng):
        """One-hot class labels of the step, uniform over the classes; None for unconditional networks."""
        if not nets.label_dim:
            return None
        labels = jax.random.randint(fold(rng, Stream.LABELS), (batch,), 0, nets.label_dim)
        return shard(jax.nn.one_hot(labels, nets.label_dim, dtype=jnp.float32))

    dropout = method.dropout != "off"
    augment_cfg = augment.from_config(config.get("augment"))
    if augment_cfg is not None and augment.augment_dim(augment_cfg) != nets.augment_dim:
        raise ValueError(f"config.augment gives {augment.augment_dim(augment_cfg)} augment labels but the networks "
                         f"take {nets.augment_dim} (augment_dim of the teacher); set config.augment.p=0 for a "
                         f"teacher trained without augmentation")

    def generate(params, rng, labels, train):
        """x0 of fresh latents; the generator in train mode (its own dropout mask) only if `train`."""
        drop = fold(rng, Draw.GEN_DROPOUT) if train and dropout else None
        return shard(nets.generate(params, draw_latents(rng), labels, drop))

    def fake_update(update, params, opt_state, x0, labels, rng):
        """DSM on stopped generator samples (DI Alg. 1 phase 1), EDM-augmented if configured."""
        aug = {}                      # families without augment labels need not take the keyword
        if augment_cfg is not None:
            x0, aug_labels = augment.augment(fold(rng, Draw.AUGMENT), x0, augment_cfg)
            x0, aug = shard(x0), dict(augment_labels=shard(aug_labels))
        sigma, noise = draw_sigma(rng, sigma_fake), draw_noise(rng, x0)
        drop = fold(rng, Draw.FAKE_DROPOUT) if dropout else None

        def loss_fn(p):
            denoise = lambda x, s, l: nets.fake_denoise(p, x, s, l, drop, **aug)
            value, aux = losses.dsm_loss(denoise, x0, sigma, noise, labels)
            return jnp.mean(value), aux

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        params, opt_state, ok, gnorm, _ = update(loss, grads, params, opt_state)
        return params, opt_state, loss, aux, ok, gnorm

    def step(state: TrainState, teacher_params: PyTree):
        # Where every tree lives (replicated, or FSDP-sharded): from the state's shapes, as in setup.
        specs = flat_update.state_specs(state, mesh, rules, min_size)
        gen_update, fake_update_fn = flat_update.make_updates(config, specs.gen_params, specs.fake_params, mesh)
        rng = fold(state.rng, state.step)
        labels = draw_labels(rng)
        gen_rng, fake_rng = fold(rng, Stream.GENERATOR), fold(rng, Stream.FAKE)
        gen_pass = lambda p: generate(p, gen_rng, labels, train=True)
        if share:
            x0, gen_vjp = jax.vjp(gen_pass, state.gen_params)

        # Phase 1: fake-score updates, each on its own eval-mode generator samples (the first on the
        # generator phase's pass when it is shared).
        fake_params, fake_opt_state = state.fake_params, state.fake_opt_state
        fake_skipped = jnp.zeros((), jnp.int32)
        fake_loss = fake_gnorm = jnp.zeros(())
        fake_aux = {}
        for i in range(config.fake_steps if method.needs_fake else 0):
            r = fold(fake_rng, i)
            xi = sg(x0) if share and i == 0 else sg(generate(state.gen_params, r, labels, train=False))
            fake_params, fake_opt_state, fake_loss, fake_aux, ok, fake_gnorm = fake_update(
                fake_update_fn, fake_params, fake_opt_state, xi, labels, r)
            fake_skipped += (~ok).astype(jnp.int32)

        # Phase 2: generator update through d loss / d x0, pulled back by the VJP of its pass.
        if not share:
            x0, gen_vjp = jax.vjp(gen_pass, state.gen_params)
        sigma, noise = draw_sigma(gen_rng, sigma_gen), draw_noise(gen_rng, x0)
        net_drop = fold(gen_rng, Draw.NET_DROPOUT) if method.dropout == "shared" else None
        fake_den = None
        if method.needs_fake:
            fake_den = lambda x, s, l: nets.fake_denoise(sg(fake_params), x, s, l, net_drop)
        teacher_den = lambda x, s, l: nets.teacher_denoise(teacher_params, x, s, l, net_drop)

        def objective(x):
            value, aux = gen_loss(x, sigma, noise, fake_den, teacher_den, labels)
            return jnp.mean(value), aux

        (gen_value, gen_aux), g_x0 = jax.value_and_grad(objective, has_aux=True)(x0)
        (grads,) = gen_vjp(g_x0)
        gen_params, gen_opt_state, gen_ok, gen_gnorm, gen_unorm = gen_update(
            gen_value, grads, state.gen_params, state.gen_opt_state)

        beta = ema_decay(state.step, batch, config.ema.halflife_kimg, config.ema.rampup)
        ema_params = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, state.ema_params, gen_params)

        new_state = state.replace(
            step=state.step + 1, gen_params=gen_params, fake_params=fake_params, ema_params=ema_params,
            gen_opt_state=gen_opt_state, fake_opt_state=fake_opt_state,
            skipped_gen=state.skipped_gen + (~gen_ok).astype(jnp.int32),
            skipped_fake=state.skipped_fake + fake_skipped)
        new_state = jax.lax.with_sharding_constraint(new_state, sharding.named(specs, mesh))
        metrics = dict(fake_loss=fake_loss, gen_grad_norm=gen_gnorm, fake_grad_norm=fake_gnorm,
                       gen_update_norm=gen_unorm, ema_beta=beta, skipped_gen=new_state.skipped_gen,
                       skipped_fake=new_state.skipped_fake, x0_std=jnp.std(x0),
                       **_mean_aux(gen_aux, "gen"), **_mean_aux(fake_aux, "fake"))
        return new_state, metrics

    def block(state: TrainState, teacher_params: PyTree):
        state, metrics = jax.lax.scan(lambda s, _: step(s, teacher_params), state, None, length=steps)
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        metrics.update(skipped_gen=state.skipped_gen, skipped_fake=state.skipped_fake)
        return state, metrics

    # The state and teacher keep the shardings they were placed with (setup.place_state / place_teacher);
    # the new state is constrained to the same specs inside the step, the metrics are replicated.
    return jax.jit(step if steps == 1 else block, out_shardings=(None, sharding.replicated(mesh)),
                   donate_argnums=(0,))
