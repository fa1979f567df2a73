"""The main job: SIM (pseudo-Huber) one-step distillation of the embedded class-conditional digits teacher.

    di-jax distill --workdir runs/digits            # this config is the default
    di-jax distill --config digits_sim --workdir runs/digits --config.method=di

`--config.method=di|sid|dmd|sds` runs the other methods with their own generator-phase noise levels
(`sigma_gen.kind = "auto"`, spec distillation.md §5, §7). Sized to finish on 2 CPU cores in minutes.
"""

import ml_collections

from di_jax.configs.base import base_config


def get_config(method: str = "sim"):
    c = base_config()
    c.method = method or "sim"
    c.distance.update(name="pseudo_huber", c=1.0)
    c.teacher = ml_collections.ConfigDict(dict(kind="edm", path=""))      # '': embedded digits teacher
    c.networks = ml_collections.ConfigDict(dict(kind="edm", sigma_init=2.5, dropout=-1.0, dtype="float32"))
    c.batch_size = 64
    c.num_steps = 800
    c.fake_steps = 1
    c.gen_optim.update(lr=1e-4, b2=0.999)
    c.fake_optim.update(lr=1e-4, b2=0.999)
    c.ema.update(halflife_kimg=5.0, rampup=0.05)
    c.log_every = 50
    c.ckpt_every = 200
    c.eval.update(kind="digits", num=1000, heun_steps=18)
    return c
