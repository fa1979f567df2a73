"""The key catalogue reproduces the golden state_dicts and the published parameter counts."""

import json

import numpy as np
import pytest

from di_jax.convert import CheckpointError, catalogue
from di_jax.convert import config as config_lib

GOLDEN = ["ddpmpp_cond_edm", "ddpmpp_uncond_vp", "adm_cond_edm", "adm_multihead_iddpm"]
CIFAR = dict(img_resolution=32, img_channels=3, augment_dim=9, model_channels=128, channel_mult=[2, 2, 2],
             dropout=0.13)
NCSN = dict(embedding_type="fourier", channel_mult_noise=2, resample_filter=[1, 3, 3, 1], encoder_type="residual")
# spec edm_architecture.md section 6: (config, parameters, buffer elements)
PUBLISHED = {
    "cifar10-cond-vp": (dict(CIFAR, precond="VPPrecond", label_dim=10), 55_735_299, 32),
    "cifar10-uncond-vp": (dict(CIFAR, precond="VPPrecond"), 55_733_891, 32),
    "cifar10-cond-ve": (dict(CIFAR, precond="VEPrecond", label_dim=10, **NCSN), 56_400_643, 288),
    "cifar10-uncond-ve": (dict(CIFAR, precond="VEPrecond", **NCSN), 56_397_827, None),
    "ffhq-64-vp": (dict(CIFAR, precond="VPPrecond", img_resolution=64, channel_mult=[1, 2, 2, 2]), 61_805_571, None),
    "ffhq-64-ve": (dict(CIFAR, precond="VEPrecond", img_resolution=64, channel_mult=[1, 2, 2, 2], **NCSN),
                   62_761_091, None),
    "imagenet-64-adm": (dict(precond="EDMPrecond", model_type="DhariwalUNet", img_resolution=64, img_channels=3,
                             label_dim=1000, model_channels=192, channel_mult=[1, 2, 3, 4], use_fp16=True),
                        295_899_267, None),
}


def golden(data_dir, name):
    d = np.load(data_dir / "edm_golden" / f"{name}.npz")
    sd = {str(k): d[f"param/{k}"] for k in d["state_dict_keys"]}
    return sd, config_lib.complete({**json.loads(str(d["config_json"])), "precond": str(d["precond_class"])})


@pytest.mark.parametrize("name", GOLDEN)
def test_catalogue_reproduces_golden_keys_order_shapes(data_dir, name):
    sd, cfg = golden(data_dir, name)
    want = catalogue.expected_shapes(cfg)
    assert list(want) == list(sd)
    assert all(want[k] == sd[k].shape for k in sd)
    catalogue.check_state_dict(sd, cfg)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name):
    cfg, params, buffers = PUBLISHED[name]
    got_params, got_buffers = catalogue.count_parameters(catalogue.expected_shapes(config_lib.complete(cfg)))
    assert got_params == params
    if buffers is not None:
        assert got_buffers == buffers


def test_check_reports_all_problems_in_one_line(data_dir):
    sd, cfg = golden(data_dir, "ddpmpp_cond_edm")
    bad = dict(sd)
    del bad["model.enc.16x16_block0.conv1.bias"]
    bad["model.extra.weight"] = np.zeros(3, np.float32)
    bad["model.dec.4x4_in0.qkv.weight"] = bad["model.dec.4x4_in0.qkv.weight"][:, :, 0, 0]
    with pytest.raises(CheckpointError) as e:
        catalogue.check_state_dict(bad, cfg)
    msg = str(e.value)
    assert "\n" not in msg
    assert "1 missing: model.enc.16x16_block0.conv1.bias" in msg
    assert "1 unexpected: model.extra.weight" in msg
    assert "1 wrong shape: model.dec.4x4_in0.qkv.weight (96, 32) (expected (96, 32, 1, 1))" in msg
