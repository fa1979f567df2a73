"""StyleGAN2-ADA generator (issue 16): parity with the official code from an official-format snapshot,
no-exec reading of persistence pickles, strict one-line errors, the other architectures.

Golden data (tests/data/stylegan2, see its README): `stylegan2_cond_skip.pkl` is a snapshot written by
the official training loop's pickling (G, D, G_ema, augment_pipe, training_set_kwargs; networks carry
their module source); the .npz holds G_ema's state_dict, inputs, and the official outputs (ws in
float32, images in float32 and float64).
"""

import json
import os
import pickle
import pickletools
import struct
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from di_jax.convert import CheckpointError, RefusedGlobalError
from di_jax.convert import stylegan2_pickle as sgp
from di_jax.nets import stylegan2 as sg

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "stylegan2")
PKL = os.path.join(DATA, "stylegan2_cond_skip.pkl")
TOL = 1e-5  # of max|ref|


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(os.path.join(DATA, "stylegan2_cond_skip.npz")))


@pytest.fixture(scope="module")
def generator():
    return sgp.load_generator(PKL)


def rel_err(got, ref) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref)))


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message, message
    return message


# ------------------------------------------------------------------------------------- parity

def test_snapshot_reads_as_the_official_state_dict_and_kwargs(golden):
    kwargs, state_dict = sgp.read_stylegan2_pickle(PKL)
    assert kwargs == json.loads(str(golden["config_json"]))
    keys = [str(k) for k in golden["state_dict_keys"]]
    assert list(state_dict) == keys  # names and order of G_ema.state_dict()
    for k in keys:
        np.testing.assert_array_equal(state_dict[k], golden[f"param/{k}"], err_msg=k)


def test_variables_mirror_the_state_dict(generator, golden):
    module, variables = generator
    assert set(variables) == {"params", "buffers"}
    assert variables["params"]["mapping"]["fc0"]["weight"].shape == (32, 64)
    assert variables["params"]["synthesis"]["b8"]["conv0"]["affine"]["weight"].shape == (64, 32)
    assert variables["params"]["synthesis"]["b4"]["const"].shape == (64, 4, 4)
    assert sorted(variables["buffers"]["mapping"]) == ["w_avg"]
    back = sgp.variables_to_state_dict(variables)
    keys = [str(k) for k in golden["state_dict_keys"]]
    assert sorted(back) == sorted(keys)
    for k in keys:
        np.testing.assert_array_equal(back[k], golden[f"param/{k}"], err_msg=k)


@pytest.mark.parametrize("psi", ["1.0", "0.7"])
def test_mapping_parity(generator, golden, psi):
    module, variables = generator
    ws = module.apply(variables, golden["z"], golden["c"], float(psi), method=sg.Generator.map)
    ref = golden[f"ws_psi{psi}"]
    assert ws.shape == ref.shape == (4, 6, 32) and ws.dtype == jnp.float32
    err = rel_err(ws, ref)
    print(f"ws psi={psi}: {err:.2e} of max|ref|")
    assert err <= TOL


@pytest.mark.parametrize("psi", ["1.0", "0.7"])
@pytest.mark.parametrize("mode", ["const", "none"])
def test_synthesis_parity(generator, golden, psi, mode):
    """Synthesis from the official ws, and the whole generator from z, c, against the float64 images."""
    module, variables = generator
    ref = golden[f"img_psi{psi}_{mode}_f64"]
    img = module.apply(variables, golden[f"ws_psi{psi}"], mode, method=sg.Generator.synthesize)
    full = module.apply(variables, golden["z"], golden["c"], float(psi), noise_mode=mode)
    assert img.shape == full.shape == ref.shape == (4, 3, 16, 16) and img.dtype == jnp.float32
    errs = rel_err(img, ref), rel_err(full, ref), rel_err(golden[f"img_psi{psi}_{mode}"], ref)
    print(f"img psi={psi} {mode}: synthesis {errs[0]:.2e}, generator {errs[1]:.2e}, official f32 {errs[2]:.2e}")
    assert errs[0] <= TOL and errs[1] <= TOL


def test_noise_modes_and_truncation_cutoff(generator, golden):
    module, variables = generator
    z, c = golden["z"], golden["c"]
    run = lambda key, mode="random": module.apply(variables, z, c, noise_mode=mode, rngs={"noise": key})
    a, b, a2 = run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(0))
    none = run(jax.random.PRNGKey(0), "none")
    np.testing.assert_array_equal(a, a2)
    assert float(jnp.abs(a - b).max()) > 1e-3 and float(jnp.abs(a - none).max()) > 1e-3
    with pytest.raises(ValueError, match="noise_mode"):
        module.apply(variables, z, c, noise_mode="fixed")
    ws = module.apply(variables, z, c, 0.7, 2, method=sg.Generator.map)
    assert rel_err(ws[:, :2], golden["ws_psi0.7"][:, :2]) <= TOL
    assert rel_err(ws[:, 2:], golden["ws_psi1.0"][:, 2:]) <= TOL
    traced = jax.jit(lambda psi: module.apply(variables, z, c, psi, method=sg.Generator.map))(0.7)
    assert rel_err(traced, golden["ws_psi0.7"]) <= TOL


def test_w_avg_update_is_the_official_moving_average(generator, golden):
    module, variables = generator
    ws, state = module.apply(variables, golden["z"], golden["c"], update_w_avg=True, method=sg.Generator.map,
                             mutable=["buffers"])
    beta = 0.995
    want = variables["buffers"]["mapping"]["w_avg"] * beta + np.asarray(ws[:, 0]).mean(0) * (1 - beta)
    np.testing.assert_allclose(state["buffers"]["mapping"]["w_avg"], want, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------ resampling ops

def test_up_conv_equals_upsample_then_convolve():
    """The transposed-conv fast paths of conv2d_resample equal the official generic path: FIR up-sampling
    (zero insertion, pad, filter, gain 4) followed by a plain convolution."""
    rng = np.random.default_rng(0)
    f = sg.setup_filter([1, 3, 3, 1])
    x = jnp.asarray(rng.standard_normal((2, 3, 5, 5)), jnp.float32)
    for k, flip in ((3, False), (3, True), (1, False)):
        w = jnp.asarray(rng.standard_normal((4, 3, k, k)), jnp.float32)
        got = sg.conv2d_resample(x, w, f, up=2, padding=k // 2, flip_weight=flip)
        p0, p1 = k // 2 + 2, k // 2 + 1
        up = sg.upfirdn2d(x, f, up=2, padding=(p0, p1, p0, p1), gain=4)
        want = sg.conv2d_resample(up, w, flip_weight=flip)
        assert got.shape == want.shape == (2, 4, 10, 10)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ones = sg.upsample2d(jnp.ones((1, 1, 4, 4)), f)
    np.testing.assert_allclose(ones[0, 0, 2:-2, 2:-2], 1.0, rtol=1e-6)  # DC gain 1 away from the border
    assert ones.shape == (1, 1, 8, 8)


# ---------------------------------------------------------------------------- architectures

def official_keys(architecture: str, res: int, c_dim: int, num_layers: int) -> set:
    """The key names official `Generator(...).state_dict()` has (written from the constructor's rules)."""
    keys = {"mapping.w_avg"} | {f"mapping.fc{i}.{p}" for i in range(num_layers) for p in ("weight", "bias")}
    if c_dim:
        keys |= {"mapping.embed.weight", "mapping.embed.bias"}
    layer = ("weight", "bias", "noise_strength", "noise_const", "resample_filter", "affine.weight", "affine.bias")
    r = 4
    while r <= res:
        b = f"synthesis.b{r}"
        keys |= {f"{b}.resample_filter"} | {f"{b}.conv1.{p}" for p in layer}
        keys |= {f"{b}.const"} if r == 4 else {f"{b}.conv0.{p}" for p in layer}
        if r == res or architecture == "skip":
            keys |= {f"{b}.torgb.{p}" for p in ("weight", "bias", "affine.weight", "affine.bias")}
        if r > 4 and architecture == "resnet":
            keys |= {f"{b}.skip.weight", f"{b}.skip.resample_filter"}
        r *= 2
    return keys


@pytest.mark.parametrize("architecture", ["orig", "resnet"])
def test_other_architectures_build_and_run(architecture):
    kwargs = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, mapping_kwargs={"num_layers": 2},
                  synthesis_kwargs={"channel_base": 128, "channel_max": 16, "conv_clamp": 256,
                                    "architecture": architecture})
    module = sgp.build_generator(sgp.check_generator_kwargs(kwargs))
    want = sgp.expected_variables(module)  # the variables module.init creates (abstractly: no XLA compile)
    assert set(want) == official_keys(architecture, 16, 0, 2)
    assert want["synthesis.b16.conv0.weight"][1] == (8, 16, 3, 3)
    assert want["synthesis.b16.torgb.weight"][1] == (3, 8, 1, 1)
    if architecture == "resnet":
        assert want["synthesis.b8.skip.weight"][1] == (16, 16, 1, 1)
    assert module.num_ws == 6
    # a state_dict of this network (random values, official names) through the strict loader, then run
    rng = np.random.default_rng(0)
    state_dict = {k: rng.standard_normal(shape).astype(np.float32) for k, (_, shape, _) in want.items()}
    variables = sgp.state_dict_to_variables(state_dict, module)
    z = rng.standard_normal((2, 8)).astype(np.float32)
    img = jax.jit(lambda v, z: module.apply(v, z, None, 0.5, noise_mode="const"))(variables, z)
    assert img.shape == (2, 3, 16, 16) and img.dtype == jnp.float32 and bool(jnp.isfinite(img).all())
    assert float(jnp.abs(img).max()) > 0


def test_bfloat16_blocks_stay_close(generator, golden):
    """dtype computes the blocks the official code runs in float16 (num_fp16_res); the image stays float32."""
    _, variables = generator
    kwargs = json.loads(str(golden["config_json"]))
    kwargs["synthesis_kwargs"]["num_fp16_res"] = 2
    module = sgp.build_generator(sgp.check_generator_kwargs(kwargs), dtype=jnp.bfloat16)
    img = module.apply(variables, golden["ws_psi1.0"], "const", method=sg.Generator.synthesize)
    assert img.dtype == jnp.float32
    assert rel_err(img, golden["img_psi1.0_const_f64"]) < 0.05


# -------------------------------------------------------------------------------- strict errors

def test_missing_key_is_one_line(generator, golden):
    module, _ = generator
    _, state_dict = sgp.read_stylegan2_pickle(PKL)
    del state_dict["synthesis.b8.conv0.affine.weight"]
    with pytest.raises(CheckpointError) as e:
        sgp.state_dict_to_variables(state_dict, module)
    assert one_line(e).endswith("1 missing: synthesis.b8.conv0.affine.weight")


def test_wrong_shape_and_unexpected_key_are_one_line(generator):
    module, _ = generator
    _, state_dict = sgp.read_stylegan2_pickle(PKL)
    state_dict["mapping.fc0.weight"] = np.zeros((32, 63), np.float32)
    state_dict["synthesis.b4.\nInjected"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as e:
        sgp.state_dict_to_variables(state_dict, module)
    message = one_line(e)
    assert "1 unexpected: synthesis.b4.\\nInjected" in message
    assert "1 wrong shape: mapping.fc0.weight (32, 63) (expected (32, 64))" in message


@pytest.mark.parametrize("change, match", [
    ({"synthesis_kwargs": {"architecture": "fancy"}}, "synthesis_kwargs.architecture is 'fancy'; expected one of"),
    ({"synthesis_kwargs": {"magnitude_ema_beta": 0.9}}, "unknown to the StyleGAN2-ADA Generator"),
    ({"img_resolution": 24}, "img_resolution is 24; expected a power of two"),
    ({"w_dim": True}, "w_dim is True; expected an integer"),
    ({"mapping_kwargs": {"num_layers": 10 ** 9}}, r"mapping_kwargs.num_layers is 1000000000; expected an integer in"),
    ({"z_dim": None}, "z_dim is None"),
])
def test_bad_kwargs_are_one_line(golden, change, match):
    kwargs = json.loads(str(golden["config_json"]))
    for k, v in change.items():
        kwargs[k] = {**kwargs[k], **v} if isinstance(v, dict) else v
    with pytest.raises(CheckpointError, match=match) as e:
        sgp.check_generator_kwargs(kwargs)
    one_line(e)


def test_other_pickles_are_named(tmp_path):
    path = tmp_path / "edm.pkl"
    path.write_bytes(pickle.dumps({"ema": None, "loss_fn": None}, protocol=4))
    with pytest.raises(CheckpointError, match="EDM diffusion snapshot") as e:
        sgp.load_generator(path)
    one_line(e)
    path.write_bytes(pickle.dumps({"G_ema": [1, 2]}, protocol=4))
    with pytest.raises(CheckpointError, match="'G_ema' is a list of 2 items, not a StyleGAN2-ADA persistent network"):
        sgp.load_generator(path)


# ------------------------------------------------------------------------------------ no exec

def marker_src(marker) -> str:
    """Module source that leaves a marker file and then fails, if anybody executes it."""
    return (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
            "raise RuntimeError('module_src executed')\n")


def with_module_src(blob: bytes, source: str) -> bytes:
    """The snapshot with every embedded module source (networks.py, augment.py) replaced by `source`.

    Rewritten opcode by opcode: FRAME opcodes are dropped (framing is optional; their lengths would
    no longer hold), long BINUNICODE strings that are Python modules become `source`.
    """
    ops = list(pickletools.genops(blob))
    out, replaced = [], 0
    for (op, arg, pos), (_, _, end) in zip(ops, ops[1:] + [(None, None, len(blob))]):
        if op.name == "FRAME":
            continue
        if op.name == "BINUNICODE" and "persistence.persistent_class" in arg:
            raw = source.encode()
            out.append(b"X" + struct.pack("<I", len(raw)) + raw)
            replaced += 1
        else:
            out.append(blob[pos:end])
    assert replaced == 2  # training/networks.py and training/augment.py
    return b"".join(out)


def _official_reconstruct(meta):
    """What torch_utils.persistence does on load: exec the module source (never done by our reader)."""
    exec(compile(meta["module_src"], "<module_src>", "exec"), {})  # pylint: disable=exec-used


def test_embedded_source_is_live(tmp_path):
    """The official way of loading the rewritten snapshot runs its source (so the check below can fail)."""
    pytest.importorskip("torch")  # the unrestricted unpickler rebuilds real tensors
    marker = tmp_path / "ran"
    blob = with_module_src(open(PKL, "rb").read(), marker_src(marker))
    fake = types.ModuleType("torch_utils.persistence")
    fake._reconstruct_persistent_obj = _official_reconstruct  # pylint: disable=protected-access
    saved = {n: sys.modules.get(n) for n in ("torch_utils", "torch_utils.persistence")}
    sys.modules.update({"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": fake})
    try:
        with pytest.raises(RuntimeError, match="module_src executed"):
            pickle.loads(blob)
    finally:
        for n, m in saved.items():
            sys.modules.pop(n) if m is None else sys.modules.__setitem__(n, m)
    assert marker.exists()


def test_snapshot_with_hostile_source_loads_without_running_it(tmp_path, golden):
    marker = tmp_path / "ran"
    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(with_module_src(open(PKL, "rb").read(), marker_src(marker)))
    module, variables = sgp.load_generator(path)
    assert not marker.exists()
    img = module.apply(variables, golden["z"], golden["c"], 0.7, noise_mode="none")
    assert rel_err(img, golden["img_psi0.7_none_f64"]) <= TOL


class Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class Persistent:
    """Pickles like a `torch_utils.persistence` object: _reconstruct_persistent_obj(meta)."""

    def __init__(self, class_name, state, module_src):
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,)


def _persistence_pickle(data) -> bytes:
    """pickle.dumps with `torch_utils.persistence._reconstruct_persistent_obj` nameable (a stand-in that
    refuses to run: this test never unpickles with it)."""
    def refuse(meta):
        raise AssertionError("never called")
    refuse.__module__, refuse.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
    fake = types.ModuleType("torch_utils.persistence")
    fake._reconstruct_persistent_obj = refuse  # pylint: disable=protected-access
    saved = {n: sys.modules.get(n) for n in ("torch_utils", "torch_utils.persistence")}
    sys.modules.update({"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": fake})
    try:
        return pickle.dumps(data, protocol=4)
    finally:
        for n, m in saved.items():
            sys.modules.pop(n) if m is None else sys.modules.__setitem__(n, m)


def _payloads(marker):
    touch = f"open({str(marker)!r}, 'w').write('pwned')"
    return {"os.system": (Payload(os.system, f"touch {marker}"), "posix.system"),
            "exec": (Payload(exec, touch), "builtins.exec"),
            "eval": (Payload(eval, touch), "builtins.eval")}


def test_reduce_payload_is_live(tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_payloads(marker)["exec"][0]))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "exec", "eval"])
@pytest.mark.parametrize("where", ["top", "generator_kwargs", "module_state"])
def test_reduce_payloads_refused(tmp_path, kind, where):
    """__reduce__ hooks in the snapshot dict, in G_ema's init kwargs or deep in a submodule's state are
    refused (one line) before they run; the persistent record around them carries a live module_src."""
    marker = tmp_path / "pwned"
    payload, global_name = _payloads(marker)[kind]
    src = marker_src(marker)
    module_state = {"_parameters": {}, "_buffers": {}, "_modules": {}, "_non_persistent_buffers_set": set()}
    child = dict(module_state, **({"evil": payload} if where == "module_state" else {}))
    kwargs = {"z_dim": 32, "c_dim": 0, "w_dim": 32, "img_resolution": 16, "img_channels": 3,
              **({"mapping_kwargs": {"x": payload}} if where == "generator_kwargs" else {})}
    root = dict(module_state, _init_args=(), _init_kwargs=kwargs,
                _modules={"mapping": Persistent("MappingNetwork", child, src)})
    data = {"G": None, "D": None, "G_ema": Persistent("Generator", root, src), "augment_pipe": None,
            "training_set_kwargs": payload if where == "top" else {}}
    path = tmp_path / "evil.pkl"
    path.write_bytes(_persistence_pickle(data))
    with pytest.raises(RefusedGlobalError, match=f"refused global '{global_name}' in StyleGAN2-ADA .pkl") as e:
        sgp.load_generator(path)
    one_line(e)
    assert not marker.exists()
