"""Opening untrusted input files: regular files only, with size caps where a file is small by nature.

`open()` on a named pipe blocks until a writer appears (forever), `/dev/zero` or `/dev/urandom` read
without end, and a directory or a socket is not a file at all. Every reader of checkpoints, configs
and command-line files goes through `open_regular` / `read_regular_bytes`, which `stat()` the path
(following symlinks, so the target is what is checked) before opening it, open it without blocking,
check the opened descriptor again (the path may have been swapped in between) and raise a one-line
`CheckpointError` for anything but a regular file, or for a file above its size cap.

    with open_regular(path) as f: ...                          # a checkpoint: any size
    text = read_regular_bytes(path, CONFIG_MAX_BYTES, "config file").decode()
"""

import os
import stat

from di_jax.convert.errors import CheckpointError

# config.json / `--config FILE`: a handful of keys, well under 1 KiB in practice.
CONFIG_MAX_BYTES = 1 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


def _label(path: str, what: str) -> str:
    return f"{what} {path}" if what else path


def _check_kind(st: os.stat_result, path: str, what: str) -> None:
    if stat.S_ISREG(st.st_mode):
        return
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a plain file")
    raise CheckpointError(f"{_label(path, what)} is {kind}, not a regular file")


def _check_size(st: os.stat_result, path: str, what: str, max_bytes: int | None) -> None:
    if max_bytes is not None and st.st_size > max_bytes:
        raise CheckpointError(f"{_label(path, what)} holds {st.st_size} bytes, more than the {max_bytes} "
                              f"allowed for it")


def _os_error(e: OSError, path: str, what: str) -> CheckpointError:
    verb = "read" if what else "open"
    return CheckpointError(f"cannot {verb} {_label(path, what)}: {e.strerror or type(e).__name__}")


def stat_regular(path: str | os.PathLike, max_bytes: int | None = None, what: str = "") -> os.stat_result:
    """`os.stat(path)` (symlinks followed) of a regular file of at most `max_bytes`; else `CheckpointError`."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise _os_error(e, p, what) from None
    except ValueError as e:  # embedded NUL byte
        raise CheckpointError(f"cannot open {_label(repr(p), what)}: {e}") from None
    _check_kind(st, p, what)
    _check_size(st, p, what, max_bytes)
    return st


def open_regular(path: str | os.PathLike, max_bytes: int | None = None, what: str = ""):
    """A binary (buffered) file object for a regular file; never blocks on a FIFO or reads a device.

    Args:
      path: the file; a symlink is followed and its target checked.
      max_bytes: refuse a larger file (None: no cap).
      what: how messages name the file (e.g. "config file"); default: just the path.
    Raises: `CheckpointError` (one line) if the path is missing, unreadable, not a regular file
      (directory, FIFO, character/block device, socket) or larger than `max_bytes`.
    """
    p = os.fspath(path)
    stat_regular(p, max_bytes, what)  # refuse before opening: opening some devices has side effects
    try:
        fd = os.open(p, _OPEN_FLAGS)  # O_NONBLOCK: a FIFO swapped in after the stat cannot block us
    except OSError as e:
        raise _os_error(e, p, what) from None
    try:
        st = os.fstat(fd)  # what was actually opened
        _check_kind(st, p, what)
        _check_size(st, p, what, max_bytes)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | os.PathLike, max_bytes: int, what: str = "") -> bytes:
    """The whole content of a regular file of at most `max_bytes` (checked before and while reading)."""
    p = os.fspath(path)
    with open_regular(p, max_bytes, what) as f:
        try:
            data = f.read(max_bytes + 1)  # never more, even if the file grows after the size check
        except OSError as e:
            raise _os_error(e, p, what) from None
    if len(data) > max_bytes:
        raise CheckpointError(f"{_label(p, what)} holds more than the {max_bytes} bytes allowed for it")
    return data


def file_identity(st: os.stat_result) -> tuple:
    """What must not change between indexing a file and reading from it later."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns



class BoundedReader:
    """A binary file whose reads never ask for more than the file has left, nor for an endless line.

    Readers that take a length from the file (`f.read(numel * itemsize)` of a legacy torch.save
    stream) would make CPython allocate that many bytes up front (1 TB: MemoryError; 8 GB: a huge
    allocation) before finding the file short; `readline` (pickle's text opcodes) on a line without
    end would read the whole file. Here `read(n)` is clamped to what is left of the file and a
    line to `max_line` bytes, so a lie becomes a short read, which the reader reports as truncation.
    """

    def __init__(self, f, max_line: int = 1 << 16):
        self._f, self._max_line = f, max_line
        self._size = os.fstat(f.fileno()).st_size

    def _left(self) -> int:
        return max(0, self._size - self._f.tell())

    def read(self, n: int | None = -1) -> bytes:
        left = self._left()
        return self._f.read(left if n is None or n < 0 else min(n, left))

    def readinto(self, b) -> int:
        return self._f.readinto(b)

    def readline(self, limit: int | None = -1) -> bytes:
        limit = self._max_line if limit is None or limit < 0 else min(limit, self._max_line)
        return self._f.readline(limit)

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def fileno(self) -> int:
        return self._f.fileno()
