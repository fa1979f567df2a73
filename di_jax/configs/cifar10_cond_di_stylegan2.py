"""Diff-Instruct refinement of a pre-trained StyleGAN2-ADA generator, class-conditional CIFAR-10 (DI §4.2).

The generator is the official conditional CIFAR-10 StyleGAN2-ADA snapshot (its G_ema, read without running
its embedded code); teacher and fake score are the official EDM cond. VP network (the fake score a copy of
it). DI paper Table 9 (spec t2i_and_gan.md): Adam(0, 0.99) for generator and fake score, batch 512,
lr 1.5e-6 (StyleGAN2-ADA+Tune; 2e-7 for plain StyleGAN2 cond., `--config.gen_optim.lr=2e-7
--config.fake_optim.lr=2e-7`), 6k-16k iterations (16k here, the upper end: the table gives the range, not
a value per generator), StyleGAN2-ADA's own G EMA (its 'cifar' preset: ema_kimg 500, ramp-up 0.05).
Reported FID 2.42 -> 2.27 (DI Table 3). The fake phase follows the DI CIFAR-10 recipe of the same code
(EDM augmentation p = 0.12 with augment labels, dropout at the checkpoint's rate); truncation psi 1 and
noise_mode 'const' for the deterministic calls (the fake phase, every evaluation), random noise in
the generator phase (train mode under DI's dropout convention).

    di-jax distill --config cifar10_cond_di_stylegan2 --workdir runs/c10c_di_gan \\
        --config.teacher.path=/ckpt/edm-cifar10-32x32-cond-vp.pkl --config.networks.generator.path=/ckpt/cifar10.pkl
"""

import ml_collections

from di_jax.configs.paper import edm_recipe

STYLEGAN2_ADA_PRETRAINED = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/"


def get_config():
    c = edm_recipe("di", "edm-cifar10-32x32-cond-vp.pkl", batch_size=512, num_steps=16_000, lr=1.5e-6, b2=0.99,
                   sigma_init=2.5, augment_p=0.12)
    generator = ml_collections.ConfigDict(dict(kind="stylegan2", path="", official="cifar10.pkl",
                                               truncation_psi=1.0, truncation_cutoff=-1, noise_mode="const"))
    c.networks = ml_collections.ConfigDict(dict(kind="edm", dropout=-1.0, dtype="float32", generator=generator))
    c.ema = ml_collections.ConfigDict(dict(kind="stylegan2", ema_kimg=500.0, ema_rampup=0.05))
    return c
