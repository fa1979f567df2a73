"""Real multi-process training: 2 processes x 4 CPU devices (jax.distributed, gloo) against 1 process x 8.

Each run is `train_and_evaluate` on the digits EDM config with a tiny random SongUNet teacher, launched
as separate interpreters by `tests/multiprocess_worker.py` (the runs share a compilation cache). Checked:
the 2-process state equals the 1-process state; a checkpoint written by either restores in the other
(orbax re-shards it) and training continues to the same state; a SIGTERM to one process (a preemption
notice) makes both save one checkpoint at the same step and stop cleanly, and the resumed run ends
where an uninterrupted run does.

Equality: the step draws every random number for the global batch and reduces over the same 8
devices in both layouts, so the states agree to float32 rounding of the cross-process all-reduce
(gloo sums in another order than XLA:CPU's in-process all-reduce): asserted to 1e-6.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from di_jax.convert import save_safetensors
from di_jax.nets import build_network
from di_jax.teachers import digits as digits_teacher

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_worker.py")
TINY_TEACHER = dict(digits_teacher.CONFIG, model_channels=8, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[])
TIMEOUT = 900


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    net = build_network(TINY_TEACHER)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 8, 8)), jnp.ones((1,)),
                      class_labels=jnp.zeros((1, 10)))["params"]
    teacher = str(root / "tiny.safetensors")
    save_safetensors(teacher, params, TINY_TEACHER)
    return dict(root=root, teacher=teacher, cache=str(root / "xla_cache"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(env, processes: int, workdir, num_steps: int, out=None, **extra):
    """Starts `processes` workers (8 devices in all); returns the Popen objects."""
    port = _free_port()
    procs = []
    for i in range(processes):
        opts = dict(process_id=i, num_processes=processes, devices=8 // processes, port=port, workdir=str(workdir),
                    num_steps=num_steps, out=str(out) if out else "", teacher=env["teacher"], cache=env["cache"],
                    **extra)
        procs.append(subprocess.Popen([sys.executable, WORKER, json.dumps(opts)], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(procs):
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outputs.append(out)
        assert p.returncode == 0, f"worker exited {p.returncode}:\n{out[-3000:]}"
    return outputs


def _run(env, processes, workdir, num_steps, name):
    out = env["root"] / f"{name}.npz"
    _finish(_launch(env, processes, workdir, num_steps, out))
    return dict(np.load(out))


def _assert_same(a, b, what):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-6, err_msg=f"{what}: {k}")


def _checkpoints(workdir):
    root = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(root) if n.isdigit()) if os.path.isdir(root) else []


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_equal_one_and_checkpoints_cross_restore(env):
    root = env["root"]
    one, two = root / "one", root / "two"
    s1 = _run(env, 1, one, 4, "one_4")
    s2 = _run(env, 2, two, 4, "two_4")
    assert int(s1[".step"]) == int(s2[".step"]) == 4
    _assert_same(s1, s2, "2 processes x 4 devices vs 1 x 8, step 4")
    assert _checkpoints(one) == _checkpoints(two) == [4]
    # the 2-process checkpoint continues in 1 process, the 1-process checkpoint in 2 processes
    a = _run(env, 1, two, 8, "two_then_one_8")
    b = _run(env, 2, one, 8, "one_then_two_8")
    assert int(a[".step"]) == int(b[".step"]) == 8
    _assert_same(a, b, "resumed across layouts, step 8")
    moved = max(np.abs(a[k] - s1[k]).max() for k in s1 if "gen_params" in k)
    assert moved > 0


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_to_one_process_saves_one_consistent_checkpoint(env):
    workdir = env["root"] / "preempted"
    procs = _launch(env, 2, workdir, 400, ckpt_every=1000)
    progress = workdir / "progress_1"
    deadline = time.time() + TIMEOUT
    while not (progress.exists() and progress.read_text().strip() and int(progress.read_text()) >= 2):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "the run did not start"
        time.sleep(0.2)
    procs[1].send_signal(15)                                     # SIGTERM: a preemption notice
    outputs = _finish(procs)
    steps = [int((workdir / f"progress_{i}").read_text()) for i in range(2)]
    saved = _checkpoints(workdir)
    assert steps[0] == steps[1] and saved == [steps[0]] and 2 < steps[0] < 400, (steps, saved, outputs[0][-2000:])
    k = steps[0]
    resumed = _run(env, 2, workdir, k + 2, "preempted_resumed")
    straight = _run(env, 1, env["root"] / "straight", k + 2, "straight")
    assert int(resumed[".step"]) == k + 2
    _assert_same(straight, resumed, f"preempted at {k} and resumed vs uninterrupted")
