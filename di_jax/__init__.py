"""di_jax: data-free one-step distillation of diffusion models in JAX/Flax.

Modules, one concept each:
  diffusion   marginals, noise schedules, sigma samplers, weightings, denoiser<->score<->eps.
  distances   the SIM distance family d(y), d'(y).
  losses      per-example surrogate losses (DSM, DI, SIM, SiD, SDS, DMD).
  teachers    teachers with exact scores (analytic) and loaded EDM networks.
  nets        Flax networks (EDM SongUNet / DhariwalUNet, preconditioning, MLPs).
  convert     PyTorch / EDM checkpoints -> Flax parameter trees.
  sampling    EDM Heun/Euler samplers and one-step generation.
  train       train state, the compiled train step, sharding, the training loop.
  eval        FID / Inception Score.
"""

__version__ = "0.1.0"
