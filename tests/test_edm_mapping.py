"""state_dict <-> Flax mapping table: round trips, official key order, strict errors, parameter counts."""

import jax
import numpy as np
import pytest
from golden_nets import CASES, load_case

from di_jax.convert.edm_mapping import flax_to_state_dict, state_dict_to_flax
from di_jax.nets import build_network, edm_config_presets


def _param_shapes(cfg):
    net = build_network(cfg)
    x = jax.ShapeDtypeStruct((1, cfg["img_channels"], cfg["img_resolution"], cfg["img_resolution"]), np.float32)
    s = jax.ShapeDtypeStruct((1,), np.float32)
    return jax.eval_shape(lambda x, s: net.init(jax.random.PRNGKey(0), x, s), x, s)["params"]


@pytest.mark.parametrize("name", CASES)
def test_round_trip_and_official_key_order(name):
    d, cfg, sd = load_case(name)
    shapes = _param_shapes(cfg)
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    params = jax.tree.unflatten(tree, [np.asarray(jax.random.normal(k, l.shape)) for k, l in zip(keys, leaves)])
    back_sd = flax_to_state_dict(params, cfg)
    assert list(back_sd) == [str(k) for k in d["state_dict_keys"]]
    assert all(back_sd[k].shape == sd[k].shape for k in sd)
    params2 = state_dict_to_flax(back_sd, cfg)
    assert jax.tree.structure(params2) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, params2, params)
    # and the golden state_dict survives the trip exactly (buffers recomputed equal the stored ones)
    sd2 = flax_to_state_dict(state_dict_to_flax(sd, cfg), cfg)
    for k, v in sd.items():
        np.testing.assert_allclose(sd2[k], v, rtol=2e-5 if k == "u" else 0, atol=0, err_msg=k)


def test_table_examples():
    d, cfg, sd = load_case("adm_multihead_iddpm")
    p = state_dict_to_flax(sd, cfg)["model"]
    np.testing.assert_array_equal(p["dec_8x8_in0"]["qkv"]["kernel"],
                                  sd["model.dec.8x8_in0.qkv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["map_layer0"]["kernel"], sd["model.map_layer0.weight"].T)
    np.testing.assert_array_equal(p["out_norm"]["scale"], sd["model.out_norm.weight"])


def test_strict_errors_name_every_key():
    d, cfg, sd = load_case("ddpmpp_cond_edm")
    bad = dict(sd)
    del bad["model.map_layer1.bias"]
    bad["model.enc.16x16_conv.weight"] = bad["model.enc.16x16_conv.weight"][:, :2]
    bad["model.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as e:
        state_dict_to_flax(bad, cfg)
    msg = str(e.value)
    for key in ("model.map_layer1.bias", "model.enc.16x16_conv.weight", "model.extra.weight"):
        assert key in msg
    bad = dict(sd)
    key = next(k for k in sd if k.endswith("resample_filter"))
    bad[key] = bad[key] * 2
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        state_dict_to_flax(bad, cfg)
    params = state_dict_to_flax(sd, cfg)
    del params["model"]["map_label"]
    params["model"]["map_layer0"]["kernel"] = params["model"]["map_layer0"]["kernel"][:3]
    with pytest.raises(ValueError) as e:
        flax_to_state_dict(params, cfg)
    assert "map_label/kernel" in str(e.value) and "model.map_layer0.weight" in str(e.value)


def test_fourier_freqs_travel_as_params():
    cfg = dict(edm_config_presets()["cifar10-32x32-cond-ve"], model_channels=16, channel_mult=[1, 2],
               num_blocks=1, img_resolution=8, attn_resolutions=[4])
    shapes = _param_shapes(cfg)
    params = jax.tree.map(lambda l: np.random.RandomState(0).randn(*l.shape).astype(np.float32), shapes)
    sd = flax_to_state_dict(params, cfg)
    assert sd["model.map_noise.freqs"].shape == (16,)
    assert "model.enc.4x4_aux_residual.resample_filter" in sd
    np.testing.assert_array_equal(sd["model.enc.4x4_aux_residual.resample_filter"][0, 0],
                                  np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64)
    back = state_dict_to_flax(sd, cfg)
    np.testing.assert_array_equal(back["model"]["map_noise"]["freqs"], params["model"]["map_noise"]["freqs"])


PUBLISHED = {"cifar10-32x32-uncond-vp": 55_733_891, "cifar10-32x32-cond-vp": 55_735_299,
             "cifar10-32x32-uncond-ve": 56_397_827 + 128}  # + freqs, a buffer kept in params


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_parameter_counts(name):
    shapes = _param_shapes(edm_config_presets()[name])
    assert sum(int(np.prod(l.shape)) for l in jax.tree.leaves(shapes)) == PUBLISHED[name]


@pytest.mark.slow
def test_imagenet_adm_parameter_count():
    shapes = _param_shapes(edm_config_presets()["imagenet-64x64-cond-adm"])
    assert sum(int(np.prod(l.shape)) for l in jax.tree.leaves(shapes)) == 295_899_267


@pytest.mark.parametrize("enc,dec,emb", [("skip", "skip", "positional"), ("residual", "skip", "fourier"),
                                         ("residual", "standard", "fourier")])
def test_song_unet_variants_match_key_catalogue(enc, dec, emb):
    """Encoder/decoder variants without golden files: the Flax tree maps onto the official key catalogue."""
    cfg = dict(precond="VEPrecond", model_type="SongUNet", img_resolution=8, img_channels=3, model_channels=16,
               channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], encoder_type=enc, decoder_type=dec,
               embedding_type=emb, resample_filter=[1, 3, 3, 1], dropout=0.0)
    shapes = _param_shapes(cfg)
    params = jax.tree.map(lambda l: np.ones(l.shape, np.float32), shapes)
    sd = flax_to_state_dict(params, cfg)
    if enc == "skip":
        assert "model.enc.4x4_aux_down.resample_filter" in sd and sd["model.enc.4x4_aux_skip.weight"].shape == (
            16, 3, 1, 1)
    if dec == "skip":
        assert "model.dec.8x8_aux_up.resample_filter" in sd and "model.dec.4x4_aux_conv.weight" in sd
    jax.tree.map(np.testing.assert_array_equal, state_dict_to_flax(sd, cfg), params)
    out = build_network(cfg).apply({"params": params}, np.zeros((2, 3, 8, 8), np.float32), 1.0)
    assert out.shape == (2, 3, 8, 8) and bool(np.isfinite(out).all())


def test_bad_configs_raise():
    base = dict(edm_config_presets()["cifar10-32x32-uncond-vp"], img_resolution=8, channel_mult=[1],
                num_blocks=1)
    with pytest.raises(ValueError, match="precond"):
        build_network(dict(base, precond="Nope"))
    with pytest.raises(ValueError, match="unknown"):
        build_network(dict(base, bogus=1))
    with pytest.raises(ValueError, match="groups"):
        _param_shapes(dict(base, model_channels=144))
    with pytest.raises(ValueError, match="encoder_type"):
        _param_shapes(dict(base, encoder_type="fancy"))
