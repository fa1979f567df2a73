"""EDM networks (SongUNet, DhariwalUNet) with preconditioning wrappers; `build_network(config)`.

config: a JSON-able dict mirroring the official `_init_kwargs` (img_resolution, img_channels, label_dim,
model_type, model_channels, channel_mult, ...) plus `precond` (the wrapper class name); optional `dtype`
("float32" / "bfloat16") for the trunk compute. See spec edm_architecture.md sections 2-4, 6.
"""

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from di_jax.nets.dhariwal_unet import DhariwalUNet
from di_jax.nets.layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock
from di_jax.nets.precond import DEFAULT_MODEL, PRECONDS, Precond, iddpm_round_sigma, iddpm_u
from di_jax.nets.presets import edm_config_presets
from di_jax.nets.song_unet import SongUNet

__all__ = ["build_network", "edm_config_presets", "Precond", "SongUNet", "DhariwalUNet", "UNetBlock", "Conv2d",
           "GroupNorm", "Linear", "PositionalEmbedding", "FourierEmbedding", "iddpm_u", "iddpm_round_sigma",
           "PRECONDS", "DEFAULT_MODEL", "UNETS", "UNET_KEYS", "WRAPPER_KEYS", "CONFIG_KEYS", "unet_defaults"]

UNETS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
# Config keys passed to each UNet's constructor (official argument names, spec sections 2-3).
UNET_KEYS = {
    "SongUNet": ("label_dim", "augment_dim", "model_channels", "channel_mult", "channel_mult_emb", "num_blocks",
                 "attn_resolutions", "dropout", "label_dropout", "embedding_type", "channel_mult_noise",
                 "encoder_type", "decoder_type", "resample_filter"),
    "DhariwalUNet": ("label_dim", "augment_dim", "model_channels", "channel_mult", "channel_mult_emb",
                     "num_blocks", "attn_resolutions", "dropout", "label_dropout"),
}
# Config keys passed to `Precond` when set.
WRAPPER_KEYS = ("sigma_data", "beta_d", "beta_min", "M", "epsilon_t", "C_1", "C_2", "sigma_min", "sigma_max")
# Config keys `build_network` reads itself (or, like use_fp16, accepts and ignores).
_OTHER_KEYS = ("precond", "model_type", "img_resolution", "img_channels", "use_fp16", "dtype")
CONFIG_KEYS = frozenset({*_OTHER_KEYS, *WRAPPER_KEYS, *UNET_KEYS["SongUNet"], *UNET_KEYS["DhariwalUNet"]})


def unet_defaults(model_type: str) -> dict:
    """Constructor defaults of a UNet's config keys, as JSON values (tuples become lists)."""
    fields = {f.name: f.default for f in dataclasses.fields(UNETS[model_type])}
    return {k: list(fields[k]) if isinstance(fields[k], tuple) else fields[k] for k in UNET_KEYS[model_type]}


def build_network(config: Mapping[str, Any]) -> Precond:
    """Flax preconditioned EDM network for a config dict (unknown keys raise ValueError)."""
    cfg = dict(config)
    precond = cfg.get("precond")
    if precond not in PRECONDS:
        raise ValueError(f"config 'precond' must be one of {PRECONDS}; got {precond!r}")
    model_type = cfg.get("model_type", DEFAULT_MODEL[precond])
    if model_type not in UNET_KEYS:
        raise ValueError(f"config 'model_type' must be one of {tuple(UNET_KEYS)}; got {model_type!r}")
    for key in ("img_resolution", "img_channels"):
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            raise ValueError(f"config {key!r} must be a positive int; got {cfg.get(key)!r}")
    unknown = set(cfg) - set(UNET_KEYS[model_type]) - set(WRAPPER_KEYS) - set(_OTHER_KEYS)
    if unknown:
        raise ValueError(f"config has keys unknown to {model_type}: {sorted(unknown)}")
    dtype = jnp.dtype(cfg.get("dtype", "float32"))
    unet_kw = {k: (tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k])
               for k in UNET_KEYS[model_type] if k in cfg}
    c = cfg["img_channels"]
    unet = UNETS[model_type](img_resolution=cfg["img_resolution"], in_channels=c,
                             out_channels=2 * c if precond == "iDDPMPrecond" else c, dtype=dtype, **unet_kw)
    wrap_kw = {k: cfg[k] for k in WRAPPER_KEYS if cfg.get(k) is not None}
    if "sigma_max" in wrap_kw and wrap_kw["sigma_max"] == "inf":
        wrap_kw["sigma_max"] = float("inf")
    return Precond(precond=precond, model=unet, img_channels=c, label_dim=cfg.get("label_dim", 0), dtype=dtype,
                   **wrap_kw)
