"""Allow-listed, bounded unpickling of PyTorch checkpoints into numpy, without torch and without running code.

Shared by the EDM `.pkl` reader (`edm_pickle`) and the `torch.save` reader (`torch_zip`, zip and
legacy files). Every pickle goes through `safe_load`: first `pickle_scan.scan_pickle` refuses any
pickle beyond its `PickleLimits` before a single object exists, then the C unpickler loads it
with `RestrictedUnpickler.find_class` resolving only the names of its `ALLOWED` table to local,
side-effect-free stand-ins (`tensors`); everything else is refused before it is called (spec
edm_architecture.md section 7). Every failure is a one-line `CheckpointError`.

Also here: the legacy (pre-1.6, non-zip) `torch.save` stream, a sequence of such pickles followed
by the raw storages (`load_legacy_file`, `load_legacy_storage`).
"""

import io
import pickle
from typing import Any

import numpy as np

from di_jax.convert.errors import CheckpointError, RefusedGlobalError, clean, describe, exception_text
from di_jax.convert.pickle_scan import DEFAULT_LIMITS, scan_pickle
from di_jax.convert.tensors import (
    NUMPY_GLOBALS,
    STORAGE_DTYPES,
    TENSOR_GLOBALS,
    Storage,
    check_tensor,
    known_storage,
    rebuild_tensor,
    storage_record,
    unsupported_tensor_global,
)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `ALLOWED[(module, name)]`; any other global is refused.

    Use it through `safe_load`, which scans the pickle against `LIMITS` first.
    """

    ALLOWED: dict[tuple[str, str], Any] = {}
    WHAT = "pickle"
    LIMITS = DEFAULT_LIMITS

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except (KeyError, TypeError):
            pass
        message = unsupported_tensor_global(module, name) if isinstance(module, str) and isinstance(name, str) else None
        if message:
            raise CheckpointError(f"{self.WHAT}: {message}")
        raise RefusedGlobalError(
            f"refused global '{clean(module)}.{clean(name)}' in {self.WHAT}: not on the allow-list of tensor/"
            "container types (the file may carry a code-execution payload)")

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"unexpected persistent id ({describe(pid)}) in {self.WHAT}")


def safe_load(unpickler_cls: type[RestrictedUnpickler], stream, **kwargs) -> Any:
    """`scan_pickle` then `unpickler_cls(stream, **kwargs).load()`; every failure is a one-line `CheckpointError`.

    `stream` must be seekable (a file, `files.BoundedReader`, `io.BytesIO`); anything else is read
    into memory first.
    """
    what = unpickler_cls.WHAT
    try:
        start = stream.tell()
        stream.seek(start)
    except (AttributeError, OSError, ValueError):
        try:
            stream, start = io.BytesIO(stream.read()), 0
        except OSError as e:
            raise CheckpointError(f"cannot read {what} ({exception_text(e)})") from None
    scan_pickle(stream, what, unpickler_cls.LIMITS)
    try:
        stream.seek(start)
        return unpickler_cls(stream, **kwargs).load()
    except CheckpointError:
        raise
    except (EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"corrupt or truncated {what} ({exception_text(e)})") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {what} ({exception_text(e)})") from None
    except (TypeError, ValueError, AttributeError, IndexError, KeyError, MemoryError, OverflowError,
            RecursionError, NotImplementedError) as e:
        raise CheckpointError(f"malformed {what} ({exception_text(e)})") from None


# ---- the legacy (non-zip) torch.save stream: a whole pre-1.6 file, or the blob `_load_from_bytes` receives ----

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _PlainUnpickler(RestrictedUnpickler):
    """For the magic/protocol/sys-info/key-list pickles of a legacy stream: no globals at all."""

    WHAT = "legacy torch.save header"


class _LegacyRootUnpickler(RestrictedUnpickler):
    ALLOWED = dict(TENSOR_GLOBALS)
    WHAT = "legacy torch.save storage blob"

    def __init__(self, stream, storages: dict):
        super().__init__(stream)
        self.storages = storages

    def persistent_load(self, pid):
        key, type_name, numel = storage_record(pid, self.WHAT, legacy=True)
        storage = known_storage(self.storages, key, type_name, numel, self.WHAT)
        if storage is None:
            storage = self.storages[key] = Storage(type_name, numel)
        return storage


class _PendingTensor:
    """A tensor of a legacy file: its storages follow the pickle, so it is rebuilt after they are read."""

    __slots__ = ("args",)

    def __init__(self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        if not isinstance(storage, Storage):
            raise CheckpointError(f"tensor rebuilt from {describe(storage)}, not a storage")
        check_tensor(storage.numel, offset, size, stride, metadata)  # before any storage is read
        self.args = (storage, offset, size, stride, requires_grad, hooks, metadata)

    def __setstate__(self, state):
        raise CheckpointError("a pickle may not set the state of a tensor")


def _pending_parameter(data, requires_grad=False, hooks=None, state=None):
    del requires_grad, hooks, state
    if not isinstance(data, _PendingTensor):
        raise CheckpointError(f"parameter rebuilt from {describe(data)}, not a tensor")
    return data


def _resolve_pending(obj: Any) -> Any:
    """Replace every `_PendingTensor` in dicts / lists / tuples (in place where mutable) by its array.

    Iterative (no recursion, whatever the depth) and each container is visited once (by id): a
    pickle's shared references (a "billion laughs" DAG) cost linear time and a list or dict that
    contains itself is left containing itself. A cycle through a tuple cannot be rebuilt: refused.
    """
    done: dict[int, Any] = {}   # id -> replacement (the object itself for dicts and lists)
    active: set[int] = set()    # containers whose children are being resolved
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        node, finishing = stack.pop()
        key = id(node)
        if finishing:
            active.discard(key)
            if isinstance(node, dict):
                for k, v in node.items():
                    node[k] = done.get(id(v), v)
                done[key] = node
            elif isinstance(node, list):
                node[:] = [done.get(id(v), v) for v in node]
                done[key] = node
            else:
                new = tuple(done.get(id(v), v) for v in node)
                done[key] = node if all(a is b for a, b in zip(new, node)) else new
            continue
        if key in done:
            continue
        if isinstance(node, _PendingTensor):
            done[key] = rebuild_tensor(*node.args)
        elif isinstance(node, (dict, list, tuple)):
            if key in active:
                if isinstance(node, tuple):
                    raise CheckpointError("legacy torch.save file holds a cyclic structure through a tuple")
                continue  # a list / dict containing itself: resolved in place when it finishes
            active.add(key)
            stack.append((node, True))
            stack.extend((v, False) for v in (node.values() if isinstance(node, dict) else node))
    return done.get(id(obj), obj)


class _LegacyFileUnpickler(_LegacyRootUnpickler):
    ALLOWED = {**TENSOR_GLOBALS, **NUMPY_GLOBALS,  # as for a zip archive's data.pkl, tensors deferred
               ("torch._utils", "_rebuild_tensor_v2"): _PendingTensor,
               ("torch._utils", "_rebuild_parameter"): _pending_parameter,
               ("torch._utils", "_rebuild_parameter_with_state"): _pending_parameter}
    WHAT = "legacy torch.save file"


def _load_legacy(f, root_unpickler: type[_LegacyRootUnpickler], what: str, single_storage: bool) -> Any:
    """The root object of a legacy stream: pickles of magic, protocol, sys info, root and storage
    keys, then each storage as int64 element count + raw bytes. `single_storage`: the root must be
    one storage (a `_load_from_bytes` blob). `f` must clamp reads to what it holds (BytesIO,
    `files.BoundedReader`): element counts come from the file."""
    if safe_load(_PlainUnpickler, f) != _LEGACY_MAGIC:
        raise CheckpointError(f"{what} is not a legacy torch.save stream (bad magic number)")
    if safe_load(_PlainUnpickler, f) != _LEGACY_PROTOCOL:
        raise CheckpointError(f"{what} has an unsupported legacy torch.save protocol version")
    info = safe_load(_PlainUnpickler, f)
    if not isinstance(info, dict) or info.get("little_endian", True) is not True:
        raise CheckpointError(f"{what} was written on a big-endian machine; not supported")
    storages: dict[str, Storage] = {}
    root = safe_load(root_unpickler, f, storages=storages)
    keys = safe_load(_PlainUnpickler, f)
    if (single_storage and not isinstance(root, Storage)) or not isinstance(keys, list) \
            or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys) or set(keys) != set(storages):
        raise CheckpointError(f"{what} does not hold exactly one storage" if single_storage
                              else f"{what}: its storage key list does not match the storages it references")
    for key in keys:
        s = storages[key]
        header = f.read(8)
        if len(header) != 8:
            raise CheckpointError(f"{what} truncated (missing element count)")
        numel = int.from_bytes(header, "little")
        dtype = STORAGE_DTYPES[s.type_name]
        if numel != s.numel:
            raise CheckpointError(f"{what} truncated or corrupt: storage '{key}' holds {numel} elements, its "
                                  f"pickle declares {s.numel}")
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise CheckpointError(f"{what} truncated: {len(raw)} bytes for {s.numel} x {dtype}")
        s.data = np.frombuffer(raw, dtype).copy()
    return root


def load_legacy_storage(blob: bytes) -> Storage:
    """Parse `torch.storage._load_from_bytes(blob)`: one storage saved by legacy `torch.save`."""
    if not isinstance(blob, bytes):
        raise CheckpointError(f"_load_from_bytes got {describe(blob)}, not bytes")
    return _load_legacy(io.BytesIO(blob), _LegacyRootUnpickler, "storage blob", single_storage=True)


def load_legacy_file(f) -> Any:
    """The object saved by legacy (torch < 1.6 or `_use_new_zipfile_serialization=False`) `torch.save`.

    Args:
      f: binary file object positioned at the start of the file; its reads must be clamped to the
        file's size (`files.BoundedReader`).
    Returns: the saved object with tensors as numpy arrays (same allow-list as the zip reader).
    """
    root = _load_legacy(f, _LegacyFileUnpickler, _LegacyFileUnpickler.WHAT, single_storage=False)
    try:
        return _resolve_pending(root)
    except CheckpointError:
        raise
    except (TypeError, ValueError, OverflowError, MemoryError) as e:
        raise CheckpointError(f"malformed legacy torch.save file ({exception_text(e)})") from None
