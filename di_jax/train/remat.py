"""Rematerialisation of network calls (config.remat): less memory for one extra forward each."""

import jax

from di_jax.configs.base import REMAT_MODES
from di_jax.nets.families import Networks


def remat_networks(nets: Networks, mode: str) -> Networks:
    """Wraps network calls in `jax.checkpoint`: their backward pass recomputes the forward.

    "generator": only the generator, whose VJP residuals otherwise stay alive through the whole fake
    phase; "all": generator, fake score and teacher (peak memory ~ one network's activations, at the
    price of one extra forward per differentiated network call). Values and gradients are unchanged.

    Args:
      nets: the run's networks.
      mode: one of REMAT_MODES.
    """
    if mode not in REMAT_MODES:
        raise ValueError(f"config.remat must be one of {REMAT_MODES}; got {mode!r}")
    if mode == "none":
        return nets
    ckpt = jax.checkpoint
    if mode == "generator":
        return nets._replace(generate=ckpt(nets.generate))
    return nets._replace(generate=ckpt(nets.generate), fake_denoise=ckpt(nets.fake_denoise),
                         teacher_denoise=ckpt(nets.teacher_denoise))
