"""Read plain state_dicts saved by `torch.save` (zip format, torch >= 1.6), with or without torch.

The archive holds `<name>/data.pkl`, a pickle whose tensors reference storages by persistent
id `('storage', torch.<T>Storage, key, location, numel)`, and the raw little-endian bytes of
each storage in `<name>/data/<key>`. The torch-free path unpickles `data.pkl` with the same
allow-list as the EDM reader (tensor rebuild functions, storage types, OrderedDict) and reads
the storages with `zipfile`. With torch installed, `torch.load(weights_only=True)` is used
instead unless `use_torch=False`; both give identical arrays. `read_torch_save` reads zip and
legacy (pre-1.6, non-zip) files, always without torch.
"""

import collections
import os
import zipfile

import numpy as np

from di_jax.convert.unpickle import (
    NUMPY_GLOBALS,
    STORAGE_DTYPES,
    TENSOR_GLOBALS,
    CheckpointError,
    RestrictedUnpickler,
    Storage,
    StorageType,
    load_legacy_file,
    safe_load,
)

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickled 0x1950a86a20f9469cfc6c (protocol 2)


class _ZipUnpickler(RestrictedUnpickler):
    ALLOWED = {**TENSOR_GLOBALS, **NUMPY_GLOBALS}
    WHAT = "torch.save data.pkl"

    def __init__(self, stream, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(stream)
        self.archive, self.prefix, self.byteorder = archive, prefix, byteorder
        self.storages: dict[str, Storage] = {}

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], StorageType)):
            raise CheckpointError(f"unexpected persistent id {str(pid)[:80]!r} in {self.WHAT}")
        _, type_name, key, _, numel = pid
        key = str(key)
        if key not in self.storages:
            dtype = STORAGE_DTYPES[type_name].newbyteorder("<" if self.byteorder == "little" else ">")
            member = f"{self.prefix}data/{key}"
            try:
                raw = self.archive.read(member)
            except KeyError:
                raise CheckpointError(f"torch zip archive lacks storage {member!r}: truncated file") from None
            if len(raw) < int(numel) * dtype.itemsize:
                raise CheckpointError(f"storage {member!r} holds {len(raw)} bytes, needs "
                                      f"{int(numel) * dtype.itemsize}: truncated file")
            data = np.frombuffer(raw, dtype, count=int(numel)).astype(dtype.newbyteorder("="))
            self.storages[key] = Storage(type_name, numel, data)
        return self.storages[key]


def _archive_prefix(archive: zipfile.ZipFile) -> str:
    pkls = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise CheckpointError("zip file is not a torch.save archive (no single <name>/data.pkl)")
    return pkls[0][: -len("data.pkl")]


def _to_state_dict(obj, what: str) -> "collections.OrderedDict[str, np.ndarray]":
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a common {'state_dict': ...} wrapper
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{what} holds a {type(obj).__name__}, not a non-empty state_dict")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointError(f"{what} is not a flat state_dict of tensors (entries {bad[:3]})")
    return collections.OrderedDict(obj)


def _open_archive(path) -> tuple[zipfile.ZipFile, str]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"corrupt or truncated zip archive ({e})") from None
    try:
        return archive, _archive_prefix(archive)
    except CheckpointError:
        archive.close()
        raise


def read_zip_numpy(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Torch-free reader: `torch.save`d zip state_dict -> OrderedDict of numpy arrays."""
    archive, prefix = _open_archive(path)
    with archive:
        byteorder = "little"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode().strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"torch archive has unknown byteorder {byteorder!r}")
        try:
            stream = archive.open(f"{prefix}data.pkl")
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointError(f"corrupt torch archive data.pkl ({e})") from None
        with stream:
            try:
                obj = safe_load(_ZipUnpickler, stream, archive=archive, prefix=prefix, byteorder=byteorder)
            except (zipfile.BadZipFile, OSError) as e:  # CRC errors and short reads surface lazily
                raise CheckpointError(f"corrupt torch archive ({e})") from None
    return _to_state_dict(obj, "torch archive")


def read_zip_torch(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Same result through `torch.load(weights_only=True)` (requires torch)."""
    import torch  # pylint: disable=import-outside-toplevel

    _open_archive(path)[0].close()  # same structural checks (and messages) as the torch-free path
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"torch.load refused the file ({type(e).__name__}: {first[:200]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict):
        obj = {k: to_numpy(v) if isinstance(v, torch.Tensor) else v for k, v in obj.items()}
    return _to_state_dict(obj, "torch archive")


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
    """Read a `torch.save` zip state_dict; `use_torch=None` uses torch when it is installed."""
    if use_torch is None:
        use_torch = torch_available()
    return read_zip_torch(path) if use_torch else read_zip_numpy(path)


def read_legacy_numpy(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Torch-free reader: legacy (pre-1.6, non-zip) `torch.save` state_dict -> OrderedDict of numpy arrays."""
    try:
        with open(path, "rb") as f:
            obj = load_legacy_file(f)
    except OSError as e:
        raise CheckpointError(f"cannot read {os.fspath(path)}: {e.strerror}") from None
    return _to_state_dict(obj, "legacy torch.save file")


def read_torch_save(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Torch-free reader of a `torch.save`d state_dict in either format (zip or legacy), by content.

    Args:
      path: `.pt` / `.pth` file.
    Returns: OrderedDict of numpy arrays (an outer `{'state_dict': ...}` wrapper is removed).
    Raises: `CheckpointError` (one line) for anything else, or a corrupt or unsafe file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(LEGACY_MAGIC))
    except OSError as e:
        raise CheckpointError(f"cannot read {os.fspath(path)}: {e.strerror}") from None
    if head.startswith(ZIP_MAGIC):
        return read_zip_numpy(path)
    if head.startswith(LEGACY_MAGIC):
        return read_legacy_numpy(path)
    raise CheckpointError(f"{os.fspath(path)} is not a torch.save file (neither a zip archive nor a legacy stream)")
