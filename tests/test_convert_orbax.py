"""convert_checkpoint -> load_converted: orbax params + config.json, independent of the Flax networks.

The state_dict -> Flax mapping is swapped for a small stand-in (nest keys by '.', OIHW -> HWIO,
Linear transposed) so that these tests exercise only the file layer; the real mapping and
networks are covered by test_convert_roundtrip.py.
"""

import json
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convert_writers import edm_pickle_bytes  # noqa: E402

from di_jax.convert import CheckpointError, cli, convert_checkpoint, load_converted, read_checkpoint  # noqa: E402


def _to_flax(sd, config):
    del config
    tree = {}
    for key, v in sd.items():
        *path, leaf = key.split(".")
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = v.transpose(2, 3, 1, 0) if v.ndim == 4 else v.T if v.ndim == 2 else v
    return tree


def _from_flax(params, config):
    del config
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                v = np.asarray(v)
                out[prefix + k] = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T if v.ndim == 2 else v
    walk(params, "")
    return out


@pytest.fixture
def stand_in_mapping(monkeypatch):
    mod = types.ModuleType("di_jax.convert.edm_mapping")
    mod.state_dict_to_flax, mod.flax_to_state_dict = _to_flax, _from_flax
    monkeypatch.setitem(sys.modules, "di_jax.convert.edm_mapping", mod)


def golden(data_dir, name="ddpmpp_cond_edm"):
    d = np.load(data_dir / "edm_golden" / f"{name}.npz")
    sd = {str(k): d[f"param/{k}"] for k in d["state_dict_keys"]}
    return sd, json.loads(str(d["config_json"])), str(d["precond_class"])


@pytest.mark.parametrize("name", ["ddpmpp_cond_edm", "adm_multihead_iddpm"])
def test_convert_then_load_gives_the_in_memory_params(tmp_path, data_dir, stand_in_mapping, name):
    sd, cfg, precond = golden(data_dir, name)
    (tmp_path / "net.pkl").write_bytes(edm_pickle_bytes(sd, precond, cfg, ""))
    state_dict, want_cfg = read_checkpoint(tmp_path / "net.pkl")
    in_memory = _to_flax(state_dict, want_cfg)
    written = convert_checkpoint(tmp_path / "net.pkl", tmp_path / "conv")
    assert written == want_cfg == json.loads((tmp_path / "conv" / "config.json").read_text())
    got_cfg, params = load_converted(tmp_path / "conv")
    assert got_cfg == want_cfg
    flat_got, flat_want = _from_flax(params, None), _from_flax(in_memory, None)
    assert set(flat_got) == set(flat_want) == set(sd)
    for k, v in flat_want.items():
        assert flat_got[k].dtype == v.dtype
        np.testing.assert_array_equal(flat_got[k], v, err_msg=k)


def test_cli_success_and_refusal_to_overwrite(tmp_path, data_dir, stand_in_mapping, capsys):
    sd, _, _ = golden(data_dir, "adm_cond_edm")
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "net.pt")
    argv = ["di-jax convert", str(tmp_path / "net.pt"), str(tmp_path / "out"), "--config",
            '{"precond": "EDMPrecond"}']
    assert cli.main(argv) == 0
    assert "EDMPrecond / DhariwalUNet, 16px, label_dim 10" in capsys.readouterr().out
    assert cli.main(argv) == 2
    assert "already holds a converted checkpoint" in capsys.readouterr().err


def test_tampered_conversion_refused(tmp_path, data_dir, stand_in_mapping):
    sd, cfg, precond = golden(data_dir)
    (tmp_path / "net.pkl").write_bytes(edm_pickle_bytes(sd, precond, cfg, ""))
    convert_checkpoint(tmp_path / "net.pkl", tmp_path / "conv")
    conf = json.loads((tmp_path / "conv" / "config.json").read_text())
    (tmp_path / "conv" / "config.json").write_text(json.dumps({**conf, "model_channels": 32}))
    with pytest.raises(CheckpointError, match="params do not match config.json"):
        load_converted(tmp_path / "conv")
    (tmp_path / "conv" / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="is not a converted checkpoint"):
        load_converted(tmp_path / "conv")
