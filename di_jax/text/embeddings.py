"""Precomputed text embeddings on disk: npz shards + index.json, a per-host batch reader, an in-memory table.

A prompt directory (written by `EmbeddingWriter`, e.g. through `di-jax embed-prompts`):

    index.json               {"format": "di_jax.prompt_embeddings", "version": 1, "count": N, "max_length": L,
                              "width": C, "dtype": "float16", "labels": true, "shards": [{"file", "count"}],
                              "null": "null.npz", "encoder": {...}}   (written last: marks a complete directory)
    shard-00000.npz ...      embeddings [n, L, C] float16/float32, mask [n, L] uint8 (1 keep / 0 pad),
                             prompt [n] unicode, label [n] int32 (when "labels")
    null.npz                 the same members for one row: the empty prompt "" (classifier-free guidance)

Shards are uncompressed npz (`np.savez`), so the reader memory-maps each member and reads only the rows it
needs. The order of examples is a pure function of (seed, step): the global batch of step s is positions
s·B … s·B + B − 1 of an endless stream in which every epoch is a keyed pseudo-random permutation of the N
prompts (a Feistel network with cycle walking: O(1) memory, any N); host p of P takes the p-th contiguous
B/P of it. A resumed run therefore continues exactly where it stopped, whatever the number of hosts.
Every problem raises a one-line `PromptDataError`.
"""

import json
import os
import re
import zipfile
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np

FORMAT, VERSION = "di_jax.prompt_embeddings", 1
INDEX_FILE, NULL_FILE = "index.json", "null.npz"
INDEX_MAX_BYTES = 64 << 20
EMBEDDING_DTYPES = ("float16", "float32")
MEMBERS = ("embeddings", "mask", "prompt")      # + "label" when the index says "labels": true
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.npz$")
_MASK64 = (1 << 64) - 1


class PromptDataError(ValueError):
    """A prompt-embedding directory, shard or batch request that cannot be used (one line)."""


class PromptBatch(NamedTuple):
    """One host's slice of a global batch of prompts."""
    embeddings: np.ndarray   # [b, L, C] (the requested dtype)
    mask: np.ndarray         # [b, L] float32, 1 keep / 0 pad
    label: Optional[np.ndarray]   # [b] int32, or None for unlabelled sets
    index: np.ndarray        # [b] int64: row of each example in the directory
    prompt: np.ndarray       # [b] unicode


# ---------------------------------------------------------------- order: a keyed permutation per epoch

def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (Steele et al. 2014) on uint64 arrays (wrapping arithmetic)."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _epoch_key(seed: int, epoch: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _mix64(_mix64(np.uint64(seed & _MASK64) ^ np.uint64(0x9E3779B97F4A7C15)) + np.asarray(epoch, np.uint64))


def permute(i, count: int, key) -> np.ndarray:
    """π_key(i) for i in [0, count): a bijection of [0, count) per key (4-round Feistel network on the smallest
    even-bit domain ≥ count, cycle-walked back into range; Black & Rogaway 2002). `key` broadcasts with i."""
    if count < 1:
        raise PromptDataError(f"permute: count must be >= 1; got {count}")
    i = np.asarray(i, np.uint64)
    key = np.broadcast_to(np.asarray(key, np.uint64), i.shape)
    if count == 1:
        return np.zeros(i.shape, np.int64)
    half = max(1, ((count - 1).bit_length() + 1) // 2)
    lo_mask = np.uint64((1 << half) - 1)

    def feistel(x, k):
        left, right = x >> np.uint64(half), x & lo_mask
        for r in range(4):
            with np.errstate(over="ignore"):
                f = _mix64(k ^ _mix64(right + np.uint64(r + 1) * np.uint64(0xD1B54A32D192ED03))) & lo_mask
            left, right = right, left ^ f
        return (left << np.uint64(half)) | right

    y = feistel(i, key)
    out = y >= np.uint64(count)
    while out.any():                       # cycle walking: at most a few rounds (domain < 4 count)
        y[out] = feistel(y[out], key[out])
        out = y >= np.uint64(count)
    return y.astype(np.int64)


def host_positions(step: int, batch_size: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """Stream positions [batch_size / process_count] of host `process_index`'s slice of step `step`'s batch."""
    for name, v in (("step", step), ("batch_size", batch_size), ("process_index", process_index),
                    ("process_count", process_count)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise PromptDataError(f"{name} must be an int; got {type(v).__name__}")
    if step < 0 or batch_size < 1 or process_count < 1 or not 0 <= process_index < process_count:
        raise PromptDataError(f"need step >= 0, batch_size >= 1, 0 <= process_index < process_count; got step {step}, "
                              f"batch_size {batch_size}, process {process_index} of {process_count}")
    if batch_size % process_count:
        raise PromptDataError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
    per = batch_size // process_count
    return np.int64(step) * batch_size + process_index * per + np.arange(per, dtype=np.int64)


def stream_indices(positions, count: int, seed: int) -> np.ndarray:
    """Rows of the prompt set at stream positions: position q is π_{seed, q // count}(q mod count)."""
    q = np.asarray(positions, np.int64)
    return permute(q % count, count, _epoch_key(seed, q // count))


# ---------------------------------------------------------------- writing

def _check_rows(embeddings, mask, prompts, labels, where: str):
    e, m = np.asarray(embeddings), np.asarray(mask)
    if e.ndim != 3 or e.dtype.kind != "f":
        raise PromptDataError(f"{where}: embeddings must be a float array [N, L, C]; got {e.dtype} {e.shape}")
    if m.shape != e.shape[:2]:
        raise PromptDataError(f"{where}: mask must be [N, L] = {e.shape[:2]}; got {m.shape}")
    if not np.isin(m, (0, 1)).all():
        raise PromptDataError(f"{where}: mask must hold only 0 (pad) and 1 (keep)")
    if not np.isfinite(e).all():
        raise PromptDataError(f"{where}: embeddings hold NaN or infinite values")
    p = np.asarray(list(prompts), dtype=str)
    if p.shape != (e.shape[0],):
        raise PromptDataError(f"{where}: {p.size} prompts for {e.shape[0]} embeddings")
    lab = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != (e.shape[0],) or lab.dtype.kind not in "iu":
            raise PromptDataError(f"{where}: labels must be integers [N={e.shape[0]}]; got {lab.dtype} {lab.shape}")
        lab = lab.astype(np.int32)
    return e, m.astype(np.uint8), p, lab


class EmbeddingWriter:
    """Writes a prompt directory shard by shard: `add(...)` batches, then `finish(null=...)`.

    Args:
      out_dir: a new or empty directory (refused if it already holds an index.json).
      dtype: the stored embedding dtype, "float16" (default: half the bytes) or "float32".
      shard_size: rows per shard file.
      labels: whether every row carries an integer label (demo prompts).
    """

    def __init__(self, out_dir: str | os.PathLike, dtype: str = "float16", shard_size: int = 1024,
                 labels: bool = False):
        self.out_dir = os.fspath(out_dir)
        if dtype not in EMBEDDING_DTYPES:
            raise PromptDataError(f"dtype must be one of {EMBEDDING_DTYPES}; got {dtype!r}")
        if shard_size < 1:
            raise PromptDataError(f"shard_size must be >= 1; got {shard_size}")
        if os.path.exists(os.path.join(self.out_dir, INDEX_FILE)):
            raise PromptDataError(f"{self.out_dir} already holds a prompt-embedding {INDEX_FILE}; choose a new "
                                  "directory")
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise PromptDataError(f"{self.out_dir} exists and is not a directory")
        os.makedirs(self.out_dir, exist_ok=True)
        self.dtype, self.shard_size, self.labels = dtype, shard_size, labels
        self.shape: Optional[tuple] = None
        self.shards: List[Dict[str, Any]] = []
        self._pending: List[tuple] = []
        self._pending_rows = 0

    def _check(self, e, m, p, lab, where):
        e, m, p, lab = _check_rows(e, m, p, lab, where)
        if (lab is not None) != self.labels:
            raise PromptDataError(f"{where}: labels {'missing' if self.labels else 'given'}; the writer was made "
                                  f"with labels={self.labels}")
        if self.shape is None:
            self.shape = e.shape[1:]
        if e.shape[1:] != self.shape:
            raise PromptDataError(f"{where}: rows are [L, C] = {e.shape[1:]}, earlier rows {self.shape}")
        return e.astype(self.dtype), m, p, lab

    def add(self, embeddings, mask, prompts: Sequence[str], labels=None) -> None:
        """Appends rows: embeddings [n, L, C], mask [n, L], n prompt strings, labels [n] if the set has them."""
        self._pending.append(self._check(embeddings, mask, prompts, labels, "add"))
        self._pending_rows += self._pending[-1][0].shape[0]
        while self._pending_rows >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        parts = [np.concatenate(a) if a[0] is not None else None for a in zip(*self._pending)]
        head, rest = [None if a is None else a[:n] for a in parts], [None if a is None else a[n:] for a in parts]
        name = f"shard-{len(self.shards):05d}.npz"
        _save_npz(os.path.join(self.out_dir, name), *head)
        self.shards.append(dict(file=name, count=int(head[0].shape[0])))
        self._pending = [tuple(rest)] if rest[0].shape[0] else []
        self._pending_rows = rest[0].shape[0]

    def finish(self, null: Optional[tuple] = None, metadata: Optional[dict] = None) -> dict:
        """Writes the last shard, `null.npz` (null = (embeddings [1, L, C], mask [1, L]) of the empty prompt)
        and index.json; returns the index."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        if not self.shards:
            raise PromptDataError("no prompts were added")
        index = dict(format=FORMAT, version=VERSION, count=sum(s["count"] for s in self.shards),
                     max_length=int(self.shape[0]), width=int(self.shape[1]), dtype=self.dtype, labels=self.labels,
                     shards=self.shards, null=None, encoder=dict(metadata or {}))
        if null is not None:
            e, m, p, _ = _check_rows(null[0], null[1], [""], None, "null")
            if e.shape != (1,) + self.shape:
                raise PromptDataError(f"null: embeddings must be [1, L, C] = {(1,) + self.shape}; got {e.shape}")
            _save_npz(os.path.join(self.out_dir, NULL_FILE), e.astype(self.dtype), m, p,
                      np.full(1, -1, np.int32) if self.labels else None)
            index["null"] = NULL_FILE
        tmp = os.path.join(self.out_dir, INDEX_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(index, f, indent=1)
        os.replace(tmp, os.path.join(self.out_dir, INDEX_FILE))
        return index


def _save_npz(path: str, embeddings, mask, prompt, label) -> None:
    arrays = dict(embeddings=embeddings, mask=mask, prompt=prompt)
    if label is not None:
        arrays["label"] = label
    np.savez(path, **arrays)        # ZIP_STORED: members can be memory-mapped


def write_prompt_embeddings(out_dir, embeddings, mask, prompts, labels=None, null=None, dtype: str = "float16",
                            shard_size: int = 1024, metadata: Optional[dict] = None) -> dict:
    """All rows at once through `EmbeddingWriter`; returns the index."""
    w = EmbeddingWriter(out_dir, dtype, shard_size, labels is not None)
    w.add(embeddings, mask, prompts, labels)
    return w.finish(null, metadata)


# ---------------------------------------------------------------- reading

def _npz_members(path: str) -> Dict[str, np.ndarray]:
    """Read-only arrays of an npz file: memory-mapped for stored (uncompressed) members, else loaded."""
    out = {}
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise PromptDataError(f"{path} is not a readable npz file ({type(e).__name__})") from None
    with zf, open(path, "rb") as raw:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type != zipfile.ZIP_STORED:
                with zf.open(info) as f:
                    out[name] = np.lib.format.read_array(f, allow_pickle=False)
                continue
            raw.seek(info.header_offset)
            local = raw.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise PromptDataError(f"{path}: member {name!r} has a corrupt zip header")
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
                int.from_bytes(local[28:30], "little")
            raw.seek(start)
            try:
                version = np.lib.format.read_magic(raw)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"npy format version {version} is not supported")
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(raw)
            except ValueError as e:
                raise PromptDataError(f"{path}: member {name!r} is not an .npy array ({e})") from None
            if dtype.hasobject:
                raise PromptDataError(f"{path}: member {name!r} holds Python objects; refused")
            offset = raw.tell()
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if offset - start + nbytes != info.file_size:
                raise PromptDataError(f"{path}: member {name!r} is truncated or has trailing bytes")
            out[name] = (np.memmap(path, dtype, "r", offset, shape, "F" if fortran else "C") if nbytes
                         else np.zeros(shape, dtype))
    return out


class PromptEmbeddings:
    """A prompt directory opened for reading (the index and every shard's headers checked up front).

        ds = PromptEmbeddings(path)
        b = ds.batch(step, batch_size=256, seed=0, process_index=jax.process_index(),
                     process_count=jax.process_count())
        cond = TextCondition(b.embeddings, b.mask)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        index_path = os.path.join(self.path, INDEX_FILE)
        if not os.path.isfile(index_path):
            raise PromptDataError(f"{self.path} has no {INDEX_FILE}: not a prompt-embedding directory "
                                  "(make one with di-jax embed-prompts)")
        if os.path.getsize(index_path) > INDEX_MAX_BYTES:
            raise PromptDataError(f"{index_path} is larger than {INDEX_MAX_BYTES} bytes")
        try:
            with open(index_path, "rb") as f:
                index = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise PromptDataError(f"{index_path} is not valid JSON ({type(e).__name__})") from None
        self.index = self._check_index(index, index_path)
        self.count, self.max_length, self.width = index["count"], index["max_length"], index["width"]
        self.has_labels = index["labels"]
        self._shards = [self._open_shard(s["file"], s["count"]) for s in index["shards"]]
        self._starts = np.cumsum([0] + [s["count"] for s in index["shards"]])
        self._null = self._open_shard(index["null"], 1) if index["null"] else None

    @staticmethod
    def _check_index(index, where: str) -> dict:
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise PromptDataError(f"{where}: not a {FORMAT} index")
        if index.get("version") != VERSION:
            raise PromptDataError(f"{where}: version {index.get('version')!r} is not supported (this reader: "
                                  f"{VERSION})")
        for key in ("count", "max_length", "width"):
            v = index.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise PromptDataError(f"{where}: {key!r} must be a positive int")
        if index.get("dtype") not in EMBEDDING_DTYPES or not isinstance(index.get("labels"), bool):
            raise PromptDataError(f"{where}: 'dtype' must be one of {EMBEDDING_DTYPES} and 'labels' true or false")
        shards = index.get("shards")
        if not isinstance(shards, list) or not shards:
            raise PromptDataError(f"{where}: 'shards' must be a non-empty list")
        for s in shards:
            if (not isinstance(s, dict) or not isinstance(s.get("file"), str) or not _SHARD_NAME.match(s["file"])
                    or not isinstance(s.get("count"), int) or s["count"] < 1):
                raise PromptDataError(f"{where}: every shard must be {{'file': NAME.npz in the directory, "
                                      "'count': positive int}")
        if sum(s["count"] for s in shards) != index["count"]:
            raise PromptDataError(f"{where}: shard counts add up to {sum(s['count'] for s in shards)}, not "
                                  f"'count' {index['count']}")
        null = index.get("null")
        if null is not None and (not isinstance(null, str) or not _SHARD_NAME.match(null)):
            raise PromptDataError(f"{where}: 'null' must be an .npz file name in the directory or null")
        return index

    def _open_shard(self, name: str, count: int) -> Dict[str, np.ndarray]:
        path = os.path.join(self.path, name)
        if not os.path.isfile(path):
            raise PromptDataError(f"{path}: listed in {INDEX_FILE} but missing")
        arrays = _npz_members(path)
        want = MEMBERS + (("label",) if self.has_labels else ())
        missing = [k for k in want if k not in arrays]
        if missing:
            raise PromptDataError(f"{path} lacks member {missing[0]!r}")
        e, m, p = arrays["embeddings"], arrays["mask"], arrays["prompt"]
        L, C = self.max_length, self.width
        if e.shape != (count, L, C) or e.dtype != np.dtype(self.index["dtype"]):
            raise PromptDataError(f"{path}: embeddings are {e.dtype} {e.shape}; the index says "
                                  f"{self.index['dtype']} {(count, L, C)}")
        if m.shape != (count, L) or m.dtype.kind not in "biu":
            raise PromptDataError(f"{path}: mask is {m.dtype} {m.shape}; expected integers {(count, L)}")
        if p.shape != (count,) or p.dtype.kind != "U":
            raise PromptDataError(f"{path}: prompt is {p.dtype} {p.shape}; expected strings ({count},)")
        if self.has_labels and (arrays["label"].shape != (count,) or arrays["label"].dtype.kind not in "iu"):
            raise PromptDataError(f"{path}: label is {arrays['label'].dtype} {arrays['label'].shape}; expected "
                                  f"integers ({count},)")
        return arrays

    def __len__(self) -> int:
        return self.count

    def rows(self, indices, dtype: Any = np.float32) -> PromptBatch:
        """The rows at `indices` (any order, repeats allowed), embeddings cast to `dtype`."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.count):
            raise PromptDataError(f"row indices must lie in [0, {self.count}); got {idx.min()}..{idx.max()}")
        n, (L, C) = idx.size, (self.max_length, self.width)
        emb = np.empty((n, L, C), dtype)
        mask = np.empty((n, L), np.float32)
        label = np.empty(n, np.int32) if self.has_labels else None
        prompt = np.empty(n, object)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            local = idx[sel] - self._starts[s]
            order = np.argsort(local, kind="stable")      # sorted reads of the memory map
            arrays = self._shards[s]
            emb[sel[order]] = arrays["embeddings"][local[order]]
            mask[sel[order]] = arrays["mask"][local[order]]
            prompt[sel[order]] = arrays["prompt"][local[order]]
            if label is not None:
                label[sel[order]] = arrays["label"][local[order]]
        if not np.isin(mask, (0.0, 1.0)).all():
            raise PromptDataError(f"{self.path}: a mask holds values other than 0 and 1")
        return PromptBatch(emb, mask, label, idx, prompt.astype(str) if n else np.zeros(0, str))

    def batch(self, step: int, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
              dtype: Any = np.float32) -> PromptBatch:
        """Host `process_index`'s slice (batch_size / process_count rows) of step `step`'s global batch."""
        positions = host_positions(step, batch_size, process_index, process_count)
        return self.rows(stream_indices(positions, self.count, seed), dtype)

    def batches(self, start_step: int, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                dtype: Any = np.float32) -> Iterator[PromptBatch]:
        """`batch(s, ...)` for s = start_step, start_step + 1, … (endless)."""
        step = start_step
        while True:
            yield self.batch(step, batch_size, seed, process_index, process_count, dtype)
            step += 1

    def null(self, dtype: Any = np.float32) -> tuple:
        """(embeddings [1, L, C], mask [1, L] float32) of the empty prompt."""
        if self._null is None:
            raise PromptDataError(f"{self.path} has no null-prompt embedding ({NULL_FILE}); re-run di-jax "
                                  "embed-prompts, which writes it")
        return (np.asarray(self._null["embeddings"], dtype), np.asarray(self._null["mask"], np.float32))

    def load_all(self, dtype: Any = np.float32, max_bytes: int = 1 << 30) -> PromptBatch:
        """Every row in directory order (small sets: the digits demo, evaluation prompts)."""
        need = self.count * self.max_length * self.width * np.dtype(dtype).itemsize
        if need > max_bytes:
            raise PromptDataError(f"{self.path}: {need} bytes of embeddings exceed load_all's max_bytes {max_bytes}; "
                                  "stream them with batch()")
        return self.rows(np.arange(self.count), dtype)
