"""The main job's pipeline (di_jax/configs/digits_sim.py) at test size: outputs and Ctrl-C resume.

The pipeline tests swap the embedded teacher for a randomly initialised tiny SongUNet of the same
interface (8x8, 1 channel, 10 labels) written through `save_safetensors`, so that compiling the
train step takes seconds; the embedded teacher itself is checked to load through the converter.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from di_jax.configs import digits_sim
from di_jax.convert import save_safetensors
from di_jax.nets import build_network
from di_jax.teachers import digits as digits_teacher
from di_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TEACHER = dict(digits_teacher.CONFIG, model_channels=8, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[])


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    net = build_network(TINY_TEACHER)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 8, 8)), jnp.ones((1,)),
                      class_labels=jnp.zeros((1, 10)))["params"]
    path = str(tmp_path_factory.mktemp("teacher") / "tiny.safetensors")
    save_safetensors(path, params, TINY_TEACHER)
    return path


def _tiny_args(teacher):
    return ["--config.batch_size=8", "--config.num_devices=1", "--config.eval.num=40", "--config.eval.heun_steps=2",
            "--config.log_every=1", f"--config.teacher.path={teacher}"]


def _tiny_config(teacher, method="sim", steps=3):
    c = digits_sim.get_config(method)
    c.batch_size, c.num_devices, c.num_steps, c.log_every = 8, 1, steps, 1
    c.eval.num, c.eval.heun_steps = 40, 2
    c.teacher.path = teacher
    return c


def test_embedded_teacher_loads_through_the_converter():
    module, params = digits_teacher.load()
    assert module.precond == "EDMPrecond" and module.label_dim == 10 and module.model.img_resolution == 8
    assert sum(p.size for p in jax.tree_util.tree_leaves(params)) == 317_297


@pytest.mark.parametrize("method", ["sim", "di"])
def test_pipeline_writes_every_output(tmp_path, tiny_teacher, method):
    state = loop.train_and_evaluate(_tiny_config(tiny_teacher, method), str(tmp_path))
    assert int(state.step) == 3
    names = set(os.listdir(tmp_path))
    assert {"samples_start.png", "samples_end.png", "teacher_heun.png", "report.md", "metrics.json",
            "checkpoints"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert "3" in os.listdir(tmp_path / "checkpoints")
    metrics = json.load(open(tmp_path / "metrics.json"))
    for row in ("real", "teacher_heun", "teacher_1nfe", "teacher_1nfe_sigma_init", "distilled"):
        assert metrics[f"{row}/fd"] >= 0 and 0 <= metrics[f"{row}/classes_covered"] <= 10
    assert metrics["teacher_heun/nfe"] == 3 and metrics["distilled/nfe"] == 1
    assert metrics["method"] == method and metrics["skipped_gen"] == 0
    report = open(tmp_path / "report.md").read()
    assert "| distilled generator (EMA), 1 NFE | 1 |" in report and "teacher, Heun 3 NFE" in report
    assert "![end](samples_end.png)" in report


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, tiny_teacher):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "di_jax.main", f"--workdir={workdir}"] + _tiny_args(tiny_teacher)
    env = dict(os.environ, DI_JAX_XLA_CACHE=str(tmp_path / "xla"))   # keep the user's cache clean
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd + ["--config.num_steps=1000000"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not (workdir / "samples_start.png").exists():
            time.sleep(0.1)
        time.sleep(1.0)                       # a few steps into the loop
        proc.send_signal(signal.SIGINT)       # what Ctrl-C sends
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = open(tmp_path / "first.log").read()
    assert proc.returncode == 0, first[-2000:]
    assert "SIGINT received" in first and "checkpoint saved" in first
    saved = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
    assert len(saved) == 1 and saved[0] >= 1
    target = saved[0] + 2
    second = subprocess.run(cmd + [f"--config.num_steps={target}"], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resuming from checkpoint at step {saved[0]}" in second.stderr
    assert json.load(open(workdir / "metrics.json"))["steps"] == target
