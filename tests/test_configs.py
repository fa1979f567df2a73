"""The configs shipped in the package: found by name from anywhere, valid, and validated before compiling."""

import os

import pytest

from di_jax import configs
from di_jax.configs import (
    base,
    cifar10_cond_di_stylegan2,
    digits_di_gan,
    digits_sim,
    pixart_sim,
    toy_grid,
    toy_mixture,
    toy_ring,
)
from di_jax.main import _resolve_config_names


def test_packaged_names_resolve_to_package_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                          # no repository around
    from test_recipes import RECIPES
    assert set(configs.NAMES) == {"digits_sim", "toy_ring", "toy_grid", "toy_mixture", *RECIPES,    # not base, paper
                                  "digits_di_gan", "cifar10_cond_di_stylegan2", "pixart_sim"}
    for spec, name, arg in [("toy_ring:sim", "toy_ring", ":sim"), ("digits_sim", "digits_sim", ""),
                            ("configs/toy_grid.py:di", "toy_grid", ":di")]:
        got = configs.resolve(spec)
        assert got == os.path.join(configs.DIR, name + ".py") + arg and os.path.exists(got.split(":")[0])
    own = tmp_path / "mine.py"
    own.write_text("from di_jax.configs.base import base_config as get_config\n")
    assert configs.resolve(str(own)) == str(own)         # a user's file passes through
    assert configs.resolve("not_a_config") == "not_a_config"
    argv = _resolve_config_names(["prog", "--config", "toy_ring:di", "--config=digits_sim", "--workdir=x"])
    assert argv[2] == configs.resolve("toy_ring:di") and argv[3] == "--config=" + configs.resolve("digits_sim")


@pytest.mark.parametrize("make", [lambda: digits_sim.get_config(), lambda: toy_ring.get_config("di"),
                                  lambda: toy_grid.get_config("sid"), lambda: toy_mixture.get_config("dmd"),
                                  base.base_config, digits_di_gan.get_config, cifar10_cond_di_stylegan2.get_config,
                                  pixart_sim.get_config])
def test_every_packaged_config_validates(make):
    base.validate(make(), num_devices=1)


@pytest.mark.parametrize("field,value,match", [
    ("teacher.kind", "stylegan", "config.teacher.kind must be one of"),
    ("networks.kind", "dit", "config.networks.kind must be one of"),
    ("eval.kind", "fid", "config.eval.kind must be one of"),
    ("remat", "some", "config.remat must be one of"),
    ("networks.dtype", "float16", "config.networks.dtype must be one of"),
])
def test_registry_fields_are_one_line_errors(field, value, match):
    c = toy_ring.get_config("sim")
    node, _, leaf = field.rpartition(".")
    (c[node] if node else c)[leaf] = value
    with pytest.raises(ValueError, match=match) as e:
        base.validate(c, num_devices=1)
    assert "\n" not in str(e.value)


def test_sampler_arguments_with_kind_auto_are_refused():
    """kind 'auto' takes the method's own sampler, which would silently ignore a user's t_max or p_mean."""
    c = toy_ring.get_config("sid")
    c.sigma_gen.t_max = 0.5
    with pytest.raises(ValueError, match=r"config.sigma_gen sets t_max with kind 'auto'.*kind='sid'") as e:
        base.validate(c, num_devices=1)
    assert "\n" not in str(e.value)
    c.sigma_gen.kind = "sid"                             # named: the argument is used
    base.validate(c, num_devices=1)
