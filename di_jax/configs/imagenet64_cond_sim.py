"""Score Implicit Matching (pseudo-Huber), class-conditional ImageNet 64x64.

The SIM paper reports no ImageNet-64 result: this is its CIFAR-10 recipe (batch 256, lr 1e-5, Adam(0, 0.999),
SIM noise levels, pseudo-Huber at the library's c) with DI's ImageNet-64 generator (sigma_init 5.0,
50k iterations, DI Table 7) and no augmentation (the ADM teacher has no augment labels).

    di-jax distill --config imagenet64_cond_sim --workdir runs/in64_sim --config.teacher.path=FILE.pkl
"""

from di_jax.configs.paper import edm_recipe


def get_config():
    return edm_recipe("sim", "edm-imagenet-64x64-cond-adm.pkl", batch_size=256, num_steps=50_000, lr=1e-5,
                      b2=0.999, sigma_init=5.0, augment_p=0.0)
