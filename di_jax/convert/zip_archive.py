"""Structural checks and bounded reads of an untrusted zip archive in `torch.save`'s layout.

`open_archive` opens a regular file as a `zipfile.ZipFile` only after bounding its central
directory, then `check_archive` verifies everything that can be checked without reading member
data (compression method, encryption, version, names, local headers, overlaps, size and ratio
limits). `read_member` reads a member in bounded chunks, never past its declared size, and
verifies its CRC; `read_small` does so for a member that must be small.
"""

import contextlib
import os
import struct
import zipfile
import zlib

from di_jax.convert.errors import CheckpointError, exception_text
from di_jax.convert.files import file_identity, open_regular

ZIP_MAGIC = b"PK\x03\x04"

# ---- limits on an untrusted zip archive, all checked before a byte of member data is read ----
ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}  # torch.save writes "stored"
MAX_VERSION_NEEDED = 45        # zip 4.5 (zip64); torch writes 0, Python/7-zip 20 (deflate) or 45 (zip64)
MAX_CENTRAL_DIRECTORY = 8 << 20  # bytes: ~60 B per member, 100x the 600 members of the largest EDM net
MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 4 << 30     # one storage; the whole 296M-parameter ADM-ImageNet64 is 1.2 GB
MAX_RATIO = 100                # uncompressed / on-disk bytes of the whole archive (torch: 1; deflate of
RATIO_FREE_BYTES = 64 << 20    # real weights ~1.1); applies above 64 MiB uncompressed in all
_ENCRYPTION_FLAGS = 0x0001 | 0x0040 | 0x2000  # traditional, strong, central-directory encryption
_PATCHED_FLAG = 0x0020
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile.structFileHeader (30 bytes)
_CHUNK = 16 << 20


def _member_error(name: str, e: BaseException) -> CheckpointError:
    return CheckpointError(f"corrupt torch archive member {name!r} ({exception_text(e)})")


def _check_central_directory(f, file_size: int) -> int | None:
    """Bound what `zipfile.ZipFile` will parse (it reads the whole central directory into memory)."""
    try:
        end = zipfile._EndRecData(f)  # pylint: disable=protected-access
    except (OSError, struct.error, ValueError) as e:
        raise CheckpointError(f"corrupt or truncated zip archive ({exception_text(e)})") from None
    if end is None:
        return None  # zipfile says "File is not a zip file"
    entries, cd_size, cd_offset = end[4], end[5], end[6]  # _ECD_ENTRIES_TOTAL, _ECD_SIZE, _ECD_OFFSET
    if cd_size > min(file_size, MAX_CENTRAL_DIRECTORY) or entries > MAX_MEMBERS or cd_offset > file_size:
        raise CheckpointError(f"corrupt or hostile zip archive: central directory of {cd_size} bytes / "
                              f"{entries} members at offset {cd_offset} in a {file_size}-byte file (limits: "
                              f"{MAX_CENTRAL_DIRECTORY} bytes, {MAX_MEMBERS} members)")
    return entries


def _local_data_span(f, info: zipfile.ZipInfo) -> tuple[int, int]:
    """[start, end) of a member's local header + data, after checking the header against the directory."""
    f.seek(info.header_offset)
    raw = f.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise CheckpointError(f"torch archive member {info.filename!r}: local header beyond the end of the "
                              "file (truncated or corrupt zip)")
    sig, _, _, flags, method, _, _, _, _, _, name_len, extra_len = _LOCAL_HEADER.unpack(raw)
    name = f.read(name_len)
    expected = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace")
    if sig != ZIP_MAGIC or name != expected:
        raise CheckpointError(f"torch archive member {info.filename!r}: its directory entry points at "
                              f"{'another member' if sig == ZIP_MAGIC else 'no local header'} (corrupt or "
                              "hostile zip)")
    if method != info.compress_type or (flags ^ info.flag_bits) & (_ENCRYPTION_FLAGS | _PATCHED_FLAG):
        raise CheckpointError(f"torch archive member {info.filename!r}: local header and central directory "
                              "disagree on compression or encryption (corrupt or hostile zip)")
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    return info.header_offset, start + info.compress_size


def check_archive(archive: zipfile.ZipFile, f, file_size: int) -> str:
    """Every structural check on a torch.save zip, before any member is read; returns its `<name>/` prefix.

    Refuses (one-line `CheckpointError`): compression methods other than stored/deflate, encryption,
    patched data, "version needed" above 4.5, duplicate or unsafe member names, members outside the
    archive's single `<name>/` folder, a directory entry whose local header names another member or
    disagrees with it, member data overlapping another member or the central directory, a member
    larger than `MAX_MEMBER_BYTES`, a stored member whose sizes differ, and more than `MAX_RATIO`
    uncompressed bytes per byte of file (above `RATIO_FREE_BYTES`).
    """
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise CheckpointError(f"torch archive has {len(infos)} members, more than {MAX_MEMBERS}")
    prefix = _archive_prefix(archive)
    names, spans, total = set(), [], 0
    for info in infos:
        name = info.filename
        if name in names:
            raise CheckpointError(f"torch archive holds member {name!r} twice (corrupt or hostile zip)")
        names.add(name)
        if not name.startswith(prefix) or ".." in name.split("/") or "\\" in name or "\x00" in name:
            raise CheckpointError(f"torch archive member {name[:100]!r} is not inside its {prefix!r} folder")
        if info.compress_type not in ZIP_METHODS:
            raise CheckpointError(f"torch archive member {name!r} uses unsupported zip compression method "
                                  f"{info.compress_type} (supported: 0 stored, 8 deflate)")
        if info.flag_bits & _ENCRYPTION_FLAGS:
            raise CheckpointError(f"torch archive member {name!r} is encrypted; not supported")
        if info.flag_bits & _PATCHED_FLAG:
            raise CheckpointError(f"torch archive member {name!r} uses zip patched data; not supported")
        if info.extract_version > MAX_VERSION_NEEDED:
            raise CheckpointError(f"torch archive member {name!r} needs zip version "
                                  f"{info.extract_version / 10:.1f} to extract; supported up to "
                                  f"{MAX_VERSION_NEEDED / 10:.1f}")
        if info.file_size > MAX_MEMBER_BYTES:
            raise CheckpointError(f"torch archive member {name!r} declares {info.file_size} bytes, more than "
                                  f"the {MAX_MEMBER_BYTES} allowed for one member")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise CheckpointError(f"torch archive member {name!r} is stored with {info.compress_size} bytes but "
                                  f"declares {info.file_size} (corrupt zip)")
        total += info.file_size
        spans.append(_local_data_span(f, info) + (name,))
    if total > max(RATIO_FREE_BYTES, MAX_RATIO * file_size):
        raise CheckpointError(f"torch archive declares {total} uncompressed bytes in a {file_size}-byte file "
                              f"(more than {MAX_RATIO}x: a zip bomb?)")
    spans.sort()
    for (_, end, name), (start, _, following) in zip(spans, spans[1:] + [(archive.start_dir, 0, "")]):
        if end > start:
            raise CheckpointError(f"torch archive member {name!r} overlaps "
                                  f"{repr(following) if following else 'the central directory'} or runs past "
                                  "it (corrupt or hostile zip)")
    return prefix


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, out=None) -> memoryview | None:
    """A member's bytes, read in bounded chunks and CRC-checked (never more than its declared size).

    `out`: a writable buffer of exactly `info.file_size` bytes to fill (None: read and discard,
    for the CRC check only). Returns `out` as a memoryview, or None.
    """
    view = memoryview(out).cast("B") if out is not None else None
    if view is not None and view.nbytes != info.file_size:
        raise CheckpointError(f"torch archive member {info.filename!r} holds {info.file_size} bytes, expected "
                              f"{view.nbytes}")
    try:
        with archive.open(info) as stream:
            got = 0
            while got < info.file_size:
                n = min(_CHUNK, info.file_size - got)
                data = stream.read(n)
                if not data:
                    break
                if view is not None:
                    view[got:got + len(data)] = data
                got += len(data)
            if got != info.file_size or stream.read(1):
                raise CheckpointError(f"torch archive member {info.filename!r} holds {got} bytes, declares "
                                      f"{info.file_size}: truncated or corrupt file")
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError,
            struct.error) as e:
        raise _member_error(info.filename, e) from None
    if info.file_size == 0 and info.CRC != 0:
        raise CheckpointError(f"torch archive member {info.filename!r}: bad CRC-32 (corrupt file)")
    return view


def _archive_prefix(archive: zipfile.ZipFile) -> str:
    pkls = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise CheckpointError("zip file is not a torch.save archive (no single <name>/data.pkl)")
    return pkls[0][: -len("data.pkl")]

@contextlib.contextmanager
def open_archive(path):
    """(archive, its `<name>/` prefix, file identity) of a regular file that passes `check_archive`."""
    with open_regular(path) as f:
        st = os.fstat(f.fileno())
        file_size = st.st_size
        entries = _check_central_directory(f, file_size)
        try:
            archive = zipfile.ZipFile(f)
        except NotImplementedError as e:  # "zip file version 25.5" (needed to extract a member)
            raise CheckpointError(f"unsupported zip archive ({exception_text(e)}; supported up to version "
                                  f"{MAX_VERSION_NEEDED / 10:.1f})") from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error) as e:
            raise CheckpointError(f"corrupt or truncated zip archive ({exception_text(e)})") from None
        with archive:
            if entries is not None and entries != len(archive.infolist()):
                raise CheckpointError(f"corrupt zip archive: its end record declares {entries} members, its "
                                      f"central directory holds {len(archive.infolist())}")
            yield archive, check_archive(archive, f, file_size), file_identity(st)


def read_small(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """A member of at most `limit` declared bytes, read whole and CRC-checked."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise CheckpointError(f"torch archive member {name!r} declares {info.file_size} bytes, more than the "
                              f"{limit} allowed for it")
    return bytes(read_member(archive, info, bytearray(info.file_size)))
