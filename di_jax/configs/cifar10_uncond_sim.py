"""Score Implicit Matching (pseudo-Huber), unconditional CIFAR-10 (reported FID 2.06).

SIM paper: batch 256, lr 1e-5 for both networks, Adam(0, 0.999), sigma_init 2.5, generator-phase noise
levels ln sigma ~ N(-3.5, 2.5^2) (eq. B.9-B.10), EDM's in the fake phase. The paper does not state the
pseudo-Huber c (a denoiser-unit constant in Alg. 2): c is the library default, chosen by the sweep in
experiments/README.md. No SIM training code is public: augmentation, dropout and the 100k-iteration
budget follow DI's official code (same authors) and are marked as our choices in experiments/RECIPES.md.

    di-jax distill --config cifar10_uncond_sim --workdir runs/c10u_sim --config.teacher.path=FILE.pkl
"""

from di_jax.configs.paper import edm_recipe


def get_config():
    return edm_recipe("sim", "edm-cifar10-32x32-uncond-vp.pkl", batch_size=256, num_steps=100_000, lr=1e-5,
                      b2=0.999, sigma_init=2.5, augment_p=0.12)
