"""di_jax: data-free one-step distillation of diffusion models in JAX/Flax.

Modules, one concept each (the four registries in capitals):
  diffusion   marginals, noise schedules, sigma samplers, weightings, denoiser<->score<->eps.
  distances   the SIM distance family d(y), d'(y).
  losses      per-example surrogate losses returning (value, aux): DSM, DI, SIM, SiD, SDS, DMD.
  methods     METHODS: name -> loss, noise levels, fake score, dropout convention, options.
  configs     the config schema and the shipped configs (digits_sim, toys, the paper recipes).
  augment     EDM's augmentation pipe as a pure function (rng, images) -> (images, augment labels).
  teachers    TEACHERS: analytic mixtures with exact scores, converted EDM networks.
  nets        Flax networks; nets.families.FAMILIES: generator + fake score built around a teacher.
  convert     PyTorch / EDM checkpoints and diffusers folders -> Flax parameter trees, without executing pickles.
  text        precomputed T5 prompt embeddings (format, per-host reader, `di-jax embed-prompts`).
  sampling    EDM Heun/Euler samplers and one-step generation.
  train       setup (config -> mesh, teacher, networks, state, compiled step), step, state, loop.
  eval        evaluators.EVALUATORS: pictures and final metrics; FID / Inception Score; digits report.
  bench       `di-jax bench`: the compiled step's throughput beside a PyTorch reference.
"""

__version__ = "0.1.0"
