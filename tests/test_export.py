"""`di-jax export`: a run directory's generator as official-format .safetensors / .pt, checked against the
PyTorch reference port of the EDM networks, and its one-line errors.

The shared run directories are written directly (config.json + an orbax checkpoint of a `TrainState`
whose raw and EMA generators differ), as `train_and_evaluate` writes them: compiling even a tiny EDM
train step takes 30-90 s on 2 busy cores. One slow test runs the real driver end to end.
"""

import collections
import hashlib
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from di_jax.configs import toy_ring
from di_jax.configs.base import base_config
from di_jax.export import FORMAT_TAG, ExportError, cli, export_generator
from di_jax.train.run_dir import CONFIG_FILE, load_run

torch = pytest.importorskip("torch")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from di_jax.bench.torch_reference.networks import build_network as build_torch  # noqa: E402

STEP = 2
# Conditional VP DDPM++ with augment labels and attention (like the official CIFAR-10 teachers), and an
# unconditional EDM-preconditioned ADM: both official wrappers the torch reference ports, both UNets.
NETS = {
    "vp_cond": dict(precond="VPPrecond", model_type="SongUNet", img_resolution=8, img_channels=3, label_dim=10,
                    augment_dim=9, model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[8],
                    dropout=0.13),
    "edm_uncond": dict(precond="EDMPrecond", model_type="DhariwalUNet", img_resolution=8, img_channels=3,
                       label_dim=0, model_channels=32, channel_mult=[1], num_blocks=1, attn_resolutions=[8],
                       dropout=0.1),
}
SIGMA_INIT = {"vp_cond": 2.5, "edm_uncond": 1.0}


def _edm_config(teacher_path: str, sigma_init: float, method: str = "di") -> ml_collections.ConfigDict:
    c = base_config()
    c.method = method
    c.teacher = ml_collections.ConfigDict(dict(kind="edm", path=teacher_path))
    c.networks = ml_collections.ConfigDict(dict(kind="edm", sigma_init=sigma_init, dropout=-1.0, dtype="float32"))
    c.batch_size, c.num_devices, c.num_steps, c.ckpt_every, c.log_every = 2, 1, STEP, STEP, 1
    return c


def _teacher(path: str, net_cfg: dict) -> str:
    from di_jax.bench.networks import random_params
    from di_jax.convert import save_safetensors
    from di_jax.nets import build_network

    save_safetensors(path, random_params(build_network(net_cfg), net_cfg, 0), net_cfg)
    return path


def _perturbed(tree, seed: int):
    leaves, treedef = jax.tree_util.tree_flatten(jax.device_get(tree))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(
        treedef, [x + np.float32(0.05) * rng.standard_normal(x.shape).astype(np.float32) for x in leaves])


def _write_run(workdir: str, config: ml_collections.ConfigDict) -> str:
    """A run directory as `train_and_evaluate` leaves it after STEP steps, with distinct raw and EMA generators."""
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from di_jax.nets.families import build_networks
    from di_jax.teachers import build_teacher
    from di_jax.train import sharding
    from di_jax.train.loop import checkpoint_manager
    from di_jax.train.setup import init_state

    teacher = build_teacher(config)
    nets = build_networks(config.networks, teacher)
    state = init_state(config, nets, teacher.params, sharding.make_mesh(1))
    state = state.replace(step=jnp.asarray(STEP, jnp.int32), gen_params=_perturbed(state.gen_params, 1),
                          ema_params=_perturbed(state.ema_params, 2))
    os.makedirs(workdir)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    with checkpoint_manager(workdir, config) as mngr:
        mngr.save(STEP, args=ocp.args.StandardSave(state))
        mngr.wait_until_finished()
    return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> Run: the two EDM runs and a toy MLP run."""
    root = tmp_path_factory.mktemp("export_runs")
    out = {}
    for name, net_cfg in NETS.items():
        teacher = _teacher(str(root / f"{name}_teacher.safetensors"), net_cfg)
        out[name] = load_run(_write_run(str(root / name), _edm_config(teacher, SIGMA_INIT[name])))
    mlp = toy_ring.get_config("di")
    mlp.networks.update(hidden=16, depth=2)
    mlp.num_devices, mlp.batch_size = 1, 2
    out["mlp"] = load_run(_write_run(str(root / "mlp"), mlp))
    return out


def _inputs(run, n=3, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, *run.nets.latent_shape)).astype(np.float32)
    labels = np.eye(run.nets.label_dim, dtype=np.float32)[rng.integers(0, run.nets.label_dim, n)] \
        if run.nets.label_dim else None
    return z, labels


def _jax_generate(run, params, z, labels):
    return np.asarray(jax.jit(run.nets.generate, static_argnums=3)(params, z, labels, None))


def _torch_generate(net_cfg: dict, state_dict, sigma_init: float, z, labels):
    net = build_torch(net_cfg).eval()
    net.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        x = torch.from_numpy(sigma_init * z)
        sigma = torch.full((z.shape[0],), sigma_init)
        return net(x, sigma, class_labels=None if labels is None else torch.from_numpy(labels)).numpy()


@pytest.mark.parametrize("name", list(NETS))
def test_safetensors_is_the_official_state_dict_and_generator(runs, tmp_path, name):
    run = runs[name]
    path = str(tmp_path / "gen.safetensors")
    done = export_generator(run, path)
    with safe_open(path, "np") as f:
        meta, keys = f.metadata(), list(f.keys())
    cfg = json.loads(meta["edm_config"])
    assert {k: v for k, v in cfg.items() if k in NETS[name]} == NETS[name]
    assert meta == done.metadata
    assert (meta["format"], meta["kind"], meta["precond"], meta["method"], meta["step"], meta["params"]) == (
        FORMAT_TAG, "edm", NETS[name]["precond"], "di", str(STEP), "ema")
    sigma_init = float(meta["sigma_init"])
    assert sigma_init == SIGMA_INIT[name]
    reference = build_torch(cfg)                           # the metadata alone rebuilds the network
    assert sorted(keys) == sorted(reference.state_dict())
    assert done.num_tensors == len(keys) and done.format == "safetensors"
    assert done.sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()
    z, labels = _inputs(run)
    want = _jax_generate(run, run.ema_params, z, labels)
    got = _torch_generate(cfg, load_file(path), sigma_init, z, labels)
    assert np.max(np.abs(got - want)) <= 1e-5
    # the file is also an EDM checkpoint to di_jax's own readers: the same params come back
    from di_jax.convert import load_teacher
    _, params = load_teacher(path)
    jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(run.ema_params))


def test_pt_state_dicts_of_ema_and_raw_generators(runs, tmp_path):
    run = runs["vp_cond"]
    z, labels = _inputs(run, seed=1)
    outs = {}
    for which, params in (("ema", run.ema_params), ("raw", run.gen_params)):
        path = str(tmp_path / f"{which}.pt")
        done = export_generator(run, path, which=which)
        assert done.format == "pt" and done.metadata["params"] == which
        state_dict = torch.load(path, weights_only=True)
        assert isinstance(state_dict, collections.OrderedDict)
        cfg = json.loads(done.metadata["edm_config"])
        assert list(state_dict) == list(build_torch(cfg).state_dict())        # official key order too
        outs[which] = _torch_generate(cfg, state_dict, SIGMA_INIT["vp_cond"], z, labels)
        assert np.max(np.abs(outs[which] - _jax_generate(run, params, z, labels))) <= 1e-5, which
    assert np.max(np.abs(outs["ema"] - outs["raw"])) > 1e-2        # each export is its own params


def test_mlp_generator_to_safetensors_only(runs, tmp_path):
    from di_jax.nets.mlp import MLPGenerator

    run = runs["mlp"]
    path = str(tmp_path / "mlp.safetensors")
    done = export_generator(run, path, which="raw")
    with safe_open(path, "np") as f:
        meta = f.metadata()
        flat = {k: f.get_tensor(k) for k in f.keys()}
    assert (meta["kind"], meta["hidden"], meta["depth"], meta["dim"], meta["params"]) == ("mlp", "16", "2", "2", "raw")
    assert sorted(flat) == sorted(["mlp/dense0/kernel", "mlp/dense0/bias", "mlp/dense1/kernel", "mlp/dense1/bias",
                                   "mlp/out/kernel", "mlp/out/bias"])
    assert done.num_params == sum(v.size for v in flat.values())
    from flax import traverse_util
    gen = MLPGenerator(int(meta["hidden"]), int(meta["depth"]), int(meta["dim"]))
    z = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    got = gen.apply({"params": traverse_util.unflatten_dict(flat, sep="/")}, z)
    np.testing.assert_allclose(got, run.nets.generate(run.gen_params, z, None, None), rtol=0, atol=1e-6)
    with pytest.raises(ExportError, match=r"mlp\.pt: \.pt export writes the official EDM state_dict"):
        export_generator(run, str(tmp_path / "mlp.pt"))
    assert not (tmp_path / "mlp.pt").exists()


def _cli(capsys, *args):
    rc = cli.main(["di-jax export", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_writes_and_reports(runs, tmp_path, capsys):
    out = tmp_path / "g.pt"
    rc, stdout, err = _cli(capsys, runs["vp_cond"].workdir, "--out", out, "--step", STEP, "--raw")
    assert rc == 0, err
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"wrote {out}" in stdout and f"sha256 {digest}" in stdout and "RAW generator, step 2" in stdout
    assert "sigma_init 2.5" in stdout and "VPPrecond" in stdout
    state_dict = torch.load(out, weights_only=True)
    want = export_generator(runs["vp_cond"], str(tmp_path / "g.safetensors"), which="raw")
    assert f"{len(state_dict)} tensors, {want.num_params} parameters" in stdout
    for k, v in load_file(str(tmp_path / "g.safetensors")).items():
        torch.testing.assert_close(state_dict[k], v, rtol=0, atol=0)


def test_teacher_path_override(runs, tmp_path, capsys):
    moved = tmp_path / "moved_run"
    shutil.copytree(runs["edm_uncond"].workdir, moved)
    config = json.loads((moved / CONFIG_FILE).read_text())
    teacher = config["teacher"]["path"]
    config["teacher"]["path"] = str(tmp_path / "gone.safetensors")
    (moved / CONFIG_FILE).write_text(json.dumps(config))
    rc, _, err = _cli(capsys, moved, "--out", tmp_path / "g.safetensors")
    assert rc == 2 and err.count("\n") == 1 and "gone.safetensors" in err
    rc, _, err = _cli(capsys, moved, "--out", tmp_path / "g.safetensors", "--teacher-path", teacher)
    assert rc == 0, err


@pytest.mark.parametrize("case", ["missing", "not_a_run", "no_checkpoints", "bad_step", "bad_extension",
                                  "no_extension", "out_dir", "no_parent", "usage", "bad_step_type"])
def test_cli_errors_are_one_line(runs, tmp_path, capsys, case):
    run_dir = runs["vp_cond"].workdir
    out = tmp_path / "g.safetensors"
    if case == "no_checkpoints":
        os.makedirs(tmp_path / "fresh")
        shutil.copy(os.path.join(run_dir, CONFIG_FILE), tmp_path / "fresh")
    args, expect = {
        "missing": ([tmp_path / "nope", "--out", out], "not a directory"),
        "not_a_run": ([tmp_path, "--out", out], "no config.json"),
        "no_checkpoints": ([tmp_path / "fresh", "--out", out], "no checkpoint in"),
        "bad_step": ([run_dir, "--out", out, "--step", 7], "no checkpoint at step 7; it has 2"),
        "bad_extension": ([run_dir, "--out", tmp_path / "g.npz"], "unknown output format '.npz'"),
        "no_extension": ([run_dir, "--out", tmp_path / "g"], "unknown output format '(no extension)'"),
        "out_dir": ([run_dir, "--out", tmp_path], "unknown output format"),
        "no_parent": ([run_dir, "--out", tmp_path / "a" / "g.pt"], "no such directory"),
        "usage": ([run_dir], "required: --out"),
        "bad_step_type": ([run_dir, "--out", out, "--step", "last"], "--step: invalid int value"),
    }[case]
    rc, stdout, err = _cli(capsys, *args)
    assert rc == 2 and stdout == ""
    assert err.startswith("di-jax export: error: ") and err.count("\n") == 1 and expect in err, err
    assert not out.exists()


def test_export_errors(runs, tmp_path, monkeypatch):
    run = runs["vp_cond"]
    with pytest.raises(ExportError, match="which must be one of"):
        export_generator(run, str(tmp_path / "g.safetensors"), which="best")
    d = tmp_path / "d.pt"
    d.mkdir()
    with pytest.raises(ExportError, match="d.pt: is a directory"):
        export_generator(run, str(d))
    params = {"model": {k: v for k, v in run.ema_params["model"].items() if k != "map_label"}}
    with pytest.raises(ExportError, match=r"do not fit its VPPrecond / SongUNet network: missing Flax param "
                                          r"model/map_label/kernel .*\(and 1 more\)$"):
        export_generator(run._replace(ema_params=params), str(tmp_path / "g.safetensors"))
    monkeypatch.setitem(__import__("sys").modules, "torch", None)     # torch not installed
    with pytest.raises(ExportError, match=r"g\.pt: writing \.pt needs PyTorch.*or export to \.safetensors$"):
        export_generator(run, str(tmp_path / "g.pt"))
    assert os.listdir(tmp_path) == ["d.pt"]


@pytest.mark.slow
def test_real_run_directory(tmp_path, capsys):
    """Two steps of the real training driver (~40-90 s, mostly compiling), then both formats via the CLI."""
    from di_jax.train.loop import train_and_evaluate

    net_cfg = dict(NETS["vp_cond"], num_blocks=0, attn_resolutions=[], augment_dim=0)
    config = _edm_config(_teacher(str(tmp_path / "teacher.safetensors"), net_cfg), 2.5)
    config.gen_optim.lr = config.fake_optim.lr = 1e-3
    config.ema.update(halflife_kimg=0.004, rampup=0.0)     # EMA half-way between the teacher and the generator
    config.grid_columns = 1
    train_and_evaluate(config, str(tmp_path / "run"))
    run = load_run(str(tmp_path / "run"))
    z, labels = _inputs(run)
    outs = {}
    for which, flag, params in (("ema", [], run.ema_params), ("raw", ["--raw"], run.gen_params)):
        for ext in ("safetensors", "pt"):
            out = tmp_path / f"{which}.{ext}"
            rc, _, err = _cli(capsys, run.workdir, "--out", out, *flag)
            assert rc == 0, err
            sd = load_file(str(out)) if ext == "safetensors" else torch.load(out, weights_only=True)
            outs[which] = _torch_generate(net_cfg, sd, 2.5, z, labels)
            assert np.max(np.abs(outs[which] - _jax_generate(run, params, z, labels))) <= 1e-5, (which, ext)
    assert np.max(np.abs(outs["ema"] - outs["raw"])) > 1e-4
