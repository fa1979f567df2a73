"""Checkpoint -> Flax: golden outputs from a no-exec .pkl, and convert -> load_teacher round trips."""

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("di_jax.convert.edm_mapping")

from convert_writers import edm_pickle_bytes  # noqa: E402

from di_jax.convert import cli, convert_checkpoint, load_teacher, read_checkpoint  # noqa: E402
from di_jax.convert.edm_mapping import flax_to_state_dict  # noqa: E402

GOLDEN = ["ddpmpp_cond_edm", "ddpmpp_uncond_vp", "adm_cond_edm", "adm_multihead_iddpm"]


def golden(data_dir, name):
    d = np.load(data_dir / "edm_golden" / f"{name}.npz")
    sd = {str(k): d[f"param/{k}"] for k in d["state_dict_keys"]}
    return d, sd, json.loads(str(d["config_json"])), str(d["precond_class"])


def denoise(module, params, d):
    kwargs = {}
    if "class_labels" in d.files:
        kwargs["class_labels"] = d["class_labels"]
    if "augment_labels" in d.files:
        kwargs["augment_labels"] = d["augment_labels"]
    return np.asarray(module.apply({"params": params}, d["x"], d["sigma"], **kwargs))


def rel_err(got, want):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("name", ["ddpmpp_cond_edm", "adm_multihead_iddpm"])
def test_no_exec_pickle_reproduces_golden_output(tmp_path, data_dir, name):
    d, sd, cfg, precond = golden(data_dir, name)
    marker = tmp_path / "ran"
    src = f"open({str(marker)!r}, 'w').write('executed')\nraise RuntimeError('module_src executed')\n"
    (tmp_path / "net.pkl").write_bytes(edm_pickle_bytes(sd, precond, cfg, src))
    module, params = load_teacher(tmp_path / "net.pkl")
    assert not marker.exists()
    assert rel_err(denoise(module, params, d), d["out_f64"]) < 1e-5


def test_convert_load_teacher_round_trip(tmp_path, data_dir):
    d, sd, cfg, precond = golden(data_dir, "ddpmpp_cond_edm")
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "net.pt")
    override = {"precond": precond, "dropout": cfg["dropout"]}
    module0, params0 = load_teacher(tmp_path / "net.pt", override)  # in memory, straight from the file
    written = convert_checkpoint(tmp_path / "net.pt", tmp_path / "conv", override)
    module1, params1 = load_teacher(tmp_path / "conv")
    assert written == json.loads((tmp_path / "conv" / "config.json").read_text())
    assert jax.tree.structure(params0) == jax.tree.structure(params1)
    jax.tree.map(np.testing.assert_array_equal, params0, params1)
    np.testing.assert_array_equal(denoise(module0, params0, d), denoise(module1, params1, d))
    # and back: the Flax params map to the original state_dict exactly
    back = flax_to_state_dict(params1, written)
    assert list(back) == list(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(np.asarray(back[k]), v, err_msg=k)


def test_cli_converts_all_formats(tmp_path, data_dir, capsys):
    d, sd, cfg, precond = golden(data_dir, "adm_cond_edm")
    (tmp_path / "net.pkl").write_bytes(edm_pickle_bytes(sd, precond, cfg, ""))
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "net.pt")
    outs = []
    for i, argv in enumerate([["net.pkl"], ["net.pt", "--config", '{"precond": "EDMPrecond"}', "--no-torch"]]):
        out = tmp_path / f"out{i}"
        assert cli.main(["di-jax convert", str(tmp_path / argv[0]), str(out)] + argv[1:]) == 0
        assert "EDMPrecond / DhariwalUNet" in capsys.readouterr().out
        module, params = load_teacher(out)
        outs.append(denoise(module, params, d))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert rel_err(outs[0], d["out_f64"]) < 1e-5
    state_dict, _ = read_checkpoint(tmp_path / "net.pkl")
    assert list(state_dict) == list(sd)
