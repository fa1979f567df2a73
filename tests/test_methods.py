"""The method registry: every method runs through the one step, a new method is one entry, dropout conventions."""

import dataclasses

import jax
import numpy as np
import pytest

from di_jax import losses, methods
from di_jax.configs import toy_ring
from di_jax.nets import families
from di_jax.teachers import build_teacher
from di_jax.train import sharding
from di_jax.train.setup import setup


def _config(name, **kw):
    c = toy_ring.get_config(name)
    c.batch_size, c.networks.hidden, c.num_devices = 64, 32, 1
    for k, v in kw.items():
        node, _, leaf = k.rpartition(".")
        (c[node] if node else c)[leaf] = v
    return c


def _first_step_metrics(config, nets=None):
    s = setup(config, nets=nets, mesh=sharding.make_mesh(1))
    _, m = s.compiled(s.state, s.teacher_params)
    return jax.device_get(m)


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_registered_method_runs_and_logs_its_diagnostics(name):
    m = _first_step_metrics(_config(name))
    gen_aux = {k for k in m if k.startswith("gen/")}
    assert gen_aux, "a method's loss must report diagnostics"
    assert "gen_loss" not in m                    # the surrogate's value means nothing: not logged
    assert int(m["skipped_gen"]) == 0 and np.isfinite(float(m["gen_grad_norm"])) and float(m["gen_grad_norm"]) > 0
    assert all(np.isfinite(float(m[k])) and float(m[k]) >= 0 for k in gen_aux)
    assert ("fake/error" in m) == methods.get(name).needs_fake


def _half_di_loss(x0, sigma, noise, fake_denoise, teacher_denoise, labels=None, weight=None, scale=1.0):
    value, aux = losses.di_generator_loss(x0, sigma, noise, fake_denoise, teacher_denoise, labels, weight)
    return scale * value, aux


def test_a_new_method_is_one_registry_entry(monkeypatch):
    """Registering a method (here DI at half scale) is all it takes: validation, noise levels, step."""
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    methods.register(methods.Method("di_half", _half_di_loss, sigma_gen=dict(kind="edm"),
                                    options=lambda config: dict(scale=0.5)))
    half = _first_step_metrics(_config("di_half"))
    full = _first_step_metrics(_config("di"))
    # same streams, same noise levels: the gradient is exactly half of DI's
    np.testing.assert_allclose(half["gen_grad_norm"], 0.5 * full["gen_grad_norm"], rtol=1e-6)
    np.testing.assert_allclose(half["gen/denoiser_gap"], full["gen/denoiser_gap"], rtol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.Method("di_half", _half_di_loss, sigma_gen=dict(kind="edm")))


def test_unknown_method_and_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="config.method must be one of"):
        setup(_config("sim", **{"method": "gan"}), compile=False)
    with pytest.raises(ValueError, match="distance"):
        setup(_config("sim", **{"distance.name": "cosine"}), compile=False)
    with pytest.raises(ValueError, match="dropout"):
        methods.Method("x", _half_di_loss, sigma_gen=dict(kind="edm"), dropout="sometimes")


def test_auto_noise_levels_are_the_methods_own():
    for name, method in methods.METHODS.items():
        c = _config(name, **{"sigma_gen.kind": "auto", "sigma_fake.kind": "auto"})
        assert methods.sigma_spec(c, "sigma_gen") == dict(method.sigma_gen)
        assert methods.sigma_spec(c, "sigma_fake") == dict(method.sigma_fake)
    c = _config("sid", **{"sigma_gen.kind": "log_uniform"})
    assert methods.sigma_spec(c, "sigma_gen") == dict(kind="log_uniform")


def _dropout_nets(config):
    """MLP nets whose fake and teacher denoisers add 0.1 N(0, I) drawn from their dropout rng (if any)."""
    teacher = build_teacher(config)
    base = families.mlp_networks(config.networks, teacher)
    noisy = lambda d: lambda p, x, s, l, rng=None: d(p, x, s, l) + (
        0.0 if rng is None else 0.1 * jax.random.normal(rng, x.shape))
    return base, base._replace(fake_denoise=noisy(base.fake_denoise), teacher_denoise=noisy(base.teacher_denoise))


@pytest.mark.parametrize("convention", methods.DROPOUT_CONVENTIONS)
def test_generator_phase_dropout_conventions(convention, monkeypatch):
    """'shared': teacher and fake run in train mode with ONE mask (DI's score difference then cancels the
    mask exactly); 'eval' and 'off': both deterministic."""
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    for name in ("di", "sim"):
        methods.METHODS[name] = dataclasses.replace(methods.METHODS[name], dropout=convention)
    deterministic, noisy = {}, {}
    for name in ("di", "sim"):
        config = _config(name, **{"fake_optim.lr": 1e-30})     # keep the fake score where it starts
        base, with_dropout = _dropout_nets(config)
        deterministic[name] = float(_first_step_metrics(config, base)["gen_grad_norm"])
        noisy[name] = float(_first_step_metrics(config, with_dropout)["gen_grad_norm"])
    # DI uses only D_fake - D_teacher: one shared mask cancels, so DI equals the deterministic step
    np.testing.assert_allclose(noisy["di"], deterministic["di"], rtol=1e-5)
    if convention in ("eval", "off"):
        np.testing.assert_allclose(noisy["sim"], deterministic["sim"], rtol=1e-5)
    else:       # SIM also uses D_fake - x0: train mode shows
        assert abs(noisy["sim"] - deterministic["sim"]) > 1e-3 * deterministic["sim"]
