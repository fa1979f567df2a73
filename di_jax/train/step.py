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
samples). Dropout follows the method's convention (table in `di_jax.methods`), its masks drawn per
example (`di_jax.train.batch_apply`: the same on any mesh, with FSDP or micro-batches); with
`config.augment.p > 0` the fake phase trains on EDM-augmented samples with their augment labels
(`di_jax.augment`), the generator phase passes none (zeros).

Randomness is stateless and named: the step key is fold_in(state.rng, state.step); `Stream` and
`Draw` below name every fold_in. Every draw is made for the *global* batch and then sharded, so the
result does not depend on the number of devices (a per-device fold_in, as pmap code needs, would
break that). A non-finite loss or gradient leaves parameters and optimiser state unchanged and
increments a counter. The state is donated; the teacher's parameters are a separate, never-donated
argument. Parameter trees are replicated or FSDP-sharded (`config.mesh`, `di_jax.train.sharding`;
networks run through `batch_apply`, which all-gathers weights and reduce-scatters their gradients);
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
from di_jax.train import batch_apply, flat_update, sharding
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
      step(state, teacher_params[, condition]) -> (state, metrics), jitted with the state donated.
      `condition` is the step's batch of input conditioning when the networks take one
      (`nets.condition`, e.g. text embeddings): a pytree of global [batch, ...] arrays (with steps > 1:
      [steps, batch, ...]); it replaces the class labels the step otherwise draws.
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
    fake_weight = config.get("fake_weight", "edm")
    fold = jax.random.fold_in

    def draw_sigma(rng, spec):
        spec = dict(spec)
        return shard(diffusion.sample_sigma(fold(rng, Draw.SIGMA), (batch,), spec.pop("kind"), **spec))

    def draw_noise(rng, like):
        """N(0, I) of the shape and dtype of `like` (an array or a ShapeDtypeStruct)."""
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

    accum = int(config.get("grad_accum", 1))
    micro_batch = batch // accum

    def micro_key(key, j):
        """Micro-batch j's key of a draw made for the micro-batch (augmentation)."""
        return key if key is None or j is None else fold(key, j)

    def accumulate(one, inputs):
        """one(inputs, j) -> tree of batch means, averaged over config.grad_accum micro-batches.

        `inputs` are global-batch arrays (or None). With grad_accum = 1 this is one(inputs, None): the
        single-batch computation itself. Otherwise micro-batch j holds rows j, j + k, j + 2k, ... of
        every input (each device keeps its own rows: no data moves), and a lax.scan runs one(·, j) on
        each, so only one micro-batch's activations are alive at a time.
        """
        if accum == 1:
            return one(inputs, None)
        split = lambda x: x.reshape((micro_batch, accum) + x.shape[1:]).swapaxes(0, 1)
        stacked = jax.tree.map(split, inputs)
        first = jax.tree.map(lambda x: shard(x[0]), stacked)
        zeros = jax.tree.map(lambda o: jnp.zeros(o.shape, o.dtype), jax.eval_shape(one, first, 0))

        def body(total, xs_j):
            xs, j = xs_j
            out = one(jax.tree.map(shard, xs), j)
            return jax.tree.map(jnp.add, total, out), None

        total, _ = jax.lax.scan(body, zeros, (stacked, jnp.arange(accum)))
        return jax.tree.map(lambda t: t / accum, total)

    apply = batch_apply.make_batch_apply(mesh, rules, min_size)
    ids = lambda: shard(batch_apply.global_ids(batch))   # each example's index in the global batch (traced:
                                                         # a global array closed over is refused on pods)

    def generate(params, latents, labels, drop, rows):
        return shard(apply(nets.generate, params, (latents, labels), drop, rows))

    def sample_spec(params, labels):
        """Shape and dtype of a global batch of generator samples."""
        z = jax.ShapeDtypeStruct((batch,) + tuple(nets.latent_shape), jnp.float32)
        return jax.eval_shape(lambda p, z_, l: nets.generate(p, z_, l, None), params, z, labels)

    def fake_grads(params, gen_params, labels, rng, shared_x0=None):
        """DSM gradient on stopped eval-mode generator samples (DI Alg. 1 phase 1), EDM-augmented if
        configured: (grads, loss, aux), accumulated over micro-batches."""
        latents, sigma = draw_latents(rng), draw_sigma(rng, sigma_fake)
        noise = draw_noise(rng, sample_spec(gen_params, labels))
        drop = fold(rng, Draw.FAKE_DROPOUT) if dropout else None

        def one(inputs, j):
            z, l, s, n, rows = inputs
            x0 = sg(shared_x0) if shared_x0 is not None else sg(generate(gen_params, z, l, None, rows))
            aug = {}                      # families without augment labels need not take the keyword
            if augment_cfg is not None:
                x0, aug_labels = augment.augment(micro_key(fold(rng, Draw.AUGMENT), j), x0, augment_cfg)
                x0, aug = shard(x0), dict(augment_labels=shard(aug_labels))

            def loss_fn(p):
                denoise = lambda x, sg_, lb: apply(nets.fake_denoise, p, (x, sg_, lb), drop, rows, **aug)
                weight = None if fake_weight == "edm" else jnp.ones_like(s)   # "one": SIM's T2I recipe
                value, aux = losses.dsm_loss(denoise, x0, s, n, l, weight=weight)
                return jnp.mean(value), aux

            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            return grads, loss, aux
        return accumulate(one, (latents, labels, sigma, noise, ids()))

    def step_condition(cond):
        """The step's input conditioning, checked against nets.condition and split over the batch axes."""
        if nets.condition is None:
            if cond is not None:
                raise ValueError("the step got a condition input but the networks take none (nets.condition is None)")
            return None
        if cond is None:
            raise ValueError("these networks are conditioned on an input (e.g. text embeddings): call "
                             "step(state, teacher_params, condition)")
        want = jax.tree.map(lambda s: (batch,) + tuple(s.shape), nets.condition)
        got = jax.tree.map(lambda x: tuple(x.shape), cond)
        if jax.tree.structure(cond) != jax.tree.structure(nets.condition) or jax.tree.leaves(got) != \
                jax.tree.leaves(want):
            raise ValueError(f"the step's condition has shapes {got}; the networks take {want}")
        return jax.tree.map(lambda x, s: shard(x.astype(s.dtype)), cond, nets.condition)

    def step(state: TrainState, teacher_params: PyTree, cond: Optional[PyTree] = None):
        # Where every tree lives (replicated, or FSDP-sharded): from the state's shapes, as in setup.
        specs = flat_update.state_specs(state, mesh, rules, min_size)
        gen_update, fake_update = flat_update.make_updates(config, specs.gen_params, specs.fake_params, mesh)
        rng = fold(state.rng, state.step)
        labels = draw_labels(rng) if nets.condition is None else step_condition(cond)
        gen_rng, fake_rng = fold(rng, Stream.GENERATOR), fold(rng, Stream.FAKE)
        gen_latents = draw_latents(gen_rng)
        gen_drop = fold(gen_rng, Draw.GEN_DROPOUT) if dropout else None
        gen_pass = lambda p, z, l, rows: generate(p, z, l, gen_drop, rows)
        shared = None
        if share:                     # grad_accum = 1 (validated)
            shared = jax.vjp(lambda p: gen_pass(p, gen_latents, labels, ids()), state.gen_params)

        # Phase 1: fake-score updates, each on its own eval-mode generator samples (the first on the
        # generator phase's pass when it is shared).
        fake_params, fake_opt_state = state.fake_params, state.fake_opt_state
        fake_skipped = jnp.zeros((), jnp.int32)
        fake_loss = fake_gnorm = jnp.zeros(())
        fake_aux = {}
        for i in range(config.fake_steps if method.needs_fake else 0):
            r = fold(fake_rng, i)
            grads, fake_loss, fake_aux = fake_grads(fake_params, state.gen_params, labels, r,
                                                    shared[0] if share and i == 0 else None)
            fake_params, fake_opt_state, ok, fake_gnorm, _ = fake_update(fake_loss, grads, fake_params,
                                                                         fake_opt_state)
            fake_skipped += (~ok).astype(jnp.int32)

        # Phase 2: generator update through d loss / d x0, pulled back by the VJP of its pass.
        sigma = draw_sigma(gen_rng, sigma_gen)
        noise = draw_noise(gen_rng, sample_spec(state.gen_params, labels))
        net_drop = fold(gen_rng, Draw.NET_DROPOUT) if method.dropout == "shared" else None

        def gen_one(inputs, j):
            z, l, s, n, rows = inputs
            fake_den = None
            if method.needs_fake:
                fake_den = lambda x, s_, lb: apply(nets.fake_denoise, sg(fake_params), (x, s_, lb), net_drop, rows)
            teacher_den = lambda x, s_, lb: apply(nets.teacher_denoise, teacher_params, (x, s_, lb), net_drop, rows)
            x0, vjp = shared if share else jax.vjp(lambda p: gen_pass(p, z, l, rows), state.gen_params)

            def objective(x):
                value, aux = gen_loss(x, s, n, fake_den, teacher_den, l)
                return jnp.mean(value), aux

            (value, aux), g_x0 = jax.value_and_grad(objective, has_aux=True)(x0)
            (grads,) = vjp(g_x0)
            moments = (jnp.mean(x0.astype(jnp.float32)), jnp.mean(jnp.square(x0.astype(jnp.float32))))
            return grads, value, aux, moments

        grads, gen_value, gen_aux, (x0_mean, x0_sq) = accumulate(gen_one, (gen_latents, labels, sigma, noise, ids()))
        gen_params, gen_opt_state, gen_ok, gen_gnorm, gen_unorm = gen_update(
            gen_value, grads, state.gen_params, state.gen_opt_state)

        beta = ema_decay(state.step, batch, **config.ema)     # config.ema: kind (default "edm") and its fields
        ema_params = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, state.ema_params, gen_params)

        new_state = state.replace(
            step=state.step + 1, gen_params=gen_params, fake_params=fake_params, ema_params=ema_params,
            gen_opt_state=gen_opt_state, fake_opt_state=fake_opt_state,
            skipped_gen=state.skipped_gen + (~gen_ok).astype(jnp.int32),
            skipped_fake=state.skipped_fake + fake_skipped)
        new_state = jax.lax.with_sharding_constraint(new_state, sharding.named(specs, mesh))
        metrics = dict(fake_loss=fake_loss, gen_grad_norm=gen_gnorm, fake_grad_norm=fake_gnorm,
                       gen_update_norm=gen_unorm, ema_beta=beta, skipped_gen=new_state.skipped_gen,
                       skipped_fake=new_state.skipped_fake,
                       x0_std=jnp.sqrt(jnp.maximum(x0_sq - jnp.square(x0_mean), 0.0)),
                       **_mean_aux(gen_aux, "gen"), **_mean_aux(fake_aux, "fake"))
        return new_state, metrics

    def block(state: TrainState, teacher_params: PyTree, cond: Optional[PyTree] = None):
        state, metrics = jax.lax.scan(lambda s, c: step(s, teacher_params, c), state, cond, length=steps)
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        metrics.update(skipped_gen=state.skipped_gen, skipped_fake=state.skipped_fake)
        return state, metrics

    # The state and teacher keep the shardings they were placed with (setup.place_state / place_teacher);
    # the new state is constrained to the same specs inside the step, the metrics are replicated.
    return jax.jit(step if steps == 1 else block, out_shardings=(None, sharding.replicated(mesh)),
                   donate_argnums=(0,))
