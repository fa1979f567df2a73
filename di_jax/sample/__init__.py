"""`di-jax sample`: images from a run's one-step generator or from a teacher (EDM's Heun sampler).

  seeds     "0-49999,60" -> seeds; per-seed latents and class labels (the same seed, the same image)
  sources   what draws: a run directory's generator (EMA or raw) or a teacher checkpoint
  generate  the sharded generation loop over all devices (shared with `di-jax fid`)
  writers   PNG files, .npz, grid and scatter pictures
  cli       the command line
"""
