"""The training driver: outputs, SIGTERM / SIGKILL resume (bitwise), toy run quality.

Long runs use one device to keep the suite fast (8 simulated devices share 2 cores). Multi-device
equality of the step itself is tested in test_train_step.py; one run exercises the loop on 8 devices.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from di_jax.configs import toy_ring
from di_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(method="sim", steps=40, **kw):
    c = toy_ring.get_config(method)
    c.num_devices = 1
    c.batch_size = 64
    c.networks.hidden = 32
    c.num_steps = steps
    c.log_every = 10
    c.ckpt_every = 1000
    c.num_samples = 500
    for k, v in kw.items():
        c[k] = v
    return c


def _assert_bitwise_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(jax.device_get(a)), jax.tree_util.tree_leaves(jax.device_get(b))
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def test_run_writes_outputs(tmp_path):
    state = loop.train_and_evaluate(_config(steps=20, num_devices=8), str(tmp_path))
    assert int(state.step) == 20
    names = set(os.listdir(tmp_path))
    assert {"samples_start.png", "samples_end.png", "metrics.json", "checkpoints"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    metrics = json.load(open(tmp_path / "metrics.json"))
    assert 0.0 <= metrics["ema/mode_coverage"] <= 1.0 and metrics["skipped_gen"] == 0
    assert "20" in os.listdir(tmp_path / "checkpoints")


def _event_images(workdir) -> dict:
    """{step: HxWx3 uint8} of the 'samples' image summaries in workdir's TensorBoard event files."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    out = {}
    for event in acc.Tensors("samples"):
        encoded = tf.make_ndarray(event.tensor_proto)          # [width, height, png bytes...]
        out[event.step] = tf.io.decode_png(encoded[2]).numpy()
    return out


def test_pictures_reach_tensorboard_and_profile_trace(tmp_path):
    """The samples pictures at start, every sample_every and at the end are TensorBoard images (the same
    pixels as the PNGs); config.profile writes a profiler trace; config.json is the run's config."""
    from PIL import Image

    config = _config(steps=4, sample_every=2, profile=(1, 3))
    loop.train_and_evaluate(config, str(tmp_path))
    images = _event_images(tmp_path)
    assert sorted(images) == [0, 2, 4]
    for step, name in [(0, "samples_start.png"), (2, "samples_step0000002.png"), (4, "samples_end.png")]:
        np.testing.assert_array_equal(images[step], np.asarray(Image.open(tmp_path / name).convert("RGB")))
    traces = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "plugins" / "profile") for f in fs]
    assert any(t.endswith(".xplane.pb") and os.path.getsize(t) > 0 for t in traces), traces
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["num_steps"] == 4 and saved["profile"] == [1, 3] and saved["method"] == config.method


@pytest.mark.parametrize("profile", [(3, 3), (2, 9), (-1, 2), (1,)])
def test_bad_profile_range_is_a_one_line_error(profile):
    from di_jax.configs.base import validate
    with pytest.raises(ValueError, match=r"config.profile must be \(start, stop\)"):
        validate(_config(steps=4, profile=profile), 1)


def test_sigterm_then_resume_is_bitwise_identical(tmp_path):
    n = 15
    reference = loop.train_and_evaluate(_config(steps=2 * n), str(tmp_path / "ref"))

    def terminate_at_n(step, state):
        if step == n:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = loop.train_and_evaluate(_config(steps=2 * n), str(tmp_path / "run"), on_step=terminate_at_n)
    assert int(stopped.step) == n
    assert str(n) in os.listdir(tmp_path / "run" / "checkpoints")
    assert not (tmp_path / "run" / "metrics.json").exists()      # an interrupted run is not evaluated
    resumed = loop.train_and_evaluate(_config(steps=2 * n), str(tmp_path / "run"))
    assert int(resumed.step) == 2 * n
    _assert_bitwise_equal(resumed, reference)


def test_sigkill_after_checkpoint_then_resume_is_bitwise_identical(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "di_jax.main", "--config", "toy_ring:sim",
           f"--workdir={workdir}", "--config.batch_size=64", "--config.networks.hidden=32", "--config.num_devices=1",
           "--config.num_steps=1000000", "--config.ckpt_every=50", "--config.log_every=1000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = workdir / "checkpoints"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if ckpts.exists() and any(d.isdigit() for d in os.listdir(ckpts)):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    latest = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
    target = latest + 20
    resumed = loop.train_and_evaluate(_config(steps=target), str(workdir))
    reference = loop.train_and_evaluate(_config(steps=target), str(tmp_path / "ref"))
    assert int(resumed.step) == int(reference.step) == target
    _assert_bitwise_equal(resumed, reference)


def _scalar_steps(workdir, tag: str) -> list:
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return [e.step for e in acc.Tensors(tag)]


def test_steps_per_call_gives_the_same_run_and_logs_at_call_boundaries(tmp_path):
    """steps_per_call = 4 over 30 steps: 7 scanned calls and a tail of 2 single steps, bitwise the state of
    the one-step run; logs (every 10) and checkpoints (every 8) fall at the first boundary at or after
    their step, and the final state is saved."""
    reference = loop.train_and_evaluate(_config(steps=30, ckpt_every=8), str(tmp_path / "ref"))
    blocks = loop.train_and_evaluate(_config(steps=30, ckpt_every=8, steps_per_call=4), str(tmp_path / "run"))
    _assert_bitwise_equal(blocks, reference)
    assert _scalar_steps(tmp_path / "run", "fake_loss") == [12, 20, 30]
    assert _scalar_steps(tmp_path / "ref", "fake_loss") == [10, 20, 30]
    assert sorted(int(d) for d in os.listdir(tmp_path / "run" / "checkpoints") if d.isdigit()) == [16, 24, 30]
    assert json.load(open(tmp_path / "run" / "metrics.json"))["ema/mode_coverage"] == \
        json.load(open(tmp_path / "ref" / "metrics.json"))["ema/mode_coverage"]


def test_toy_sim_ring_covers_the_modes(tmp_path):
    config = toy_ring.get_config("sim")
    config.num_devices = 1
    config.num_steps = 1500
    config.num_samples = 2000
    config.log_every = 500
    loop.train_and_evaluate(config, str(tmp_path))
    metrics = json.load(open(tmp_path / "metrics.json"))
    print("\ntoy SIM ring, 1500 steps:", metrics)
    assert metrics["ema/mode_coverage"] >= 7 / 8


def test_checkpoint_of_another_state_layout_is_a_one_line_error(tmp_path):
    """Resuming from a checkpoint whose tree does not fit the run's state names the problem and the fix."""
    import jax.numpy as jnp
    import ml_collections
    import orbax.checkpoint as ocp

    from di_jax.train import loop

    cfg = ml_collections.ConfigDict(dict(ckpt_keep=2))
    mngr = loop.checkpoint_manager(str(tmp_path), cfg)
    mngr.save(3, args=ocp.args.StandardSave({"params": jnp.ones(3), "opt": {"mu": jnp.ones(3)}}))
    mngr.wait_until_finished()
    fresh = {"params": jnp.ones(3), "opt": {"nu": jnp.ones(3), "count": jnp.zeros(())}}
    with pytest.raises(ValueError, match=r"checkpoint at step 3 .* does not fit .* use a new --workdir") as e:
        loop.restore_or_init(loop.checkpoint_manager(str(tmp_path), cfg), fresh)
    assert "\n" not in str(e.value).split(" (")[0]


def test_bucket_workdir_stays_a_bucket_path(tmp_path):
    """gs://bucket/run reaches orbax as a gs:// path (pod hosts share no disk); a local one becomes absolute."""
    from etils import epath

    from di_jax.train import loop, run_dir

    ckpt = loop.checkpoint_dir("gs://bucket/run")
    assert isinstance(ckpt, epath.Path) and str(ckpt) == "gs://bucket/run/checkpoints"
    assert str(run_dir.run_path("gs://bucket/run/")).startswith("gs://bucket/run")
    local = loop.checkpoint_dir("relative/run")
    assert local.is_absolute() and str(local).endswith("relative/run/checkpoints")


def test_fsdp_run_resumes_and_reads_back(tmp_path):
    """A run on a data 2 x fsdp 4 mesh (its kernels and optimiser vectors split over 4 devices) writes
    pictures and metrics, resumes bitwise from its checkpoint, and `load_run` (sample / export / fid)
    restores its generator on one device."""
    from di_jax.train.run_dir import load_run

    config = _config(steps=6, num_devices=8, ckpt_every=3)
    config.mesh.fsdp, config.mesh.min_shard_size = 4, 256
    straight = loop.train_and_evaluate(config, str(tmp_path / "straight"))
    kernel = [x for x in jax.tree.leaves(straight.gen_params) if x.size >= 256][0]
    assert kernel.addressable_shards[0].data.size == kernel.size // 4
    assert {"samples_end.png", "metrics.json"} <= set(os.listdir(tmp_path / "straight"))
    config.num_steps = 3
    loop.train_and_evaluate(config, str(tmp_path / "resumed"))
    config.num_steps = 6
    resumed = loop.train_and_evaluate(config, str(tmp_path / "resumed"))
    _assert_bitwise_equal(straight, resumed)
    run = load_run(str(tmp_path / "straight"))
    assert run.step == 6
    for a, b in zip(jax.tree.leaves(run.ema_params), jax.tree.leaves(jax.device_get(straight.ema_params))):
        np.testing.assert_array_equal(a, b)
