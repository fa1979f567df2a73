"""Score identity Distillation (alpha = 1.2), unconditional CIFAR-10 (reported FID 2.02).

The official run_sid.sh 'cifar10-uncond': batch 256, lr 1e-5 for both networks, Adam(0, 0.999),
sigma_init 2.5, alpha 1.2, tmax 800 (t ~ U[0, 0.8), sigma on the Karras curve at 1 - t), 500 Mimg
(1,953,125 generator updates); sid_train.py defaults: augmentation p = 0.12, dropout 0.13, EMA
half-life 0.5 Mimg with ramp-up 0.05; teacher and fake score in eval mode in the generator phase.

    di-jax distill --config cifar10_uncond_sid --workdir runs/c10u_sid --config.teacher.path=FILE.pkl
"""

from di_jax.configs.paper import edm_recipe


def get_config():
    c = edm_recipe("sid", "edm-cifar10-32x32-uncond-vp.pkl", batch_size=256, num_steps=1_953_125, lr=1e-5,
                   b2=0.999, sigma_init=2.5, augment_p=0.12)
    c.sid_alpha = 1.2
    return c
