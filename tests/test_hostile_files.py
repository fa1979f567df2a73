"""Hostile checkpoint files (issue 18): never a hang, never a memory blow-up, never a traceback.

Every input here is built by the test itself: non-regular paths (FIFOs, devices, directories,
sockets, symlinks to them), torch zips with unsupported compression / encryption / versions, zip
bombs, CRC bit flips and redirected directory entries (read by both zip readers), and malformed
safetensors headers. Each is fed to every reader entry point that accepts it and to `di-jax
convert`, in a separate worker process that measures each call: a one-line `CheckpointError`
(exit code 2 and one stderr line for the CLI), in under 5 s, with under 256 MiB of peak memory
(VmHWM, reset before each call) above the resident size before the call. The worker runs under an
address-space limit, so a regression fails the test instead of exhausting the machine.
"""

import collections
import io
import json
import os
import pickle
import socket
import struct
import warnings
import zipfile
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hostile_worker import Worker, bounded, cli_refused, refused  # noqa: E402

# ------------------------------------------------------------------------------------------ worker

@pytest.fixture(scope="module")
def worker():
    w = Worker(preload=("numpy", "torch", "orbax.checkpoint", "di_jax.convert", "di_jax.convert.cli",
                        "di_jax.convert.files", "di_jax.convert.torch_zip"),
               headroom_gib=6, start_timeout=120, close_results=True)
    yield w
    w.stop()


ZIP_READERS = [("di_jax.convert.torch_zip:read_zip", {"use_torch": False}),
               ("di_jax.convert.torch_zip:read_zip", {"use_torch": True}),
               ("di_jax.convert.torch_zip:read_torch_save", {}),
               ("di_jax.convert:read_checkpoint", {})]


def zip_refused(worker, path, tmp_path, match=None):
    for call, kwargs in ZIP_READERS:
        refused(worker, call, path, match, **kwargs)
    cli_refused(worker, path, tmp_path, match)
    cli_refused(worker, path, tmp_path, match, no_torch=True)


ST_READERS = [("di_jax.convert.safetensors_file:read_safetensors", {}), ("di_jax.convert:read_checkpoint", {})]


def st_refused(worker, path, tmp_path, match=None):
    for call, kwargs in ST_READERS:
        refused(worker, call, path, match, **kwargs)
    cli_refused(worker, path, tmp_path, match)


# ----------------------------------------------------------------------- class 1: non-regular paths

FILE_READERS = [("di_jax.convert:sniff", {}), ("di_jax.convert:read_checkpoint", {}),
                ("di_jax.convert:read_state_dict", {}),
                ("di_jax.convert.torch_zip:read_zip", {"use_torch": False}),
                ("di_jax.convert.torch_zip:read_zip", {"use_torch": True}),
                ("di_jax.convert.torch_zip:read_torch_save", {}),
                ("di_jax.convert.torch_zip:read_legacy_numpy", {}),
                ("di_jax.convert.safetensors_file:read_safetensors", {}),
                ("di_jax.convert.files:open_regular", {}),
                ("di_jax.convert.files:read_regular_bytes", {"max_bytes": 1 << 20, "what": "config file"})]


def _fifo(t):
    os.mkfifo(t / "pipe.pt")
    return t / "pipe.pt", "named pipe"


def _symlink_fifo(t):
    os.mkfifo(t / "pipe")
    os.symlink(t / "pipe", t / "net.safetensors")
    return t / "net.safetensors", "named pipe"


def _dev_zero(t):
    return "/dev/zero", "character device"


def _symlink_dev_zero(t):
    os.symlink("/dev/zero", t / "net.pt")
    return t / "net.pt", "character device"


def _symlink_dev_urandom(t):
    os.symlink("/dev/urandom", t / "config.json")
    return t / "config.json", "character device"


def _dev_null(t):
    return "/dev/null", "character device"


def _directory(t):
    (t / "d.pt").mkdir()
    return t / "d.pt", "directory"


def _symlink_directory(t):
    (t / "d").mkdir()
    os.symlink(t / "d", t / "net.pkl")
    return t / "net.pkl", "directory"


def _socket(t):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.fspath(t / "s.pt"))  # stays bound (a leak the test process tolerates) while it is read
    _SOCKETS.append(sock)
    return t / "s.pt", "socket"


def _symlink_loop(t):
    os.symlink(t / "b.pt", t / "a.pt")
    os.symlink(t / "a.pt", t / "b.pt")
    return t / "a.pt", "cannot (open|read)"


def _dangling_symlink(t):
    os.symlink(t / "gone.pt", t / "a.pt")
    return t / "a.pt", "cannot (open|read)"


_SOCKETS = []
FILE_CASES = {f.__name__[1:]: f for f in (_fifo, _symlink_fifo, _dev_zero, _symlink_dev_zero, _symlink_dev_urandom,
                                           _dev_null, _directory, _symlink_directory, _socket, _symlink_loop,
                                           _dangling_symlink)}


@pytest.mark.parametrize("name", sorted(FILE_CASES))
def test_non_regular_paths(worker, tmp_path, name):
    path, what = FILE_CASES[name](tmp_path)
    for call, kwargs in FILE_READERS:
        refused(worker, call, path, what, **kwargs)
    cli_refused(worker, path, tmp_path, what)


def test_config_file_cap(worker, tmp_path):
    (tmp_path / "big.json").write_bytes(b"{" + b" " * (2 << 20) + b"}")
    refused(worker, "di_jax.convert.files:read_regular_bytes", tmp_path / "big.json", "more than the 1048576",
            max_bytes=1 << 20, what="config file")
    (tmp_path / "ok.json").write_text('{"precond": "VPPrecond"}')
    rep = worker.call("di_jax.convert.files:read_regular_bytes", tmp_path / "ok.json", 1 << 20)
    assert rep["outcome"] == "returned", rep


# ------------------------------------------------------------------------------ torch zip helpers

def save_pt(path):
    torch.save({"a": torch.arange(4.0), "b": torch.arange(4.0) + 10, "c": torch.ones(2, 3, dtype=torch.float64)},
               path)
    return path


def cd_entries(data) -> dict:
    """member name -> (offset of its central directory entry, offset of its local header)."""
    end = data.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack_from("<LL", data, end + 12)
    pos, out = cd_offset, {}
    while pos < cd_offset + cd_size:
        assert data[pos:pos + 4] == b"PK\x01\x02"
        n, m, k = struct.unpack_from("<3H", data, pos + 28)
        out[bytes(data[pos + 46:pos + 46 + n]).decode()] = (pos, struct.unpack_from("<L", data, pos + 42)[0])
        pos += 46 + n + m + k
    return out


def data_start(data, member) -> int:
    local = cd_entries(data)[member][1]
    n, m = struct.unpack_from("<HH", data, local + 26)
    return local + 30 + n + m


def patch(path, member, *, method=None, flags=None, version=None, crc=None, usize=None, offset_of=None,
          offset=None):
    """Rewrite fields of a member's central directory entry (and local header where it has them)."""
    data = bytearray(path.read_bytes())
    entries = cd_entries(data)
    cd, local = entries[member]
    if method is not None:
        struct.pack_into("<H", data, cd + 10, method)
        struct.pack_into("<H", data, local + 8, method)
    if flags is not None:
        struct.pack_into("<H", data, cd + 8, flags)
        struct.pack_into("<H", data, local + 6, flags)
    if version is not None:
        data[cd + 6] = data[local + 4] = version
    if crc is not None:
        struct.pack_into("<L", data, cd + 16, crc)
    if usize is not None:
        struct.pack_into("<L", data, cd + 24, usize)
        struct.pack_into("<L", data, local + 22, usize)
    if offset_of is not None:
        struct.pack_into("<L", data, cd + 42, entries[offset_of][1])
    if offset is not None:
        struct.pack_into("<L", data, cd + 42, offset)
    path.write_bytes(bytes(data))
    return path


def flip(path, position, bit=0):
    data = bytearray(path.read_bytes())
    data[position] ^= 1 << bit
    path.write_bytes(bytes(data))
    return path


def rezip(src, dst, method):
    """The members of a torch.save archive, written again with another compression method."""
    with zipfile.ZipFile(src) as z_in, zipfile.ZipFile(dst, "w", compression=method) as z_out:
        for info in z_in.infolist():
            z_out.writestr(info.filename, z_in.read(info))
    return dst


class _StorageRef:
    def __init__(self, key, numel, storage="FloatStorage"):
        self.key, self.numel, self.storage = key, numel, storage


class _Tensor:
    """Pickles as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, like torch.save."""

    def __init__(self, ref, size, offset=0, stride=None):
        self.ref, self.size, self.offset = ref, tuple(size), offset
        self.stride = stride or tuple(int(np.prod(self.size[i + 1:])) for i in range(len(self.size)))

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.ref, self.offset, self.size, self.stride, False,
                                                 collections.OrderedDict())


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return "storage", getattr(torch, obj.storage), obj.key, "cpu", obj.numel
        return None


def craft_archive(path, tensors, members, prefix="archive/", extra=()):
    """A torch.save-style zip written member by member: `tensors` name -> _Tensor, `members` key -> bytes."""
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(collections.OrderedDict(tensors))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(prefix + "data.pkl", buf.getvalue())
        z.writestr(prefix + "byteorder", "little")
        for key, payload in members.items():
            z.writestr(prefix + "data/" + key, payload)
        z.writestr(prefix + "version", "3\n")
        for name, payload in extra:
            z.writestr(name, payload)
    return path


def with_deflated_member(path, member, stream, usize, crc):
    """Replace a stored member's payload by a raw deflate `stream` that inflates to `usize` bytes."""
    data = bytearray(path.read_bytes())
    entries = cd_entries(data)
    cd, local = entries[member]
    start, old = data_start(data, member), struct.unpack_from("<L", data, cd + 20)[0]
    delta = len(stream) - old
    for header, fields in ((local, 8), (cd, 10)):  # method, then CRC and sizes 6 bytes further on
        struct.pack_into("<H", data, header + fields, zipfile.ZIP_DEFLATED)
        struct.pack_into("<LLL", data, header + fields + 6, crc, len(stream), usize)
    for c, other_local in entries.values():  # members after this one move by `delta`
        if other_local > local:
            struct.pack_into("<L", data, c + 42, other_local + delta)
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<L", data, end + 16, struct.unpack_from("<L", data, end + 16)[0] + delta)
    end64, locator = data.rfind(b"PK\x06\x06"), data.rfind(b"PK\x06\x07")  # torch writes zip64 end records
    if end64 > start and locator > end64:
        struct.pack_into("<Q", data, end64 + 48, struct.unpack_from("<Q", data, end64 + 48)[0] + delta)
        struct.pack_into("<Q", data, locator + 8, end64 + delta)
    data[start:start + old] = stream  # last: everything after it shifts
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def zero_bomb():
    """(raw deflate stream, inflated size, CRC) of 1.9 GiB of zeros: ~2 MB of data."""
    chunk = bytes(64 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)  # a full flush resets the state: blocks repeat
    count = 29
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    return block * count + c.flush(), count * len(chunk), crc


def test_crafted_archive_is_read_like_torch_save(worker, tmp_path):
    """The writer of the hostile archives below makes archives both readers accept when consistent."""
    from di_jax.convert import torch_zip

    values = np.arange(6, dtype=np.float32)
    craft_archive(tmp_path / "ok.pt", {"w": _Tensor(_StorageRef("0", 6), (2, 3))}, {"0": values.tobytes()})
    for use_torch in (False, True):
        got = torch_zip.read_zip(tmp_path / "ok.pt", use_torch=use_torch)
        np.testing.assert_array_equal(got["w"], values.reshape(2, 3))
        rep = worker.call("di_jax.convert.torch_zip:read_zip", tmp_path / "ok.pt", use_torch=use_torch)
        assert rep["outcome"] == "returned", rep


def write_zip(path, members):
    """A plain zip of stored members written by hand; a member given as an int is that many zero bytes,
    left as a hole in a sparse file (the archive really holds them, without disk or memory)."""
    chunk = bytes(64 << 20)
    with open(path, "wb") as f:
        central = []
        for name, data in members:
            raw = name.encode()
            size = data if isinstance(data, int) else len(data)
            crc = 0
            if isinstance(data, int):
                for start in range(0, size, len(chunk)):
                    crc = zlib.crc32(chunk[:min(len(chunk), size - start)], crc)
            else:
                crc = zlib.crc32(data)
            offset = f.tell()
            f.write(struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, crc, size, size, len(raw), 0) + raw)
            if isinstance(data, int):
                f.seek(size, 1)
            else:
                f.write(data)
            central.append(struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, crc, size, size,
                                       len(raw), 0, 0, 0, 0, 0, offset) + raw)
        cd_offset, cd = f.tell(), b"".join(central)
        f.write(cd + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(central), len(central), len(cd), cd_offset, 0))
    return path


def _sparse_pt(tmp_path, data_dir):
    """A torch.save-style archive of an EDM net plus a consistent sparse 1 GiB storage `model.extra`."""
    d = np.load(data_dir / "edm_golden" / "ddpmpp_cond_edm.npz")
    sd = {str(k): d[f"param/{k}"].astype(np.float32) for k in d["state_dict_keys"]}
    tensors, members = {}, []
    for i, (k, v) in enumerate(sd.items()):
        tensors[k] = _Tensor(_StorageRef(str(i), v.size), v.shape)
        members.append((f"archive/data/{i}", v.tobytes()))
    big = 1 << 28
    tensors["model.extra"] = _Tensor(_StorageRef("big", big), (big,))
    members.append(("archive/data/big", big * 4))
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(collections.OrderedDict(tensors))
    members = [("archive/data.pkl", buf.getvalue()), ("archive/byteorder", b"little")] + members + \
        [("archive/version", b"3\n")]
    return write_zip(tmp_path / "net.pt", members), sd, str(d["precond_class"]), json.loads(str(d["config_json"]))


def test_zip_index_reads_no_tensor(worker, tmp_path, data_dir):
    """Opening a zip validates it and gives keys, shapes and dtypes without reading a storage."""
    from di_jax.convert import catalogue, torch_zip
    from di_jax.convert import config as config_lib

    p, sd, precond, cfg = _sparse_pt(tmp_path, data_dir)
    cfg = config_lib.complete({**cfg, "precond": precond})
    for use_torch in (False, True):
        rep = worker.call("di_jax.convert.torch_zip:open_zip", p, use_torch=use_torch)
        assert rep["outcome"] == "returned", rep
        bounded(rep)
    tensors = torch_zip.open_zip(p, use_torch=False)
    assert tensors.shapes["model.extra"] == (1 << 28,) and list(tensors)[:-1] == list(sd)
    with pytest.raises(Exception, match="1 unexpected: model.extra"):
        catalogue.check_state_dict(tensors.shape_view(), cfg)
    np.testing.assert_array_equal(tensors["model.map_layer0.weight"], sd["model.map_layer0.weight"])


def test_zip_sparse_storage_through_read_checkpoint_and_cli(worker, tmp_path, data_dir):
    p, _, precond, _ = _sparse_pt(tmp_path, data_dir)
    refused(worker, "di_jax.convert:read_checkpoint", p, "1 unexpected: model.extra", config={"precond": precond})
    out = tmp_path / "converted"
    rep = worker.call("di_jax.convert.cli:main", ["di-jax convert", os.fspath(p), os.fspath(out), "--config",
                                                  json.dumps({"precond": precond})])
    assert rep["result"] == 2 and "1 unexpected: model.extra" in rep["stderr"], rep
    bounded(rep)


def test_deflated_archive_is_still_read(tmp_path):
    """A torch archive re-zipped with deflate (a supported method) reads the same through both readers."""
    from di_jax.convert import torch_zip

    src = save_pt(tmp_path / "n.pt")
    want = torch_zip.read_zip_numpy(src)
    got = torch_zip.read_zip_numpy(rezip(src, tmp_path / "d.pt", zipfile.ZIP_DEFLATED))
    assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want)


# -------------------------------------------- class 2: zip compression methods, encryption, versions

def _bzip2(t):
    return rezip(save_pt(t / "n.pt"), t / "b.pt", zipfile.ZIP_BZIP2), "compression method 12"


def _lzma(t):
    return rezip(save_pt(t / "n.pt"), t / "l.pt", zipfile.ZIP_LZMA), "compression method 14"


def _unknown_method(t):
    return patch(save_pt(t / "n.pt"), "n/data/0", method=99), "compression method 99"


def _implode_method(t):
    return patch(save_pt(t / "n.pt"), "n/data.pkl", method=6), "compression method 6"


def _encrypted_flag(t):
    p = save_pt(t / "n.pt")
    return patch(p, "n/data/1", flags=zipfile.ZipFile(p).getinfo("n/data/1").flag_bits | 0x1), "encrypted"


def _encrypted_pickle(t):
    p = save_pt(t / "n.pt")
    return patch(p, "n/data.pkl", flags=zipfile.ZipFile(p).getinfo("n/data.pkl").flag_bits | 0x1), "encrypted"


def _strong_encryption(t):
    p = save_pt(t / "n.pt")
    return patch(p, "n/data/0", flags=zipfile.ZipFile(p).getinfo("n/data/0").flag_bits | 0x41), "encrypted"


def _patched_data_flag(t):
    p = save_pt(t / "n.pt")
    return patch(p, "n/data/0", flags=zipfile.ZipFile(p).getinfo("n/data/0").flag_bits | 0x20), "patched data"


def _version_needed_63(t):
    return patch(save_pt(t / "n.pt"), "n/data/0", version=63), "needs zip version 6.3"


def _version_needed_255(t):
    return patch(save_pt(t / "n.pt"), "n/byteorder", version=255), "version 25.5"


def _version_needed_deflated(t):
    return patch(rezip(save_pt(t / "n.pt"), t / "d.pt", zipfile.ZIP_DEFLATED), "n/data.pkl", version=51), \
        "needs zip version 5.1"


METHOD_CASES = {f.__name__[1:]: f for f in (_bzip2, _lzma, _unknown_method, _implode_method, _encrypted_flag,
                                             _encrypted_pickle, _strong_encryption, _patched_data_flag,
                                             _version_needed_63, _version_needed_255, _version_needed_deflated)}


@pytest.mark.parametrize("name", sorted(METHOD_CASES))
def test_zip_methods_flags_versions(worker, tmp_path, name):
    path, match = METHOD_CASES[name](tmp_path)
    zip_refused(worker, path, tmp_path, match)


# ------------------------------------------------------------------- class 3: zip bombs and sizes

def _bomb_behind_4_floats(t, bomb):
    p = craft_archive(t / "bomb.pt", {"w": _Tensor(_StorageRef("0", 4), (4,))}, {"0": bytes(16)})
    return with_deflated_member(p, "archive/data/0", *bomb), "(zip bomb|more than the 16 of its 4 x Float)"


def _deflate_32mib_behind_4_floats(t, bomb):  # under the ratio limit's free 64 MiB: the declaration refuses it
    p = craft_archive(t / "bomb.pt", {"w": _Tensor(_StorageRef("0", 4), (4,))}, {"0": bytes(16)})
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = c.compress(bytes(32 << 20)) + c.flush()
    return with_deflated_member(p, "archive/data/0", stream, 32 << 20, zlib.crc32(bytes(32 << 20))), \
        "more than the 16 of its 4 x Float"


def _bomb_consistent_declaration(t, bomb):  # the pickle declares the 1.9 GiB: the ratio limit refuses it
    numel = bomb[1] // 4
    p = craft_archive(t / "bomb.pt", {"w": _Tensor(_StorageRef("0", numel), (numel,))}, {"0": bytes(16)})
    return with_deflated_member(p, "archive/data/0", *bomb), "uncompressed bytes in a .*zip bomb"


def _bomb_unreferenced_member(t, bomb):  # a member no tensor uses still counts (its CRC is checked)
    p = craft_archive(t / "bomb.pt", {"w": _Tensor(_StorageRef("0", 4), (4,))}, {"0": bytes(16), "9": bytes(16)})
    return with_deflated_member(p, "archive/data/9", *bomb), "zip bomb"


def _bomb_in_data_pkl(t, bomb):
    p = save_pt(t / "n.pt")
    return with_deflated_member(p, "n/data.pkl", *bomb), "zip bomb"


def _bomb_in_torch_archive(t, bomb):  # a real torch.save archive, its first storage swapped for the bomb
    return with_deflated_member(save_pt(t / "n.pt"), "n/data/0", *bomb), "(zip bomb|more than the 16 of its)"


def _stored_member_too_big(t, bomb):
    p = craft_archive(t / "big.pt", {"w": _Tensor(_StorageRef("0", 4), (4,))}, {"0": bytes(64 << 20)})
    return p, "more than the 16 of its 4 x Float"


def _storage_too_short(t, bomb):
    return craft_archive(t / "s.pt", {"w": _Tensor(_StorageRef("0", 1 << 28), (4,))}, {"0": bytes(16)}), \
        "holds 16 bytes, needs 1073741824: truncated"


def _stored_sizes_disagree(t, bomb):
    return patch(save_pt(t / "n.pt"), "n/data/1", usize=1 << 30), "stored with 16 bytes but declares"


def patch_end(path, cd_size=None, entries=None):
    """Rewrite the end-of-central-directory record (and torch's zip64 end record, which takes precedence)."""
    data = bytearray(path.read_bytes())
    end, end64 = data.rfind(b"PK\x05\x06"), data.rfind(b"PK\x06\x06")
    if cd_size is not None:
        struct.pack_into("<L", data, end + 12, min(cd_size, 0xFFFFFFFF))
        if end64 >= 0:
            struct.pack_into("<Q", data, end64 + 40, cd_size)
    if entries is not None:
        struct.pack_into("<HH", data, end + 8, min(entries, 0xFFFF), min(entries, 0xFFFF))
        if end64 >= 0:
            struct.pack_into("<QQ", data, end64 + 24, entries, entries)
    path.write_bytes(bytes(data))
    return path


def _huge_central_directory(t, bomb):
    return patch_end(save_pt(t / "n.pt"), cd_size=0x7FFFFFF0), "central directory of 2147483632 bytes"


def _huge_central_directory_zip64(t, bomb):
    return patch_end(save_pt(t / "n.pt"), cd_size=1 << 40), "central directory of 1099511627776 bytes"


def _many_members_claimed(t, bomb):
    return patch_end(save_pt(t / "n.pt"), entries=60_000), "declares 60000 members"


def _billions_of_members_claimed(t, bomb):
    return patch_end(save_pt(t / "n.pt"), entries=1 << 33), "8589934592 members"


def _many_small_bombs(t, bomb):  # 100 members of 4 MiB of zeros each: 400 MiB from a ~0.5 MB file
    p = craft_archive(t / "many.pt", {"w": _Tensor(_StorageRef("0", 4), (4,))}, {"0": bytes(16)},
                      extra=[(f"archive/pad{i}", b"") for i in range(100)])
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = c.compress(bytes(4 << 20)) + c.flush()
    crc = zlib.crc32(bytes(4 << 20))
    for i in range(100):
        with_deflated_member(p, f"archive/pad{i}", stream, 4 << 20, crc)
    return p, "zip bomb"


BOMB_CASES = {f.__name__[1:]: f for f in (
    _bomb_behind_4_floats, _deflate_32mib_behind_4_floats, _bomb_consistent_declaration, _bomb_unreferenced_member,
    _bomb_in_data_pkl, _bomb_in_torch_archive, _stored_member_too_big, _storage_too_short, _stored_sizes_disagree,
    _huge_central_directory, _huge_central_directory_zip64, _many_members_claimed, _billions_of_members_claimed,
    _many_small_bombs)}


@pytest.mark.parametrize("name", sorted(BOMB_CASES))
def test_zip_bombs_and_sizes(worker, tmp_path, zero_bomb, name):
    path, match = BOMB_CASES[name](tmp_path, zero_bomb)
    zip_refused(worker, path, tmp_path, match)


# ------------------------------------- class 4: CRC bit flips and redirected members, both readers

def _flip_in(member, where, bit=0):
    def build(t):
        p = save_pt(t / "n.pt")
        data = p.read_bytes()
        start, size = data_start(data, member), zipfile.ZipFile(p).getinfo(member).file_size
        return flip(p, start + {"first": 0, "middle": size // 2, "last": size - 1}[where], bit), \
            "(CRC|corrupt|malformed)"
    build.__name__ = f"_flip_{member.rsplit('/', 1)[-1].replace('.', '_')}_{where}_bit{bit}"
    return build


def _flip_crc_field(t):
    p = save_pt(t / "n.pt")
    return patch(p, "n/data/1", crc=zipfile.ZipFile(p).getinfo("n/data/1").CRC ^ 0x10), "CRC"


def _flip_float_exponent(t):  # the flip that makes 7e34-like garbage: the top bit of a float's exponent
    p = save_pt(t / "n.pt")
    return flip(p, data_start(p.read_bytes(), "n/data/1") + 3, 6), "CRC"


def _entry_points_at_other_storage(t):
    return patch(save_pt(t / "n.pt"), "n/data/0", offset_of="n/data/1"), "points at another member"


def _entry_points_at_data_pkl(t):
    return patch(save_pt(t / "n.pt"), "n/data/0", offset_of="n/data.pkl"), "points at another member"


def _entry_points_into_member_data(t):
    """A forged local header for data/0 hidden inside data/1's payload (valid CRCs everywhere)."""
    values = np.arange(4, dtype=np.float32).tobytes()
    name = b"archive/data/0"
    fake = struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, zlib.crc32(values), 16, 16, len(name), 0)
    host = fake + name + values
    p = craft_archive(t / "n.pt", {"w": _Tensor(_StorageRef("0", 4), (4,)),
                                   "h": _Tensor(_StorageRef("1", len(host), "ByteStorage"), (len(host),))},
                      {"0": bytes(16), "1": host})
    # point data/0's directory entry at the forged header inside data/1, with matching CRC and sizes
    data = p.read_bytes()
    patch(p, "archive/data/0", offset=data_start(data, "archive/data/1"), crc=zlib.crc32(values))
    return p, "overlaps"


def _storage_key_escapes(t):
    return craft_archive(t / "n.pt", {"w": _Tensor(_StorageRef("../data.pkl", 4), (4,))}, {"0": bytes(16)}), \
        "not a storage key"


def _storage_key_other_folder(t):
    return craft_archive(t / "n.pt", {"w": _Tensor(_StorageRef("0/../../x", 4), (4,))}, {"0": bytes(16)}), \
        "not a storage key"


def _duplicate_member(t):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        p = craft_archive(t / "n.pt", {"w": _Tensor(_StorageRef("0", 4), (4,))}, {"0": bytes(16)},
                          extra=[("archive/data/0", np.full(4, 7e34, np.float32).tobytes())])
    return p, "twice"


def _member_outside_folder(t):
    p = craft_archive(t / "n.pt", {"w": _Tensor(_StorageRef("0", 4), (4,))}, {"0": bytes(16)},
                      extra=[("other/data/0", bytes(16))])
    return p, "not inside its 'archive/' folder"


def _storage_declared_twice(t):
    return craft_archive(t / "n.pt", {"w": _Tensor(_StorageRef("0", 4), (4,)),
                                      "v": _Tensor(_StorageRef("0", 2, "DoubleStorage"), (2,))},
                         {"0": bytes(16)}), "twice with different"


def _truncated_local_header(t):
    p = save_pt(t / "n.pt")
    return patch(p, "n/version", offset=len(p.read_bytes()) - 10), "(local header|another member|corrupt)"


_FLIPS = [_flip_in(m, w, b) for m, w, b in [("n/data/0", "first", 0), ("n/data/0", "middle", 3),
                                             ("n/data/0", "last", 7), ("n/data/1", "middle", 5),
                                             ("n/data.pkl", "middle", 0), ("n/data.pkl", "last", 1),
                                             ("n/byteorder", "first", 1), ("n/version", "first", 2),
                                             ("n/.data/serialization_id", "middle", 0)]]
CRC_CASES = {f.__name__[1:]: f for f in (*_FLIPS, _flip_crc_field, _flip_float_exponent,
                                          _entry_points_at_other_storage, _entry_points_at_data_pkl,
                                          _entry_points_into_member_data, _storage_key_escapes,
                                          _storage_key_other_folder, _duplicate_member, _member_outside_folder,
                                          _storage_declared_twice, _truncated_local_header)}


@pytest.mark.parametrize("name", sorted(CRC_CASES))
def test_zip_crc_and_redirects(worker, tmp_path, name):
    path, match = CRC_CASES[name](tmp_path)
    # read_checkpoint and the CLI open zips lazily and check keys against the EDM catalogue before any
    # storage is read: these small non-EDM archives are refused there by their keys, before the CRC
    # of a storage member is due (the direct readers above must still report the CRC / corruption).
    zip_refused(worker, path, tmp_path, f"{match}|not an EDM network state_dict" if match else None)


# ------------------------------------------- class 5: legacy torch.save streams with lying lengths

LEGACY_READERS = [("di_jax.convert.torch_zip:read_torch_save", {}), ("di_jax.convert.torch_zip:read_legacy_numpy", {})]


def _legacy_with_count(count):
    def build(t):
        torch.save({"a": torch.full((4,), 1.5), "b": torch.ones(2)}, t / "old.pt", _use_new_zipfile_serialization=False)
        data = bytearray((t / "old.pt").read_bytes())
        i = data.find(np.full(4, 1.5, np.float32).tobytes())
        assert struct.unpack_from("<q", data, i - 8)[0] == 4
        struct.pack_into("<q", data, i - 8, count)
        (t / "old.pt").write_bytes(bytes(data))
        return t / "old.pt", "truncated"
    build.__name__ = f"_legacy_element_count_{count}"
    return build


def _legacy_endless_line(t):  # a text opcode whose line never ends, in a sparse 8 GiB file
    head = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    with open(t / "old.pt", "wb") as f:
        f.write(head + b"\x80\x02c")
        f.truncate(8 << 30)
    return t / "old.pt", "truncated"


def _legacy_sparse_storage(t):  # a consistent 8 GiB storage the file really holds (sparse)
    torch.save({"a": torch.full((4,), 1.5)}, t / "old.pt", _use_new_zipfile_serialization=False)
    data = bytearray((t / "old.pt").read_bytes())
    i = data.find(np.full(4, 1.5, np.float32).tobytes())
    struct.pack_into("<q", data, i - 8, 1 << 31)
    (t / "old.pt").write_bytes(bytes(data[:i]))
    with open(t / "old.pt", "r+b") as f:
        f.truncate(i + (8 << 30))
    return t / "old.pt", None


LEGACY_CASES = {f.__name__[1:]: f for f in (*(_legacy_with_count(n) for n in (1 << 28, 1 << 40, (1 << 63) - 1, -1)),
                                             _legacy_endless_line)}


@pytest.mark.parametrize("name", sorted(LEGACY_CASES))
def test_legacy_lengths(worker, tmp_path, name):
    path, match = LEGACY_CASES[name](tmp_path)
    for call, kwargs in LEGACY_READERS:
        refused(worker, call, path, match, **kwargs)
    refused(worker, "di_jax.convert:read_checkpoint", path, "legacy")
    cli_refused(worker, path, tmp_path, "legacy")


# ----------------------------------------------------------------------- class 6: safetensors

def write_safetensors(path, entries, data=b"", metadata=None, header=None, length=None, size=None):
    """A safetensors file from raw parts: `entries` name -> {dtype, shape, data_offsets} (or anything)."""
    if header is None:
        obj = dict(entries)
        if metadata is not None:
            obj["__metadata__"] = metadata
        header = json.dumps(obj).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header) if length is None else length))
        f.write(header)
        f.write(data)
        if size is not None:
            f.truncate(size)  # sparse: the declared bytes exist without taking disk or memory
    return path


def _f32(name, shape, begin):
    n = int(np.prod(shape)) * 4
    return {name: {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, begin + n]}}


def _st_length_zero(t):
    return write_safetensors(t / "z.safetensors", {}, header=b"", data=b"{}"), None


def _st_length_past_end(t):
    return write_safetensors(t / "l.safetensors", _f32("w", (4,), 0), bytes(16), length=10_000), \
        "header longer than the file"


def _st_length_2_63(t):
    return write_safetensors(t / "l.safetensors", _f32("w", (4,), 0), bytes(16), length=1 << 63), \
        "(longer than the file|more than the)"


def _st_huge_header_sparse(t):  # a 50 MB header the file really holds (sparse): over the cap
    p = t / "h.safetensors"
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", 50_000_000) + b'{"a": "')
        f.truncate(8 + 50_000_000 + 16)
    return p, "more than the 4194304 allowed"


def _st_header_at_cap_of_junk(t):  # just under the cap: the costliest JSON per byte, ~1.4 million empty objects
    from di_jax.convert.safetensors_file import SAFETENSORS_MAX_HEADER

    body = b'{"x": [' + b",".join([b"{}"] * ((SAFETENSORS_MAX_HEADER - 16) // 3)) + b"]}"
    assert len(body) <= SAFETENSORS_MAX_HEADER
    return write_safetensors(t / "j.safetensors", {}, header=body), "not an object"


def _st_bad_json(t):
    return write_safetensors(t / "b.safetensors", {}, header=b"{not json", data=bytes(8)), "not valid JSON"


def _st_not_utf8(t):
    return write_safetensors(t / "u.safetensors", {}, header=b'{"\xff\xfe": 1}'), "not valid JSON"


def _st_deep_json(t):
    return write_safetensors(t / "d.safetensors", {}, header=b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"), \
        "(not valid JSON|RecursionError|not an object)"


def _st_duplicate_keys(t):
    header = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ' \
             b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    return write_safetensors(t / "dup.safetensors", {}, bytes(8), header=header), "duplicate key"


def _st_dtype(code):
    def build(t):
        entry = {"w": {"dtype": code, "shape": [4], "data_offsets": [0, 4]}}
        return write_safetensors(t / "dt.safetensors", entry, bytes(4)), "unsupported dtype"
    build.__name__ = f"_st_dtype_{str(code).lower()}"
    return build


def _st_negative_shape(t):
    entry = {"w": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}
    return write_safetensors(t / "s.safetensors", entry, bytes(16)), "non-negative integers"


def _st_huge_shape(t):
    entry = {"w": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}}
    return write_safetensors(t / "s.safetensors", entry, bytes(16)), "needs"


def _st_huge_consistent_offsets(t):  # shape and offsets agree on 2^82 bytes: past the end of the file
    n = (1 << 40) * (1 << 40) * 4
    entry = {"w": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, n]}}
    return write_safetensors(t / "s.safetensors", entry, bytes(16)), "past the end"


def _st_rank_40(t):
    entry = {"w": {"dtype": "F32", "shape": [1] * 40, "data_offsets": [0, 4]}}
    return write_safetensors(t / "s.safetensors", entry, bytes(4)), "at most 8"


def _st_float_shape(t):
    entry = {"w": {"dtype": "F32", "shape": [2.0, 2], "data_offsets": [0, 16]}}
    return write_safetensors(t / "s.safetensors", entry, bytes(16)), "non-negative integers"


def _st_bool_shape(t):
    entry = {"w": {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}}
    return write_safetensors(t / "s.safetensors", entry, bytes(16)), "non-negative integers"


def _st_overlap(t):
    entries = {**_f32("a", (4,), 0), **_f32("b", (4,), 8)}
    return write_safetensors(t / "o.safetensors", entries, bytes(24)), "overlaps"


def _st_same_bytes(t):
    entries = {**_f32("a", (4,), 0), **_f32("b", (4,), 0)}
    return write_safetensors(t / "o.safetensors", entries, bytes(16)), "overlaps"


def _st_out_of_range(t):
    return write_safetensors(t / "r.safetensors", _f32("a", (4,), 1 << 40), bytes(16)), "past the end"


def _st_reversed_offsets(t):
    entry = {"w": {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}}
    return write_safetensors(t / "r.safetensors", entry, bytes(16)), r"not \[begin, end\]"


def _st_negative_offset(t):
    entry = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}}
    return write_safetensors(t / "r.safetensors", entry, bytes(16)), r"not \[begin, end\]"


def _st_size_mismatch(t):
    entry = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}
    return write_safetensors(t / "m.safetensors", entry, bytes(12)), "needs 16"


def _st_gap(t):
    entries = {**_f32("a", (4,), 0), **_f32("b", (4,), 32)}
    return write_safetensors(t / "g.safetensors", entries, bytes(48)), "gap"


def _st_truncated_data(t):
    return write_safetensors(t / "t.safetensors", _f32("a", (1024,), 0), bytes(100)), "past the end"


def _st_metadata_not_strings(t):
    return write_safetensors(t / "m.safetensors", _f32("a", (4,), 0), bytes(16), metadata={"x": [1]}), \
        "__metadata__"


def _st_config_deep_json(t):
    deep = "[" * 100_000 + "]" * 100_000
    return write_safetensors(t / "m.safetensors", _f32("a", (4,), 0), bytes(16),
                             metadata={"edm_config": deep}), "is not JSON"


def _st_entry_not_object(t):
    return write_safetensors(t / "e.safetensors", {"w": [1, 2, 3]}, bytes(16)), "not an object"


_DTYPES = [_st_dtype(c) for c in ("F8_E4M3", "F8_E5M2", "C64", "float32", 5, None)]
ST_CASES = {f.__name__[4:]: f for f in (
    _st_length_zero, _st_length_past_end, _st_length_2_63, _st_huge_header_sparse, _st_header_at_cap_of_junk,
    _st_bad_json, _st_not_utf8, _st_deep_json, _st_duplicate_keys, *_DTYPES, _st_negative_shape, _st_huge_shape,
    _st_huge_consistent_offsets, _st_rank_40, _st_float_shape, _st_bool_shape, _st_overlap, _st_same_bytes,
    _st_out_of_range, _st_reversed_offsets, _st_negative_offset, _st_size_mismatch, _st_gap, _st_truncated_data,
    _st_metadata_not_strings, _st_config_deep_json, _st_entry_not_object)}


@pytest.mark.parametrize("name", sorted(ST_CASES))
def test_safetensors(worker, tmp_path, name):
    path, match = ST_CASES[name](tmp_path)
    st_refused(worker, path, tmp_path, match)


def _sparse_net(tmp_path, data_dir):
    """An EDM net with its config in the metadata plus a consistent sparse 8 GiB tensor `model.extra`."""
    from di_jax.convert import config as config_lib

    d = np.load(data_dir / "edm_golden" / "ddpmpp_cond_edm.npz")
    sd = {str(k): d[f"param/{k}"].astype(np.float32) for k in d["state_dict_keys"]}
    cfg = config_lib.complete({**json.loads(str(d["config_json"])), "precond": str(d["precond_class"])})
    entries, blobs, offset = {}, [], 0
    for k, v in sd.items():
        entries[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [offset, offset + v.nbytes]}
        blobs.append(v.tobytes())
        offset += v.nbytes
    big = 8 << 30
    entries["model.extra"] = {"dtype": "F32", "shape": [big // 4], "data_offsets": [offset, offset + big]}
    p = write_safetensors(tmp_path / "net.safetensors", entries, b"".join(blobs), metadata={"edm_config":
                                                                                              json.dumps(cfg)})
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) + big)
    return p, sd, cfg, big


def test_sparse_8gib_tensor_is_never_read(worker, tmp_path, data_dir):
    """The header is enough to refuse the 8 GiB tensor: keys, shapes and dtypes come before any data."""
    from di_jax.convert import catalogue
    from di_jax.convert.safetensors_file import read_safetensors

    p, sd, cfg, big = _sparse_net(tmp_path, data_dir)
    tensors, recorded = read_safetensors(p)  # header only: nothing is read yet
    assert tensors.shapes["model.extra"] == (big // 4,) and recorded["precond"] == cfg["precond"]
    with pytest.raises(Exception, match="1 unexpected: model.extra"):
        catalogue.check_state_dict(tensors.shape_view(), cfg)
    np.testing.assert_array_equal(tensors["model.map_layer0.bias"], sd["model.map_layer0.bias"])
    rep = worker.call("di_jax.convert.safetensors_file:read_safetensors", p)
    assert rep["outcome"] == "returned", rep
    bounded(rep)


def test_sparse_8gib_tensor_through_read_checkpoint_and_cli(worker, tmp_path, data_dir):
    """read_checkpoint checks keys and shapes on `shape_view()` before it reads any tensor."""
    p = _sparse_net(tmp_path, data_dir)[0]
    refused(worker, "di_jax.convert:read_checkpoint", p, "1 unexpected: model.extra")
    cli_refused(worker, p, tmp_path, "1 unexpected: model.extra")


def test_safetensors_written_by_the_library_still_read(tmp_path):
    """bf16 (widened to float32), f16, int, bool and empty tensors from `safetensors.torch` read back exactly."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    from di_jax.convert.safetensors_file import read_safetensors

    tensors = {"bf16": torch.randn(3, 2).bfloat16(), "f16": torch.randn(5).half(), "f64": torch.randn(2).double(),
               "i64": torch.arange(6).reshape(2, 3), "bool": torch.tensor([True, False]), "empty": torch.zeros(0, 3),
               "scalar": torch.tensor(2.5)}
    safetensors_torch.save_file(tensors, tmp_path / "t.safetensors", metadata={"note": "x"})
    got, recorded = read_safetensors(tmp_path / "t.safetensors")
    assert recorded is None and set(got) == set(tensors)
    for k, t in tensors.items():
        want = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
        assert got.dtypes[k] == want.dtype and got.shapes[k] == want.shape, k
        assert got[k].dtype == want.dtype and np.array_equal(got[k], want), k
    assert set(got.load()) == set(tensors)


def test_hostile_input_counts():
    counts = {"non-regular paths": len(FILE_CASES), "zip methods/encryption/versions": len(METHOD_CASES),
              "zip bombs and declared sizes": len(BOMB_CASES), "zip CRC flips and redirected members":
              len(CRC_CASES), "legacy torch.save lengths": len(LEGACY_CASES), "safetensors headers": len(ST_CASES)}
    print(counts)
    assert all(n >= 5 for n in counts.values()) and sum(counts.values()) >= 80, counts
