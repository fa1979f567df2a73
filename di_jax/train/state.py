"""The explicit train state pytree, optimisers and the EMA rules (EDM's, StyleGAN2-ADA's).

The teacher's parameters are deliberately NOT part of the state: they are a separate, replicated,
never-donated argument of the train step, and never checkpointed with it.
"""

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    step: jax.Array            # int32 [], generator updates done
    rng: jax.Array             # uint32 [2], base key; step keys are fold_in(rng, step)
    gen_params: PyTree
    fake_params: PyTree
    ema_params: PyTree         # EMA of gen_params (config.ema: EDM's or StyleGAN2-ADA's half-life rule)
    gen_opt_state: PyTree      # optimiser state over the *raveled* generator params (train/flat_update.py)
    fake_opt_state: PyTree     # likewise for the fake score
    skipped_gen: jax.Array     # int32 [], generator updates skipped for non-finite loss/grad
    skipped_fake: jax.Array    # int32 [], fake-score updates skipped


def make_optimizer(cfg: ml_collections.ConfigDict, clip: bool = True) -> optax.GradientTransformation:
    """Adam(b1, b2, eps) at a constant lr (beta1 = 0 in DI/SIM/SiD), with optional global-norm clipping.

    With b1 = 0 Adam's first moment is just the gradient: the same update (bias-corrected second
    moment, eps outside the square root) is built without storing it, which saves one
    parameter-sized buffer per network in the state and the copies XLA makes of it in the step.
    `weight_decay` > 0 makes it AdamW (decoupled: u = -lr (adam + wd p), as torch.optim.AdamW and
    DMD2); its `update` then needs the parameters (`needs_params`). `clip=False` leaves the clipping
    out (FSDP applies it with the norm over all shards: `di_jax.train.flat_update`).
    """
    wd = cfg.get("weight_decay", 0.0)
    if cfg.b1 == 0:
        adam = optax.scale_by_rms(decay=cfg.b2, eps=cfg.eps, eps_in_sqrt=False, bias_correction=True)
    else:
        adam = optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    parts = [optax.clip_by_global_norm(cfg.clip)] if clip and cfg.clip > 0 else []
    parts += [adam] + ([optax.add_decayed_weights(wd)] if wd > 0 else []) + [optax.scale(-cfg.lr)]
    return optax.chain(*parts)


def needs_params(cfg: ml_collections.ConfigDict) -> bool:
    """Whether the optimiser of `cfg` reads the parameters (weight decay)."""
    return cfg.get("weight_decay", 0.0) > 0


def create_state(rng: jax.Array, gen_params: PyTree, fake_params: PyTree,
                 gen_init: Callable[[PyTree], PyTree], fake_init: Callable[[PyTree], PyTree]) -> TrainState:
    """A fresh state; `gen_init(params)` / `fake_init(params)` build the optimiser states
    (`di_jax.train.flat_update.FlatUpdate.init`)."""
    copy = lambda t: jax.tree.map(jnp.array, t)
    return TrainState(step=jnp.zeros((), jnp.int32), rng=jnp.asarray(rng, jnp.uint32),
                      gen_params=gen_params, fake_params=fake_params, ema_params=copy(gen_params),
                      gen_opt_state=gen_init(gen_params), fake_opt_state=fake_init(fake_params),
                      skipped_gen=jnp.zeros((), jnp.int32), skipped_fake=jnp.zeros((), jnp.int32))


EMA_RULES = ("edm", "stylegan2")   # config.ema.kind


def edm_ema_decay(step: jax.Array, batch_size: int, halflife_kimg: float, rampup: float) -> jax.Array:
    """EDM's EMA: beta = 0.5^(batch / halflife_img), halflife_img = min(halflife, rampup * images seen).

    As in EDM's training loop, "images seen" counts the images *before* this step (`cur_nimg` is
    incremented after the EMA update): with a ramp-up, beta = 0 at step 0 and the EMA starts as the
    parameters after the first update. rampup = 0: no ramp-up.
    """
    halflife = jnp.float32(halflife_kimg * 1000.0)
    if rampup > 0:
        halflife = jnp.minimum(halflife, step.astype(jnp.float32) * batch_size * rampup)
    return 0.5 ** (batch_size / jnp.maximum(halflife, 1e-8))


def stylegan2_ema_decay(step: jax.Array, batch_size: int, ema_kimg: float, ema_rampup: Optional[float]) -> jax.Array:
    """StyleGAN2-ADA's G_ema rule (official `training_loop.py`, used by DI's GAN refinement, DI Table 9).

    ema_nimg = ema_kimg * 1000, then min(ema_nimg, cur_nimg * ema_rampup) when ema_rampup is set
    (None or 0: no ramp-up), beta = 0.5 ** (batch / max(ema_nimg, 1e-8)); cur_nimg counts the images
    before this step (the loop adds the batch after the update). The same formula as EDM's rule
    (EDM took it from this loop); the generator's buffers are constants here, so G_ema's buffer copy
    (`b_ema.copy_(b)`) has nothing to copy.
    """
    return edm_ema_decay(step, batch_size, ema_kimg, ema_rampup or 0.0)


def ema_decay(step: jax.Array, batch_size: int, halflife_kimg: Optional[float] = None,
              rampup: Optional[float] = None, kind: str = "edm", ema_kimg: Optional[float] = None,
              ema_rampup: Optional[float] = None) -> jax.Array:
    """The EMA decay of the rule `kind` (config.ema.kind, one of EMA_RULES) at `step`; takes config.ema's fields.

    "edm": `edm_ema_decay(step, batch, halflife_kimg, rampup)`; "stylegan2":
    `stylegan2_ema_decay(step, batch, ema_kimg, ema_rampup)` (StyleGAN2-ADA's names).
    """
    if kind == "edm":
        if halflife_kimg is None or rampup is None or ema_kimg is not None or ema_rampup is not None:
            raise ValueError("config.ema.kind='edm' takes halflife_kimg and rampup (not ema_kimg / ema_rampup)")
        return edm_ema_decay(step, batch_size, halflife_kimg, rampup)
    if kind == "stylegan2":
        if ema_kimg is None or halflife_kimg is not None or rampup is not None:
            raise ValueError("config.ema.kind='stylegan2' takes ema_kimg and ema_rampup (not halflife_kimg / rampup)")
        return stylegan2_ema_decay(step, batch_size, ema_kimg, ema_rampup)
    raise ValueError(f"config.ema.kind must be one of {EMA_RULES}; got {kind!r}")


def param_count(tree: PyTree) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))
