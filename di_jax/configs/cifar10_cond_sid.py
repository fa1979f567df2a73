"""Score identity Distillation (alpha = 1.2), class-conditional CIFAR-10 (reported FID 1.71).

The official run_sid.sh 'cifar10-cond': as cifar10_uncond_sid (batch 256, lr 1e-5, Adam(0, 0.999),
sigma_init 2.5, alpha 1.2, tmax 800, augmentation 0.12, dropout 0.13) but 800 Mimg (3,125,000 generator
updates).

    di-jax distill --config cifar10_cond_sid --workdir runs/c10c_sid --config.teacher.path=FILE.pkl
"""

from di_jax.configs.paper import edm_recipe


def get_config():
    c = edm_recipe("sid", "edm-cifar10-32x32-cond-vp.pkl", batch_size=256, num_steps=3_125_000, lr=1e-5,
                   b2=0.999, sigma_init=2.5, augment_p=0.12)
    c.sid_alpha = 1.2
    return c
