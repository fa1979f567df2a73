"""`di-jax convert` on bad input: exit 2 and exactly one line on stderr naming the problem."""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from convert_writers import edm_pickle_bytes  # noqa: E402

from di_jax.convert import cli  # noqa: E402


def golden_sd(data_dir, name="ddpmpp_cond_edm"):
    d = np.load(data_dir / "edm_golden" / f"{name}.npz")
    sd = {str(k): d[f"param/{k}"] for k in d["state_dict_keys"]}
    return sd, json.loads(str(d["config_json"])), str(d["precond_class"])


def save_pt(path, sd):
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path)
    return path


def _truncate(path, frac=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])
    return path


# Each case builds a bad input in tmp and returns (extra argv, expected message fragment).
def case_missing_file(t, sd, cfg, pc):
    return [str(t / "nope.pkl")], "cannot open"


def case_directory(t, sd, cfg, pc):
    (t / "d").mkdir()
    return [str(t / "d")], "is a directory"


def case_empty(t, sd, cfg, pc):
    (t / "e.pkl").write_bytes(b"")
    return [str(t / "e.pkl")], "is empty"


def case_truncated_pkl(t, sd, cfg, pc):
    p = t / "n.pkl"
    p.write_bytes(edm_pickle_bytes(sd, pc, cfg, ""))
    return [str(_truncate(p))], "truncated"


def case_truncated_pt(t, sd, cfg, pc):
    return [str(_truncate(save_pt(t / "n.pt", sd)))], "corrupt or truncated zip"


def case_truncated_pt_tail(t, sd, cfg, pc):  # cut in the central directory only
    return [str(_truncate(save_pt(t / "n.pt", sd), 0.999))], "corrupt or truncated zip"


def case_truncated_safetensors(t, sd, cfg, pc):
    p = t / "n.safetensors"
    safetensors_torch.save_file({k: torch.from_numpy(v) for k, v in sd.items()}, p)
    return [str(_truncate(p))], "corrupt or truncated safetensors"


def case_one_byte(t, sd, cfg, pc):
    (t / "b.pkl").write_bytes(b"\x80")
    return [str(t / "b.pkl")], "is an unknown format"


def case_safetensors_header_only(t, sd, cfg, pc):
    p = t / "n.safetensors"
    safetensors_torch.save_file({k: torch.from_numpy(v) for k, v in sd.items()}, p)
    return [str(_truncate(p, 0.001))], "safetensors header longer than the file"


def case_png(t, sd, cfg, pc):
    (t / "img.pkl").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    return [str(t / "img.pkl")], "is a PNG image"


def case_text(t, sd, cfg, pc):
    (t / "notes.pt").write_text("these are not the weights you are looking for\n")
    return [str(t / "notes.pt")], "is a text file"


def case_random_bytes(t, sd, cfg, pc):
    (t / "r.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 512, np.uint8).tobytes()[1:] + b"\x00")
    return [str(t / "r.pt")], "is an unknown format, not an EDM .pkl"


def case_legacy_torch(t, sd, cfg, pc):
    torch.save({"w": torch.ones(2)}, t / "old.pt", _use_new_zipfile_serialization=False)
    return [str(t / "old.pt")], "legacy (pre-1.6"


def case_zip_not_torch(t, sd, cfg, pc):
    with zipfile.ZipFile(t / "a.pt", "w") as z:
        z.writestr("readme.txt", "hello")
    return [str(t / "a.pt")], "not a torch.save archive"


def case_pt_not_state_dict(t, sd, cfg, pc):
    torch.save(torch.ones(3), t / "tensor.pt")
    return [str(t / "tensor.pt"), "--no-torch"], "not a non-empty state_dict"


def case_pickle_without_ema(t, sd, cfg, pc):
    (t / "plain.pkl").write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    return [str(t / "plain.pkl")], "no 'ema' entry"


def case_payload(t, sd, cfg, pc):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {t / 'pwned'}",)
    (t / "evil.pkl").write_bytes(pickle.dumps({"ema": Evil()}, protocol=4))
    return [str(t / "evil.pkl")], "refused global 'posix.system'"


def case_other_network(t, sd, cfg, pc):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3))
    torch.save(net.state_dict(), t / "other.pt")
    return [str(t / "other.pt")], "not an EDM network state_dict"


def case_missing_precond(t, sd, cfg, pc):
    return [str(save_pt(t / "n.pt", sd))], "does not record its preconditioning wrapper"


def case_config_contradicts_weights(t, sd, cfg, pc):
    return [str(save_pt(t / "n.pt", sd)), "--config", '{"precond": "EDMPrecond", "label_dim": 1000}'], \
        "label_dim: config 1000, weights 10"


def case_bad_config_json(t, sd, cfg, pc):
    return [str(save_pt(t / "n.pt", sd)), "--config", "{precond: EDM"], "config is not valid JSON"


def case_unknown_config_key(t, sd, cfg, pc):
    return [str(save_pt(t / "n.pt", sd)), "--config", '{"precond": "EDMPrecond", "chanel_mult": [1]}'], \
        "unknown config keys ['chanel_mult']"


def case_bad_precond(t, sd, cfg, pc):
    return [str(save_pt(t / "n.pt", sd)), "--config", '{"precond": "EDM"}'], "'precond' must be one of"


def case_missing_config_file(t, sd, cfg, pc):
    return [str(save_pt(t / "n.pt", sd)), "--config", str(t / "none.json")], "cannot read config file"


def case_int_tensor(t, sd, cfg, pc):
    sd = dict(sd, **{"model.map_layer0.bias": np.zeros(sd["model.map_layer0.bias"].shape, np.int64)})
    return [str(save_pt(t / "n.pt", sd)), "--config", '{"precond": "EDMPrecond"}'], "expected floating point"


def case_non_square_levels(t, sd, cfg, pc):
    sd = {k.replace("enc.16x16_conv", "enc.16x8_conv"): v for k, v in sd.items()}
    return [str(save_pt(t / "n.pt", sd)), "--config", '{"precond": "EDMPrecond"}'], "non-square level"


def case_missing_key(t, sd, cfg, pc):
    sd = {k: v for k, v in sd.items() if k != "model.dec.16x16_block1.conv1.weight"}
    return [str(save_pt(t / "n.pt", sd)), "--config", '{"precond": "EDMPrecond"}'], \
        "1 missing: model.dec.16x16_block1.conv1.weight"


def case_unexpected_key(t, sd, cfg, pc):
    sd = dict(sd, **{"model.dec.16x16_block1.extra": np.zeros(3, np.float32)})
    return [str(save_pt(t / "n.pt", sd)), "--config", '{"precond": "EDMPrecond"}'], \
        "1 unexpected: model.dec.16x16_block1.extra"


def case_wrong_shape(t, sd, cfg, pc):  # e.g. a conv kernel already transposed to HWIO
    k = "model.enc.8x8_block0.conv1.weight"
    p = t / "n.pkl"
    p.write_bytes(edm_pickle_bytes(dict(sd, **{k: sd[k].transpose(2, 3, 1, 0)}), pc, cfg, ""))
    return [str(p)], f"1 wrong shape: {k} (3, 3, 32, 32) (expected (32, 32, 3, 3))"


def case_usage(t, sd, cfg, pc):
    return [], "the following arguments are required"


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_one_line_exit_2(tmp_path, data_dir, capsys, name):
    sd, cfg, pc = golden_sd(data_dir)
    argv, fragment = CASES[name](tmp_path, sd, cfg, pc)
    out_dir = tmp_path / "out"
    argv = argv[:1] + [str(out_dir)] + argv[1:] if argv else []
    rc = cli.main(["di-jax convert"] + argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("di-jax convert: error: ") and "Traceback" not in err
    assert fragment in err, err
    assert not (out_dir / "config.json").exists()
    assert not (tmp_path / "pwned").exists()


def test_number_of_bad_input_classes():
    assert len(CASES) >= 20, sorted(CASES)


def test_existing_output_refused(tmp_path, data_dir, capsys):
    sd, _, _ = golden_sd(data_dir)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    rc = cli.main(["di-jax convert", str(save_pt(tmp_path / "n.pt", sd)), str(tmp_path / "out")])
    assert rc == 2 and "already holds a converted checkpoint" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert cli.main(["di-jax convert", "--help"]) == 0
    assert "di-jax convert IN OUT" in capsys.readouterr().out


def test_storage_blob_corruption_is_one_line(tmp_path, data_dir, capsys):
    """Flip the element count inside a legacy storage blob of a .pkl: a clear truncation error."""
    sd, cfg, pc = golden_sd(data_dir)
    blob = bytearray(edm_pickle_bytes(sd, pc, cfg, ""))
    i = blob.find(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19")  # first storage blob's magic
    assert i > 0
    blob[i:i + 3] = b"\x80\x02\x8b"  # corrupt the blob's first opcode
    (tmp_path / "c.pkl").write_bytes(bytes(blob))
    assert cli.main(["di-jax convert", str(tmp_path / "c.pkl"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "legacy torch.save header" in err, err
