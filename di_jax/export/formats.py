"""Output files: the format an extension names, and atomic writers of `.safetensors` and `.pt` state_dicts.

Both writers take an ordered `{name: numpy array}`. A file is written next to its destination under a
temporary name and renamed into place once complete, so an interrupted export leaves no partial file.
torch is imported only to write `.pt`.
"""

import collections
import hashlib
import os
from typing import Mapping

import numpy as np

from di_jax.export.errors import ExportError

FORMATS = {".safetensors": "safetensors", ".pt": "pt"}
_HASH_CHUNK = 1 << 20


def output_format(out_path: str) -> str:
    """'safetensors' or 'pt' from the file extension; ExportError for another extension, a directory, a
    missing parent directory, or .pt without torch installed."""
    ext = os.path.splitext(os.fspath(out_path))[1].lower()
    if ext not in FORMATS:
        raise ExportError(f"{out_path}: unknown output format {ext or '(no extension)'!r}; "
                          f"use {' or '.join(FORMATS)}")
    if os.path.isdir(out_path):
        raise ExportError(f"{out_path}: is a directory; give a file name ending in {ext}")
    parent = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(parent):
        raise ExportError(f"{out_path}: no such directory {parent}")
    if FORMATS[ext] == "pt":
        _import_torch(out_path)
    return FORMATS[ext]


def _import_torch(out_path: str):
    try:
        import torch
    except ImportError:
        raise ExportError(f"{out_path}: writing .pt needs PyTorch, which is not installed: install torch "
                          "(pip install 'di_jax[torch]') or export to .safetensors") from None
    return torch


def _atomic(out_path: str, write) -> None:
    tmp = os.path.join(os.path.dirname(os.path.abspath(out_path)), f".{os.path.basename(out_path)}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, out_path)
    except OSError as e:
        raise ExportError(f"{out_path}: cannot write ({e.strerror or type(e).__name__})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write(out_path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Write `tensors` (float32) to `out_path` in the format its extension names.

    .safetensors: the tensors and `metadata` (string values) in the file's header.
    .pt: `torch.save` of an OrderedDict of torch tensors (a plain state_dict: no metadata).
    """
    fmt = output_format(out_path)
    arrays = collections.OrderedDict((k, np.asarray(v, np.float32, order="C")) for k, v in tensors.items())  # 0-d stays
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        _atomic(out_path, lambda p: save_file(arrays, p, metadata=dict(metadata)))
        return
    torch = _import_torch(out_path)
    state = collections.OrderedDict((k, torch.from_numpy(v if v.flags.writeable else v.copy()))
                                    for k, v in arrays.items())
    _atomic(out_path, lambda p: torch.save(state, p))


def sha256(path: str) -> str:
    """The file's SHA-256 digest (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
