"""Allow-listed unpickling of PyTorch tensors into numpy, without torch and without running code.

Shared by the EDM `.pkl` reader (`edm_pickle`) and the `torch.save` reader (`torch_zip`, zip and
legacy files).
Pickle can call any importable callable; `RestrictedUnpickler.find_class` resolves only the
names in its `ALLOWED` table to local, side-effect-free stand-ins and refuses everything else
before anything is called (spec edm_architecture.md section 7).
"""

import collections
import io
import pickle
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """The checkpoint is unreadable, unsafe or does not match what was asked of it."""


class RefusedGlobalError(CheckpointError):
    """The pickle references a global outside the allow-list (a possible code-execution payload)."""


# torch.<Name>Storage class -> numpy dtype of its elements (little endian on disk).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"), "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
    "BFloat16Storage": np.dtype("<u2"),  # raw bits; widened to float32 by `Storage.array`
}


class StorageType(str):
    """Stand-in for a `torch.<Name>Storage` class global: only its name is kept."""


class Storage:
    """A flat typed buffer: `data` (1-D numpy array) once loaded."""

    def __init__(self, type_name: str, numel: int, data: np.ndarray | None = None):
        if type_name not in STORAGE_DTYPES:
            raise CheckpointError(f"unsupported storage type torch.{type_name}")
        self.type_name, self.numel, self.data = type_name, int(numel), data

    def array(self) -> np.ndarray:
        if self.data is None:
            raise CheckpointError("tensor storage was referenced but never loaded")
        if self.type_name == "BFloat16Storage":  # bfloat16 bits are the top half of a float32
            return (self.data.astype(np.uint32) << 16).view(np.float32)
        return self.data


def rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """`torch._utils._rebuild_tensor_v2` -> a contiguous numpy array (bounds-checked view copy)."""
    del requires_grad, hooks, metadata
    if not isinstance(storage, Storage):
        raise CheckpointError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise CheckpointError(f"bad tensor geometry size={size} stride={stride} offset={offset}")
    flat = storage.array()
    if 0 in size:
        return np.zeros(size, flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise CheckpointError(f"tensor of size {size} (stride {stride}, offset {offset}) overruns its "
                              f"storage of {flat.size} elements: truncated or corrupt file")
    view = np.lib.stride_tricks.as_strided(flat[offset:], size, [s * flat.itemsize for s in stride])
    return np.array(view, order="C")


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    del requires_grad, hooks, state
    if not isinstance(data, np.ndarray):
        raise CheckpointError(f"parameter rebuilt from a {type(data).__name__}, not a tensor")
    return data


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise CheckpointError(f"refused numpy scalar of dtype {dtype!r}")
    return np.frombuffer(data, dtype, count=1)[0]


def _numpy_dtype(name, align=False, copy=False):
    dtype = np.dtype(name, align, copy)
    if dtype.hasobject:
        raise CheckpointError(f"refused numpy object dtype {name!r}")
    return dtype


class EasyDict(dict):
    """Stand-in for `dnnlib.util.EasyDict` (a dict with attribute access)."""

    __getattr__ = dict.get


TENSOR_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): StorageType(name) for name in STORAGE_DTYPES},
}
NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("dnnlib.util", "EasyDict"): EasyDict,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `ALLOWED[(module, name)]`; any other global is refused."""

    ALLOWED: dict[tuple[str, str], Any] = {}
    WHAT = "pickle"

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobalError(
                f"refused global '{module}.{name}' in {self.WHAT}: not on the allow-list of tensor/"
                "container types (the file may carry a code-execution payload)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"unexpected persistent id {str(pid)[:80]!r} in {self.WHAT}")


def safe_load(unpickler_cls: type[RestrictedUnpickler], stream, **kwargs) -> Any:
    """Run `unpickler_cls(stream).load()`; every failure becomes a one-line `CheckpointError`."""
    try:
        return unpickler_cls(stream, **kwargs).load()
    except CheckpointError:
        raise
    except (EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"corrupt or truncated {unpickler_cls.WHAT} ({type(e).__name__}: {e})") from None
    except (TypeError, ValueError, AttributeError, IndexError, KeyError, MemoryError, OverflowError,
            RecursionError) as e:
        raise CheckpointError(f"malformed {unpickler_cls.WHAT} ({type(e).__name__}: {str(e)[:200]})") from None


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
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], StorageType)):
            raise CheckpointError(f"unexpected persistent id {str(pid)[:80]!r} in {self.WHAT}")
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError("storage views (legacy torch < 1.0 format) are not supported")
        key = str(pid[2])
        if key not in self.storages:
            self.storages[key] = Storage(pid[1], pid[4])
        return self.storages[key]


class _PendingTensor:
    """A tensor of a legacy file: its storages follow the pickle, so it is rebuilt after they are read."""

    def __init__(self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        self.args = (storage, offset, size, stride, requires_grad, hooks, metadata)


def _pending_parameter(data, requires_grad=False, hooks=None, state=None):
    del requires_grad, hooks, state
    if not isinstance(data, _PendingTensor):
        raise CheckpointError(f"parameter rebuilt from a {type(data).__name__}, not a tensor")
    return data


def _resolve_pending(obj: Any, memo: dict | None = None) -> Any:
    """Replace every `_PendingTensor` in dicts / lists / tuples (in place where mutable) by its array.

    Each container is visited once (`memo` by id): a pickle's shared references (a "billion laughs"
    DAG, a list containing itself) cost linear time, not exponential or infinite.
    """
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _PendingTensor):
        memo[id(obj)] = rebuild_tensor(*obj.args)
    elif isinstance(obj, dict):
        memo[id(obj)] = obj
        for key, value in obj.items():
            obj[key] = _resolve_pending(value, memo)
    elif isinstance(obj, list):
        memo[id(obj)] = obj
        obj[:] = [_resolve_pending(v, memo) for v in obj]
    elif isinstance(obj, tuple):
        memo[id(obj)] = tuple(_resolve_pending(v, memo) for v in obj)
    else:
        return obj
    return memo[id(obj)]


class _LegacyFileUnpickler(_LegacyRootUnpickler):
    ALLOWED = {**TENSOR_GLOBALS, **NUMPY_GLOBALS,  # as for a zip archive's data.pkl, tensors deferred
               ("torch._utils", "_rebuild_tensor_v2"): _PendingTensor,
               ("torch._utils", "_rebuild_parameter"): _pending_parameter,
               ("torch._utils", "_rebuild_parameter_with_state"): _pending_parameter}
    WHAT = "legacy torch.save file"


def _load_legacy(f, root_unpickler: type[_LegacyRootUnpickler], what: str, single_storage: bool) -> Any:
    """The root object of a legacy stream: pickles of magic, protocol, sys info, root and storage
    keys, then each storage as int64 element count + raw bytes. `single_storage`: the root must be
    one storage (a `_load_from_bytes` blob)."""
    if safe_load(_PlainUnpickler, f) != _LEGACY_MAGIC:
        raise CheckpointError(f"{what} is not a legacy torch.save stream (bad magic number)")
    if safe_load(_PlainUnpickler, f) != _LEGACY_PROTOCOL:
        raise CheckpointError(f"{what} has an unsupported legacy torch.save protocol version")
    info = safe_load(_PlainUnpickler, f)
    if not isinstance(info, dict) or not info.get("little_endian", True):
        raise CheckpointError(f"{what} was written on a big-endian machine; not supported")
    storages: dict[str, Storage] = {}
    root = safe_load(root_unpickler, f, storages=storages)
    keys = safe_load(_PlainUnpickler, f)
    if (single_storage and not isinstance(root, Storage)) or not isinstance(keys, list) \
            or set(map(str, keys)) != set(storages):
        raise CheckpointError(f"{what} does not hold exactly one storage" if single_storage
                              else f"{what}: its storage key list does not match the storages it references")
    for key in keys:
        s = storages[str(key)]
        header = f.read(8)
        if len(header) != 8:
            raise CheckpointError(f"{what} truncated (missing element count)")
        numel = int.from_bytes(header, "little")
        dtype = STORAGE_DTYPES[s.type_name]
        raw = f.read(numel * dtype.itemsize)
        if numel != s.numel or len(raw) != numel * dtype.itemsize:
            raise CheckpointError(f"{what} truncated: {len(raw)} bytes for {s.numel} x {dtype}")
        s.data = np.frombuffer(raw, dtype).copy()
    return root


def load_legacy_storage(blob: bytes) -> Storage:
    """Parse `torch.storage._load_from_bytes(blob)`: one storage saved by legacy `torch.save`."""
    if not isinstance(blob, bytes):
        raise CheckpointError(f"_load_from_bytes got a {type(blob).__name__}, not bytes")
    return _load_legacy(io.BytesIO(blob), _LegacyRootUnpickler, "storage blob", single_storage=True)


def load_legacy_file(f) -> Any:
    """The object saved by legacy (torch < 1.6 or `_use_new_zipfile_serialization=False`) `torch.save`.

    Args:
      f: binary file object positioned at the start of the file.
    Returns: the saved object with tensors as numpy arrays (same allow-list as the zip reader).
    """
    root = _load_legacy(f, _LegacyFileUnpickler, _LegacyFileUnpickler.WHAT, single_storage=False)
    try:
        return _resolve_pending(root)
    except CheckpointError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        raise CheckpointError(f"malformed legacy torch.save file ({type(e).__name__}: {str(e)[:200]})") from None
