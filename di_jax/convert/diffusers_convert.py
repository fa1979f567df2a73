"""`di-jax convert` and `load_teacher` for diffusers folders (PixArt-α pipelines and single model folders).

    convert_diffusers("PixArt-XL-2-512x512", "pixart/")   # -> pixart/transformer/{config.json, params/},
                                                           #    pixart/vae/..., pixart/scheduler/scheduler_config.json
    module, params = load_diffusers("pixart/")              # the transformer (raw or converted folder)

A converted model folder holds the checked diffusers `config.json` (normalised: `module_config`) and the
Flax parameter tree as an orbax checkpoint `params/` (restored sharded on pods like the EDM conversions).
It is read back strictly: the stored arrays are counted and sized against the config's network from the
orbax metadata before anything is restored, then every path and shape is compared, then the values.
"""

import json
import math
import os
from typing import Any

import jax
import numpy as np

from di_jax.convert import catalogue, stored_sizes
from di_jax.convert.arguments import bool_arg, numpy_tree, path_arg
from di_jax.convert.diffusers_folder import (
    CONFIG_FILE,
    PIPELINE_PARTS,
    build_module,
    diffusers_kind,
    expected_shapes,
    flax_to_state_dict,
    load_diffusers_model,
    module_config,
    read_diffusers_config,
    read_scheduler_config,
    write_scheduler_config,
)
from di_jax.convert.errors import CheckpointError, exception_text

PARAMS_DIR = "params"


def model_folders(path: str) -> dict:
    """part name -> model folder of a diffusers folder: {"transformer": ..., "vae": ...} for a pipeline (vae/
    optional), {"": path} for a single model folder; CheckpointError for anything else."""
    kind = diffusers_kind(path)
    if kind == "pipeline":
        return {p: os.path.join(path, p) for p in PIPELINE_PARTS if os.path.isdir(os.path.join(path, p))}
    if kind == "model":
        return {"": path}
    raise CheckpointError(f"{path} is not a diffusers folder (no transformer/config.json, no config.json with "
                          "a _class_name)")


def is_converted(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, PARAMS_DIR))


def describe_module(module) -> str:
    """One line of a model's size, for the convert command's summary."""
    name = type(module).__name__
    if hasattr(module, "num_layers"):
        return (f"{name}: {module.num_layers} layers x {module.inner_dim}, patch {module.patch_size}, "
                f"{module.sample_size}x{module.sample_size}x{module.in_channels} latents, "
                f"text {module.caption_channels or module.cross_attention_dim}")
    return f"{name}: {module.latent_channels} latent channels, x{module.downsampling} down"


def convert_diffusers(in_path: str | os.PathLike, out_dir: str | os.PathLike, allow_nonfinite: bool = False) -> dict:
    """Writes the orbax conversion of a diffusers pipeline or model folder; returns {part: module}.

    Every model is read and checked (config keys, tensor names and shapes, values) before anything is written;
    config.json is written after params/, so a folder with both is complete. The scheduler's training schedule
    (`read_scheduler_config`) is copied when the pipeline has one.
    """
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    in_path = path_arg(in_path, "convert_diffusers", "in_path")
    out_dir = os.path.abspath(path_arg(out_dir, "convert_diffusers", "out_dir"))
    bool_arg(allow_nonfinite, "convert_diffusers", "allow_nonfinite")
    parts = model_folders(in_path)
    for part in parts:
        dst = os.path.join(out_dir, part)
        if os.path.exists(os.path.join(dst, PARAMS_DIR)) or os.path.exists(os.path.join(dst, CONFIG_FILE)):
            raise CheckpointError(f"{dst} already holds a converted model; choose a new directory")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CheckpointError(f"{out_dir} exists and is not a directory; choose a new directory")
    schedule = read_scheduler_config(in_path)
    loaded = {part: load_diffusers_model(src, allow_nonfinite=allow_nonfinite) for part, src in parts.items()}
    for part, (module, params) in loaded.items():
        dst = os.path.join(out_dir, part)
        os.makedirs(dst, exist_ok=True)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(dst, PARAMS_DIR), params)
            ckptr.wait_until_finished()
        with open(os.path.join(dst, CONFIG_FILE), "w") as f:
            json.dump(module_config(module), f, indent=2, sort_keys=True)
    if schedule is not None:
        write_scheduler_config(out_dir, **schedule)
    return {part: module for part, (module, _) in loaded.items()}


def load_converted_diffusers(folder: str, dtype: Any = "float32", allow_nonfinite: bool = False):
    """(module, params) of a model folder written by `convert_diffusers`, strictly checked."""
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    name, cfg = read_diffusers_config(folder)
    module = build_module(name, cfg, dtype, where=os.path.join(folder, CONFIG_FILE))
    want = expected_shapes(module)
    params_dir = os.path.abspath(os.path.join(folder, PARAMS_DIR))
    with ocp.StandardCheckpointer() as ckptr:
        sizes = stored_sizes(ckptr, params_dir)
        total = sum(math.prod(s) for s in want.values())
        if len(sizes) > len(want) or sum(sizes) > total:
            raise CheckpointError(f"{params_dir} holds {len(sizes)} arrays of {sum(sizes)} values; {CONFIG_FILE}'s "
                                  f"{name} has {len(want)} of {total}: params do not match {CONFIG_FILE}")
        try:
            params = ckptr.restore(params_dir)
        except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many kinds
            raise CheckpointError(f"cannot restore {params_dir}: {exception_text(e)}") from None
    params = numpy_tree(params)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    got = {tuple(getattr(k, "key", k) for k in path): tuple(np.shape(leaf)) for path, leaf in flat}
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        first = (f"missing {'/'.join(missing[0])}" if missing else f"unexpected {'/'.join(extra[0])}" if extra
                 else f"{'/'.join(wrong[0])} is {got[wrong[0]]}, expected {want[wrong[0]]}")
        raise CheckpointError(f"{params_dir}: params do not match {CONFIG_FILE} ({first})")
    catalogue.check_values(flax_to_state_dict(params), allow_nonfinite, where=params_dir)
    return module, jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)


def load_diffusers(path: str | os.PathLike, part: str = "transformer", dtype: Any = "float32",
                   allow_nonfinite: bool = False):
    """(module, params) of one model of a diffusers folder, raw (`load_diffusers_model`) or converted.

    `path` is a pipeline folder (its `part` subfolder is read: "transformer" or "vae") or a model folder.
    """
    path = path_arg(path, "load_diffusers", "path")
    folders = model_folders(path)
    folder = folders.get(part, folders.get(""))
    if folder is None:
        raise CheckpointError(f"{path} is a pipeline folder without {part}/")
    if is_converted(folder):
        return load_converted_diffusers(folder, dtype, allow_nonfinite)
    return load_diffusers_model(folder, dtype, allow_nonfinite)
