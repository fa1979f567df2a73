"""Read plain state_dicts saved by `torch.save` (zip format, torch >= 1.6), with or without torch.

The archive holds `<name>/data.pkl`, a pickle whose tensors reference storages by persistent
id `('storage', torch.<T>Storage, key, location, numel)`, and the raw little-endian bytes of
each storage in `<name>/data/<key>`. The torch-free path unpickles `data.pkl` with the same
allow-list as the EDM reader (tensor rebuild functions, storage types, OrderedDict) and reads
the storages with `zipfile`. With torch installed (unless `use_torch=False`) the result is
cross-checked against `torch.load(weights_only=True)`: both must give identical arrays.
`read_torch_save` reads zip and legacy (pre-1.6, non-zip) files, always without torch.

Untrusted archives: everything that can be checked without reading data is checked first
(`zip_archive.check_archive`; then every storage's declared size against its pickled element
count, and every tensor's geometry against its storage), data is read in bounded chunks never
past a member's declared size, and every member's CRC is verified. `open_zip` stops after those
checks and returns a lazy mapping (`ZipTensors`) whose keys, shapes and dtypes are known before
any tensor is read.
"""

import collections
import io
import os
import zipfile
from typing import Mapping

import numpy as np

from di_jax.convert.errors import CheckpointError, describe, exception_text
from di_jax.convert.files import BoundedReader, open_regular
from di_jax.convert.tensors import (
    NUMPY_GLOBALS,
    STORAGE_DTYPES,
    TENSOR_GLOBALS,
    Storage,
    check_tensor,
    known_storage,
    rebuild_tensor,
    storage_record,
)
from di_jax.convert.unpickle import RestrictedUnpickler, load_legacy_file, safe_load
from di_jax.convert.zip_archive import ZIP_MAGIC, open_archive, read_member, read_small

LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickled 0x1950a86a20f9469cfc6c (protocol 2)
MAX_PICKLE_BYTES = 64 << 20    # data.pkl: ~100 B per tensor (EDM: < 100 KB); read whole, CRC-checked first
MAX_SMALL_MEMBER = 64          # byteorder


class _ZipIndexUnpickler(RestrictedUnpickler):
    """Unpickles data.pkl without reading any storage: each storage's declared type and element count
    are checked against its member's declared size, each tensor's geometry against its storage
    (`check_tensor`), and each tensor becomes a zero-memory placeholder (`np.broadcast_to` of one
    element) of its shape and dtype, remembered with its rebuild arguments."""

    ALLOWED = {**TENSOR_GLOBALS, **NUMPY_GLOBALS}
    WHAT = "torch.save data.pkl"

    def __init__(self, stream, archive: zipfile.ZipFile, prefix: str, index: dict, storages: dict):
        super().__init__(stream)
        self.archive, self.prefix, self.index, self.storages = archive, prefix, index, storages
        self.keys: dict[int, str] = {}  # id(storage) -> key

    def find_class(self, module: str, name: str):
        found = super().find_class(module, name)
        return self._placeholder if found is rebuild_tensor else found

    def _placeholder(self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        del requires_grad, hooks
        if not isinstance(storage, Storage) or id(storage) not in self.keys:
            raise CheckpointError(f"tensor rebuilt from {describe(storage)}, not a storage")
        offset, size, stride, _ = check_tensor(storage.numel, offset, size, stride, metadata)
        dtype = np.dtype(np.float32) if storage.type_name == "BFloat16Storage" else STORAGE_DTYPES[storage.type_name]
        placeholder = np.broadcast_to(np.zeros((), dtype.newbyteorder("=")), size)
        self.index[id(placeholder)] = (placeholder, self.keys[id(storage)], offset, size, stride, metadata)
        return placeholder

    def persistent_load(self, pid):
        key, type_name, numel = storage_record(pid, self.WHAT)
        storage = known_storage(self.storages, key, type_name, numel, self.WHAT)
        if storage is not None:
            return storage
        member, need = f"{self.prefix}data/{key}", numel * STORAGE_DTYPES[type_name].itemsize
        member, need = f"{self.prefix}data/{key}", numel * STORAGE_DTYPES[type_name].itemsize
        try:
            info = self.archive.getinfo(member)
        except KeyError:
            raise CheckpointError(f"torch zip archive lacks storage {member!r}: truncated file") from None
        if info.file_size < need:  # sizes checked against the declaration before reading anything
            raise CheckpointError(f"storage {member!r} holds {info.file_size} bytes, needs {need}: truncated file")
        if info.file_size > need:
            raise CheckpointError(f"storage {member!r} holds {info.file_size} bytes, more than the {need} of its "
                                  f"{numel} x {type_name[:-len('Storage')] or type_name} elements (corrupt or "
                                  "hostile file)")
        storage = Storage(type_name, numel)  # data read later, only if a tensor is asked for
        self.storages[key], self.keys[id(storage)] = storage, key
        return storage


def _to_state_dict(obj, what: str) -> "collections.OrderedDict[str, np.ndarray]":
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a common {'state_dict': ...} wrapper
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{what} holds {describe(obj)}, not a non-empty state_dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        shown = ", ".join(describe(k) for k in bad[:3])
        raise CheckpointError(f"{what} is not a flat state_dict of tensors (entries {shown})")
    return collections.OrderedDict(obj)


class ZipTensors(Mapping):
    """Lazy state_dict of a validated torch.save zip: a tensor is read (and kept) on first access.

    Opening indexes the archive (`check_archive`, data.pkl CRC-checked and unpickled with every
    storage's declared size checked against its member and every tensor's geometry against its
    storage) without reading any tensor data; `shapes`, `dtypes` and `shape_view()` (zero-memory
    arrays of the right shapes and dtypes) allow checks against a catalogue first. `load()` reads
    everything, CRC-checks every member, and with `use_torch` cross-checks the result against
    `torch.load` (whose own zip reader skips CRC and local-header checks): any difference refuses
    the file.
    """

    def __init__(self, path, use_torch: bool = False):
        self.path, self.use_torch = os.fspath(path), use_torch
        with open_archive(self.path) as (archive, prefix, identity):
            self._identity, self._prefix = identity, prefix
            self._byteorder = "little"
            if f"{prefix}byteorder" in archive.NameToInfo:
                order = read_small(archive, f"{prefix}byteorder", MAX_SMALL_MEMBER).decode("ascii", "replace")
                self._byteorder = order.strip()
                if self._byteorder not in ("little", "big"):
                    raise CheckpointError(f"torch archive has unknown byteorder {self._byteorder[:20]!r}")
            pkl = read_small(archive, f"{prefix}data.pkl", MAX_PICKLE_BYTES)  # CRC-checked before unpickling
            index: dict = {}
            storages: dict[str, Storage] = {}
            obj = safe_load(_ZipIndexUnpickler, io.BytesIO(pkl), archive=archive, prefix=prefix, index=index,
                            storages=storages)
        self._declared = {k: (v.type_name, v.numel) for k, v in storages.items()}
        view = _to_state_dict(obj, "torch archive")
        self._view, self._pending = view, {}
        for key, placeholder in view.items():
            if id(placeholder) not in index:
                raise CheckpointError(f"torch archive entry {key[:100]!r} is an array, not a tensor")
            self._pending[key] = index[id(placeholder)][1:]  # (storage key, offset, size, stride, metadata)
        self.shapes = {k: v.shape for k, v in view.items()}
        self.dtypes = {k: v.dtype for k, v in view.items()}
        self._arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            if key not in self._pending:
                raise KeyError(key)
            self._read([key])
        return self._arrays[key]

    def __iter__(self):
        return iter(self._view)

    def __len__(self) -> int:
        return len(self._view)

    def __contains__(self, key) -> bool:
        return key in self._view

    def shape_view(self) -> "collections.OrderedDict[str, np.ndarray]":
        """name -> read-only zero-strided array of the tensor's shape and dtype (no memory, no read)."""
        return collections.OrderedDict(self._view)

    def load(self) -> "collections.OrderedDict[str, np.ndarray]":
        """Every tensor (OrderedDict in the file's order), every member CRC-checked; see the class doc."""
        self._read([k for k in self._view if k not in self._arrays], check_all=True)
        arrays = collections.OrderedDict((k, self._arrays[k]) for k in self._view)
        if self.use_torch:
            _cross_check_with_torch(self.path, arrays)
        return arrays

    def _read(self, keys, check_all: bool = False) -> None:
        with open_archive(self.path) as (archive, prefix, identity):
            if identity != self._identity:
                raise CheckpointError(f"{self.path} changed while being read")
            storages: dict[str, Storage] = {}
            for key in keys:
                skey, offset, size, stride, metadata = self._pending[key]
                if skey not in storages:
                    storages[skey] = self._storage(archive, skey)
                self._arrays[key] = rebuild_tensor(storages[skey], offset, size, stride, metadata=metadata)
            if check_all:  # the CRC of every member not read above
                done = {f"{prefix}data.pkl", f"{prefix}byteorder"} | {f"{prefix}data/{k}" for k in storages}
                for info in archive.infolist():
                    if info.filename not in done:
                        read_member(archive, info)

    def _storage(self, archive: zipfile.ZipFile, key: str) -> Storage:
        type_name, numel = self._declared[key]
        dtype = STORAGE_DTYPES[type_name].newbyteorder("<" if self._byteorder == "little" else ">")
        data = np.empty(numel, dtype)
        read_member(archive, archive.getinfo(f"{self._prefix}data/{key}"), data.view(np.uint8))  # size checked
        if not dtype.isnative:
            data = data.byteswap().view(dtype.newbyteorder("="))
        return Storage(type_name, numel, data)


def open_zip(path: str | os.PathLike, use_torch: bool | None = None) -> ZipTensors:
    """A `torch.save` zip state_dict as a lazy mapping (`ZipTensors`): validated, nothing read yet."""
    if use_torch is None:
        use_torch = torch_available()
    return ZipTensors(path, use_torch)


def read_zip_numpy(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Torch-free reader: `torch.save`d zip state_dict -> OrderedDict of numpy arrays.

    Every member is CRC-checked; each storage member's declared size must equal its pickled element
    count x item size before anything is read; see `check_archive` for the structural limits.
    """
    return ZipTensors(path, use_torch=False).load()


def read_zip_torch(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Same result, cross-checked against `torch.load(weights_only=True)` (requires torch).

    torch's own zip reader skips CRC and local-header checks, so the archive is first read by the
    torch-free reader (every check of `read_zip_numpy`); torch.load must then give the same keys,
    shapes, dtypes and bytes, or the file is refused.
    """
    return ZipTensors(path, use_torch=True).load()


def _cross_check_with_torch(path: str, checked: "collections.OrderedDict[str, np.ndarray]") -> None:
    import torch  # pylint: disable=import-outside-toplevel

    try:
        with open_regular(path) as f:  # a file object: a FIFO swapped in since cannot block torch
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, ...)
        raise CheckpointError(f"torch.load refused the file ({exception_text(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict):
        obj = {k: to_numpy(v) if isinstance(v, torch.Tensor) else v for k, v in obj.items()}
    loaded = _to_state_dict(obj, "torch archive")
    if list(loaded) != list(checked):
        raise CheckpointError("torch.load and the torch-free reader disagree on the keys of this archive "
                              "(corrupt or hostile file)")
    for key, value in loaded.items():
        if not _same_array(value, checked[key]):
            raise CheckpointError(f"torch.load and the torch-free reader disagree on tensor {key[:100]!r} "
                                  "(corrupt or hostile file)")


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
    return bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))


def to_numpy(value) -> np.ndarray:
    """A torch.Tensor (recognised without importing torch; bfloat16 widened to float32) or array-like -> numpy."""
    if not hasattr(value, "detach"):
        return np.asarray(value)
    t = value.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
        return t.float().numpy()
    return t.numpy().copy()


def torch_available() -> bool:
    try:
        import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        return False
    return True


def read_zip(path, use_torch: bool | None = None) -> "collections.OrderedDict[str, np.ndarray]":
    """Read a `torch.save` zip state_dict; `use_torch=None` cross-checks with torch when it is installed."""
    return open_zip(path, use_torch).load()


def read_legacy_numpy(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Torch-free reader: legacy (pre-1.6, non-zip) `torch.save` state_dict -> OrderedDict of numpy arrays."""
    try:
        with open_regular(path) as f:
            obj = load_legacy_file(BoundedReader(f))  # lengths read from the file cannot over-allocate
    except OSError as e:
        raise CheckpointError(f"cannot read {os.fspath(path)}: {e.strerror}") from None
    return _to_state_dict(obj, "legacy torch.save file")


def read_torch_save(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Torch-free reader of a `torch.save`d state_dict in either format (zip or legacy), by content.

    Args:
      path: `.pt` / `.pth` file (a regular file; see `files.open_regular`).
    Returns: OrderedDict of numpy arrays (an outer `{'state_dict': ...}` wrapper is removed).
    Raises: `CheckpointError` (one line) for anything else, or a corrupt or unsafe file.
    """
    try:
        with open_regular(path) as f:
            head = f.read(len(LEGACY_MAGIC))
    except OSError as e:
        raise CheckpointError(f"cannot read {os.fspath(path)}: {e.strerror}") from None
    if head.startswith(ZIP_MAGIC):
        return read_zip_numpy(path)
    if head.startswith(LEGACY_MAGIC):
        return read_legacy_numpy(path)
    raise CheckpointError(f"{os.fspath(path)} is not a torch.save file (neither a zip archive nor a legacy stream)")
