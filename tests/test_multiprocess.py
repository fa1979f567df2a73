"""Real multi-process training: 2 processes x 4 CPU devices (jax.distributed, gloo) against 1 process x 8.

Each run is `train_and_evaluate` on the digits EDM config with a tiny random SongUNet teacher, launched
as separate interpreters by `tests/multiprocess_worker.py` (the runs share a compilation cache). Checked
in one test (four runs, to keep the suite short): a SIGTERM to one process (a preemption notice) makes
both save one checkpoint at the same step and stop cleanly; that 2-process state equals the 1-process
state; a checkpoint written by either restores in the other (orbax re-shards it) and training continues
to the same state.

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
def test_two_processes_preemption_and_cross_restore(env):
    """A: 2 processes x 4 devices, SIGTERM to process 1 mid-run -> both stop at the same step k with one
    checkpoint there, exit 0. B: 1 process x 8 devices straight to k -> the same state as A. Then A's
    checkpoint resumed in 1 process and B's in 2 processes both reach k + 2 with the same state."""
    root = env["root"]
    a_dir, b_dir = root / "two_preempted", root / "one_straight"
    procs = _launch(env, 2, a_dir, 400, root / "a.npz", ckpt_every=1000)
    progress = a_dir / "progress_1"
    deadline = time.time() + TIMEOUT
    while not (progress.exists() and progress.read_text().strip() and int(progress.read_text()) >= 2):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "the run did not start"
        time.sleep(0.2)
    procs[1].send_signal(15)                                     # SIGTERM: a preemption notice
    outputs = _finish(procs)
    steps = [int((a_dir / f"progress_{i}").read_text()) for i in range(2)]
    k = steps[0]
    assert steps[0] == steps[1] and _checkpoints(a_dir) == [k] and 2 < k < 400, (steps, outputs[0][-2000:])
    a = dict(np.load(root / "a.npz"))
    b = _run(env, 1, b_dir, k, "b")
    assert int(a[".step"]) == int(b[".step"]) == k
    _assert_same(b, a, f"2 processes x 4 devices (preempted at {k}) vs 1 x 8")
    # the 2-process checkpoint continues in 1 process, the 1-process checkpoint in 2 processes
    a2 = _run(env, 1, a_dir, k + 2, "a_then_one")
    b2 = _run(env, 2, b_dir, k + 2, "b_then_two")
    assert int(a2[".step"]) == int(b2[".step"]) == k + 2
    _assert_same(a2, b2, "resumed across layouts")
    assert max(np.abs(a2[key] - a[key]).max() for key in a if "gen_params" in key) > 0
