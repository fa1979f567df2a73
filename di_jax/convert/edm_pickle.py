"""Read official EDM `.pkl` snapshots without torch and without executing their embedded code.

An EDM snapshot is a pickled dict whose `ema` entry is a preconditioning wrapper saved through
`torch_utils.persistence`: every network object is a call `_reconstruct_persistent_obj(meta)`,
where `meta` carries the defining module's source (`module_src`), `class_name` and the instance
`state`. The official loader execs `module_src`; we never do. `_reconstruct_persistent_obj` is
replaced by a function that keeps `class_name` and `state` only, tensors become numpy arrays,
and any global outside the allow-list of spec edm_architecture.md section 7 is refused.
"""

import collections
import io
import os
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from di_jax.convert.unpickle import (
    NUMPY_GLOBALS,
    TENSOR_GLOBALS,
    CheckpointError,
    RestrictedUnpickler,
    load_legacy_storage,
    safe_load,
)

StateDict = "collections.OrderedDict[str, np.ndarray]"
# Positional constructor arguments shared by EDMPrecond, VPPrecond, VEPrecond and iDDPMPrecond.
_PRECOND_POSITIONAL = ("img_resolution", "img_channels", "label_dim", "use_fp16")


class PersistentObject(NamedTuple):
    """What we keep of a `persistence`-pickled object: its class name and instance `__dict__`."""

    class_name: str
    state: dict


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    """Safe stand-in for `torch_utils.persistence._reconstruct_persistent_obj`: ignores `module_src`."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise CheckpointError("persistent object record is not a {'type': 'class', ...} dict")
    name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(name, str) or not isinstance(state, dict):
        raise CheckpointError(f"persistent object record for {name!r} lacks class_name/state")
    return PersistentObject(name, state)


class ModuleDict:
    """Stand-in for `torch.nn.modules.container.ModuleDict`: keeps the pickled `__dict__` only."""

    class_name = "ModuleDict"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise CheckpointError("ModuleDict state is not a dict")
        self.state = state


class _EDMUnpickler(RestrictedUnpickler):
    ALLOWED = {
        **TENSOR_GLOBALS, **NUMPY_GLOBALS,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("torch.nn.modules.container", "ModuleDict"): ModuleDict,
        ("torch.storage", "_load_from_bytes"): load_legacy_storage,
    }
    WHAT = "EDM .pkl"


def load_pickle(source: str | os.PathLike | bytes | BinaryIO) -> Any:
    """Unpickle an EDM snapshot with the allow-list; returns the top-level object (a dict)."""
    if isinstance(source, bytes):
        return safe_load(_EDMUnpickler, io.BytesIO(source))
    if hasattr(source, "read"):
        return safe_load(_EDMUnpickler, source)
    with open(source, "rb") as f:
        return safe_load(_EDMUnpickler, f)


def module_state_dict(module: Any, prefix: str = "") -> StateDict:
    """`module.state_dict()` of an unpickled module tree (spec section 7): params, buffers, children."""
    out = collections.OrderedDict()
    _walk(module, prefix, out)
    return out


def _walk(module, prefix, out):
    where = prefix.rstrip(".") or "<root>"
    if not isinstance(module, (PersistentObject, ModuleDict)):
        raise CheckpointError(f"module {where} is a {type(module).__name__}, not a network module")
    state = module.state
    params, buffers, children = (state.get(k, {}) for k in ("_parameters", "_buffers", "_modules"))
    skip = state.get("_non_persistent_buffers_set", set())
    if not all(isinstance(d, dict) for d in (params, buffers, children)):
        raise CheckpointError(f"module {where} ({module.class_name}) has malformed "
                              "_parameters/_buffers/_modules")
    for name, value in list(params.items()) + [(n, v) for n, v in buffers.items() if n not in skip]:
        if value is None:
            continue
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
        out[prefix + name] = value
    for name, child in children.items():
        if child is not None:
            _walk(child, f"{prefix}{name}.", out)


def init_kwargs(obj: PersistentObject) -> dict:
    """Constructor kwargs of a wrapper (`_init_kwargs`, with positional `_init_args` named)."""
    kwargs, args = obj.state.get("_init_kwargs"), obj.state.get("_init_args", ())
    if not isinstance(kwargs, dict) or not isinstance(args, (tuple, list)):
        raise CheckpointError(f"{obj.class_name} has no _init_kwargs: not an EDM persistent network")
    if len(args) > len(_PRECOND_POSITIONAL):
        raise CheckpointError(f"{obj.class_name} was built with {len(args)} positional arguments; "
                              f"only {len(_PRECOND_POSITIONAL)} can be named")
    return {**dict(zip(_PRECOND_POSITIONAL, args)), **kwargs}


def read_edm_pickle(source) -> tuple[str, dict, StateDict]:
    """EDM snapshot -> (wrapper class name, its init kwargs, `ema.state_dict()` as numpy arrays)."""
    data = load_pickle(source)
    if not isinstance(data, dict) or "ema" not in data:
        raise CheckpointError("pickle is not an EDM snapshot: no 'ema' entry in its top-level dict")
    ema = data["ema"]
    if not isinstance(ema, PersistentObject):
        raise CheckpointError(f"'ema' is a {type(ema).__name__}, not an EDM persistent network")
    state_dict = module_state_dict(ema)
    if not state_dict:
        raise CheckpointError(f"'ema' ({ema.class_name}) holds no tensors")
    return ema.class_name, init_kwargs(ema), state_dict
