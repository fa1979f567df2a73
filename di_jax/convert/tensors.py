"""Tensors of a torch pickle as numpy: storages, validated tensor rebuilds, dtype and stand-in allow-lists.

`torch.<T>Storage` globals become `StorageType` names, their persistent ids `Storage` records
(`storage_record`), and `torch._utils._rebuild_tensor_v2` calls contiguous numpy arrays, each view
validated by `check_tensor` before any allocation. Only the dense dtypes of `STORAGE_DTYPES` are
read; `unsupported_tensor_global` words the refusal of every other known torch tensor kind or
dtype. Pickled numpy dtypes and scalars must be plain numbers (`NumpyDType`). `TENSOR_GLOBALS` and
`NUMPY_GLOBALS` map the globals a checkpoint pickle may name to these stand-ins.
"""

import collections
import re
from typing import Any

import numpy as np

from di_jax.convert.errors import CheckpointError, clean, describe

SUPPORTED_DTYPES = "float16, float32, float64, bfloat16, int8, int16, int32, int64, uint8, bool"
TORCH_DTYPES = {  # torch dtype globals (only pickled by _rebuild_tensor_v3, for storages without a class)
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn_x2", "complex32", "chalf", "complex64", "cfloat", "complex128", "cdouble", "qint8",
    "quint8", "qint32", "quint4x2", "quint2x4", "uint16", "uint32", "uint64", "bits1x8", "bits2x4",
    "bits4x2", "bits8", "bits16", *(f"int{n}" for n in range(1, 8)), *(f"uint{n}" for n in range(1, 8)),
    "float16", "half", "float32", "float", "float64", "double", "bfloat16", "int8", "int16", "short",
    "int32", "int", "int64", "long", "uint8", "bool"}
_STORAGE_DTYPE_NAMES = {"ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
                        "ComplexHalfStorage": "complex32", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
                        "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4"}
_UNSUPPORTED_KINDS = {
    ("torch._utils", "_rebuild_qtensor"): "quantised tensors",
    ("torch", "per_tensor_affine"): "quantised tensors",
    ("torch", "per_channel_affine"): "quantised tensors",
    ("torch", "per_channel_affine_float_qparams"): "quantised tensors",
    ("torch._utils", "_rebuild_sparse_tensor"): "sparse tensors",
    ("torch._utils", "_rebuild_sparse_csr"): "sparse tensors",
    ("torch.serialization", "_get_layout"): "sparse tensors (non-strided layouts)",
    ("torch._utils", "_rebuild_nested_tensor"): "nested tensors",
    ("torch._utils", "_rebuild_meta_tensor_no_storage"): "meta tensors (without data)",
    ("torch._utils", "_rebuild_wrapper_subclass"): "tensor subclasses",
    ("torch._tensor", "_rebuild_from_type"): "tensor subclasses",
    ("torch._tensor", "_rebuild_from_type_v2"): "tensor subclasses",
    ("torch._utils", "_rebuild_device_tensor_from_numpy"): "device tensors",
    ("torch._utils", "_rebuild_device_tensor_from_cpu_tensor"): "device tensors",
    ("torch._utils", "_rebuild_xla_tensor"): "XLA tensors",
    ("torch._utils", "_rebuild_mkldnn_tensor"): "MKL-DNN tensors",
    ("torch._utils", "_rebuild_tensor"): "tensors of the pre-1.0 format",
    ("torch._utils", "_rebuild_tensor_v3"): "tensors with an untyped storage (_rebuild_tensor_v3)",
    ("torch.storage", "UntypedStorage"): "tensors with an untyped storage (_rebuild_tensor_v3)",
    ("torch", "UntypedStorage"): "tensors with an untyped storage (_rebuild_tensor_v3)",
}


def unsupported_tensor_global(module: str, name: str) -> str | None:
    """The refusal message for a torch global naming an unsupported tensor kind or dtype, else None."""
    if module == "torch" and name in TORCH_DTYPES:
        return (f"tensor dtype torch.{name} is not supported (only tensors with a typed storage: "
                f"{SUPPORTED_DTYPES})")
    if module == "torch" and name.endswith("Storage") and name not in STORAGE_DTYPES:
        dtype = _STORAGE_DTYPE_NAMES.get(name)
        if dtype:
            return f"tensor dtype torch.{dtype} (torch.{name}) is not supported (supported: {SUPPORTED_DTYPES})"
        return f"tensor storage type torch.{clean(name, 60)} is not supported (supported: {SUPPORTED_DTYPES})"
    kind = _UNSUPPORTED_KINDS.get((module, name))
    if kind:
        return f"{kind} are not supported ({module}.{name}); supported: dense tensors of dtype {SUPPORTED_DTYPES}"
    return None


# torch.<Name>Storage class -> numpy dtype of its elements (little endian on disk).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"), "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
    "BFloat16Storage": np.dtype("<u2"),  # raw bits; widened to float32 by `Storage.array`
}
MAX_RANK = 8               # dimensions of one tensor (EDM: 4; numpy allows 64)
MAX_EXTENT = 1 << 48       # any size, stride, offset or element count (256 Ti elements)
VIEWS_PER_STORAGE = 4      # tensors built from one storage may hold at most 4x its elements in all
#                            (tied weights share a storage; more means amplification, not weights)


class StorageType(str):
    """Stand-in for a `torch.<Name>Storage` class global: only its name is kept."""

    __slots__ = ()


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_EXTENT:
        raise CheckpointError(f"{what} is {describe(value)}, not an integer in [0, {MAX_EXTENT}]")
    return value


class Storage:
    """A flat typed buffer: `data` (1-D numpy array) once loaded; `viewed` counts elements of tensors built on it."""

    __slots__ = ("type_name", "numel", "data", "viewed")

    def __init__(self, type_name: str, numel: int, data: np.ndarray | None = None):
        if not isinstance(type_name, str) or type_name not in STORAGE_DTYPES:
            message = unsupported_tensor_global("torch", type_name) if isinstance(type_name, str) else None
            raise CheckpointError(message or f"unsupported storage type {describe(type_name)}")
        self.type_name, self.numel, self.data = str(type_name), _count(numel, "storage element count"), data
        self.viewed = 0

    def __setstate__(self, state):
        raise CheckpointError("a pickle may not set the state of a tensor storage")

    def array(self) -> np.ndarray:
        if self.data is None:
            raise CheckpointError("tensor storage was referenced but never loaded")
        if self.type_name == "BFloat16Storage":  # bfloat16 bits are the top half of a float32
            return (self.data.astype(np.uint32) << 16).view(np.float32)
        return self.data


STORAGE_KEY = re.compile(r"[0-9A-Za-z_]{1,64}")  # a storage's name (a zip member's, too)


def storage_record(pid: Any, what: str, legacy: bool = False) -> tuple[str, str, int]:
    """(key, storage type name, element count) of a storage's persistent id, every field checked.

    The id is `('storage', torch.<T>Storage, key, location, numel)`; a `legacy` file's has a sixth
    entry, a view of another storage, which must be None (views are not supported).
    """
    if not (isinstance(pid, tuple) and len(pid) in ((5, 6) if legacy else (5,)) and pid[0] == "storage"
            and isinstance(pid[1], StorageType)):
        raise CheckpointError(f"unexpected persistent id ({describe(pid)}) in {what}")
    if len(pid) > 5 and pid[5] is not None:
        raise CheckpointError("storage views (legacy torch < 1.0 format) are not supported")
    key = pid[2]
    if not isinstance(key, str) or not STORAGE_KEY.fullmatch(key):
        raise CheckpointError(f"{what} names storage {describe(key)}: not a storage key (letters, digits, _)")
    return key, str(pid[1]), _count(pid[4], f"{what}: the element count of storage '{key}'")


def known_storage(storages: dict, key: str, type_name: str, numel: int, what: str) -> "Storage | None":
    """The storage already declared under `key` (which must match `type_name` and `numel`), or None."""
    storage = storages.get(key)
    if storage is not None and (storage.type_name, storage.numel) != (type_name, numel):
        raise CheckpointError(f"{what} declares storage '{key}' twice with different types/sizes")
    return storage


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_RANK:
        raise CheckpointError(f"tensor {what} is {describe(value)}, not a tuple of at most {MAX_RANK} integers")
    return tuple(_count(v, f"a tensor {what} entry") for v in value)


def check_tensor(numel: int, offset: Any, size: Any, stride: Any, metadata: Any = None) -> tuple:
    """Validate a `_rebuild_tensor_v2` view of a storage of `numel` elements, before any allocation.

    The rule: size/stride/offset are non-negative ints (rank <= `MAX_RANK`, each <= `MAX_EXTENT`);
    the largest index the view reaches, offset + sum((n - 1) * s), is inside the storage; and the
    view holds at most as many elements as the storage (a stride-0 / overlapping view that would
    expand 4 floats to 32768 x 32768 is refused; tensors made by `expand()` are not weights).
    `metadata` (the conjugate / negative bits) must be empty. Returns (offset, size, stride, elements).
    """
    offset, size, stride = _count(offset, "tensor storage offset"), _dims(size, "size"), _dims(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size has {len(size)} dimensions but its stride {len(stride)}")
    if metadata is not None and not isinstance(metadata, dict):
        raise CheckpointError(f"tensor metadata is {describe(metadata)}, not a dict")
    if metadata:
        bits = [clean(k, 20) if isinstance(k, str) else describe(k) for k, v in metadata.items() if v is not False]
        if bits:
            raise CheckpointError(f"tensors with the conjugate / negative bit set (metadata {', '.join(bits[:4])}) "
                                  "are not supported: dtype must be a plain real dtype")
    count = 1
    for n in size:
        count *= n
    if count == 0:
        return offset, size, stride, 0
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= numel:
        raise CheckpointError(f"tensor of size {size} (stride {stride}, offset {offset}) overruns its "
                              f"storage of {numel} elements: truncated or corrupt file")
    if count > numel:
        raise CheckpointError(f"tensor of size {size} (stride {stride}) has {count} elements, more than the "
                              f"{numel} of its storage: stride-0 / overlapping views are not supported")
    return offset, size, stride, count


def rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """`torch._utils._rebuild_tensor_v2` -> a contiguous numpy array (validated by `check_tensor` first)."""
    del requires_grad, hooks
    if not isinstance(storage, Storage):
        raise CheckpointError(f"tensor rebuilt from {describe(storage)}, not a storage")
    flat = storage.array()
    offset, size, stride, count = check_tensor(flat.size, offset, size, stride, metadata)
    storage.viewed += count
    if storage.viewed > VIEWS_PER_STORAGE * flat.size:
        raise CheckpointError(f"tensors built on one storage of {flat.size} elements hold {storage.viewed} "
                              f"elements, more than {VIEWS_PER_STORAGE}x the storage (a memory amplification)")
    if count == 0:
        return np.zeros(size, flat.dtype)
    view = np.lib.stride_tricks.as_strided(flat[offset:], size, [s * flat.itemsize for s in stride])
    return np.array(view, order="C")


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    del requires_grad, hooks, state
    if not isinstance(data, np.ndarray):
        raise CheckpointError(f"parameter rebuilt from {describe(data)}, not a tensor")
    return data


_NUMPY_DTYPE_NAME = re.compile(r"[fiu][1248]|b1|[<>|=][fiu][1248]|[<>|=]b1|float(16|32|64)|u?int(8|16|32|64)|bool")


class NumpyDType:
    """Stand-in for a pickled `numpy.dtype`: a plain numeric dtype whose pickled state may set only its byte order."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype

    def __setstate__(self, state):
        if (not isinstance(state, tuple) or len(state) < 5 or state[1] not in ("<", ">", "|", "=")
                or any(s is not None for s in state[2:5])):
            raise CheckpointError(f"numpy dtype state is {describe(state)}, not a plain dtype's")
        if state[1] in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_dtype(name, align=False, copy=False):
    del align, copy
    if not isinstance(name, str) or not _NUMPY_DTYPE_NAME.fullmatch(name):
        if isinstance(name, str) and len(name) <= 8 and name.lstrip("<>|=") in ("O", "object"):
            raise CheckpointError(f"refused numpy object dtype '{clean(name)}'")
        raise CheckpointError(f"numpy dtype {describe(name)} is not supported (plain numbers only)")
    return NumpyDType(np.dtype(name))


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, NumpyDType) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise CheckpointError(f"refused numpy scalar of {describe(dtype)} from {describe(data)}")
    return np.frombuffer(data, dtype.dtype, count=1)[0]


class EasyDict(dict):
    """Stand-in for `dnnlib.util.EasyDict` (a dict; attribute access to its keys, never to dunders)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)


# The globals a checkpoint pickle may name and their stand-ins (`unpickle.RestrictedUnpickler.ALLOWED`).
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
