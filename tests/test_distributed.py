"""Multi-host plumbing that needs no second host: start-up order, bucket teachers, host copies."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from etils import epath

from di_jax.convert import remote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def test_nothing_starts_jax_before_distributed_initialize():
    """Importing the command, validating configs and importing the loop leave JAX's backend untouched,
    so `distributed.initialize` can still run; after a JAX call it refuses in one line."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    code = f"""
import json
import di_jax.main
from di_jax.configs import cifar10_cond_sim, digits_sim
from di_jax.configs.base import validate
from di_jax.train import distributed, loop
for c in (digits_sim.get_config(), cifar10_cond_sim.get_config()):
    validate(c, None)
before = distributed.backend_started()
c = digits_sim.get_config()
c.distributed = True
c.cluster.update(coordinator="127.0.0.1:{free}", num_processes=1, process_id=0)
distributed.initialize(c)
import jax
out = dict(before=before, processes=jax.process_count(), initialized=jax.distributed.is_initialized())
jax.distributed.shutdown()
print(json.dumps(out))
"""
    r = _python(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == dict(before=False, processes=1, initialized=True)
    late = _python("""
import jax, jax.numpy as jnp
from di_jax.configs import digits_sim
from di_jax.train import distributed
jnp.zeros(1).block_until_ready()
c = digits_sim.get_config()
c.distributed = True
try:
    distributed.initialize(c)
except RuntimeError as e:
    print("refused:", e)
""")
    assert "refused: config.distributed=True, but JAX was already used" in late.stdout, late.stderr[-2000:]


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """gs://bucket/... served from tmp_path/bucket (epath without network)."""
    real = epath.Path

    def fake(p):
        text = os.fspath(p)
        return real(str(tmp_path / "bucket" / text[len("gs://bucket/"):])) if text.startswith("gs://bucket/") \
            else real(text)
    monkeypatch.setattr(remote.epath, "Path", fake)
    monkeypatch.setenv("DI_JAX_CACHE", str(tmp_path / "cache"))
    (tmp_path / "bucket" / "run" / "converted").mkdir(parents=True)
    (tmp_path / "bucket" / "teacher.pkl").write_bytes(b"weights" * 1000)
    (tmp_path / "bucket" / "run" / "converted" / "config.json").write_text("{}")
    (tmp_path / "bucket" / "run" / "converted" / "params.npz").write_bytes(b"npz")
    return tmp_path


def test_bucket_teacher_is_copied_once_to_a_local_cache(bucket, monkeypatch):
    local = remote.local_copy("gs://bucket/teacher.pkl")
    assert local.startswith(str(bucket / "cache")) and local.endswith("teacher.pkl")
    assert open(local, "rb").read() == b"weights" * 1000
    folder = remote.local_copy("gs://bucket/run/converted/")
    assert sorted(os.listdir(folder)) == ["config.json", "params.npz"]
    assert not [n for n in os.listdir(os.path.dirname(local)) if n.endswith(".partial")]
    monkeypatch.setattr(remote, "_copy", lambda *a: pytest.fail("copied twice"))
    assert remote.local_copy("gs://bucket/teacher.pkl") == local          # cached
    assert remote.local_copy("relative/teacher.pkl") == "relative/teacher.pkl"     # local: unchanged
    with pytest.raises(FileNotFoundError, match="gs://bucket/missing.pkl"):
        remote.local_copy("gs://bucket/missing.pkl")


def test_host_copy_of_a_single_process_tree():
    import jax

    from di_jax.train import distributed, sharding

    mesh = sharding.make_mesh(8, fsdp=4)
    tree = {"w": np.arange(32.0).reshape(8, 4), "b": np.ones(3)}
    placed = sharding.shard_params(tree, mesh, min_size=1)
    assert not placed["w"].is_fully_replicated
    host = distributed.host_copy(placed)
    assert isinstance(host["w"], np.ndarray) and np.array_equal(host["w"], tree["w"])
    assert jax.process_count() == 1 and distributed.is_writer() and not distributed.multi_process()
    assert distributed.preemption_reached(3) is False
