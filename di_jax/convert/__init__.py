"""PyTorch / EDM checkpoints -> Flax parameter trees (spec edm_architecture.md sections 5-7, 10).

    state_dict, config = read_checkpoint("edm-cifar10-32x32-cond-vp.pkl")
    convert_checkpoint("edm-cifar10-32x32-cond-vp.pkl", "teacher/")   # orbax params + config.json
    module, params = load_teacher("teacher/")    # or directly from a .pkl / .pt / .safetensors

diffusers folders (PixArt-α pipelines: transformer/, vae/, scheduler/) go through `diffusers_folder`
and `diffusers_convert`. Formats are recognised by content, not by file name: EDM `.pkl` snapshots (read without
executing their embedded code, `edm_pickle`), `torch.save` zip archives of a state_dict
(`torch_zip`; torch optional) and safetensors files (`safetensors_file`). Every problem with the
input raises `CheckpointError` with a one-line message.
"""

import json
import math
import os
from typing import Any, Mapping

from di_jax.convert import catalogue, files
from di_jax.convert import config as config_lib
from di_jax.convert.arguments import bool_arg, numpy_tree, path_arg, reader_args
from di_jax.convert.edm_pickle import read_edm_pickle
from di_jax.convert.errors import CheckpointError, RefusedGlobalError, describe, exception_text
from di_jax.convert.infer_config import resolve
from di_jax.convert.safetensors_file import read_safetensors, save_safetensors
from di_jax.convert.torch_zip import LEGACY_MAGIC, open_zip
from di_jax.convert.zip_archive import ZIP_MAGIC

__all__ = ["CheckpointError", "RefusedGlobalError", "read_checkpoint", "read_state_dict", "convert_checkpoint",
           "load_teacher", "load_converted", "save_safetensors"]

CONFIG_FILE, PARAMS_DIR = "config.json", "params"
_NOT_CHECKPOINTS = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
                    b"\x1f\x8b": "a gzip file", b"\x93NUMPY": "a .npy array", b"\x7fELF": "an executable"}


def sniff(path: str | os.PathLike) -> str:
    """Checkpoint format of a file from its first bytes: 'pickle', 'zip' or 'safetensors'."""
    if os.path.isdir(path):
        raise CheckpointError(f"{os.fspath(path)} is a directory without {CONFIG_FILE}, not a checkpoint")
    with files.open_regular(path) as f:  # regular files only: a FIFO would block, /dev/zero never end
        try:
            head = f.read(16)
        except OSError as e:
            raise CheckpointError(f"cannot read {os.fspath(path)}: {e.strerror}") from None
        size = os.fstat(f.fileno()).st_size
    if not head:
        raise CheckpointError(f"{os.fspath(path)} is empty")
    if head.startswith(ZIP_MAGIC) or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(LEGACY_MAGIC):
        raise CheckpointError("legacy (pre-1.6, non-zip) torch.save file: not supported; re-save it "
                              "with a current torch.save")
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        if not 0 < int.from_bytes(head[:8], "little") <= size - 8:
            raise CheckpointError(f"{os.fspath(path)}: safetensors header longer than the file (truncated)")
        return "safetensors"
    for magic, what in _NOT_CHECKPOINTS.items():
        if head.startswith(magic):
            raise CheckpointError(f"{os.fspath(path)} is {what}, not a checkpoint")
    kind = "a text file" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "an unknown format"
    raise CheckpointError(f"{os.fspath(path)} is {kind}, not an EDM .pkl, torch .pt or .safetensors checkpoint")


def _open_state_dict(path: str | os.PathLike, use_torch: bool | None) -> tuple[Mapping, dict | None]:
    """(state_dict, recorded config or None); zips and safetensors come as lazy mappings (validated
    structure, keys, shapes and dtypes; tensor data read by `.load()`), pickles eagerly."""
    kind = sniff(path)
    if kind == "pickle":
        precond, kwargs, state_dict = read_edm_pickle(path)
        return state_dict, config_lib.from_init_kwargs(precond, kwargs)
    if kind == "zip":
        return open_zip(path, use_torch), None
    return read_safetensors(path)


def read_state_dict(path: str | os.PathLike, use_torch: bool | None = None) -> tuple[dict, dict | None]:
    """(state_dict of numpy arrays, recorded config or None) of any supported checkpoint file."""
    state_dict, recorded = _open_state_dict(path, use_torch)
    return (state_dict.load() if hasattr(state_dict, "load") else state_dict), recorded


# Largest resample_filter buffer read to infer taps from a file without a recorded config (16 taps).
_MAX_FILTER_ELEMENTS = 16 * 16


def _shapes_only(state_dict: Mapping) -> Mapping:
    """What the config and catalogue checks need, without reading tensor data of a lazy reader.

    A lazy mapping (one with `shape_view()`, e.g. safetensors) gives zero-memory arrays of the
    declared shapes and dtypes; its small resample_filter buffers, whose values the config
    inference reads, are read for real. Plain dicts pass through.
    """
    if not hasattr(state_dict, "shape_view"):
        return state_dict
    view = dict(state_dict.shape_view())
    for key, value in view.items():
        if key.endswith(".resample_filter") and value.size <= _MAX_FILTER_ELEMENTS:
            view[key] = state_dict[key]
    return view


def read_checkpoint(path: str | os.PathLike, config: Mapping[str, Any] | None = None,
                    use_torch: bool | None = None, allow_nonfinite: bool = False) -> tuple[dict, dict]:
    """(state_dict, config) of a checkpoint; `config` entries override the recorded/inferred ones.

    The config is validated key by key (`config.check_keys`), the state_dict is checked strictly
    against it (every key and shape, `catalogue`; before tensor data is read where the reader is
    lazy), then every value: NaN, +-inf and |x| > 1e19 are refused unless `allow_nonfinite`.

    Args:
      path: an EDM `.pkl`, a torch `.pt` zip or a `.safetensors` file.
      config: network config entries overriding what the file records or its shapes imply.
      use_torch: read `.pt` zips with torch (default: if installed).
      allow_nonfinite: accept NaN / infinite / absurdly large (> 1e19) weights.
    Raises: CheckpointError (one line) for bad input; TypeError for wrong-typed arguments.
    """
    path, config = reader_args("read_checkpoint", path, config, use_torch, allow_nonfinite)
    if config is not None:
        config = config_lib.check_keys(config, "config override")  # before reading anything
    state_dict, recorded = _open_state_dict(path, use_torch)    # lazy: keys/shapes checked before data is read
    shapes = _shapes_only(state_dict)
    for key, value in shapes.items():
        if value.dtype.kind != "f" and key != "u":
            raise CheckpointError(f"tensor {describe(key)} has dtype {value.dtype}, expected floating point")
    cfg = resolve(shapes, recorded, config)
    catalogue.check_state_dict(shapes, cfg)
    if hasattr(state_dict, "load"):
        state_dict = state_dict.load()
    catalogue.check_values(state_dict, allow_nonfinite)
    return state_dict, cfg


def _flax_params(state_dict, config) -> Any:
    from di_jax.convert.edm_mapping import state_dict_to_flax  # pylint: disable=import-outside-toplevel

    try:
        return state_dict_to_flax(state_dict, config)
    except CheckpointError:
        raise
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"checkpoint does not match the {config['model_type']} network: "
                              f"{exception_text(e)}") from None


def convert_checkpoint(in_path: str | os.PathLike, out_dir: str | os.PathLike,
                       config: Mapping[str, Any] | None = None, use_torch: bool | None = None,
                       allow_nonfinite: bool = False) -> dict:
    """Write `out_dir/params` (orbax) and `out_dir/config.json` for a checkpoint; returns the config.

    Args:
      in_path: an EDM `.pkl`, a torch `.pt` zip or a `.safetensors` file.
      out_dir: a new directory (refused if it already holds a conversion); created only once the
        checkpoint has been read and checked.
      config: network config entries overriding the recorded / inferred ones.
      use_torch: read `.pt` zips with torch (default: if installed).
      allow_nonfinite: accept NaN / infinite / absurdly large (> 1e19) weights.
    """
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    fn = "convert_checkpoint"
    in_path = path_arg(in_path, fn, "in_path")
    out_dir = os.path.abspath(path_arg(out_dir, fn, "out_dir"))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CheckpointError(f"{out_dir} exists and is not a directory; choose a new directory")
    if os.path.exists(os.path.join(out_dir, PARAMS_DIR)) or os.path.exists(os.path.join(out_dir, CONFIG_FILE)):
        raise CheckpointError(f"{out_dir} already holds a converted checkpoint; choose a new directory")
    state_dict, cfg = read_checkpoint(in_path, config, use_torch, allow_nonfinite)
    params = _flax_params(state_dict, cfg)
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out_dir, PARAMS_DIR), params)
        ckptr.wait_until_finished()
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:  # written last: marks a complete conversion
        json.dump(cfg, f, indent=1, sort_keys=True)
    return cfg


def stored_sizes(ckptr, params_dir: str) -> list:
    """The element count of every array an orbax params directory stores (its metadata; nothing restored)."""
    try:
        meta = ckptr.metadata(params_dir)
        tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)
        if tree is None:
            tree = getattr(meta, "item_metadata", meta)
        import jax  # pylint: disable=import-outside-toplevel
        leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: hasattr(x, "shape"))
        return [math.prod(int(d) for d in leaf.shape) for leaf in leaves]
    except CheckpointError:
        raise
    except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
        raise CheckpointError(f"cannot read {params_dir}: {exception_text(e)}") from None


def _restorable_size(ckptr, params_dir: str, cfg: dict) -> None:
    """Refuse a params directory whose stored arrays (orbax metadata) outnumber or outsize the config's
    network (its parameters and buffers), before restoring anything: a tampered directory cannot make
    us allocate more than the network it claims. The exact tree is checked after the restore."""
    want = {k: math.prod(s) for k, s in catalogue.expected_shapes(cfg).items()}
    sizes = stored_sizes(ckptr, params_dir)
    if len(sizes) > len(want) or sum(sizes) > sum(want.values()):
        raise CheckpointError(f"{params_dir} holds {len(sizes)} arrays of {sum(sizes)} values in all; "
                              f"{CONFIG_FILE}'s network has {len(want)} of {sum(want.values())}: params do not "
                              f"match {CONFIG_FILE}")


def load_converted(out_dir: str | os.PathLike, allow_nonfinite: bool = False) -> tuple[dict, Any]:
    """(config, params) of a directory written by `convert_checkpoint` (strictly checked).

    config.json must be a regular file of at most 1 MiB holding a valid config; the stored arrays
    must be those of that network (checked from the orbax metadata before anything is restored);
    NaN, +-inf and |x| > 1e19 are refused unless `allow_nonfinite`.
    """
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    from di_jax.convert.edm_mapping import flax_to_state_dict  # pylint: disable=import-outside-toplevel

    out_dir = os.path.abspath(path_arg(out_dir, "load_converted", "out_dir"))
    bool_arg(allow_nonfinite, "load_converted", "allow_nonfinite")
    try:
        raw = files.read_regular_bytes(os.path.join(out_dir, CONFIG_FILE), files.CONFIG_MAX_BYTES)
        text = raw.decode("utf-8")
        cfg = config_lib.parse_json_object(text, CONFIG_FILE)
    except CheckpointError as e:
        raise CheckpointError(f"{out_dir} is not a converted checkpoint ({CONFIG_FILE}: {e})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{out_dir} is not a converted checkpoint ({CONFIG_FILE} is not UTF-8 text)") from None
    cfg = config_lib.complete(cfg, f"{out_dir}/{CONFIG_FILE}")
    params_dir = os.path.join(out_dir, PARAMS_DIR)
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{out_dir} is not a converted checkpoint: no {PARAMS_DIR}/ directory")
    with ocp.StandardCheckpointer() as ckptr:
        _restorable_size(ckptr, params_dir, cfg)
        try:
            params = ckptr.restore(params_dir)
        except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many kinds
            raise CheckpointError(f"cannot restore {params_dir}: {exception_text(e)}") from None
    params = numpy_tree(params)
    try:  # strict: every parameter present, nothing extra, every shape right
        state_dict = flax_to_state_dict(params, cfg)
        catalogue.check_state_dict(state_dict, cfg)
    except (CheckpointError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{out_dir}: params do not match config.json ({exception_text(e)})") from None
    catalogue.check_values(state_dict, allow_nonfinite, where=out_dir)
    return cfg, params


def load_teacher(path: str | os.PathLike, config: Mapping[str, Any] | None = None,
                 use_torch: bool | None = None, allow_nonfinite: bool = False) -> tuple[Any, Any]:
    """(Flax module, params) from a converted directory or a raw .pkl / .pt / .safetensors file.

    Args:
      path: a directory written by `convert_checkpoint` (or `di-jax convert`), an official EDM
        `.pkl` snapshot (read without executing it), a torch `.pt` zip or a `.safetensors` file;
        or a diffusers folder, raw or converted (`diffusers_convert`): a pipeline folder gives its
        transformer (a `PixArtTransformer2DModel`; the VAE: `diffusers_convert.load_diffusers(path, "vae")`),
        a model folder its model.
      config: network config entries overriding the recorded / inferred ones (raw files only).
      use_torch: read `.pt` zips with torch (default: if installed); both readers give equal arrays.
      allow_nonfinite: accept NaN / infinite / absurdly large (> 1e19) weights (refused by default).
    Raises: CheckpointError (one line) for unreadable, unsafe or mismatching checkpoints; TypeError
      (one line) for wrong-typed arguments (e.g. a None path or a list as config).
    """
    from di_jax.convert.diffusers_folder import diffusers_kind  # pylint: disable=import-outside-toplevel
    from di_jax.nets import build_network  # pylint: disable=import-outside-toplevel

    path, config = reader_args("load_teacher", path, config, use_torch, allow_nonfinite)
    if diffusers_kind(path):
        if config:
            raise CheckpointError("config overrides apply to raw EDM checkpoints, not to diffusers folders")
        from di_jax.convert.diffusers_convert import load_diffusers  # pylint: disable=import-outside-toplevel
        return load_diffusers(path, "transformer", allow_nonfinite=allow_nonfinite)
    if os.path.isdir(path) and os.path.lexists(os.path.join(path, CONFIG_FILE)):
        if config:
            raise CheckpointError("config overrides apply to raw checkpoints, not to converted directories")
        cfg, params = load_converted(path, allow_nonfinite)
    else:
        state_dict, cfg = read_checkpoint(path, config, use_torch, allow_nonfinite)
        params = _flax_params(state_dict, cfg)
    return build_network(cfg), params
