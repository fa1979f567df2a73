"""The skeleton of the paper recipes (`cifar10_*`, `imagenet64_*`): an official EDM teacher, distilled.

Every recipe names the official checkpoint it distils (`config.teacher.official`, from
https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/); the user supplies the file:

    di-jax distill --config cifar10_uncond_sim --workdir runs/c10 \\
        --config.teacher.path=/ckpt/edm-cifar10-32x32-uncond-vp.pkl

Each value a recipe sets is cited, with its source, in experiments/RECIPES.md (a test pins the
configs to that table). Operational fields (logging, checkpoints, FID in the loop) are not part of
a recipe; set `--config.fid.ref/inception/every` for FID during training.
"""

import ml_collections

from di_jax.configs.base import base_config

EDM_PRETRAINED = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"


def edm_recipe(method: str, checkpoint: str, *, batch_size: int, num_steps: int, lr: float, b2: float,
               sigma_init: float, augment_p: float) -> ml_collections.ConfigDict:
    """A one-step distillation recipe of the official EDM checkpoint `checkpoint` (a file name).

    The fake score and the generator share the optimiser settings (Adam, beta1 = 0) unless the
    recipe changes them afterwards; dropout keeps the checkpoint's rate (config.networks.dropout = -1)
    and follows the method's convention; EMA by EDM's rule (half-life 500 kimg, ramp-up 0.05).
    """
    c = base_config()
    c.method = method
    c.teacher = ml_collections.ConfigDict(dict(kind="edm", path="", official=checkpoint))
    c.networks = ml_collections.ConfigDict(dict(kind="edm", sigma_init=sigma_init, dropout=-1.0,
                                                dtype="float32"))
    c.batch_size = batch_size
    c.num_steps = num_steps
    c.fake_steps = 1
    for opt in (c.gen_optim, c.fake_optim):
        opt.update(lr=lr, b1=0.0, b2=b2, eps=1e-8, clip=0.0, weight_decay=0.0)
    c.augment.p = augment_p
    c.ema.update(halflife_kimg=500.0, rampup=0.05)
    c.log_every = 100
    c.ckpt_every = 5000
    c.sample_every = 5000
    c.num_samples = 100
    c.eval.kind = "none"
    return c
