"""How the train step runs a network on a batch: per-example dropout keys, and manual FSDP.

Per-example randomness. A network in train mode draws its dropout masks (and label dropout) from a
key per example, fold_in(key, i) with i the example's index in the step's global batch, the network
being applied to each example (`jax.vmap` over the rows; convolutions and matmuls batch as before).
The masks are then a function of the example alone: the same on 1 or 8 devices, with or without FSDP,
in one batch or in `grad_accum` micro-batches.

FSDP (`config.mesh.fsdp > 1`). The network runs inside a `shard_map` over the whole mesh: each device
gets its rows of the batch and its 1/fsdp slice of every sharded weight, all-gathers each weight
where the network uses it and, in the backward pass, reduce-scatters that weight's gradient back to
its slice (the transpose of the all-gather), summed over the 'data' axis: one reduce-scatter per
weight (left to the SPMD partitioner, XLA:CPU reduced all gradients with one combined all-reduce of
full-size gradients at the end of the backward pass). With fsdp = 1 the network runs on the
global batch under `jax.jit`'s sharding propagation, as pmap-free data parallelism.
"""

from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from di_jax.train import sharding

PyTree = Any


def example_keys(key: jax.Array, ids: jax.Array) -> jax.Array:
    """fold_in(key, i) for each global example index i in `ids` [B]."""
    return jax.vmap(jax.random.fold_in, (None, 0))(key, ids)


def per_example(fn: Callable, params: PyTree, args: tuple, kwargs: dict, key: Optional[jax.Array],
                ids: jax.Array):
    """fn(params, *args, rng, **kwargs) on a batch; in train mode (`key` given) each row with its own key.

    Every leaf of `args` / `kwargs` has the batch as its leading axis (None entries allowed).
    """
    if key is None:
        return fn(params, *args, None, **kwargs)
    keys = example_keys(key, ids)

    def one(a, kw, k):
        a, kw = jax.tree.map(lambda x: x[None], (a, kw))
        return fn(params, *a, k, **kw)[0]
    return jax.vmap(one)(args, kwargs, keys)


def gather_leaf(x: jax.Array, spec: P) -> jax.Array:
    """Inside shard_map: the full leaf from this device's slice (all-gather along each sharded dimension)."""
    for dim, axis in enumerate(spec):
        if axis is not None:
            x = jax.lax.all_gather(x, axis, axis=dim, tiled=True)
    return x


def make_batch_apply(mesh: Mesh, rules: Sequence[Tuple[str, str]] = (),
                     min_size: int = sharding.MIN_SHARD_SIZE) -> Callable:
    """apply(fn, params, args, key, ids, **kwargs) -> fn's batch output, laid out over the mesh's batch axes.

    Args of the returned function:
      fn: a network function fn(params, *args, rng, **kwargs) (`di_jax.nets.families.Networks`).
      params: its parameters, placed as `sharding.param_specs(params, mesh, rules, min_size)` says.
      args, kwargs: batch arrays (leading axis: the global batch, or a micro-batch) or None.
      key: the dropout key (None: deterministic).
      ids: [B] int32, each row's index in the step's global batch (the per-example keys).
    """
    batch_spec = P(tuple(a for a in sharding.BATCH_AXES if a in mesh.axis_names))

    def apply(fn, params, args, key, ids, **kwargs):
        if sharding.fsdp_size(mesh) == 1:
            return per_example(fn, params, args, kwargs, key, ids)
        specs = sharding.param_specs(params, mesh, rules, min_size)
        rows = lambda tree: jax.tree.map(lambda _: batch_spec, tree)

        def body(p, a, kw, k, i):
            full = jax.tree.map(gather_leaf, p, specs)
            return per_example(fn, full, a, kw, k, i)
        key_spec = None if key is None else P()
        return jax.shard_map(body, mesh=mesh, in_specs=(specs, rows(args), rows(kwargs), key_spec, batch_spec),
                             out_specs=batch_spec)(params, args, kwargs, key, ids)
    return apply


def global_ids(batch: int) -> jax.Array:
    """The step's example indices 0 .. batch - 1."""
    return jnp.arange(batch, dtype=jnp.int32)
