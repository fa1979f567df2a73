"""An EDM-copy generator as the official network: its constructor config and its state_dict.

The generator of a `networks.kind == "edm"` run is a copy of its teacher's preconditioned EDM
network used at one noise level, x0 = D_theta(sigma_init z; sigma_init, class_labels). Its
parameter tree is the teacher module's, so `di_jax.convert.edm_mapping.flax_to_state_dict` names it
the way the official `EDMPrecond` / `VPPrecond` / `VEPrecond` / `iDDPMPrecond` modules do.
"""

import collections
import math
from typing import Any

from di_jax.export.errors import ExportError

# The preconditioning arguments each official wrapper class takes (spec edm_architecture.md section 4);
# passing another wrapper's argument would fall through to the UNet's **kwargs and fail there.
WRAPPER_ARGS = {"EDMPrecond": ("sigma_min", "sigma_max", "sigma_data"),
                "VPPrecond": ("beta_d", "beta_min", "M", "epsilon_t"),
                "VEPrecond": ("sigma_min", "sigma_max"),
                "iDDPMPrecond": ("C_1", "C_2", "M")}


def network_config(module) -> dict:
    """The official constructor config of a Flax `Precond` module: `precond` (class name) + its init kwargs.

    `{k: v for k, v in cfg.items() if k != "precond"}` are the keyword arguments of the official class
    `cfg["precond"]`; the dict is also a `di_jax.nets.build_network` / `di_jax.convert` config. The
    compute dtype is not recorded (the weights are float32; the official `use_fp16` is left at its
    default) and an infinite `sigma_max` (EDMPrecond's default) is left out, as JSON has no infinity.
    """
    from di_jax.convert import config as config_lib
    from di_jax.convert.errors import CheckpointError
    from di_jax.nets import UNET_KEYS, UNETS, Precond

    if not isinstance(module, Precond):
        raise ExportError(f"the generator's network is a {type(module).__name__}, not an EDM Precond module")
    unet = module.model
    model_type = next((name for name, cls in UNETS.items() if isinstance(unet, cls)), None)
    if model_type is None or module.precond not in WRAPPER_ARGS:
        raise ExportError(f"the generator's network ({module.precond} around {type(unet).__name__}) has no "
                          f"official EDM counterpart")
    cfg = {"precond": module.precond, "model_type": model_type, "img_resolution": unet.img_resolution,
           "img_channels": module.img_channels}
    for key in UNET_KEYS[model_type]:
        value = getattr(unet, key)
        cfg[key] = list(value) if isinstance(value, tuple) else value
    for key in WRAPPER_ARGS[module.precond]:
        value = getattr(module, key)
        if value is not None and not (isinstance(value, float) and math.isinf(value)):
            cfg[key] = value
    try:
        return config_lib.complete(cfg, "the generator's network config")
    except CheckpointError as e:
        raise ExportError(str(e)) from None


def state_dict(params: Any, config: dict) -> collections.OrderedDict:
    """Flax params -> the official state_dict (numpy float32, official key order, constant buffers included)."""
    from di_jax.convert.edm_mapping import flax_to_state_dict

    try:
        return flax_to_state_dict(params, config)
    except ValueError as e:
        lines = str(e).splitlines()
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        detail = lines[1].strip() if len(lines) > 1 else lines[0]
        raise ExportError(f"the generator's params do not fit its {config['precond']} / {config['model_type']} "
                          f"network: {detail}{more}") from None
