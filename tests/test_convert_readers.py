"""torch.save zip (with and without torch), safetensors, and config inference from key shapes."""

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from di_jax.convert import (  # noqa: E402
    CheckpointError,
    infer_config,
    read_checkpoint,
    read_state_dict,
    torch_zip,  # noqa: E402
)
from di_jax.convert import config as config_lib  # noqa: E402

GOLDEN = ["ddpmpp_cond_edm", "ddpmpp_uncond_vp", "adm_cond_edm", "adm_multihead_iddpm"]


def golden(data_dir, name):
    d = np.load(data_dir / "edm_golden" / f"{name}.npz")
    sd = {str(k): d[f"param/{k}"] for k in d["state_dict_keys"]}
    return sd, json.loads(str(d["config_json"])), str(d["precond_class"])


def odd_tensors():
    """dtypes and layouts a state_dict may hold: fp16, bf16, int, non-contiguous, offset views, 0-d."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    return {"f32": torch.randn(3, 4, 2, 2, generator=g), "f16": torch.randn(7, generator=g).half(),
            "bf16": torch.randn(5, generator=g).bfloat16(), "f64": torch.randn(2, 3, generator=g).double(),
            "i64": torch.arange(9).reshape(3, 3), "transposed": base.t(), "offset": base[2:4, 1:],
            "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3)}


def expected(t):
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def test_zip_with_and_without_torch_identical(tmp_path, monkeypatch):
    tensors = odd_tensors()
    path = tmp_path / "odd.pt"
    torch.save(tensors, path)
    with_torch = torch_zip.read_zip(path, use_torch=True)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails: the reader must not need it
    assert not torch_zip.torch_available()
    without = torch_zip.read_zip(path)
    assert list(without) == list(with_torch) == list(tensors)
    for k, t in tensors.items():
        for got in (without[k], with_torch[k]):
            assert got.dtype == expected(t).dtype and got.shape == tuple(t.shape), k
            np.testing.assert_array_equal(got, expected(t), err_msg=k)


def test_zip_shared_storage_and_state_dict_wrapper(tmp_path):
    """Tensors sharing one storage (as Module.state_dict() can) and a {'state_dict': ...} wrapper."""
    w = torch.randn(4, 4)
    path = tmp_path / "shared.pt"
    torch.save({"state_dict": {"a": w, "b": w[1], "c": w.t()}, "epoch": 3}, path)
    for use_torch in (False, True):
        got = torch_zip.read_zip(path, use_torch=use_torch)
        np.testing.assert_array_equal(got["b"], w[1].numpy())
        np.testing.assert_array_equal(got["c"], w.t().numpy())


def test_module_state_dict_metadata(tmp_path):
    """A real nn.Module.state_dict() carries `_metadata` (BUILD on the OrderedDict): still readable."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    path = tmp_path / "seq.pt"
    torch.save(net.state_dict(), path)
    got = torch_zip.read_zip(path, use_torch=False)
    assert list(got) == list(net.state_dict())
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(got[k], v.numpy())


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_pt_and_safetensors(tmp_path, data_dir, name):
    sd, cfg, precond = golden(data_dir, name)
    tensors = {k: torch.from_numpy(v) for k, v in sd.items()}
    torch.save(tensors, tmp_path / "net.pt")
    safetensors_torch.save_file(tensors, tmp_path / "net.safetensors")
    override = {"precond": precond, "dropout": cfg.get("dropout", 0.1)}
    want_cfg = config_lib.complete({**cfg, "precond": precond})
    for file, use_torch in (("net.pt", False), ("net.pt", True), ("net.safetensors", None)):
        got, got_cfg = read_checkpoint(tmp_path / file, override, use_torch)
        assert got_cfg == want_cfg, file  # everything but precond/dropout inferred from the tensors
        assert (list(got) == list(sd)) if file.endswith(".pt") else (set(got) == set(sd))
        for k, v in sd.items():
            assert got[k].dtype == v.dtype
            np.testing.assert_array_equal(got[k], v, err_msg=f"{file}: {k}")


def test_plain_state_dict_needs_precond(tmp_path, data_dir):
    sd, _, _ = golden(data_dir, "ddpmpp_uncond_vp")
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "net.pt")
    with pytest.raises(CheckpointError, match="does not record its preconditioning wrapper"):
        read_checkpoint(tmp_path / "net.pt")
    state_dict, recorded = read_state_dict(tmp_path / "net.pt")
    assert recorded is None and len(state_dict) == len(sd)


def test_iddpm_precond_inferred_from_u(tmp_path, data_dir):
    sd, _, _ = golden(data_dir, "adm_multihead_iddpm")
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "net.pt")
    _, cfg = read_checkpoint(tmp_path / "net.pt")
    assert cfg["precond"] == "iDDPMPrecond" and cfg["model_type"] == "DhariwalUNet"


@pytest.mark.parametrize("taps", [[1, 1], [1, 3, 3, 1]])
def test_resample_filter_taps(taps):
    r = np.asarray(taps, np.float32)
    f = (np.outer(r, r) / r.sum() ** 2)[None, None]
    assert infer_config._filter_taps(f, "k") == taps  # pylint: disable=protected-access


def test_inference_distinguishes_encoder_decoder_and_embedding(data_dir):
    """Key patterns for NCSN++-style nets (fourier, residual encoder, skip decoder)."""
    sd, cfg, _ = golden(data_dir, "ddpmpp_uncond_vp")
    sd = dict(sd)
    sd["model.map_noise.freqs"] = np.zeros(8, np.float32)
    sd["model.enc.8x8_aux_residual.weight"] = np.zeros((32, 3, 3, 3), np.float32)
    sd["model.dec.8x8_aux_up.resample_filter"] = np.full((1, 1, 2, 2), 0.25, np.float32)
    inferred = infer_config.infer_config(sd)
    assert inferred["embedding_type"] == "fourier"
    assert inferred["encoder_type"] == "residual" and inferred["decoder_type"] == "skip"
    assert inferred["channel_mult"] == cfg["channel_mult"] and inferred["num_blocks"] == cfg["num_blocks"]


def test_config_json_override_validation(tmp_path):
    with pytest.raises(CheckpointError, match="unknown config keys"):
        config_lib.complete({"precond": "VPPrecond", "img_resolution": 32, "img_channels": 3, "chanel_mult": [1]})
    with pytest.raises(CheckpointError, match="'precond' must be one of"):
        config_lib.complete({"precond": "VP", "img_resolution": 32, "img_channels": 3})
    with pytest.raises(CheckpointError, match="SongUNet only"):
        config_lib.complete({"precond": "EDMPrecond", "img_resolution": 32, "img_channels": 3,
                             "embedding_type": "fourier"})
    (tmp_path / "c.json").write_text('{"precond": "VEPrecond"}')
    assert config_lib.load_json(tmp_path / "c.json") == {"precond": "VEPrecond"}
    with pytest.raises(CheckpointError, match="not valid JSON"):
        config_lib.load_json("{precond: VE}")


def test_legacy_reader_resolves_shared_references_in_linear_time():
    """A depth-60 DAG of shared tuples (2^60 paths) and a list containing itself resolve at once."""
    import time

    from di_jax.convert.unpickle import _resolve_pending

    x = [1]
    for _ in range(60):
        x = (x, x)
    looped = [2]
    looped.append(looped)
    t0 = time.perf_counter()
    out = _resolve_pending({"dag": x, "loop": looped})
    assert time.perf_counter() - t0 < 1.0
    assert out["loop"][1] is out["loop"] and out["dag"][0] is out["dag"][1]
