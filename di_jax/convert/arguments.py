"""Argument checks of the public converter functions, and params trees as plain numpy.

A wrong-typed argument (a None path, a list as config, ...) raises a one-line `TypeError` naming
the function and argument; an unusable path (empty, a NUL byte) a `CheckpointError`.
"""

import os
from typing import Any, Mapping

import numpy as np

from di_jax.convert.errors import CheckpointError


def fn_error(fn: str, name: str, want: str, value: Any) -> TypeError:
    return TypeError(f"{fn}() argument {name!r} must be {want}; got {type(value).__name__}")


def path_arg(value: Any, fn: str, name: str = "path") -> str:
    """A path argument as str: str or os.PathLike only (TypeError otherwise), usable (CheckpointError)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
        value = os.fsdecode(value) if isinstance(value, bytes) else value
    if not isinstance(value, str):
        raise fn_error(fn, name, "a file or directory path (str or os.PathLike)", value)
    if not value or "\0" in value:
        raise CheckpointError(f"{fn}(): {name} {value[:120]!r} is not a usable path")
    return value


def bool_arg(value: Any, fn: str, name: str, none_ok: bool = False) -> Any:
    if not (isinstance(value, bool) or (none_ok and value is None)):
        raise fn_error(fn, name, "True or False" + (" or None" if none_ok else ""), value)
    return value


def reader_args(fn: str, path: Any, config: Any, use_torch: Any, allow_nonfinite: Any) -> tuple[str, Mapping | None]:
    """(path, config) of a checkpoint reader's arguments, every argument checked."""
    path = path_arg(path, fn)
    if config is not None and not isinstance(config, Mapping):
        raise fn_error(fn, "config", "a mapping of network config entries (dict) or None", config)
    bool_arg(use_torch, fn, "use_torch", none_ok=True)
    bool_arg(allow_nonfinite, fn, "allow_nonfinite")
    return path, config


def numpy_tree(tree: Any) -> Any:
    """A params tree (nested mappings of arrays) as nested dicts of numpy arrays."""
    if isinstance(tree, Mapping):
        return {k: numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)
