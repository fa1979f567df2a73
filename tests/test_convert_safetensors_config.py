"""save_safetensors: official key names, the config in the metadata, strict errors on bad metadata."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from di_jax.convert import CheckpointError, load_teacher, read_checkpoint, save_safetensors
from di_jax.convert.edm_mapping import flax_to_state_dict
from di_jax.nets import build_network

CFG = dict(precond="EDMPrecond", model_type="SongUNet", img_resolution=8, img_channels=1, label_dim=10,
           model_channels=8, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[], sigma_data=0.5)


@pytest.fixture(scope="module")
def params():
    net = build_network(CFG)
    return net.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 8, 8)), jnp.ones((1,)),
                    class_labels=jnp.zeros((1, 10)))["params"]


def test_round_trip_needs_no_config(tmp_path, params):
    path = str(tmp_path / "t.safetensors")
    save_safetensors(path, params, CFG)
    assert set(load_file(path)) == set(flax_to_state_dict(jax.device_get(params), read_checkpoint(path)[1]))
    module, loaded = load_teacher(path)
    assert module.precond == "EDMPrecond" and module.label_dim == 10
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), loaded)
    x, s, y = jnp.ones((2, 1, 8, 8)), jnp.array([0.5, 3.0]), jax.nn.one_hot(jnp.array([1, 7]), 10)
    np.testing.assert_array_equal(module.apply({"params": loaded}, x, s, class_labels=y),
                                  build_network(CFG).apply({"params": params}, x, s, class_labels=y))


@pytest.mark.parametrize("metadata, message", [
    ({"edm_config": "{not json"}, "is not JSON"),
    ({"edm_config": json.dumps({"img_resolution": 8})}, "'precond'"),
    ({"edm_config": json.dumps([1, 2])}, "'precond'"),
])
def test_bad_metadata_is_a_one_line_error(tmp_path, params, metadata, message):
    path = str(tmp_path / "bad.safetensors")
    save_safetensors(path, params, CFG)
    save_file(load_file(path), path, metadata=metadata)
    with pytest.raises(CheckpointError, match=message) as e:
        load_teacher(path)
    assert "\n" not in str(e.value)


def test_without_metadata_the_wrapper_must_be_given(tmp_path, params):
    path = str(tmp_path / "plain.safetensors")
    save_safetensors(path, params, CFG)
    save_file(load_file(path), path)
    with pytest.raises(CheckpointError, match="precond"):
        load_teacher(path)
    module, _ = load_teacher(path, config={"precond": "EDMPrecond"})
    assert module.precond == "EDMPrecond"
