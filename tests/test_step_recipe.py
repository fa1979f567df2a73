"""The train step's recipe against the official loops: a fresh z per phase (unless
`share_generator_pass`), each method's dropout convention (di_jax.methods), separate dropout keys,
EDM's EMA ramp-up, and EDM augmentation in the fake phase only."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from di_jax import losses
from di_jax.configs import toy_ring
from di_jax.nets import families
from di_jax.teachers import Teacher, build_teacher
from di_jax.train import sharding
from di_jax.train.setup import setup
from di_jax.train.state import ema_decay

NONE = np.zeros(2, np.uint32) - 1          # recorded in place of a missing dropout rng


def _config(method, **kw):
    c = toy_ring.get_config(method)
    c.batch_size = 8
    c.networks.hidden = 16
    for k, v in kw.items():
        c[k] = v
    return c


def _key_data(rng):
    return NONE if rng is None else jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) \
        else rng


class _Recorder:
    """Wraps MLP networks so every call reports (role, inputs, dropout key) to the host."""

    def __init__(self, nets, batch):
        self.calls = []
        self.nets = nets
        self.batch = batch

    def _log(self, role, *arrays):
        jax.debug.callback(lambda *a: self.calls.append((role,) + tuple(np.asarray(x) for x in a)), *arrays,
                           ordered=True)

    def networks(self):
        n = self.nets

        def generate(params, z, labels, rng=None):
            x = n.generate(params, z, labels, rng)
            self._log("generate", x, _key_data(rng))
            return x

        def fake_denoise(params, x, sigma, labels, rng=None, augment_labels=None):
            self._log("fake", x, _key_data(rng))
            return n.fake_denoise(params, x, sigma, labels, rng)

        def teacher_denoise(params, x, sigma, labels, rng=None):
            self._log("teacher", x, _key_data(rng))
            return n.teacher_denoise(params, x, sigma, labels, rng)

        return n._replace(generate=generate, fake_denoise=fake_denoise, teacher_denoise=teacher_denoise)

    def of(self, role):
        """(x, key) per network call of `role`. A train-mode call runs per example (`batch_apply.per_example`,
        one report per row, each with its example's key): its rows are joined back into one call, x
        concatenated and the keys stacked."""
        out, rows = [], []
        for _, x, key in (c for c in self.calls if c[0] == role):
            if np.array_equal(key, NONE):
                out.append((x, key))
                continue
            rows.append((x, key))
            if sum(len(r[0]) for r in rows) == self.batch:
                out.append((np.concatenate([r[0] for r in rows]), np.stack([r[1] for r in rows])))
                rows = []
        assert not rows, "a train-mode call did not report all its rows"
        return out


def _one_step(config, monkeypatch=None):
    """Runs one compiled step on recorded MLP networks; returns the recorder and the DSM phase's x0s."""
    teacher = build_teacher(config)
    rec = _Recorder(families.mlp_networks(config.networks, teacher), config.batch_size)
    nets = rec.networks()
    dsm_x0 = []
    if monkeypatch is not None:
        def dsm(denoise, x0, sigma, noise, labels=None, weight=None):
            jax.debug.callback(lambda a: dsm_x0.append(np.asarray(a)), x0, ordered=True)
            return losses.dsm_loss.__wrapped__(denoise, x0, sigma, noise, labels, weight)
        dsm.__wrapped__ = losses.dsm_loss
        monkeypatch.setattr(losses, "dsm_loss", functools.update_wrapper(dsm, losses.dsm_loss))
    s = setup(config, teacher=Teacher(teacher.params, nets.teacher_denoise, nets.data_shape, 0),
              mesh=sharding.make_mesh(1), nets=nets)
    state, _ = s.compiled(s.state, s.teacher_params)
    jax.block_until_ready(state)
    jax.effects_barrier()
    return rec, dsm_x0


@pytest.mark.parametrize("share", [False, True])
def test_fresh_generator_samples_per_phase_unless_shared(share, monkeypatch):
    """Official DI / SiD: the fake phase's samples come from their own z with the generator in eval mode;
    the generator phase draws a fresh z in train mode. `share_generator_pass` feeds one pass to both."""
    config = _config("sim", share_generator_pass=share, fake_steps=2)
    rec, dsm_x0 = _one_step(config, monkeypatch)
    gens = rec.of("generate")
    train_x = [x for x, key in gens if not np.array_equal(key, NONE)]
    eval_x = [x for x, key in gens if np.array_equal(key, NONE)]
    assert len(train_x) == 1 and len(dsm_x0) == 2              # one generator-phase pass, two DSM updates
    assert len(eval_x) == (1 if share else 2)                   # the second fake update always draws afresh
    np.testing.assert_array_equal(dsm_x0[1], eval_x[-1])
    assert not np.allclose(dsm_x0[1], train_x[0])
    if share:
        np.testing.assert_array_equal(dsm_x0[0], train_x[0])
    else:
        np.testing.assert_array_equal(dsm_x0[0], eval_x[0])
        assert not np.allclose(dsm_x0[0], train_x[0]) and not np.allclose(eval_x[0], eval_x[1])


@pytest.mark.parametrize("method,convention", [("di", "shared"), ("sim", "shared"), ("sid", "eval"),
                                                ("dmd", "off"), ("sds", "eval")])
def test_dropout_convention(method, convention):
    """Which network gets a dropout key in which phase (table in di_jax.methods), and no key is reused."""
    from di_jax import methods
    assert methods.get(method).dropout == convention
    rec, _ = _one_step(_config(method, fake_steps=2))
    fake_calls, teacher_calls = rec.of("fake"), rec.of("teacher")
    needs_fake = methods.get(method).needs_fake
    dsm_keys = [k for _, k in fake_calls[:2]] if needs_fake else []
    gen_fake_keys = [k for _, k in fake_calls[2:]] if needs_fake else []
    teacher_keys = [k for _, k in teacher_calls]
    gen_keys = [k for _, k in rec.of("generate") if not np.array_equal(k, NONE)]
    if convention == "off":
        assert not gen_keys and all(np.array_equal(k, NONE) for k in dsm_keys + gen_fake_keys + teacher_keys)
        return
    assert len(gen_keys) == 1                                   # the generator phase's pass, train mode
    used = [gen_keys[0]] + dsm_keys
    if needs_fake:
        assert all(not np.array_equal(k, NONE) for k in dsm_keys)  # DSM: fake network in train mode
    if convention == "shared":
        assert all(np.array_equal(k, teacher_keys[0]) for k in teacher_keys + gen_fake_keys)
        assert not np.array_equal(teacher_keys[0], NONE)
        used.append(teacher_keys[0])
    else:
        assert all(np.array_equal(k, NONE) for k in teacher_keys + gen_fake_keys)
    distinct = {tuple(np.ravel(k).tolist()) for k in used}
    assert len(distinct) == len(used), "a dropout key is used by two different draws"


def test_shared_convention_means_one_mask_on_edm_networks():
    """Same key -> the teacher and the fake score drop the same units (same architecture): with equal
    parameters their outputs agree exactly; another key changes them."""
    from di_jax.bench.networks import network_config, random_params
    from di_jax.nets import build_network
    from di_jax.teachers.edm import edm_teacher, with_dropout

    cfg = network_config("tiny")
    module = with_dropout(build_network(dict(cfg)), 0.5)
    teacher = edm_teacher(module, random_params(module, cfg, 0))     # no zero layer: dropout shows
    nets = families.teacher_copy_networks(_config("di").networks, teacher)
    x = jax.random.normal(jax.random.PRNGKey(1), (2,) + nets.data_shape)
    sigma = jnp.array([0.5, 2.0])
    labels = jax.nn.one_hot(jnp.array([0, 1]), nets.label_dim) if nets.label_dim else None
    k1, k2 = jax.random.PRNGKey(7), jax.random.PRNGKey(8)
    teacher_denoise, fake_denoise = jax.jit(nets.teacher_denoise), jax.jit(nets.fake_denoise)
    a = teacher_denoise(teacher.params, x, sigma, labels, k1)
    b = fake_denoise(teacher.params, x, sigma, labels, k1)
    c = fake_denoise(teacher.params, x, sigma, labels, k2)
    d = fake_denoise(teacher.params, x, sigma, labels, None)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(b, c) and not np.allclose(b, d)
    with pytest.raises(ValueError, match="config.networks.dropout"):
        with_dropout(module, 1.5)


def test_ema_rampup_counts_images_before_the_step():
    """EDM training_loop.py: halflife = min(halflife, cur_nimg * rampup) with cur_nimg the images seen
    *before* the step, beta = 0.5^(batch / max(halflife, 1e-8)); so beta = 0 at step 0."""
    batch, halflife_kimg, rampup = 64, 5.0, 0.05
    for step in (0, 1, 10, 1000, 5000):
        cur_nimg = step * batch
        want = 0.5 ** (batch / max(min(halflife_kimg * 1000, cur_nimg * rampup), 1e-8))
        got = float(ema_decay(jnp.int32(step), batch, halflife_kimg, rampup))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30)
    assert float(ema_decay(jnp.int32(0), batch, halflife_kimg, rampup)) == 0.0
    np.testing.assert_allclose(float(ema_decay(jnp.int32(0), batch, halflife_kimg, 0.0)),
                               0.5 ** (batch / 5000.0), rtol=1e-6)
