"""`di-jax sample` and `di-jax fid RUN_DIR`: requested seeds only, batch / device invariance, sources, errors.

The run directory is a real one (`train_and_evaluate` on digits_sim for 2 steps, a checkpoint at each)
around a randomly initialised tiny SongUNet of the digits teacher's interface (8x8, 1 channel, 10
classes, one resolution level), so that compiling takes seconds; its generator lr is raised and its
EMA has no ramp-up so that the raw generator visibly differs from its EMA. The in-process tests see
8 simulated devices (conftest); a subprocess on 1 device checks that the device count changes no
image. Images are compared bitwise.
"""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from di_jax.configs import digits_sim, toy_ring
from di_jax.convert import save_safetensors
from di_jax.eval import cli as fid_cli
from di_jax.eval import fid
from di_jax.nets import build_network
from di_jax.sample import cli, seeds, writers
from di_jax.teachers import digits as digits_teacher
from di_jax.train import loop
from di_jax.train.run_dir import load_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TEACHER = dict(digits_teacher.CONFIG, model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[])
SEEDS = "0-9,100,1000-1005"                      # 17 seeds: uneven over 8 devices
SEED_LIST = list(range(10)) + [100] + list(range(1000, 1006))


def _tiny_teacher(path):
    """A tiny SongUNet teacher file with random weights N(0, 0.1^2) drawn by NumPy (nothing to compile)."""
    net, rng = build_network(TINY_TEACHER), np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 8, 8)), jnp.ones((1,)),
                                             class_labels=jnp.zeros((1, 10)))["params"])
    params = jax.tree.map(lambda a: (0.1 * rng.standard_normal(a.shape)).astype(a.dtype), shapes)
    save_safetensors(str(path), params, TINY_TEACHER)
    return str(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_run")
    c = digits_sim.get_config("sim")
    c.batch_size, c.num_devices, c.num_steps, c.log_every, c.ckpt_every = 8, 1, 2, 1, 1
    c.eval.kind = "none"                         # the digits report compiles several samplers: not needed here
    c.gen_optim.lr, c.ema.rampup = 1e-2, 0.0     # raw generator != EMA after 2 steps
    c.teacher.path = _tiny_teacher(root / "tiny.safetensors")
    loop.train_and_evaluate(c, str(root / "run"))
    return str(root / "run")


@pytest.fixture(scope="module")
def toy_run_dir(tmp_path_factory):
    c = toy_ring.get_config("sim")
    c.num_devices, c.batch_size, c.networks.hidden, c.num_steps, c.num_samples = 1, 16, 16, 1, 16
    c.eval.kind = "none"
    workdir = str(tmp_path_factory.mktemp("sample_toy") / "run")
    loop.train_and_evaluate(c, workdir)
    return workdir


@pytest.fixture(scope="module")
def by_batch(run_dir, tmp_path_factory):
    """(out dir, samples.npz) of SEEDS at per-device batch 64 (PNGs, grid), 2 (--subdirs) and 1 (no PNGs).

    On 8 devices that is 24, 16 and 8 images per call.
    """
    out = {}
    for batch, flags in ((64, ["--grid"]), (2, ["--subdirs"]), (1, ["--no-png"])):
        path = tmp_path_factory.mktemp(f"batch{batch}")
        assert cli.main(["di-jax sample", run_dir, "--out", str(path), "--seeds", SEEDS, "--batch", str(batch),
                         "--npz"] + flags) == 0
        with np.load(path / "samples.npz") as data:
            out[batch] = path, dict(data)
    return out


@pytest.fixture(scope="module")
def runs(run_dir):
    """The run read back at its two checkpoints."""
    return {1: load_run(run_dir, step=1), 2: load_run(run_dir)}


@pytest.fixture(scope="module")
def direct(runs):
    """`direct(params, seeds, classes)`: nets.generate per seed (batch 1, no sharding), quantised like EDM."""
    nets = runs[2].nets
    gen = jax.jit(lambda p, z, l: nets.generate(p, z, l, None))

    def images(params, seed_list, classes):
        return np.concatenate([writers.to_uint8(np.asarray(gen(
            params, jax.random.normal(jax.random.PRNGKey(s), nets.latent_shape)[None],
            jax.nn.one_hot(jnp.array([c]), nets.label_dim)))) for s, c in zip(seed_list, classes)])
    return images


def _sample(argv, capsys):
    code = cli.main(["di-jax sample"] + [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("di-jax sample: error: "), err
    for f in fragments:
        assert f in err, err


def test_parse_seeds():
    np.testing.assert_array_equal(seeds.parse_seeds("3-5, 20,7"), [3, 4, 5, 20, 7])
    assert seeds.parse_seeds("4294967295").dtype == np.uint32
    assert seeds.format_seeds(seeds.parse_seeds(SEEDS)) == SEEDS
    for bad, match in (("5-3", "empty range"), ("a", "not a seed"), ("1,1", "more than once"), ("", "not a seed"),
                       ("-1", "not a seed"), ("4294967296", "must lie in"), ("0-99999999", "more than")):
        with pytest.raises(seeds.SeedsError, match=match):
            seeds.parse_seeds(bad)
    s = np.array([7, 123456789], np.uint32)
    np.testing.assert_array_equal(seeds.seed_classes(s, 10, "cycle"), [7, 9])
    random = seeds.seed_classes(s, 10, "random")
    np.testing.assert_array_equal(random, seeds.seed_classes(s[::-1], 10, "random")[::-1])   # per seed


def test_writes_exactly_the_requested_seeds(by_batch):
    path, data = by_batch[64]
    pngs = [f"{s:06d}.png" for s in SEED_LIST]
    assert sorted(os.listdir(path)) == sorted(pngs + ["grid.png", "samples.npz"])
    assert sorted(data) == ["labels", "samples", "seeds"]
    assert data["samples"].shape == (17, 8, 8, 1) and data["samples"].dtype == np.uint8
    np.testing.assert_array_equal(data["seeds"], SEED_LIST)
    np.testing.assert_array_equal(data["labels"], np.array(SEED_LIST) % 10)      # default: seed % label_dim
    for name, img in zip(pngs, data["samples"]):
        np.testing.assert_array_equal(np.asarray(Image.open(path / name)), img[..., 0])
    assert Image.open(path / "grid.png").size == (8 * (10 * 9 + 1), 8 * (2 * 9 + 1))   # 10 columns, 2 rows, x8
    path, _ = by_batch[2]
    assert sorted(os.listdir(path)) == ["000000", "001000", "samples.npz"]
    assert sorted(os.listdir(path / "000000")) == pngs[:11]
    assert sorted(os.listdir(path / "001000")) == pngs[11:]
    assert sorted(os.listdir(by_batch[1][0])) == ["samples.npz"]


def test_same_seed_same_image_across_batch_sizes(by_batch):
    for batch in (2, 1):
        np.testing.assert_array_equal(by_batch[batch][1]["seeds"], SEED_LIST)
        np.testing.assert_array_equal(by_batch[batch][1]["labels"], by_batch[64][1]["labels"])
        np.testing.assert_array_equal(by_batch[batch][1]["samples"], by_batch[64][1]["samples"])


def test_same_seed_same_image_on_one_device(by_batch, run_dir, tmp_path):
    """The CLI in a 1-device process writes the same images as on 8 devices."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "di_jax.sample.cli", run_dir, "--out", str(tmp_path),
                           "--seeds", SEEDS, "--batch", "4", "--npz", "--no-png"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "samples.npz") as data:
        np.testing.assert_array_equal(data["samples"], by_batch[64][1]["samples"])


def test_images_are_the_generator_output(by_batch, direct, runs, run_dir, tmp_path, capsys):
    """EMA: nets.generate(ema_params, z_seed, onehot(seed % 10)); `--raw --step 1 --class 7`: gen_params of step 1."""
    pick = [0, 10, 16]                                                           # seeds 0, 100, 1005
    expected = direct(runs[2].ema_params, [SEED_LIST[i] for i in pick], [SEED_LIST[i] % 10 for i in pick])
    np.testing.assert_array_equal(by_batch[64][1]["samples"][pick], expected)
    code, out, err = _sample([run_dir, "--out", tmp_path, "--seeds", "3-7,20", "--raw", "--step", "1", "--class", "7",
                              "--npz", "--no-png"], capsys)
    assert code == 0, err
    assert "6 images (seeds 3-7,20)" in out and "step 1 (raw generator)" in out and "samples.npz" in out
    with np.load(tmp_path / "samples.npz") as data:
        raw, labels = data["samples"], data["labels"]
    np.testing.assert_array_equal(labels, [7] * 6)
    np.testing.assert_array_equal(raw, direct(runs[1].gen_params, [3, 4, 5, 6, 7, 20], [7] * 6))
    assert np.abs(raw.astype(int) - direct(runs[1].ema_params, [3, 4, 5, 6, 7, 20], [7] * 6)).max() > 2


def test_teacher_source_heun(tmp_path, capsys):
    """The embedded digits teacher (a .safetensors file) with Heun's sampler, 2 steps."""
    code, out, err = _sample([digits_teacher.ASSET, "--out", tmp_path, "--seeds", "5,7-8", "--steps", "2",
                              "--classes", "random", "--npz"], capsys)
    assert code == 0, err
    assert "Heun 2 steps" in out
    assert sorted(os.listdir(tmp_path)) == ["000005.png", "000007.png", "000008.png", "samples.npz"]
    with np.load(tmp_path / "samples.npz") as data:
        assert data["samples"].shape == (3, 8, 8, 1)
        np.testing.assert_array_equal(data["labels"], seeds.seed_classes(np.array([5, 7, 8]), 10, "random"))


def test_toy_run_writes_points_and_refuses_a_class(toy_run_dir, tmp_path, capsys):
    code, out, err = _sample([toy_run_dir, "--out", tmp_path, "--seeds", "0-39", "--grid"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["samples.npz", "scatter.png"]
    with np.load(tmp_path / "samples.npz") as data:
        assert sorted(data.files) == ["samples", "seeds"]
        assert data["samples"].shape == (40, 2) and data["samples"].dtype == np.float32
    _assert_one_line_error(*_sample([toy_run_dir, "--out", tmp_path, "--class", "3"], capsys)[::2], "unconditional")


def test_errors_are_one_line(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_ckpt").mkdir()
    shutil.copy(os.path.join(run_dir, "config.json"), tmp_path / "no_ckpt")
    cases = [
        ([run_dir, "--out", out, "--seeds", "5-3"], "empty range"),
        ([run_dir, "--out", out, "--seeds", "a"], "not a seed"),
        ([run_dir, "--out", out, "--class", "10"], "classes 0..9"),
        ([run_dir, "--out", out, "--class", "-1"], "minimum"),
        ([run_dir, "--out", out, "--class", "1", "--classes", "random"], "not allowed"),
        ([run_dir, "--out", out, "--no-png"], "nothing to write"),
        ([run_dir, "--out", out, "--steps", "4"], "Heun steps apply to teachers"),
        ([run_dir, "--out", out, "--step", "7"], "no checkpoint at step 7; it has 1, 2"),
        ([tmp_path / "empty", "--out", out], "no config.json"),
        ([tmp_path / "no_ckpt", "--out", out], "no checkpoint"),
        ([tmp_path / "missing", "--out", out], "no such file"),
        ([digits_teacher.ASSET, "--out", out, "--raw"], "apply to runs"),
        ([run_dir], "--out"),
    ]
    for argv, fragment in cases:
        _assert_one_line_error(*_sample(argv, capsys)[::2], fragment)
    assert not out.exists()
    code, text, _ = _sample(["--help"], capsys)
    assert code == 0 and text.startswith("usage: di-jax sample") and "--classes" in text and "scatter.png" in text


class TinyDetector(nn.Module):
    """Stand-in for Inception (uint8 NHWC in, (features, logits) out), as in test_fid.py."""

    @nn.compact
    def __call__(self, images):
        x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))((images.astype(jnp.float32) - 128.0) / 128.0))
        feats = jnp.concatenate([x.mean((1, 2)), x.max((1, 2))], -1)
        return feats, nn.Dense(10)(feats)


def test_fid_of_a_run_directory(run_dir, runs, direct, tmp_path, capsys, monkeypatch):
    """`di-jax fid --generator RUN` scores the EMA generator's images of seeds 0..num-1 with random classes."""
    model = TinyDetector()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.uint8))
    feature_fn, seen = fid.make_feature_fn(variables, model=model), []
    monkeypatch.setattr(fid_cli, "_feature_fn", lambda args: lambda x: (seen.append(x), feature_fn(x))[1])
    fid.save_stats(tmp_path / "ref.npz", np.zeros(32), np.eye(32))
    common = ["--ref", str(tmp_path / "ref.npz"), "--num", "12", "--batch", "8", "--splits", "2", "--inception", "x"]
    assert fid_cli.main(["di-jax fid", "--generator", run_dir] + common) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num"] == 12 and np.isfinite(result["fid"]) and result["fid"] > 0
    s = np.arange(12)
    expected = direct(runs[2].ema_params, s, seeds.seed_classes(s, 10, "random"))
    np.testing.assert_array_equal(np.concatenate(seen), expected)
    assert fid_cli.main(["di-jax fid", "--generator", run_dir, "--step", "9"] + common) == 2
    err = capsys.readouterr().err
    assert err.startswith("di-jax fid: error: ") and "no checkpoint at step 9" in err


def test_moved_teacher_is_named_by_teacher_path(run_dir, tmp_path, capsys):
    """A run whose teacher file moved: a one-line error naming it, and --teacher-path rebuilds the run."""
    moved = tmp_path / "moved_run"
    shutil.copytree(run_dir, moved)
    config = json.loads((moved / "config.json").read_text())
    teacher, config["teacher"]["path"] = config["teacher"]["path"], str(tmp_path / "gone.safetensors")
    (moved / "config.json").write_text(json.dumps(config))
    code, _, err = _sample([moved, "--out", tmp_path / "a", "--seeds", "0-1"], capsys)
    _assert_one_line_error(code, err, "gone.safetensors")
    code, _, err = _sample([moved, "--out", tmp_path / "b", "--seeds", "0-1", "--teacher-path", teacher], capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "b")) == ["000000.png", "000001.png"]
