"""Safetensors files: a validating, lazy reader and the writer of Flax EDM params with their config.

The header is parsed and every entry validated (length cap, JSON object without duplicate keys,
dtype allow-list, shapes, data_offsets in range and tiling the data exactly) before any tensor
data is read; `SafetensorsTensors` then reads a tensor only when it is accessed. `save_safetensors`
records the network config in the metadata (`SAFETENSORS_CONFIG_KEY`), where `read_safetensors`
finds it again.
"""

import json
import os
from typing import Any, Mapping

import numpy as np

from di_jax.convert import catalogue
from di_jax.convert import config as config_lib
from di_jax.convert.arguments import bool_arg, fn_error, numpy_tree, path_arg
from di_jax.convert.errors import CheckpointError, exception_text
from di_jax.convert.files import file_identity, open_regular

SAFETENSORS_CONFIG_KEY = "edm_config"   # metadata entry holding the network config as JSON
SAFETENSORS_MAX_HEADER = 4 << 20   # bytes of JSON: EDM nets need ~70 KB, SDXL's 1700-tensor UNet ~250 KB; the
#                                    worst JSON (`[{},{},...]`) costs ~25x its size in Python objects: ~100 MiB
SAFETENSORS_MAX_RANK = 8
SAFETENSORS_DTYPES = {"F16": "<f2", "BF16": "<u2", "F32": "<f4", "F64": "<f8", "BOOL": "|b1", "U8": "|u1",
                      "I8": "|i1", "I16": "<i2", "I32": "<i4", "I64": "<i8", "U16": "<u2", "U32": "<u4",
                      "U64": "<u8"}  # BF16: raw bits, widened to float32 when read (as by the torch readers)


def _st_error(path, detail: str) -> CheckpointError:
    return CheckpointError(f"corrupt or truncated safetensors file {os.fspath(path)} ({detail})")


def _no_duplicates(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        raise ValueError(f"duplicate key {next(k for k, _ in pairs if k in seen or seen.add(k))[:80]!r}")
    return obj


def _safetensors_entry(path, name: str, entry, data_size: int) -> tuple:
    """(dtype code, shape, begin, end) of one header entry, every field checked."""
    if not isinstance(entry, dict):
        raise _st_error(path, f"tensor {name[:80]!r}: entry is a {type(entry).__name__}, not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"safetensors tensor {name[:80]!r} has unsupported dtype {str(dtype)[:40]!r} "
                              f"(supported: {', '.join(SAFETENSORS_DTYPES)})")
    if (not isinstance(shape, list) or len(shape) > SAFETENSORS_MAX_RANK
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise _st_error(path, f"tensor {name[:80]!r}: shape {str(shape)[:80]} is not a list of at most "
                              f"{SAFETENSORS_MAX_RANK} non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise _st_error(path, f"tensor {name[:80]!r}: data_offsets {str(offsets)[:80]} are not [begin, end]")
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise _st_error(path, f"tensor {name[:80]!r}: data_offsets {offsets} hold {offsets[1] - offsets[0]} "
                              f"bytes, its {dtype} shape {tuple(shape)} needs {nbytes}")
    if offsets[1] > data_size:
        raise _st_error(path, f"tensor {name[:80]!r}: data_offsets {offsets} run past the end of the "
                              f"{data_size} bytes of data")
    return dtype, tuple(shape), offsets[0], offsets[1]


def _safetensors_header(path) -> tuple[dict, dict, int, tuple]:
    """(entries name -> (dtype, shape, begin, end), metadata, data start, file identity), all validated."""
    with open_regular(path) as f:
        st = os.fstat(f.fileno())
        try:
            head = f.read(8)
            n = int.from_bytes(head, "little")
            if len(head) < 8:
                raise _st_error(path, "shorter than the 8-byte header length")
            if n > SAFETENSORS_MAX_HEADER:
                raise CheckpointError(f"{os.fspath(path)}: safetensors header of {n} bytes, more than the "
                                      f"{SAFETENSORS_MAX_HEADER} allowed")
            if n > st.st_size - 8:
                raise CheckpointError(f"{os.fspath(path)}: safetensors header longer than the file (truncated)")
            raw = f.read(n)
        except OSError as e:
            raise CheckpointError(f"cannot read {os.fspath(path)}: {e.strerror}") from None
    if len(raw) != n:
        raise _st_error(path, "file shrank while being read")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise _st_error(path, f"header is not valid JSON: {exception_text(e)}") from None
    if not isinstance(header, dict):
        raise _st_error(path, f"header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _st_error(path, "__metadata__ is not an object of strings")
    data_start = 8 + n
    data_size = st.st_size - data_start
    entries = {name: _safetensors_entry(path, name, entry, data_size) for name, entry in header.items()}
    end, previous = 0, None  # like the safetensors library: tensors tile the data, no gap, no overlap
    for name, (_, _, b, e) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if b != end:
            what = "overlaps" if b < end else "leaves a gap after"
            raise _st_error(path, f"tensor {name[:80]!r} at bytes [{b}, {e}) {what} "
                                  f"{repr(previous[:80]) if previous else 'the start of the data'}")
        end, previous = e, name
    if end != data_size:
        raise _st_error(path, f"its tensors cover {end} of the {data_size} bytes of data")
    return entries, metadata, data_start, file_identity(st)


class SafetensorsTensors(Mapping):
    """Lazy state_dict of a validated safetensors file: a tensor is read (and kept) on first access.

    `shapes` / `dtypes` (of the arrays returned; BF16 is widened to float32) are known from the
    header without reading any data, and `shape_view()` gives zero-memory stand-in arrays of the
    right shapes and dtypes for checks against a catalogue before any tensor is read.
    """

    def __init__(self, path, entries: dict, data_start: int, identity: tuple):
        self.path, self._entries, self._data_start, self._identity = os.fspath(path), entries, data_start, identity
        self.shapes = {k: e[1] for k, e in entries.items()}
        self.dtypes = {k: np.dtype(np.float32 if e[0] == "BF16" else SAFETENSORS_DTYPES[e[0]]).newbyteorder("=")
                       for k, e in entries.items()}
        self._arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            if key not in self._entries:
                raise KeyError(key)
            self._read([key])
        return self._arrays[key]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def shape_view(self) -> dict:
        """name -> read-only zero-strided array of the tensor's shape and dtype (no memory, no read)."""
        return {k: np.broadcast_to(np.zeros((), self.dtypes[k]), s) for k, s in self.shapes.items()}

    def load(self) -> dict:
        """Every tensor as a plain dict of numpy arrays (one pass over the file)."""
        self._read([k for k in self._entries if k not in self._arrays])
        return {k: self._arrays[k] for k in self._entries}

    def _read(self, keys) -> None:
        with open_regular(self.path) as f:
            if file_identity(os.fstat(f.fileno())) != self._identity:
                raise CheckpointError(f"{self.path} changed while being read")
            for key in sorted(keys, key=lambda k: self._entries[k][2]):
                code, shape, begin, end = self._entries[key]
                raw, got = np.empty(end - begin, np.uint8), 0
                view = memoryview(raw)
                try:
                    f.seek(self._data_start + begin)
                    while got < raw.size and (n := f.readinto(view[got:got + (1 << 26)])):
                        got += n
                except OSError as e:
                    raise CheckpointError(f"cannot read {self.path}: {e.strerror}") from None
                if got != raw.size:
                    raise _st_error(self.path, f"tensor {key[:80]!r}: {got} of {raw.size} bytes: truncated")
                array = raw.view(SAFETENSORS_DTYPES[code])
                if code == "BF16":
                    array = (array.astype(np.uint32) << 16).view(np.float32)
                elif not array.dtype.isnative:
                    array = array.byteswap().view(array.dtype.newbyteorder("="))
                self._arrays[key] = array.reshape(shape)


def read_safetensors_metadata(path) -> "tuple[SafetensorsTensors, dict]":
    """(lazy tensors, the header's `__metadata__` strings), the header validated as by `read_safetensors`."""
    entries, metadata, data_start, identity = _safetensors_header(path)
    return SafetensorsTensors(path, entries, data_start, identity), dict(metadata)


def read_safetensors(path) -> "tuple[SafetensorsTensors, dict | None]":
    """(lazy tensors, config recorded in the metadata by `save_safetensors` or None).

    The header is parsed and validated here (length cap, JSON object, dtype allow-list, shapes,
    data_offsets in range and tiling the data exactly); no tensor is read until it is accessed.
    """
    entries, metadata, data_start, identity = _safetensors_header(path)
    tensors = SafetensorsTensors(path, entries, data_start, identity)
    if SAFETENSORS_CONFIG_KEY not in metadata:
        return tensors, None
    try:
        recorded = json.loads(metadata[SAFETENSORS_CONFIG_KEY])
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{os.fspath(path)}: metadata {SAFETENSORS_CONFIG_KEY!r} is not JSON "
                              f"({exception_text(e)})") from None
    if not isinstance(recorded, dict) or "precond" not in recorded:
        raise CheckpointError(f"{os.fspath(path)}: metadata {SAFETENSORS_CONFIG_KEY!r} must be a JSON object "
                              "with a 'precond' entry")
    return tensors, recorded


def save_safetensors(path: str | os.PathLike, params: Any, config: Mapping[str, Any],
                     allow_nonfinite: bool = False) -> None:
    """Write Flax EDM params as a `.safetensors` file with the official PyTorch state_dict names.

    The network config goes into the file's metadata, so `load_teacher(path)` needs no `config`
    argument; PyTorch users read it with `safetensors.torch.load_file` into the official network.
    NaN, +-inf and |x| > 1e19 are refused (as every reader refuses them) unless `allow_nonfinite`.
    """
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    from di_jax.convert.edm_mapping import flax_to_state_dict  # pylint: disable=import-outside-toplevel

    path = path_arg(path, "save_safetensors")
    if not isinstance(params, Mapping):
        raise fn_error("save_safetensors", "params", "a Flax parameter tree (a mapping)", params)
    if not isinstance(config, Mapping):
        raise fn_error("save_safetensors", "config", "a mapping of network config entries (dict)", config)
    bool_arg(allow_nonfinite, "save_safetensors", "allow_nonfinite")
    cfg = config_lib.complete(config)
    if isinstance(cfg.get("sigma_max"), float) and not np.isfinite(cfg["sigma_max"]):
        cfg.pop("sigma_max")  # EDMPrecond's default inf; JSON has no infinity
    state_dict = flax_to_state_dict(numpy_tree(params), cfg)
    catalogue.check_state_dict(state_dict, cfg)
    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in state_dict.items()}
    catalogue.check_values(tensors, allow_nonfinite, where="params")
    save_file(tensors, path, metadata={SAFETENSORS_CONFIG_KEY: json.dumps(cfg, sort_keys=True)})
