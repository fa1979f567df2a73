"""DI with a StyleGAN2-ADA generator (issue 16, DI §4.2): the generator registry, its one-line errors, the
generator file format, StyleGAN2-ADA's EMA rule, and the DI step with a tiny random StyleGAN2 generator
(one jitted step, 8 devices = 1 device, bitwise resume)."""

import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from di_jax.configs import base, cifar10_cond_di_stylegan2, digits_di_gan
from di_jax.convert import CheckpointError, save_safetensors
from di_jax.convert import stylegan2_pickle as sgp
from di_jax.nets import build_network, families
from di_jax.teachers import digits as digits_teacher
from di_jax.teachers.edm import edm_teacher
from di_jax.train import loop, sharding
from di_jax.train.state import edm_ema_decay, ema_decay, stylegan2_ema_decay

TINY_UNET = dict(digits_teacher.CONFIG, model_channels=8, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[],
                 dropout=0.3)
TINY_GAN = dict(z_dim=8, c_dim=10, w_dim=16, img_resolution=8, img_channels=1, mapping_kwargs=dict(num_layers=2),
                synthesis_kwargs=dict(channel_base=64, channel_max=16, conv_clamp=256))


def tiny_gan(path, seed=0, **changes):
    """A random StyleGAN2-ADA generator of TINY_GAN (+ changes) written with save_generator: every variable
    moved by 0.05 N(0, 1) and noise strengths 0.2, so the noise inputs matter; returns (path, kwargs)."""
    kwargs = dict(TINY_GAN, **changes)
    module = sgp.build_generator(sgp.check_generator_kwargs(kwargs))
    c = jnp.zeros((1, module.c_dim)) if module.c_dim else None
    init = jax.jit(lambda key: module.init(key, jnp.zeros((1, module.z_dim)), c, noise_mode="const"))
    variables = init(jax.random.PRNGKey(seed))
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    variables = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    variables = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.full_like(x, 0.2) if p[-1].key == "noise_strength" else x, variables)
    sgp.save_generator(path, kwargs, variables)
    return str(path), kwargs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(tiny teacher .safetensors, tiny GAN .safetensors) for the whole module."""
    root = tmp_path_factory.mktemp("gan")
    net = build_network(TINY_UNET)
    params = jax.jit(lambda key: net.init(key, jnp.zeros((1, 1, 8, 8)), jnp.ones((1,)),
                                          class_labels=jnp.zeros((1, 10)))["params"])(jax.random.PRNGKey(0))
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    teacher = str(root / "teacher.safetensors")
    save_safetensors(teacher, params, TINY_UNET)
    gan, _ = tiny_gan(root / "gan.safetensors")
    return teacher, gan


def _teacher(files):
    from di_jax.convert import load_teacher
    return edm_teacher(*load_teacher(files[0]))


def _config(files, batch=16):
    c = digits_di_gan.get_config()
    c.teacher.path, c.networks.generator.path = files
    c.batch_size, c.num_devices = batch, 1
    for opt in (c.gen_optim, c.fake_optim):     # Adam's eps large enough that a gradient entry near 0 does not
        opt.update(lr=1e-3, eps=1e-3)           # turn rounding differences into a +-lr step
    c.eval.kind = "none"
    return c


# ------------------------------------------------------------------------------ registry, generate

def test_stylegan2_generator_replaces_only_the_generator(files):
    teacher = _teacher(files)
    config = _config(files)
    nets = families.build_networks(config.networks, teacher)
    module, variables = sgp.load_generator(files[1])
    assert nets.latent_shape == (8,) and nets.data_shape == (1, 8, 8) and nets.label_dim == 10
    assert nets.fake_denoise is teacher.denoise and nets.teacher_denoise is teacher.denoise
    gen = nets.init_generator(jax.random.PRNGKey(3), teacher.params)
    assert set(gen) == {"mapping", "synthesis"}                 # torch parameters only: buffers are constants
    for a, b in zip(jax.tree.leaves(gen), jax.tree.leaves(variables["params"])):
        np.testing.assert_array_equal(a, b)
    z = jax.random.normal(jax.random.PRNGKey(0), (4, 8))
    c = jax.nn.one_hot(jnp.arange(4), 10)
    want = module.apply(variables, z, c, noise_mode="const")
    np.testing.assert_array_equal(nets.generate(gen, z, c, None), want)          # rng None: deterministic
    r1, r2 = nets.generate(gen, z, c, jax.random.PRNGKey(1)), nets.generate(gen, z, c, jax.random.PRNGKey(2))
    want_random = module.apply(variables, z, c, noise_mode="random", rngs={"noise": jax.random.PRNGKey(1)})
    np.testing.assert_array_equal(r1, want_random)                               # an rng: random noise
    assert float(jnp.abs(r1 - r2).max()) > 1e-3 and float(jnp.abs(r1 - want).max()) > 1e-3
    config.networks.generator.update(noise_mode="none", truncation_psi=0.5, truncation_cutoff=1)
    nets = families.build_networks(config.networks, teacher)
    np.testing.assert_allclose(nets.generate(gen, z, c, None),
                               module.apply(variables, z, c, 0.5, 1, noise_mode="none"), rtol=0, atol=0)
    # the default stays the teacher copy: no generator entry, or kind teacher_copy
    plain = families.build_networks(ml_collections.ConfigDict(dict(kind="edm", sigma_init=2.5)), teacher)
    assert plain.latent_shape == (1, 8, 8)
    config.networks.generator = ml_collections.ConfigDict(dict(kind="teacher_copy"))
    config.networks.sigma_init = 2.5
    assert families.build_networks(config.networks, teacher).latent_shape == (1, 8, 8)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


@pytest.mark.parametrize("changes,match", [
    (dict(img_resolution=16), r"makes images \(1, 16, 16\).*the teacher's data are \(1, 8, 8\)"),
    (dict(img_channels=3), r"makes images \(3, 8, 8\).*the teacher's data are \(1, 8, 8\)"),
    (dict(c_dim=0), r"takes 0 classes \(c_dim\), the teacher 10"),
])
def test_generator_that_does_not_fit_the_teacher_is_one_line(files, tmp_path, changes, match):
    config = _config(files)
    config.networks.generator.path, _ = tiny_gan(tmp_path / "other.safetensors", **changes)
    with pytest.raises(ValueError, match=match) as e:
        families.build_networks(config.networks, _teacher(files))
    one_line(e)


def test_missing_snapshot_is_one_line(files, tmp_path):
    teacher = _teacher(files)
    config = cifar10_cond_di_stylegan2.get_config()
    config.networks.generator.path = ""
    with pytest.raises(ValueError, match="generator.path is empty: this recipe refines the official StyleGAN2-ADA "
                                         "snapshot cifar10.pkl") as e:
        families.build_networks(config.networks, teacher)
    one_line(e)
    config.networks.generator.path = str(tmp_path / "absent.pkl")
    with pytest.raises(FileNotFoundError, match="config.networks.generator.path: no such file") as e:
        families.build_networks(config.networks, teacher)
    one_line(e)
    config.networks.generator.path = files[0]      # an EDM network, not a generator
    with pytest.raises(CheckpointError, match="without 'stylegan2_generator_kwargs' metadata: an EDM network") as e:
        families.build_networks(config.networks, teacher)
    one_line(e)


@pytest.mark.parametrize("field,value,match", [
    ("networks.generator.kind", "biggan", "config.networks.generator.kind must be one of"),
    ("networks.kind", "mlp", r"generator.kind='stylegan2' needs config.networks.kind in \('edm',\)"),
    ("networks.generator.noise_mode", "random", "config.networks.generator.noise_mode must be one of"),
    ("networks.generator.truncation_psi", float("nan"), "truncation_psi must be a finite number"),
    ("ema.kind", "polyak", "config.ema.kind must be one of"),
    ("ema.ema_kimg", 0.0, "config.ema.ema_kimg must be > 0"),
    ("ema.ema_rampup", -0.1, "config.ema.ema_rampup must be >= 0"),
    ("ema.halflife_kimg", 5.0, "config.ema with kind 'stylegan2' takes exactly ema_kimg, ema_rampup"),
])
def test_bad_generator_and_ema_fields_are_one_line(files, field, value, match):
    config = _config(files)
    node, _, leaf = field.rpartition(".")
    target = config
    for part in node.split("."):
        target = target[part]
    target[leaf] = value
    with pytest.raises(ValueError, match=match) as e:
        base.validate(config, num_devices=1)
    one_line(e)


@pytest.mark.parametrize("make", [digits_di_gan.get_config, cifar10_cond_di_stylegan2.get_config])
def test_gan_configs_validate_and_cite_table_9(make):
    config = make()
    base.validate(config, num_devices=8)
    assert config.method == "di" and config.networks.generator.kind == "stylegan2" and config.ema.kind == "stylegan2"
    assert config.gen_optim.b1 == config.fake_optim.b1 == 0.0 and config.gen_optim.b2 == config.fake_optim.b2 == 0.99
    if make is cifar10_cond_di_stylegan2.get_config:     # DI Table 9 / StyleGAN2-ADA's cifar preset
        assert config.batch_size == 512 and config.gen_optim.lr == config.fake_optim.lr == 1.5e-6
        assert 6000 <= config.num_steps <= 16000
        assert (config.ema.ema_kimg, config.ema.ema_rampup) == (500.0, 0.05)
        assert config.networks.generator.official == "cifar10.pkl" and not config.networks.generator.path
    else:
        assert os.path.exists(config.networks.generator.path)


# ----------------------------------------------------------------------------------------- EMA

def test_stylegan2_ema_rule_against_a_hand_computation():
    """StyleGAN2-ADA training_loop.py: ema_nimg = ema_kimg * 1000, min(ema_nimg, cur_nimg * ema_rampup)
    with cur_nimg the images *before* the step, beta = 0.5 ** (batch / max(ema_nimg, 1e-8))."""
    batch, ema_kimg, ema_rampup = 64, 2.0, 0.05
    for step in (0, 1, 7, 100, 624, 625, 626, 5000):
        cur_nimg = step * batch
        ema_nimg = min(ema_kimg * 1000, cur_nimg * ema_rampup)
        want = 0.5 ** (batch / max(ema_nimg, 1e-8))
        got = float(ema_decay(jnp.int32(step), batch, kind="stylegan2", ema_kimg=ema_kimg, ema_rampup=ema_rampup))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, err_msg=str(step))
        # the same formula as EDM's rule with these values (EDM took it from this loop)
        assert got == float(edm_ema_decay(jnp.int32(step), batch, ema_kimg, ema_rampup))
    assert float(stylegan2_ema_decay(jnp.int32(0), batch, ema_kimg, ema_rampup)) == 0.0
    for no_rampup in (None, 0.0):          # official ema_rampup=None: the half-life from the first step
        np.testing.assert_allclose(float(stylegan2_ema_decay(jnp.int32(0), batch, ema_kimg, no_rampup)),
                                   0.5 ** (batch / 2000.0), rtol=1e-6)
    with pytest.raises(ValueError, match="kind='stylegan2' takes ema_kimg"):
        ema_decay(jnp.int32(0), batch, 5.0, 0.05, kind="stylegan2", ema_kimg=5.0)


# --------------------------------------------------------------------------------- the DI step

def _steps(config, nets, teacher, mesh, n):
    """(Setup, host state, per-step metrics) after `n` compiled steps from a fresh state."""
    from di_jax.train.setup import setup

    s = setup(config, teacher=teacher, mesh=mesh, nets=nets)
    state, metrics = s.state, []
    for _ in range(n):
        state, m = s.compiled(state, s.teacher_params)
        metrics.append(jax.device_get(m))
    return s, jax.device_get(state), metrics


@pytest.mark.slow     # two compiles of the DI step with a StyleGAN2 generator: ~1-3 min on 2 cores
def test_di_step_with_stylegan2_generator_8_devices_equal_1_device(files):
    """Two DI steps (dropout 'shared': the generator phase draws random StyleGAN noise per example) give the
    same state replicated on 8 devices as on 1; one compiled step, which all-reduces on 8 devices, moves
    the generator, and applies StyleGAN2-ADA's EMA rule (beta of steps 0 and 1 by hand)."""
    config = _config(files)
    teacher = _teacher(files)
    nets = families.build_networks(config.networks, teacher)
    _, s1, m1 = _steps(config, nets, teacher, sharding.make_mesh(1), 2)
    config.num_devices = 8
    s, s8, _ = _steps(config, nets, teacher, sharding.make_mesh(8), 2)
    assert "all-reduce" in s.compiled.as_text()
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s8)):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6)
    assert set(s1.gen_params) == {"mapping", "synthesis"} and int(s1.skipped_gen) == int(s1.skipped_fake) == 0
    start = nets.init_generator(None, teacher.params)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(s1.gen_params)))
    assert moved > 1e-4
    # ema_kimg 5, ramp-up 0.05, batch 16: step 0 has seen no image (beta 0), step 1 has seen 16
    assert float(m1[0]["ema_beta"]) == 0.0
    np.testing.assert_allclose(float(m1[1]["ema_beta"]), 0.5 ** (16 / (16 * 0.05)), rtol=1e-5)


@pytest.mark.slow     # two training runs with checkpoints: minutes on 2 cores
def test_di_with_stylegan2_generator_resumes_bitwise(files, tmp_path):
    """SIGTERM after step 2 of 4, then the same run again: the state equals the uninterrupted run's bit for bit."""
    from test_train_loop import _assert_bitwise_equal

    config = _config(files, batch=8)
    config.num_steps, config.log_every, config.ckpt_every = 4, 1, 1000
    reference = loop.train_and_evaluate(config, str(tmp_path / "ref"))

    def terminate(step, state):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = loop.train_and_evaluate(config, str(tmp_path / "run"), on_step=terminate)
    assert int(stopped.step) == 2
    resumed = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert int(resumed.step) == 4
    _assert_bitwise_equal(resumed, reference)
