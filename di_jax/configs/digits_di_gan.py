"""DI's GAN refinement in miniature: the embedded digits StyleGAN2-ADA generator refined with Diff-Instruct.

    di-jax distill --config digits_di_gan --workdir runs/digits_di_gan

The generator starts as the embedded digits GAN (`di_jax/assets/digits_gan.safetensors`, a StyleGAN2-ADA
generator trained by `experiments/train_digits_gan.py`); teacher and fake score are the embedded digits EDM
teacher (the fake score a copy of it), as DI §4.2 refines StyleGAN2-ADA generators with an EDM teacher
(Table 3: the GAN before and after). The report (report.md, metrics.json) puts the GAN before refinement
next to the refined EMA generator (classifier FD, coverage, label accuracy, grids). Settings follow DI
Table 9's shape (DI loss and noise levels, Adam(0, 0.99) for both networks, StyleGAN2-ADA's G EMA) at the
size of this CPU job; the learning rates and step count are this job's own (experiments/README.md).
"""

import ml_collections

from di_jax.configs.base import base_config
from di_jax.nets import digits_gan


def get_config():
    c = base_config()
    c.method = "di"
    c.teacher = ml_collections.ConfigDict(dict(kind="edm", path=""))      # '': the embedded digits teacher
    generator = ml_collections.ConfigDict(dict(kind="stylegan2", path=digits_gan.ASSET, truncation_psi=1.0,
                                               truncation_cutoff=-1, noise_mode="const"))
    c.networks = ml_collections.ConfigDict(dict(kind="edm", dropout=-1.0, dtype="float32", generator=generator))
    c.batch_size = 64
    c.num_steps = 400
    c.fake_steps = 1
    c.gen_optim.update(lr=1e-4, b1=0.0, b2=0.99)
    c.fake_optim.update(lr=1e-4, b1=0.0, b2=0.99)
    c.ema = ml_collections.ConfigDict(dict(kind="stylegan2", ema_kimg=5.0, ema_rampup=0.05))
    c.log_every = 50
    c.ckpt_every = 200
    c.eval.update(kind="digits", num=1000, heun_steps=18)
    return c
