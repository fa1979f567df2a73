"""Device mesh and shardings: batch on a 'data' axis over all devices, parameters replicated.

This is the `jax.jit`-with-shardings equivalent of data-parallel pmap (pmap is in maintenance mode).
Every per-example input (latents, noise, labels) is drawn inside the step for the global batch, so
no host feeds data. Multi-host: call `maybe_initialize_distributed` first.
"""

from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(enabled: bool) -> None:
    """jax.distributed.initialize() for multi-host runs (coordinator etc. from the environment)."""
    if enabled and jax.process_count() == 1:
        jax.distributed.initialize()


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (default: all, across hosts)."""
    n = num_devices or jax.device_count()
    if n > jax.device_count():
        raise ValueError(f"num_devices={n} exceeds the {jax.device_count()} available devices")
    # Auto axes: the compiler propagates shardings from the constraints placed in the step.
    auto = (jax.sharding.AxisType.Auto,)
    if n == jax.device_count():
        return jax.make_mesh((n,), (DATA_AXIS,), axis_types=auto)
    return Mesh(np.array(jax.devices()[:n]), (DATA_AXIS,), axis_types=auto)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data', everything else replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(x: jax.Array, mesh: Mesh) -> jax.Array:
    """Inside jit: constrain an array's batch axis to the 'data' axis."""
    return jax.lax.with_sharding_constraint(x, batch_sharded(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Puts a host pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
