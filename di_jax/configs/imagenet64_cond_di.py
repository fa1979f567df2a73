"""Diff-Instruct, class-conditional ImageNet 64x64: the official EDM ADM teacher into a one-step generator.

DI paper Table 7 (batch 96, Adam(0, 0.99), lr 1e-5, sigma_init 5.0, 50k iterations; reported FID 5.57).
The ADM teacher was trained without augmentation (augment_dim 0), so the fake phase has none; dropout
keeps the checkpoint's 0.10.

    di-jax distill --config imagenet64_cond_di --workdir runs/in64_di --config.teacher.path=FILE.pkl
"""

from di_jax.configs.paper import edm_recipe


def get_config():
    return edm_recipe("di", "edm-imagenet-64x64-cond-adm.pkl", batch_size=96, num_steps=50_000, lr=1e-5,
                      b2=0.99, sigma_init=5.0, augment_p=0.0)
