"""PyTorch / EDM checkpoints -> Flax parameter trees (spec edm_architecture.md sections 5-7, 10).

    state_dict, config = read_checkpoint("edm-cifar10-32x32-cond-vp.pkl")
    convert_checkpoint("edm-cifar10-32x32-cond-vp.pkl", "teacher/")   # orbax params + config.json
    module, params = load_teacher("teacher/")    # or directly from a .pkl / .pt / .safetensors

Formats are recognised by content, not by file name: EDM `.pkl` snapshots (read without
executing their embedded code, `edm_pickle`), `torch.save` zip archives of a state_dict
(`torch_zip`; torch optional) and safetensors files. Every problem with the input raises
`CheckpointError` with a one-line message.
"""

import json
import os
from typing import Any, Mapping

import numpy as np

from di_jax.convert import catalogue
from di_jax.convert import config as config_lib
from di_jax.convert.edm_pickle import read_edm_pickle
from di_jax.convert.torch_zip import LEGACY_MAGIC, ZIP_MAGIC, read_zip
from di_jax.convert.unpickle import CheckpointError, RefusedGlobalError

__all__ = ["CheckpointError", "RefusedGlobalError", "read_checkpoint", "read_state_dict", "convert_checkpoint",
           "load_teacher", "load_converted", "save_safetensors"]

CONFIG_FILE, PARAMS_DIR = "config.json", "params"
SAFETENSORS_CONFIG_KEY = "edm_config"   # safetensors metadata entry holding the network config as JSON
_NOT_CHECKPOINTS = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
                    b"\x1f\x8b": "a gzip file", b"\x93NUMPY": "a .npy array", b"\x7fELF": "an executable"}


def sniff(path: str | os.PathLike) -> str:
    """Checkpoint format of a file from its first bytes: 'pickle', 'zip' or 'safetensors'."""
    if os.path.isdir(path):
        raise CheckpointError(f"{os.fspath(path)} is a directory without {CONFIG_FILE}, not a checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise CheckpointError(f"cannot open {os.fspath(path)}: {e.strerror}") from None
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


def _read_safetensors(path) -> "tuple[dict[str, np.ndarray], dict | None]":
    """(tensors, config recorded in the metadata by `save_safetensors` or None)."""
    from safetensors import SafetensorError, safe_open  # pylint: disable=import-outside-toplevel
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

    try:
        tensors = dict(load_file(os.fspath(path)))
        with safe_open(os.fspath(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"corrupt or truncated safetensors file ({str(e).splitlines()[0][:200]})") from None
    if SAFETENSORS_CONFIG_KEY not in metadata:
        return tensors, None
    try:
        recorded = json.loads(metadata[SAFETENSORS_CONFIG_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{os.fspath(path)}: metadata {SAFETENSORS_CONFIG_KEY!r} is not JSON ({e})") from None
    if not isinstance(recorded, dict) or "precond" not in recorded:
        raise CheckpointError(f"{os.fspath(path)}: metadata {SAFETENSORS_CONFIG_KEY!r} must be a JSON object "
                              "with a 'precond' entry")
    return tensors, recorded


def save_safetensors(path: str | os.PathLike, params: Any, config: Mapping[str, Any]) -> None:
    """Write Flax EDM params as a `.safetensors` file with the official PyTorch state_dict names.

    The network config goes into the file's metadata, so `load_teacher(path)` needs no `config`
    argument; PyTorch users read it with `safetensors.torch.load_file` into the official network.
    """
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    from di_jax.convert.edm_mapping import flax_to_state_dict  # pylint: disable=import-outside-toplevel

    cfg = config_lib.complete(config_lib.to_jsonable(dict(config)))
    if isinstance(cfg.get("sigma_max"), float) and not np.isfinite(cfg["sigma_max"]):
        cfg.pop("sigma_max")  # EDMPrecond's default inf; JSON has no infinity
    state_dict = flax_to_state_dict(_to_numpy_tree(params), cfg)
    catalogue.check_state_dict(state_dict, cfg)
    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in state_dict.items()}
    save_file(tensors, os.fspath(path), metadata={SAFETENSORS_CONFIG_KEY: json.dumps(cfg, sort_keys=True)})


def read_state_dict(path: str | os.PathLike, use_torch: bool | None = None) -> tuple[dict, dict | None]:
    """(state_dict of numpy arrays, recorded config or None) of any supported checkpoint file."""
    kind = sniff(path)
    if kind == "pickle":
        precond, kwargs, state_dict = read_edm_pickle(path)
        return state_dict, config_lib.from_init_kwargs(precond, kwargs)
    if kind == "zip":
        return read_zip(path, use_torch), None
    return _read_safetensors(path)


def read_checkpoint(path: str | os.PathLike, config: Mapping[str, Any] | None = None,
                    use_torch: bool | None = None) -> tuple[dict, dict]:
    """(state_dict, config) of a checkpoint; `config` entries override the recorded/inferred ones.

    The state_dict is checked strictly against the config (every key, shape; `catalogue`).

    Args:
      path: an EDM `.pkl`, a torch `.pt` zip or a `.safetensors` file.
      config: network config entries overriding what the file records or its shapes imply.
      use_torch: read `.pt` zips with torch (default: if installed).
    """
    state_dict, recorded = read_state_dict(path, use_torch)
    for key, value in state_dict.items():
        if value.dtype.kind != "f" and key != "u":
            raise CheckpointError(f"tensor {key!r} has dtype {value.dtype}, expected floating point")
    cfg = config_lib.resolve(state_dict, recorded, config)
    catalogue.check_state_dict(state_dict, cfg)
    return state_dict, cfg


def _flax_params(state_dict, config) -> Any:
    from di_jax.convert.edm_mapping import state_dict_to_flax  # pylint: disable=import-outside-toplevel

    try:
        return state_dict_to_flax(state_dict, config)
    except CheckpointError:
        raise
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint does not match the {config['model_type']} network: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def convert_checkpoint(in_path: str | os.PathLike, out_dir: str | os.PathLike,
                       config: Mapping[str, Any] | None = None, use_torch: bool | None = None) -> dict:
    """Write `out_dir/params` (orbax) and `out_dir/config.json` for a checkpoint; returns the config.

    Args:
      in_path: an EDM `.pkl`, a torch `.pt` zip or a `.safetensors` file.
      out_dir: a new directory (refused if it already holds a conversion).
      config: network config entries overriding the recorded / inferred ones.
      use_torch: read `.pt` zips with torch (default: if installed).
    """
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(os.path.join(out_dir, PARAMS_DIR)) or os.path.exists(os.path.join(out_dir, CONFIG_FILE)):
        raise CheckpointError(f"{out_dir} already holds a converted checkpoint; choose a new directory")
    state_dict, cfg = read_checkpoint(in_path, config, use_torch)
    params = _flax_params(state_dict, cfg)
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out_dir, PARAMS_DIR), params)
        ckptr.wait_until_finished()
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:  # written last: marks a complete conversion
        json.dump(cfg, f, indent=1, sort_keys=True)
    return cfg


def load_converted(out_dir: str | os.PathLike) -> tuple[dict, Any]:
    """(config, params) of a directory written by `convert_checkpoint` (strictly checked)."""
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    from di_jax.convert.edm_mapping import flax_to_state_dict  # pylint: disable=import-outside-toplevel

    out_dir = os.path.abspath(os.fspath(out_dir))
    try:
        with open(os.path.join(out_dir, CONFIG_FILE)) as f:
            cfg = config_lib.complete(json.load(f))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{out_dir} is not a converted checkpoint ({CONFIG_FILE}: {e})") from None
    with ocp.StandardCheckpointer() as ckptr:
        try:
            params = ckptr.restore(os.path.join(out_dir, PARAMS_DIR))
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(f"cannot restore {out_dir}/{PARAMS_DIR}: {str(e).splitlines()[0][:200]}") from None
    params = _to_numpy_tree(params)
    try:  # strict: every parameter present, nothing extra, every shape right
        catalogue.check_state_dict(flax_to_state_dict(params, cfg), cfg)
    except (CheckpointError, KeyError, ValueError) as e:
        raise CheckpointError(f"{out_dir}: params do not match config.json ({str(e).splitlines()[0]})") from None
    return cfg, params


def _to_numpy_tree(tree):
    if isinstance(tree, Mapping):
        return {k: _to_numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)


def load_teacher(path: str | os.PathLike, config: Mapping[str, Any] | None = None,
                 use_torch: bool | None = None) -> tuple[Any, Any]:
    """(Flax module, params) from a converted directory or a raw .pkl / .pt / .safetensors file.

    Args:
      path: a directory written by `convert_checkpoint` (or `di-jax convert`), an official EDM
        `.pkl` snapshot (read without executing it), a torch `.pt` zip or a `.safetensors` file.
      config: network config entries overriding the recorded / inferred ones (raw files only).
      use_torch: read `.pt` zips with torch (default: if installed); both readers give equal arrays.
    Raises: CheckpointError (one line) for unreadable, unsafe or mismatching checkpoints.
    """
    from di_jax.nets import build_network  # pylint: disable=import-outside-toplevel

    if os.path.isdir(path) and os.path.exists(os.path.join(path, CONFIG_FILE)):
        if config:
            raise CheckpointError("config overrides apply to raw checkpoints, not to converted directories")
        cfg, params = load_converted(path)
    else:
        state_dict, cfg = read_checkpoint(path, config, use_torch)
        params = _flax_params(state_dict, cfg)
    return build_network(cfg), params
