"""Checkpoints in buckets (gs://, s3://, any etils.epath URL): copied to a local cache, then read as files.

The readers map and seek in local files; a pod host has no shared disk, so each process copies the
teacher it needs once into `~/.cache/di_jax/remote/<hash of the URL>/<name>` (DI_JAX_CACHE overrides
the root) and reads that. A copy is written under a temporary name and renamed when complete, so an
interrupted copy is never mistaken for a checkpoint. Local paths are returned unchanged.
"""

import hashlib
import os
import shutil
import uuid

from etils import epath


def is_url(path) -> bool:
    return "://" in os.fspath(path)


def cache_root() -> str:
    return os.environ.get("DI_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "di_jax", "remote"))


def _copy(src: epath.Path, dst: str) -> None:
    if src.is_dir():
        os.makedirs(dst)
        for child in src.iterdir():
            _copy(child, os.path.join(dst, child.name))
        return
    with src.open("rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, length=16 << 20)


def local_copy(path) -> str:
    """A local path for `path`: itself if local, else a cached copy of the remote file or directory."""
    text = os.fspath(path)
    if not is_url(text):
        return text
    src = epath.Path(text)
    if not src.exists():
        raise FileNotFoundError(f"no such file or directory {text!r}")
    name = text.rstrip("/").rsplit("/", 1)[-1] or "checkpoint"
    folder = os.path.join(cache_root(), hashlib.sha256(text.encode()).hexdigest()[:16])
    local = os.path.join(folder, name)
    if os.path.exists(local):
        return local
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.partial")
    try:
        _copy(src, tmp)
        try:
            os.replace(tmp, local)
        except OSError:                 # another process on this host finished the same copy first
            if not os.path.exists(local):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
    return local
