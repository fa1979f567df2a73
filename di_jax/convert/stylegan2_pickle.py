"""Read official StyleGAN2-ADA network snapshots without torch and without executing their code.

    module, variables = load_generator("network-snapshot-025000.pkl")
    img = module.apply(variables, z, c, truncation_psi=1, noise_mode="const")   # [N, C, R, R]

A snapshot is a pickled dict {G, D, G_ema, augment_pipe, training_set_kwargs} whose networks are
`torch_utils.persistence` objects carrying their module source (spec t2i_and_gan.md, StyleGAN2-ADA;
the format is EDM's, spec edm_architecture.md section 7). It is read with the same allow-listed,
bounded unpickler as EDM snapshots (`edm_pickle.PersistenceUnpickler`): `module_src` is never
executed, `_reconstruct_persistent_obj` only keeps class name and state, tensors become numpy.

From the chosen network (`G_ema` by default) we take its `state_dict()` (parameters and persistent
buffers, `edm_pickle.module_state_dict`) and its constructor kwargs (`_init_kwargs`). The kwargs are
validated key by key (types, ranges, allowed strings; unknown keys refused), the Flax
`nets.stylegan2.Generator` is built from them, and the state dict is checked strictly against that
module's variables: every key present, none extra, every shape equal. The conversion is then the
identity on names: torch key `a.b.c` is `variables[collection]['a']['b']['c']`, with torch
parameters in 'params' and torch buffers (`w_avg`, `noise_const`, `resample_filter`) in 'buffers'.
Every problem is a one-line `CheckpointError`.

`save_generator(path, kwargs, variables)` writes a generator as a `.safetensors` file: its official
state_dict (parameters and buffers, official names) with the constructor kwargs as JSON in the
metadata (`GENERATOR_KWARGS_KEY`); `load_generator` reads that format too (chosen by content), with
the same kwargs validation and strict key/shape checks (the digits GAN asset,
`experiments/train_digits_gan.py`). PyTorch users load it with `safetensors.torch.load_file` into the
official `Generator(**kwargs)` (`load_state_dict(..., strict=True)`).
"""

import collections
import json
import math
import os
from typing import Any, Mapping

import numpy as np

from di_jax.convert import catalogue
from di_jax.convert.arguments import bool_arg, path_arg
from di_jax.convert.edm_pickle import (
    PersistenceUnpickler,
    PersistentObject,
    init_kwargs,
    load_pickle,
    module_state_dict,
)
from di_jax.convert.errors import CheckpointError, clean, describe

__all__ = ["load_generator", "read_stylegan2_pickle", "read_generator_safetensors", "save_generator",
           "check_generator_kwargs", "build_generator", "generator_kwargs", "expected_variables",
           "state_dict_to_variables", "variables_to_state_dict", "NETWORKS", "GENERATOR_KWARGS_KEY"]

NETWORKS = ("G_ema", "G")  # snapshot entries that hold a Generator
GENERATOR_KWARGS_KEY = "stylegan2_generator_kwargs"   # safetensors metadata: the Generator kwargs as JSON
GENERATOR_POSITIONAL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs",
                        "synthesis_kwargs")
# Bounds on what sizes loops and allocations; the official networks use dims <= 512, resolution <= 1024,
# <= 8 mapping layers, 3 image channels, channel_base <= 32768, channel_max <= 512, 4-tap filters.
LIMITS = dict(dim=16384, c_dim=100_000, resolution=4096, img_channels=4096, num_layers=64, channel_base=1 << 24,
              num_fp16_res=64, filter_taps=16, kernel_size=15, magnitude=1e6)


class _StyleGANUnpickler(PersistenceUnpickler):
    WHAT = "StyleGAN2-ADA .pkl"


# ---------------------------------------------------------------------------------- kwargs check

def _int(lo: int, hi: int, extra: str = ""):
    def check(v, where):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise CheckpointError(f"{where} is {describe(v)}; expected an integer in [{lo}, {hi}]{extra}")
        return v
    return check


def _float(lo: float, hi: float, lo_open: bool = False):
    def check(v, where):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or not (lo < v if lo_open else lo <= v) or not v <= hi:
            bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
            raise CheckpointError(f"{where} is {describe(v)}; expected a number in {bound}")
        return float(v)
    return check


def _optional(check):
    return lambda v, where: None if v is None else check(v, where)


def _choice(options):
    def check(v, where):
        if not isinstance(v, str) or v not in options:
            raise CheckpointError(f"{where} is {describe(v)}; expected one of {', '.join(options)}")
        return v
    return check


def _bool(v, where):
    if not isinstance(v, bool):
        raise CheckpointError(f"{where} is {describe(v)}; expected true or false")
    return v


def _resolution(v, where):
    _int(4, LIMITS["resolution"])(v, where)
    if v & (v - 1):
        raise CheckpointError(f"{where} is {v}; expected a power of two")
    return v


def _filter(v, where):
    if not isinstance(v, list) or not 1 <= len(v) <= LIMITS["filter_taps"]:
        raise CheckpointError(f"{where} is {describe(v)}; expected a list of 1 to {LIMITS['filter_taps']} taps")
    taps = [_float(-LIMITS["magnitude"], LIMITS["magnitude"])(t, f"{where}[{i}]") for i, t in enumerate(v)]
    if sum(taps) == 0:
        raise CheckpointError(f"{where}: the taps sum to 0")
    return taps


def _kernel(v, where):
    _int(1, LIMITS["kernel_size"])(v, where)
    if v % 2 == 0:
        raise CheckpointError(f"{where} is {v}; expected an odd kernel size")
    return v


def _activations():
    from di_jax.nets.stylegan2 import ACTIVATIONS  # pylint: disable=import-outside-toplevel
    return _choice(tuple(ACTIVATIONS))


_DIM = _int(0, LIMITS["dim"])
_TOP = {"z_dim": _DIM, "c_dim": _int(0, LIMITS["c_dim"]), "w_dim": _int(1, LIMITS["dim"]),
        "img_resolution": _resolution, "img_channels": _int(1, LIMITS["img_channels"])}
_MAPPING = {"num_layers": _int(1, LIMITS["num_layers"]), "embed_features": _optional(_int(1, LIMITS["dim"])),
            "layer_features": _optional(_int(1, LIMITS["dim"])), "activation": "activation",
            "lr_multiplier": _float(0, LIMITS["magnitude"], lo_open=True), "w_avg_beta": _optional(_float(0, 1))}
_SYNTHESIS = {"channel_base": _int(1, LIMITS["channel_base"]), "channel_max": _int(1, LIMITS["dim"]),
              "num_fp16_res": _int(0, LIMITS["num_fp16_res"]),
              "architecture": _choice(("orig", "skip", "resnet")), "resample_filter": _filter,
              "conv_clamp": _optional(_float(0, LIMITS["magnitude"])), "fp16_channels_last": _bool,
              "kernel_size": _kernel, "use_noise": _bool, "activation": "activation"}


def _check_table(values: Any, table: Mapping, where: str, prefix: str, required=()) -> dict:
    if not isinstance(values, dict):
        raise CheckpointError(f"{where} is {describe(values)}, not a dict of constructor arguments")
    unknown = [k for k in values if k not in table]
    if unknown:
        raise CheckpointError(f"{where} has {len(unknown)} argument(s) unknown to the StyleGAN2-ADA Generator, first "
                              f"{clean(unknown[0], 40)!r} (a StyleGAN3 or modified network?)")
    missing = [k for k in required if k not in values]
    if missing:
        raise CheckpointError(f"{where} lacks {missing[0]!r}")
    out = {}
    for key, value in values.items():
        check = _activations() if table[key] == "activation" else table[key]
        out[key] = check(value, prefix + key)
    return out


def check_generator_kwargs(kwargs: Any) -> dict:
    """Validated official Generator kwargs (plain values) -> a clean copy; one-line CheckpointError otherwise.

    Required: z_dim, c_dim, w_dim, img_resolution, img_channels; optional mapping_kwargs and
    synthesis_kwargs with the official MappingNetwork / SynthesisNetwork (and SynthesisBlock /
    SynthesisLayer) argument names. Every value is type- and range-checked (`LIMITS`).
    """
    top = {k: v for k, v in kwargs.items() if k not in ("mapping_kwargs", "synthesis_kwargs")} \
        if isinstance(kwargs, dict) else kwargs
    out = _check_table(top, _TOP, "Generator kwargs", "", required=tuple(_TOP))
    if out["z_dim"] == 0 and out["c_dim"] == 0:
        raise CheckpointError("Generator kwargs: z_dim and c_dim are both 0 (no input)")
    for name, table in (("mapping_kwargs", _MAPPING), ("synthesis_kwargs", _SYNTHESIS)):
        out[name] = _check_table(kwargs.get(name) or {}, table, name, f"{name}.")
    return out


# ------------------------------------------------------------------------------------ snapshot

def _not_stylegan(data: Any) -> CheckpointError:
    if not isinstance(data, dict):
        return CheckpointError(f"pickle is not a StyleGAN2-ADA snapshot: it holds {describe(data)}, not a dict")
    if "ema" in data:
        return CheckpointError("pickle is an EDM diffusion snapshot ('ema' entry), not a StyleGAN2-ADA network "
                               "snapshot: read it with di_jax.convert.load_teacher")
    keys = [clean(k, 30) for k in data if isinstance(k, str)][:6]
    return CheckpointError(f"pickle is not a StyleGAN2-ADA snapshot: no G_ema/G entry in its top-level dict "
                           f"(entries: {', '.join(keys) or 'none'}{', ...' if len(data) > 6 else ''})")


def read_stylegan2_pickle(source, network: str = "G_ema") -> tuple[dict, "collections.OrderedDict[str, np.ndarray]"]:
    """(validated Generator kwargs, `state_dict()` as numpy) of one generator of a snapshot.

    Args:
      source: a path (regular file), the file's bytes or a binary file object.
      network: 'G_ema' (the EMA generator, what the official code samples with) or 'G'.
    """
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}; got {network!r}")
    data = load_pickle(source, _StyleGANUnpickler)
    if not isinstance(data, dict) or not any(k in data for k in NETWORKS):
        raise _not_stylegan(data)
    if network not in data:
        raise CheckpointError(f"StyleGAN2-ADA snapshot has no {network!r} entry")
    net = data[network]
    if not isinstance(net, PersistentObject):
        raise CheckpointError(f"{network!r} is {describe(net)}, not a StyleGAN2-ADA persistent network")
    if net.class_name != "Generator":
        raise CheckpointError(f"{network!r} is a {clean(net.class_name, 60)}, not a StyleGAN2-ADA Generator")
    state_dict = module_state_dict(net)
    if not state_dict:
        raise CheckpointError(f"{network!r} holds no tensors")
    kwargs = init_kwargs(net, GENERATOR_POSITIONAL, family="a StyleGAN2-ADA")
    return check_generator_kwargs(kwargs), state_dict


# ------------------------------------------------------------------------- module and variables

def build_generator(kwargs: Mapping[str, Any], dtype: Any = None):
    """Flax `Generator` of validated official kwargs; `dtype` computes the official float16 blocks."""
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from flax.core import FrozenDict  # pylint: disable=import-outside-toplevel

    from di_jax.nets.stylegan2 import Generator  # pylint: disable=import-outside-toplevel

    freeze = lambda d: FrozenDict({k: tuple(v) if isinstance(v, list) else v for k, v in (d or {}).items()})
    top = {k: kwargs[k] for k in _TOP}
    return Generator(**top, mapping_kwargs=freeze(kwargs.get("mapping_kwargs")),
                     synthesis_kwargs=freeze(kwargs.get("synthesis_kwargs")),
                     dtype=jnp.float32 if dtype is None else dtype)


def generator_kwargs(module) -> dict:
    """The official constructor kwargs (JSON values) of a Flax `Generator` (inverse of `build_generator`)."""
    plain = lambda d: {k: list(v) if isinstance(v, tuple) else v for k, v in dict(d or {}).items()}
    return dict({k: getattr(module, k) for k in _TOP}, mapping_kwargs=plain(module.mapping_kwargs),
                synthesis_kwargs=plain(module.synthesis_kwargs))


def _flatten(tree: Mapping, prefix: str, out: dict, collection: str) -> None:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            _flatten(value, f"{prefix}{key}.", out, collection)
        else:
            out[f"{prefix}{key}"] = (collection, value)


def expected_variables(module) -> "collections.OrderedDict[str, tuple[str, tuple, np.dtype]]":
    """torch key -> (collection, shape, dtype) of a Generator's variables (abstract init: nothing allocated)."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    z = jnp.zeros((1, module.z_dim), jnp.float32)
    c = jnp.zeros((1, module.c_dim), jnp.float32) if module.c_dim else None
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), z, c, noise_mode="const"))
    flat: dict = {}
    for collection, tree in shapes.items():
        _flatten(tree, "", flat, collection)
    return collections.OrderedDict((k, (col, tuple(v.shape), np.dtype(v.dtype))) for k, (col, v) in flat.items())


def state_dict_to_variables(state_dict: Mapping[str, np.ndarray], module,
                            where: str = "StyleGAN2-ADA snapshot") -> dict:
    """Official state_dict -> `{'params': ..., 'buffers': ...}` for `module.apply`, checked strictly.

    Raises one CheckpointError line naming the missing, unexpected and wrongly shaped keys (the
    first few of each, with counts).
    """
    want = expected_variables(module)
    missing = [k for k in want if k not in state_dict]
    unexpected = [clean(k, 120) for k in state_dict if k not in want]
    wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {want[k][1]})" for k in want
             if k in state_dict and tuple(state_dict[k].shape) != want[k][1]]
    if missing or unexpected or wrong:
        parts = [f"{len(keys)} {what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise CheckpointError(f"{where} does not match the Generator of its init kwargs: " + "; ".join(parts))
    variables: dict = {}
    for key, (collection, _, dtype) in want.items():
        node = variables.setdefault(collection, {})
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = np.asarray(state_dict[key], dtype)
    return variables


def variables_to_state_dict(variables: Mapping) -> "collections.OrderedDict[str, np.ndarray]":
    """Inverse of `state_dict_to_variables`: dotted official keys -> numpy arrays (both collections)."""
    flat: dict = {}
    for collection, tree in variables.items():
        _flatten(tree, "", flat, collection)
    return collections.OrderedDict((k, np.asarray(v)) for k, (_, v) in flat.items())


def read_generator_safetensors(path) -> tuple[dict, dict]:
    """(validated Generator kwargs, state_dict as numpy) of a `save_generator` file."""
    from di_jax.convert.safetensors_file import read_safetensors_metadata  # pylint: disable=import-outside-toplevel

    tensors, metadata = read_safetensors_metadata(path)
    if GENERATOR_KWARGS_KEY not in metadata:
        what = "an EDM network (read it with di_jax.convert.load_teacher)" if "edm_config" in metadata \
            else "no StyleGAN2-ADA generator"
        raise CheckpointError(f"{os.fspath(path)}: safetensors file without {GENERATOR_KWARGS_KEY!r} metadata: "
                              f"{what}")
    try:
        kwargs = json.loads(metadata[GENERATOR_KWARGS_KEY])
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{os.fspath(path)}: metadata {GENERATOR_KWARGS_KEY!r} is not JSON "
                              f"({clean(str(e), 80)})") from None
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{os.fspath(path)}: metadata {GENERATOR_KWARGS_KEY!r} is {describe(kwargs)}, "
                              "not a JSON object of Generator kwargs")
    return check_generator_kwargs(kwargs), collections.OrderedDict(tensors.load())


def save_generator(path: str | os.PathLike, kwargs: Mapping[str, Any], variables: Mapping,
                   allow_nonfinite: bool = False) -> None:
    """Write a Flax StyleGAN2-ADA Generator as `.safetensors`: official state_dict names, kwargs in the metadata.

    Args:
      path: the file to write.
      kwargs: the official Generator constructor kwargs (validated; `check_generator_kwargs`).
      variables: `{'params': ..., 'buffers': ...}` of the Generator of `kwargs` (checked strictly).
      allow_nonfinite: accept NaN / infinite weights (refused by default, as by every reader).
    """
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    path = path_arg(path, "save_generator")
    bool_arg(allow_nonfinite, "save_generator", "allow_nonfinite")
    plain = json.loads(json.dumps(kwargs, default=lambda v: list(v) if isinstance(v, tuple) else dict(v)))
    checked = check_generator_kwargs(plain)
    state_dict = variables_to_state_dict(variables)
    state_dict_to_variables(state_dict, build_generator(checked), "save_generator variables")   # strict check
    tensors = {k: np.array(v, np.float32, order="C") for k, v in state_dict.items()}   # 0-d stays 0-d
    catalogue.check_values(tensors, allow_nonfinite, where="save_generator variables")
    save_file(tensors, os.fspath(path), metadata={GENERATOR_KWARGS_KEY: json.dumps(checked, sort_keys=True)})


def load_generator(path: str | os.PathLike, network: str = "G_ema", dtype: Any = None,
                   allow_nonfinite: bool = False) -> tuple[Any, dict]:
    """(Flax Generator, variables) of an official StyleGAN2-ADA `network-snapshot-*.pkl` or a `save_generator` file.

    Args:
      path: the snapshot (read without executing its embedded code) or `.safetensors` file (format by content).
      network: 'G_ema' (default) or 'G' (snapshots only).
      dtype: compute dtype of the blocks the official network runs in float16 (default float32).
      allow_nonfinite: accept NaN / infinite / |x| > 1e19 weights (refused by default).
    Returns: `(module, variables)`, variables = {'params': ..., 'buffers': ...} of float32 numpy
      arrays: `module.apply(variables, z, c, truncation_psi, truncation_cutoff, noise_mode)`.
    """
    from di_jax.convert import sniff  # pylint: disable=import-outside-toplevel

    path = path_arg(path, "load_generator")
    bool_arg(allow_nonfinite, "load_generator", "allow_nonfinite")
    if sniff(path) == "safetensors":
        kwargs, state_dict = read_generator_safetensors(path)
        where = f"StyleGAN2-ADA generator {os.path.basename(os.fspath(path))}"
    else:
        kwargs, state_dict = read_stylegan2_pickle(path, network)
        where = f"StyleGAN2-ADA snapshot {network}"
    module = build_generator(kwargs, dtype)
    variables = state_dict_to_variables(state_dict, module, where)
    catalogue.check_values(state_dict, allow_nonfinite, where=where)
    return module, variables
