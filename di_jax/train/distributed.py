"""Several processes (hosts) in one run: start-up, who writes, host copies of global arrays, preemption.

Every process of a multi-host run (a TPU pod slice, several GPU nodes, several CPU processes) runs
the same program: the same train step over one global mesh, the same checkpoint saves (orbax writes
each process's shards), the same evaluation (its generation is jitted on the global arrays, so every
process must take part); only process 0 writes files that are not checkpoints.

    initialize(config)          # first, before any other JAX call (config.distributed)
    if is_writer(): ...         # process 0
    host = host_copy(tree)      # numpy copies of global arrays on every process (a collective)

Preemption: a multi-process run lets JAX's preemption service take SIGTERM (any process's notice
reaches all of them and `jax.experimental.multihost_utils.reached_preemption_sync_point` names the
same step everywhere, where all save); a single process handles SIGTERM / SIGINT itself.
"""

import logging
from typing import Any

import jax
import ml_collections
import numpy as np

PyTree = Any
log = logging.getLogger("di_jax")


def backend_started() -> bool:
    """Whether JAX has already created its backends (after which jax.distributed.initialize fails)."""
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())


def initialize(config: ml_collections.ConfigDict) -> None:
    """`jax.distributed.initialize` for a multi-process run (config.distributed); must come first.

    config.cluster.coordinator ("host:port"), num_processes and process_id name the cluster
    explicitly (each process passes its own process_id, e.g. `--config.cluster.process_id=$RANK`);
    left empty (""/0/-1), JAX detects them (Cloud TPU, SLURM, Open MPI, Kubernetes; the coordinator
    also from JAX_COORDINATOR_ADDRESS). CPU processes talk through gloo collectives.
    """
    if not config.get("distributed", False) or jax.distributed.is_initialized():
        return
    if backend_started():
        raise RuntimeError("config.distributed=True, but JAX was already used in this process before "
                           "jax.distributed.initialize (call di_jax.train.distributed.initialize first)")
    cluster = config.get("cluster") or ml_collections.ConfigDict()
    kwargs = {}
    if cluster.get("coordinator", ""):
        kwargs["coordinator_address"] = cluster.coordinator
    if cluster.get("num_processes", 0) > 0:
        kwargs["num_processes"] = cluster.num_processes
    if cluster.get("process_id", -1) >= 0:
        kwargs["process_id"] = cluster.process_id
    # Only the CPU client reads this; without it, CPU processes cannot run collectives with each other.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def is_writer() -> bool:
    """True on the process that writes pictures, reports and metrics (process 0)."""
    return jax.process_index() == 0


def multi_process() -> bool:
    return jax.process_count() > 1


def host_copy(tree: PyTree) -> PyTree:
    """numpy copies of the (global) arrays of `tree` on every process.

    Arrays this process holds completely (one process, or replicated over the mesh) are copied from
    its own devices; the others (sharded over several hosts) are all-gathered, so every process must
    call this with the same tree.
    """
    from jax.experimental import multihost_utils

    def one(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(a)
        if a.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return jax.tree.map(one, tree)


def preemption_reached(step: int) -> bool:
    """In a multi-process run: whether `step` is the step at which every process saves after a preemption
    notice (SIGTERM to any of them). Call it after every call of the train step, on every process."""
    if not multi_process():
        return False
    from jax.experimental import multihost_utils

    return bool(multihost_utils.reached_preemption_sync_point(step))
