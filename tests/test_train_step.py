"""The compiled train step: sharding invariance, labels, non-finite skipping, fixed point at the teacher,
the method registry (a new method is one entry), dropout conventions, config errors."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from di_jax.configs import toy_ring
from di_jax.nets import families
from di_jax.teachers import AffineGaussianGenerator, IsotropicGaussian, Teacher, build_teacher
from di_jax.train import sharding
from di_jax.train import step as step_lib
from di_jax.train.setup import init_state, setup


def _config(method="sim", batch=64, **kw):
    c = toy_ring.get_config(method)
    c.batch_size = batch
    c.networks.hidden = 32
    for k, v in kw.items():
        c[k] = v
    return c


def _mlp(config, label_dim=0):
    teacher = build_teacher(config)
    return teacher, families.mlp_networks(config.networks, teacher._replace(label_dim=label_dim))


def _run(config, nets, teacher_params, mesh, steps):
    """`steps` compiled steps from a fresh state; returns (host state, per-step metrics)."""
    teacher = Teacher(teacher_params, nets.teacher_denoise, nets.data_shape, nets.label_dim)
    s = setup(config, teacher=teacher, mesh=mesh, nets=nets)
    state, metrics = s.state, []
    for _ in range(steps):
        state, m = s.compiled(state, s.teacher_params)
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def _labelled(nets, label_dim=3):
    """MLP nets made class-conditional: the generator adds a fixed offset per class."""
    offsets = jnp.linspace(-1.0, 1.0, 2 * label_dim).reshape(label_dim, 2)

    def generate(params, z, labels, rng=None):
        return nets.generate(params, z, None, rng) + labels @ offsets

    return nets._replace(label_dim=label_dim, generate=generate)


@pytest.mark.parametrize("method,label_dim", [("sim", 0), ("di", 0), ("sim", 3)])
def test_8_devices_equal_1_device(method, label_dim):
    assert jax.device_count() == 8, "conftest must provide 8 simulated CPU devices"
    config = _config(method, fake_steps=2)
    teacher, nets = _mlp(config)
    if label_dim:
        nets = _labelled(nets, label_dim)
    s1, _ = _run(config, nets, teacher.params, sharding.make_mesh(1), 4)
    s8, _ = _run(config, nets, teacher.params, sharding.make_mesh(8), 4)
    assert int(s1.step) == int(s8.step) == 4
    for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s8)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    # and the step actually moved the parameters
    s0 = jax.device_get(init_state(config, nets, teacher.params, sharding.make_mesh(1)))
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree_util.tree_leaves(s0.gen_params),
                                                jax.tree_util.tree_leaves(s1.gen_params))]
    assert max(moved) > 1e-4


@pytest.mark.parametrize("data,fsdp", [(2, 4), (1, 8)])
def test_fsdp_equals_replicated(data, fsdp):
    """On 8 devices, data x fsdp meshes give the updates of the replicated (data = 8) step: parameters,
    fake score and EMA to 1e-6 after 4 steps (2 fake updates each, the generator's gradient clipped);
    the large leaves and their optimiser state really are split 1/fsdp per device."""
    config = _config("sim", fake_steps=2)
    config.gen_optim.clip = 0.05
    config.mesh.min_shard_size = 256          # the toy MLP's 32 x 32 kernels are sharded
    teacher, nets = _mlp(config)
    rep, _ = _run(config, nets, teacher.params, sharding.make_mesh(8), 4)
    config.mesh.fsdp = fsdp
    mesh = sharding.make_mesh(8, fsdp=fsdp)
    assert dict(mesh.shape) == {"data": data, "fsdp": fsdp}
    s = setup(config, teacher=Teacher(teacher.params, nets.teacher_denoise, nets.data_shape, 0), mesh=mesh,
              nets=nets)
    kernels = [x for x in jax.tree.leaves(s.state.gen_params) if x.size >= 256]
    assert kernels and all(x.addressable_shards[0].data.size == x.size // fsdp for x in kernels)
    nu = [x for x in jax.tree.leaves(s.state.gen_opt_state) if x.ndim == 1]
    assert nu and all(x.addressable_shards[0].data.size == x.size // fsdp for x in nu)
    state = s.state
    for _ in range(4):
        state, metrics = s.compiled(state, s.teacher_params)
    assert float(metrics["gen_grad_norm"]) > config.gen_optim.clip      # clipping was active
    got = jax.device_get(state)
    for name in ("gen_params", "fake_params", "ema_params"):
        for a, b in zip(jax.tree.leaves(getattr(rep, name)), jax.tree.leaves(getattr(got, name))):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6, err_msg=name)
    assert int(got.step) == 4 and int(got.skipped_gen) == int(rep.skipped_gen) == 0


@pytest.mark.parametrize("method", ["sim", "di", "dmd"])
def test_grad_accum_equals_one_batch(method):
    """grad_accum = 4 (micro-batches of 16 on 8 devices) gives the state of one batch of 64 to 1e-6
    after 3 steps of 2 fake updates (no dropout in the toy networks: masks would be drawn per micro-batch)."""
    config = _config(method, fake_steps=2)
    teacher, nets = _mlp(config)
    whole, _ = _run(config, nets, teacher.params, sharding.make_mesh(8), 3)
    config.grad_accum = 4
    acc, metrics = _run(config, nets, teacher.params, sharding.make_mesh(8), 3)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(acc)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    assert np.isfinite(float(metrics[-1]["x0_std"])) and float(metrics[-1]["x0_std"]) > 0


TINY_UNET = dict(model_channels=8, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[], dropout=0.3)


def _tiny_edm(dropout):
    """The digits config (DI, dropout 'shared') around a tiny random SongUNet teacher with dropout."""
    from di_jax.configs import digits_sim
    from di_jax.nets import build_network
    from di_jax.teachers import digits as digits_teacher
    from di_jax.teachers.edm import edm_teacher

    net_cfg = dict(digits_teacher.CONFIG, **dict(TINY_UNET, dropout=dropout))
    net = build_network(net_cfg)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 8, 8)), jnp.ones((1,)),
                      class_labels=jnp.zeros((1, 10)))["params"]
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    config = digits_sim.get_config("di")
    config.batch_size, config.fake_steps = 8, 1
    config.networks.dropout = dropout
    for opt in (config.gen_optim, config.fake_optim):     # Adam's eps large enough that a gradient entry
        opt.update(lr=1e-3, eps=1e-3)                     # near 0 does not turn rounding into a +-lr step
    config.mesh.min_shard_size = 256
    teacher = edm_teacher(net, params)
    return config, teacher, families.build_networks(config.networks, teacher)


@pytest.mark.slow     # three compiles of a UNet step: ~1.5 min on 2 idle cores
def test_dropout_masks_do_not_depend_on_mesh_fsdp_or_micro_batches():
    """Dropout masks are drawn per example (fold_in of the example's global index): an EDM network with
    dropout gives the same parameters after a DI step (dropout 'shared') replicated on 8 devices, with
    data 2 x fsdp 4 and with grad_accum = 2 on 1 device (1e-6)."""
    config, teacher, nets = _tiny_edm(0.3)
    rep, _ = _run(config, nets, teacher.params, sharding.make_mesh(8), 1)
    config.mesh.fsdp = 4
    fsdp, _ = _run(config, nets, teacher.params, sharding.make_mesh(8, fsdp=4), 1)
    config.mesh.fsdp, config.grad_accum = 1, 2
    acc, _ = _run(config, nets, teacher.params, sharding.make_mesh(1), 1)
    for other in (fsdp, acc):     # (the raveled optimiser state is laid out per FSDP shard: not compared)
        for name in ("gen_params", "fake_params", "ema_params"):
            for a, b in zip(jax.tree.leaves(getattr(rep, name)), jax.tree.leaves(getattr(other, name))):
                np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("train", [False, True])
def test_fsdp_gathers_one_layer_at_a_time(train):
    """`batch_apply` with fsdp 8: gradients (weights and input) of a deep Flax network equal the replicated
    ones (eval mode, and train mode: per-example vmap), and the compiled program's temporaries hold a few
    gathered layers, not all 12 (4 MiB each). A module with its own parameter and submodules (the scale)
    takes the leaf gathered upfront."""
    import flax.linen as nn

    from di_jax.train import batch_apply

    width, depth, batch = 1024, 12, 8

    class Deep(nn.Module):
        @nn.compact
        def __call__(self, x):
            scale = self.param("scale", nn.initializers.ones, (width, 32))
            for i in range(depth):
                x = jnp.tanh(nn.Dense(width, name=f"dense{i}")(x))
            return x * scale[:, 0]

    net = Deep()
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, width)))["params"]
    params = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    fn = lambda p, x, rng: net.apply({"params": p}, x)
    x = jax.random.normal(jax.random.PRNGKey(2), (batch, width))
    key = jax.random.PRNGKey(3) if train else None
    ids = jnp.arange(batch)

    def grads(fsdp):
        mesh = sharding.make_mesh(8, fsdp=fsdp)
        apply = batch_apply.make_batch_apply(mesh)
        loss = lambda p, x_: jnp.sum(apply(fn, p, (x_,), key, ids) ** 2)
        p, xs = sharding.shard_params(params, mesh), jax.device_put(x, sharding.batch_sharded(mesh))
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(p, xs).compile()
        return jax.device_get(compiled(p, xs)), compiled.memory_analysis().temp_size_in_bytes

    (ref, _), (got, temp) = grads(1), grads(8)
    assert sharding.param_specs(params, sharding.make_mesh(8, fsdp=8))["scale"] == jax.sharding.PartitionSpec(
        "fsdp", None)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    layer = width * width * 4
    assert temp < 5 * layer, temp / layer       # all gathered at once: > 12 layers


def test_per_example_dropout_rows_use_their_own_keys():
    """`batch_apply.per_example`: in train mode row i is the network run alone on row i with key
    fold_in(key, ids[i]) (so the masks are the example's), and differs from eval mode."""
    from di_jax.train import batch_apply

    _, teacher, _ = _tiny_edm(0.3)
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 1, 8, 8))
    sigma, labels = jnp.array([0.5, 1.0, 2.0]), jax.nn.one_hot(jnp.array([1, 4, 7]), 10)
    key, ids = jax.random.PRNGKey(3), jnp.array([5, 0, 9])
    out = batch_apply.per_example(teacher.denoise, teacher.params, (x, sigma, labels), {}, key, ids)
    for i in range(3):
        alone = teacher.denoise(teacher.params, x[i:i + 1], sigma[i:i + 1], labels[i:i + 1],
                                jax.random.fold_in(key, ids[i]))
        np.testing.assert_allclose(out[i], alone[0], rtol=1e-5, atol=1e-6)
    deterministic = teacher.denoise(teacher.params, x, sigma, labels, None)
    assert float(jnp.abs(out - deterministic).max()) > 1e-3


def test_grad_accum_lowers_temporary_memory():
    """The compiled step's temporaries (XLA's memory analysis) shrink with micro-batches: the activations
    of one micro-batch are alive at a time."""
    config = _config("sim", batch=8192)
    config.networks.hidden = 256
    teacher, nets = _mlp(config)
    temp = {}
    for k in (1, 8):
        config.grad_accum = k
        s = setup(config, teacher=Teacher(teacher.params, nets.teacher_denoise, nets.data_shape, 0),
                  mesh=sharding.make_mesh(1), nets=nets)
        temp[k] = s.compiled.memory_analysis().temp_size_in_bytes
    assert temp[8] < temp[1] / 3, temp


def test_teacher_stored_in_bfloat16():
    """config.teacher.dtype = bfloat16 stores the teacher's floating leaves in bf16 (half the bytes); the
    networks initialised from the teacher keep float32, and the step runs."""
    config = _config("sim")
    config.teacher.dtype = "bfloat16"
    s = setup(config, mesh=sharding.make_mesh(1))
    assert {x.dtype for x in jax.tree.leaves(s.teacher_params) if jnp.issubdtype(x.dtype, jnp.floating)} == \
        {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(s.state.gen_params)} == {jnp.dtype(jnp.float32)}
    state, metrics = s.compiled(s.state, s.teacher_params)
    assert int(state.step) == 1 and np.isfinite(float(metrics["fake_loss"]))


@pytest.mark.parametrize("method", ["sim", "di", "sid", "dmd"])
def test_scanned_steps_equal_single_steps_bitwise(method):
    """steps_per_call = 5 (one lax.scan per call) gives the state of 5 single calls, bit for bit; its
    metrics are the block's means and the skip counters after it."""
    config = _config(method, fake_steps=2)
    teacher, nets = _mlp(config)
    singles, metrics = _run(config, nets, teacher.params, sharding.make_mesh(1), 10)
    config.steps_per_call = 5
    blocks, block_metrics = _run(config, nets, teacher.params, sharding.make_mesh(1), 2)
    assert int(blocks.step) == 10
    for a, b in zip(jax.tree_util.tree_leaves(singles), jax.tree_util.tree_leaves(blocks)):
        np.testing.assert_array_equal(a, b)
    for name in ("fake_loss", "gen_grad_norm", "x0_std"):
        np.testing.assert_allclose(block_metrics[1][name], np.mean([m[name] for m in metrics[5:]]), rtol=1e-5)
    assert block_metrics[1]["skipped_gen"] == metrics[-1]["skipped_gen"] == 0


def test_labels_are_drawn_inside_the_step_uniformly_from_the_state_rng():
    """Class labels come from fold_in(state.rng, step), uniform over the classes, fresh every step."""
    config = _config("sim", batch=64)
    teacher, base = _mlp(config)
    classes = jnp.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    nets = base._replace(label_dim=3, generate=lambda p, z, labels, rng=None: labels @ classes
                         + 0.0 * base.generate(p, z, None, rng))      # x0 = (class index, 0)
    stds = lambda seed, n=20: [float(m["x0_std"]) for m in _run(_config("sim", seed=seed), nets, teacher.params,
                                                                 sharding.make_mesh(1), n)[1]]
    a = stds(0)
    assert a == stds(0)                       # a function of (seed, step) only
    assert a[:3] != stds(1, 3)                # another seed, other labels
    assert len(set(a)) > 10                   # drawn afresh every step
    # uniform over 3 classes: the std of all entries of (k, 0) is sqrt(7/12)
    np.testing.assert_allclose(np.mean(a), np.sqrt(7 / 12), atol=0.03)


def test_batch_is_sharded_and_state_replicated():
    config = _config("sim")
    s = setup(config, mesh=sharding.make_mesh(8))
    assert s.compile_seconds > 0
    hlo = s.compiled.as_text()
    assert "all-reduce" in hlo, "gradients of a sharded batch must be all-reduced"
    new_state, _ = s.compiled(s.state, s.teacher_params)
    leaf = jax.tree_util.tree_leaves(new_state.gen_params)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8


def test_nan_in_generator_output_is_skipped_and_counted():
    """A generator parameter set to NaN before step 2 makes x0 NaN: both updates are skipped and counted."""
    config = _config("sim")
    teacher, base = _mlp(config)

    def generate(params, z, labels, rng=None):
        return base.generate(params["net"], z, None, rng) * params["poison"]

    init = lambda rng, t: {"net": base.init_generator(rng, t), "poison": jnp.float32(1.0)}
    nets = base._replace(generate=generate, init_generator=init)
    mesh = sharding.make_mesh(8)
    s = setup(config, teacher=teacher, mesh=mesh, nets=nets)
    state, bad_step, history = s.state, 2, []
    for i in range(5):
        if i == bad_step:
            saved = state.gen_params["poison"]
            state = state.replace(gen_params={**state.gen_params,
                                              "poison": sharding.replicate(jnp.float32(jnp.nan), mesh)})
        before = jax.device_get(state)
        state, m = s.compiled(state, s.teacher_params)
        after = jax.device_get(state)
        history.append((before, after, jax.device_get(m)))
        if i == bad_step:
            state = state.replace(gen_params={**state.gen_params, "poison": saved})
    before, after, m = history[bad_step]
    assert int(m["skipped_gen"]) == 1 and int(m["skipped_fake"]) == 1
    assert int(after.skipped_gen) == 1 and int(after.skipped_fake) == 1
    for a, b in zip(jax.tree_util.tree_leaves((before.gen_params, before.fake_params, before.gen_opt_state)),
                    jax.tree_util.tree_leaves((after.gen_params, after.fake_params, after.gen_opt_state))):
        np.testing.assert_array_equal(a, b)
    final = history[-1][1]
    assert int(final.skipped_gen) == 1 and int(final.step) == 5
    # (the EMA saw the injected NaN parameter itself; everything the updates wrote stays finite)
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(
        (final.gen_params, final.fake_params, final.gen_opt_state, final.fake_opt_state)))
    # the good steps around the bad one did update
    assert any(np.any(a != b) for a, b in zip(jax.tree_util.tree_leaves(history[3][0].gen_params),
                                              jax.tree_util.tree_leaves(history[3][1].gen_params)))


def _gaussian_nets():
    """Affine Gaussian generator whose fake score is its exact diffused denoiser (params shared in form)."""
    def generate(params, z, labels, rng=None):
        return AffineGaussianGenerator(params["mu"], params["s"])(z)

    def fake_denoise(params, x, sigma, labels, rng=None):
        return AffineGaussianGenerator(params["mu"], params["s"]).denoiser(x, sigma)

    def teacher_denoise(teacher, x, sigma, labels, rng=None):
        return teacher.denoise(x, sigma)

    init = lambda rng, teacher: {"mu": jnp.array(teacher.mean), "s": jnp.array(teacher.std)}
    return families.Networks((2,), (2,), 0, generate, fake_denoise, teacher_denoise, init, init)


@pytest.mark.parametrize("method", ["di", "sim", "sid", "dmd"])
def test_generator_update_vanishes_at_the_teacher(method):
    config = _config(method)
    config.fake_optim.lr = 1e-30          # keep the exact fake score exact
    teacher = IsotropicGaussian(jnp.array([0.5, -1.0]), jnp.array(0.7))
    _, at_teacher = _run(config, _gaussian_nets(), teacher, sharding.make_mesh(8), 3)
    # control: the same step away from the teacher
    start = lambda rng, t: {"mu": jnp.zeros(2), "s": jnp.array(1.0)}
    nets = _gaussian_nets()._replace(init_generator=start, init_fake=start)
    _, away = _run(config, nets, teacher, sharding.make_mesh(8), 1)
    control = float(away[0]["gen_grad_norm"])
    assert control > 1e-2
    # The gradient vanishes up to float32 rounding (Adam would magnify rounding noise into a
    # full-size step, so the gradient, not the Adam update, is the quantity to check).
    for m in at_teacher:
        assert float(m["gen_grad_norm"]) < 1e-5 * control, (m["gen_grad_norm"], control)


@pytest.mark.parametrize("field,value,match", [
    ("method", "gan", "config.method"),
    ("gen_optim.lr", -1e-3, "config.gen_optim.lr"),
    ("batch_size", 60, "divisible"),
    ("fake_steps", 0, "config.fake_steps"),
    ("sigma_gen.kind", "uniform", "config.sigma_gen.kind"),
    ("distance.name", "cosine", "distance"),
    ("steps_per_call", 0, "config.steps_per_call"),
    ("grad_accum", 0, "config.grad_accum"),
    ("grad_accum", 3, "micro-batches"),
    ("grad_accum", 16, "micro-batches"),          # 64 / 16 = 4 rows cannot split over 8 devices
    ("teacher.dtype", "float16", "config.teacher.dtype"),
    ("mesh.fsdp", 3, "config.mesh.fsdp"),
    ("mesh.fsdp", 0, "config.mesh.fsdp"),
    ("fake_weight", "sigma2", "config.fake_weight"),
    ("steps_per_call", -3, "config.steps_per_call"),
])
def test_bad_config_fails_before_compiling(field, value, match, monkeypatch):
    config = _config("sim")
    node, _, leaf = field.rpartition(".")
    (config[node] if node else config)[leaf] = value
    _, nets = _mlp(_config("sim"))
    traced = []
    monkeypatch.setattr(jax, "jit", lambda *a, **k: traced.append(1))
    with pytest.raises(ValueError, match=match):
        step_lib.make_train_step(config, nets, sharding.make_mesh(8))
    assert not traced


@pytest.mark.parametrize("fsdp", [1, 4])
@pytest.mark.parametrize("clip,b1,wd", [(0.0, 0.0, 0.0), (0.5, 0.0, 0.0), (0.0, 0.9, 0.0), (10.0, 0.9, 0.01)])
def test_flat_optimizer_update_equals_per_leaf_optax_adam(clip, b1, wd, fsdp):
    """`FlatUpdate` (optimiser on the raveled gradients, per FSDP shard with fsdp > 1; b1 = 0 without a
    stored first moment) is optax's Adam (AdamW with weight decay, as DMD2) on the tree, leaf by leaf,
    clipping included; a non-finite gradient leaves params and optimiser state unchanged."""
    import optax

    from di_jax.configs.base import base_config
    from di_jax.train.flat_update import FlatUpdate, opt_state_specs, opt_vector_length

    cfg = base_config().gen_optim
    cfg.lr, cfg.clip, cfg.b1, cfg.weight_decay = 1e-2, clip, b1, wd
    ref = (optax.adamw(cfg.lr, b1=b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd) if wd
           else optax.adam(cfg.lr, b1=b1, b2=cfg.b2, eps=cfg.eps))
    ref = optax.chain(optax.clip_by_global_norm(clip), ref) if clip else ref
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {"a": {"kernel": jax.random.normal(k[0], (3, 4)), "bias": jnp.zeros(4)},
              "b": jax.random.normal(k[1], (5,))}
    mesh = sharding.make_mesh(fsdp, fsdp=fsdp)
    specs = sharding.param_specs(params, mesh, min_size=1)
    if fsdp > 1:    # the kernel along its 4 columns, the bias; "b" (5) cannot be split in 4: replicated
        P = jax.sharding.PartitionSpec
        assert specs["a"]["kernel"] == P(None, "fsdp") and specs["b"] == P()
    update = FlatUpdate(cfg, specs, mesh)
    assert update.fsdp == (fsdp > 1)
    ref_state, flat_state = ref.init(params), update.init(params)
    opt_specs = opt_state_specs(flat_state, opt_vector_length(params, specs, mesh), mesh)
    params = jax.device_put(params, sharding.named(specs, mesh))
    flat_state = jax.device_put(flat_state, sharding.named(opt_specs, mesh))
    call = jax.jit(update.__call__)
    for i in range(4):
        grads = jax.tree.map(lambda p: jax.random.normal(jax.random.fold_in(k[2], i), p.shape) * (i + 1), params)
        updates, ref_state = ref.update(grads, ref_state, params)
        want = jax.tree.map(lambda p, u: p + u, params, updates)
        got, flat_state, ok, gnorm, unorm = call(jnp.float32(1.0), grads, params, flat_state)
        assert bool(ok)
        np.testing.assert_allclose(gnorm, np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads))),
                                   rtol=1e-6)
        np.testing.assert_allclose(unorm, np.sqrt(sum(float(jnp.sum(u ** 2)) for u in jax.tree.leaves(updates))),
                                   rtol=1e-5)
        for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
        params = got
    bad = jax.tree.map(jnp.zeros_like, params)
    bad["a"]["kernel"] = bad["a"]["kernel"].at[2, 1].set(jnp.nan)     # in one shard only
    got, new_state, ok, _, unorm = call(jnp.float32(1.0), bad, params, flat_state)
    assert not bool(ok) and float(unorm) == 0.0
    for a, b in zip(jax.tree.leaves((got, new_state)), jax.tree.leaves((params, flat_state))):
        np.testing.assert_array_equal(a, b)


def _text_nets(config):
    """The golden tiny PixArt transformer as a text-conditioned teacher (6 tokens x 24 channels)."""
    import pathlib

    from di_jax.convert.diffusers_folder import load_diffusers_model
    from di_jax.teachers.discrete import TextCondition, pixart_teacher

    module, params = load_diffusers_model(pathlib.Path(__file__).parent / "data/pixart/pixart_tiny/transformer")
    spec = TextCondition(jax.ShapeDtypeStruct((6, 24), jnp.float32), jax.ShapeDtypeStruct((6,), jnp.float32))
    teacher = pixart_teacher(module, params)._replace(condition=spec)
    return teacher, families.build_networks(config.networks, teacher)


def _text_batch(seed, batch=8):
    from di_jax.teachers.discrete import TextCondition

    emb = jax.random.normal(jax.random.PRNGKey(seed), (batch, 6, 24))
    mask = (jnp.arange(6)[None, :] < jnp.array([6, 4] * (batch // 2))[:, None]).astype(jnp.float32)
    return TextCondition(emb, mask)


def test_text_conditioned_step_takes_its_condition_as_input():
    """Networks with `condition` (text embeddings) take the step's batch of it instead of drawn labels: the
    same state on 1 and 8 devices (2 SIM steps), a different update for other prompts, one-line errors
    for a missing or misshapen condition."""
    config = _config("sim", batch=8)
    config.teacher.kind, config.networks.kind = "edm", "edm"
    config.gen_optim.eps = config.fake_optim.eps = 1e-3     # Adam: rounding near g = 0 not turned into +-lr
    teacher, nets = _text_nets(config)
    assert nets.condition is teacher.condition and nets.label_dim == 0
    out = {}
    for devices, seed in ((1, 0), (8, 0), (8, 1)):
        mesh = sharding.make_mesh(devices)
        step = step_lib.make_train_step(config, nets, mesh)
        state = init_state(config, nets, teacher.params, mesh)
        t_params = sharding.replicate(teacher.params, mesh)
        for i in range(2):
            state, _ = step(state, t_params, _text_batch(10 * seed + i))
        out[devices, seed] = jax.device_get(state.gen_params)
    for a, b in zip(jax.tree.leaves(out[1, 0]), jax.tree.leaves(out[8, 0])):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6)
    assert max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(out[8, 0]),
                                                          jax.tree.leaves(out[8, 1]))) > 1e-6
    with pytest.raises(ValueError, match="conditioned on an input"):
        step(state, t_params)
    with pytest.raises(ValueError, match="condition has shapes"):
        step(state, t_params, _text_batch(0)._replace(mask=jnp.ones((8, 5))))
