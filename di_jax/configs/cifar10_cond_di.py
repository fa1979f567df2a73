"""Diff-Instruct, class-conditional CIFAR-10: the official EDM DDPM++ VP teacher into a one-step generator.

DI paper Table 7 (batch 64, Adam(0, 0.99), lr 1e-5, sigma_init 2.5, 100k iterations; reported FID 4.19),
with the official code's fake phase (EDM augmentation p = 0.12 with augment labels, dropout 0.13 as in
the checkpoint) and generator phase (EDM noise levels, teacher and fake score in train mode with one
dropout mask). Where the official script differs (Adam(0, 0.999), batch 128, its README's
--init_sigma 1.0) we follow the paper's table; experiments/RECIPES.md lists both.

    di-jax distill --config cifar10_cond_di --workdir runs/c10c_di --config.teacher.path=FILE.pkl
"""

from di_jax.configs.paper import edm_recipe


def get_config():
    return edm_recipe("di", "edm-cifar10-32x32-cond-vp.pkl", batch_size=64, num_steps=100_000, lr=1e-5,
                      b2=0.99, sigma_init=2.5, augment_p=0.12)
