"""EDM .pkl snapshots: read without executing module_src; payload pickles refused before they run."""

import io
import json
import os
import pickle
import subprocess  # noqa: F401  (referenced by a payload below, never called by the reader)
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convert_writers import edm_pickle_bytes, fake_edm_modules  # noqa: E402

from di_jax.convert import CheckpointError, RefusedGlobalError, edm_pickle, read_checkpoint, torch_zip  # noqa: E402  # noqa: E402
from di_jax.convert import config as config_lib  # noqa: E402

GOLDEN = ["ddpmpp_cond_edm", "ddpmpp_uncond_vp", "adm_cond_edm", "adm_multihead_iddpm"]


def golden(data_dir, name):
    d = np.load(data_dir / "edm_golden" / f"{name}.npz")
    sd = {str(k): d[f"param/{k}"] for k in d["state_dict_keys"]}
    return sd, json.loads(str(d["config_json"])), str(d["precond_class"])


def marker_src(marker):
    """A module_src that leaves a marker file and then fails if anybody executes it."""
    return (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
            "raise RuntimeError('module_src executed')\n")


def test_marker_source_is_live(tmp_path):
    """The marker check below can fail: executing the embedded source does create the marker."""
    marker = tmp_path / "ran"
    with pytest.raises(RuntimeError, match="module_src executed"):
        exec(marker_src(marker), {})  # pylint: disable=exec-used
    assert marker.exists()


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_pickle_reads_without_exec(tmp_path, data_dir, name):
    sd, cfg, precond = golden(data_dir, name)
    marker = tmp_path / "ran"
    blob = edm_pickle_bytes(sd, precond, cfg, marker_src(marker))
    assert marker_src(marker).encode() in blob  # the source really is embedded
    path = tmp_path / "net.pkl"
    path.write_bytes(blob)

    got, got_cfg = read_checkpoint(path)
    assert not marker.exists()
    assert list(got) == list(sd)  # keys and order of the official state_dict()
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert got_cfg == config_lib.complete({**cfg, "precond": precond})


def test_pickle_walk_skips_nonpersistent_buffers_and_none(tmp_path, data_dir):
    sd, cfg, precond = golden(data_dir, "ddpmpp_cond_edm")
    name, kwargs, got = edm_pickle.read_edm_pickle(edm_pickle_bytes(sd, precond, cfg, "", extras=True))
    assert name == "EDMPrecond" and kwargs == cfg
    assert "model.scratch" not in got and "model.unused_bias" not in got and list(got) == list(sd)


def test_init_kwargs_contradicting_weights_refused(data_dir, tmp_path):
    sd, cfg, precond = golden(data_dir, "ddpmpp_cond_edm")
    path = tmp_path / "net.pkl"
    path.write_bytes(edm_pickle_bytes(sd, precond, {**cfg, "model_channels": 32}, ""))
    with pytest.raises(CheckpointError, match="model_channels: config 32, weights 16"):
        read_checkpoint(path)


# ------------------------------------------------------------------------------------ payloads

class Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    touch = f"open({str(marker)!r}, 'w').write('pwned')"
    return {
        "os.system": (Payload(os.system, f"touch {marker}"), "posix.system"),
        "eval": (Payload(eval, touch), "builtins.eval"),
        "exec": (Payload(exec, touch), "builtins.exec"),
        "subprocess": (Payload(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
        "getattr": (Payload(getattr, Payload(__import__, "os"), "system"), "builtins.getattr"),
    }


def test_payload_is_live(tmp_path):
    """Unrestricted pickle.loads runs the payload (so the marker checks below can fail)."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_payloads(marker)["exec"][0]))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "eval", "exec", "subprocess", "getattr"])
@pytest.mark.parametrize("where", ["top", "inside_ema_state"])
def test_payload_pickles_refused(tmp_path, data_dir, kind, where):
    marker = tmp_path / "pwned"
    payload, global_name = _payloads(marker)[kind]
    if where == "top":
        blob = pickle.dumps({"ema": payload}, protocol=4)
    else:  # hidden among the real network tensors, after a valid persistent object started
        sd, cfg, precond = golden(data_dir, "adm_multihead_iddpm")
        cfg = {**cfg, "evil": payload}
        blob = edm_pickle_bytes(sd, precond, cfg, "")
    path = tmp_path / "evil.pkl"
    path.write_bytes(blob)
    with pytest.raises(RefusedGlobalError, match=f"refused global '{global_name}'"):
        read_checkpoint(path)
    assert not marker.exists()


def test_payload_inside_storage_blob_refused(tmp_path):
    """The legacy torch.save stream inside _load_from_bytes is unpickled with its own allow-list."""
    marker = tmp_path / "pwned"
    header = b"".join(pickle.dumps(x, protocol=2) for x in
                      (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    blob = header + pickle.dumps(_payloads(marker)["exec"][0], protocol=2)
    evil = Payload(torch.storage._load_from_bytes, blob)  # pylint: disable=protected-access
    with fake_edm_modules():
        data = pickle.dumps({"ema": evil}, protocol=4)
    with pytest.raises(RefusedGlobalError, match=r"refused global '(__builtin__|builtins)\.exec' in legacy torch.save"):
        edm_pickle.read_edm_pickle(data)
    assert not marker.exists()


@pytest.mark.parametrize("use_torch", [False, True])
def test_payload_in_torch_zip_refused(tmp_path, use_torch):
    marker = tmp_path / "pwned"
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps({"w": _payloads(marker)["os.system"][0]}, protocol=2)
            dst.writestr(info, data)
    match = "refused global 'posix.system'"  # with torch too: the archive is validated before torch.load sees it
    with pytest.raises(CheckpointError, match=match):
        torch_zip.read_zip(evil, use_torch=use_torch)
    assert not marker.exists()


def test_numpy_object_dtype_refused():
    class ObjScalar:
        def __reduce__(self):
            return np.dtype, ("O",)
    with pytest.raises(CheckpointError, match="object dtype"):
        edm_pickle.load_pickle(pickle.dumps(ObjScalar(), protocol=4))


def test_storage_overrun_refused():
    """A tensor claiming more elements than its storage holds is refused, not read out of bounds."""
    class BigView:
        def __reduce__(self):
            t = torch.arange(4.0)
            return torch._utils._rebuild_tensor_v2, (t.storage(), 0, (100,), (1,), False, {})
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blob = pickle.dumps(BigView(), protocol=4)
    with pytest.raises(CheckpointError, match="overruns its storage"):
        edm_pickle.load_pickle(io.BytesIO(blob))


@pytest.mark.parametrize("blob", [
    b"(S'touch MARKER'\niposix\nsystem\n.",              # protocol 0 INST
    b"cposix\nsystem\n(S'touch MARKER'\ntR.",             # protocol 0 GLOBAL + REDUCE
    b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c\x0ctouch MARKER\x85R.",  # STACK_GLOBAL
])
def test_every_global_opcode_goes_through_the_allow_list(tmp_path, blob):
    def with_marker(marker):
        out = blob.replace(b"MARKER", str(marker).encode())
        return out.replace(b"\x8c\x0ctouch", bytes([0x8c, len(b"touch ") + len(str(marker))]) + b"touch")

    live = tmp_path / "live"
    pickle.loads(with_marker(live))  # the hand-written payload is real: plain pickle runs it
    assert live.exists()
    marker = tmp_path / "pwned"
    blob = with_marker(marker)
    with pytest.raises(RefusedGlobalError, match="refused global 'posix.system'"):
        edm_pickle.load_pickle(blob)
    assert not marker.exists()
