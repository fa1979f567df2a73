"""How the train step runs a network on a batch: per-example dropout keys, and manual FSDP.

Per-example randomness. A network in train mode draws its dropout masks (and label dropout) from a
key per example, fold_in(key, i) with i the example's index in the step's global batch, the network
being applied to each example (`jax.vmap` over the rows; convolutions and matmuls batch as before).
The masks are then a function of the example alone: the same on 1 or 8 devices, with or without FSDP,
in one batch or in `grad_accum` micro-batches.

FSDP (`config.mesh.fsdp > 1`). The network runs inside a `shard_map` over the whole mesh: each device
gets its rows of the batch and its 1/fsdp slice of every sharded weight. Every Flax module that owns
sharded parameters (Conv2d, Linear, nn.Dense, ...; found by a `flax.linen.intercept_methods`
interceptor) runs through `layer_call`: its weights are all-gathered just before the call and again
in its backward pass, which reduce-scatters their gradients back to the slices, summed over 'data'.
One or two layers' full weights are then alive at a time instead of all of them. What that takes, on
XLA:CPU (jax 0.10):

  * Gathering the whole tree before the network holds every gathered weight at once: XLA:CPU's default
    ("concurrency optimized", breadth-first) scheduler starts each all-gather at the top of the
    program. (`xla_cpu_enable_concurrency_optimized_scheduler=false` schedules depth-first, but only
    as a process-wide XLA_FLAGS: as a per-compile `compiler_options` entry it is accepted and
    ignored.) Each gather is therefore made to depend on the layer's input (`after`), so it cannot
    start earlier. The price: XLA copies the elementwise chain that makes that input (norms,
    activations, skip sums) into the fusion computing the one entry read, so the optimised program is
    ~5x larger and compiles ~4x longer (CIFAR-10 DDPM++ step at fsdp 8 on XLA:CPU).
  * Autodiff keeps the gathered weights as residuals of the backward pass. `jax.checkpoint` with a
    policy that saves anything but them does not help: the recomputed gathers are the forward's
    again, merged by CSE (an optimization barrier does not survive until CSE). `layer_call` is a
    `jax.custom_vjp` whose residuals are the slices and whose backward pass gathers from slices made
    to depend on the cotangent: neither merged nor hoisted.
  * Under `per_example`'s vmap JAX runs a custom_vjp's backward pass per row and sums the rows' weight
    gradients afterwards (a full-size gradient per row); a `custom_vmap` rule differentiates the
    module vmapped over the rows instead, whose weight gradient is that sum.

Parameters used elsewhere (a module that also holds submodule parameters, plain functions of the
parameter tree, a network wrapped in `jax.checkpoint`, which traces it anew) take the leaves gathered
upfront, as before; XLA removes the gathers nobody uses. With fsdp = 1 the network runs on the
global batch under `jax.jit`'s sharding propagation, as pmap-free data parallelism.
"""

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
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


def _vma(x) -> frozenset:
    """The mesh axes a value varies over inside shard_map (empty outside, or without check_vma)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)         # jax >= 0.10: aval.mat.varying; before: aval.vma
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def scatter_leaf(ct: jax.Array, like: jax.Array, spec: P) -> jax.Array:
    """Inside shard_map: the cotangent of this device's slice `like` (laid out by `spec`) from the full leaf's
    cotangent `ct` on this device's rows: reduce-scattered along each sharded dimension (the transpose of
    `gather_leaf`), then summed over the other mesh axes the batch varies over, which `like` does not."""
    for dim, axis in enumerate(spec):
        if axis is not None:
            ct = jax.lax.psum_scatter(ct, axis, scatter_dimension=dim, tiled=True)
    extra = tuple(sorted(_vma(ct) - _vma(like)))
    return jax.lax.psum(ct, extra) if extra else ct


def _varying(x: jax.Array, axes: Tuple[str, ...]) -> jax.Array:
    """x marked as varying over `axes` (its cotangent then is this device's own, not yet summed)."""
    missing = tuple(a for a in axes if a not in _vma(x))
    return jax.lax.pcast(x, missing, to="varying") if missing else x


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic)) or hasattr(x, "aval")


def _inexact(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def layer_call(module: nn.Module, method: str, variables: dict, shards: dict, specs: dict, args: tuple,
               kwargs: dict):
    """`module.<method>(*args, **kwargs)` of a module that owns parameters, inside shard_map, with its weights
    gathered for this call only, and again in its backward pass.

    Args:
      module: a bound Flax module whose 'params' are all its own leaves (no submodule parameters).
      method: the name of the method called.
      variables: its other collections (constants).
      shards: its parameters, name -> this device's slice; `specs`: name -> PartitionSpec.
      args, kwargs: the call's arguments (arrays, differentiated where inexact; anything else static).

    A `jax.custom_vjp` (see the module docstring): the forward pass gathers the weights, runs the module
    and keeps only (slices, inputs); the backward pass gathers them again, made to depend on the
    cotangent, differentiates the module on the gathered weights and returns the weight
    gradients reduce-scattered. Under `per_example`'s vmap JAX runs that backward pass per row and sums
    the weight cotangents afterwards (one full-size gradient per row, e.g. a grouped convolution); the
    `custom_vmap` rule of `grads` instead differentiates the module vmapped over the rows, whose weight
    cotangent is the sum itself.
    """
    flat, treedef = jax.tree.flatten((args, kwargs), is_leaf=lambda x: x is None)
    dyn = [i for i, x in enumerate(flat) if _is_array(x)]
    pos = [j for j, i in enumerate(dyn) if _inexact(flat[i])]      # the differentiated ones among `dyn`
    unbound = module.clone(parent=None)
    gather = lambda sl: {k: gather_leaf(v, specs[k]) for k, v in sl.items()}

    def run(full, leaves):
        a, kw = jax.tree.unflatten(treedef, _put(flat, dyn, leaves))
        return unbound.apply({**variables, "params": full}, *a, method=method, **kw)

    def backward(fn, sl, leaves, g):
        """(slice, input) cotangents of fn at (gather(sl), leaves) for output cotangent g."""
        # gathered again, once the cotangent exists: not merged with the forward pass's gather (CSE)
        full = {k: _varying(gather_leaf(v, specs[k]), sharding.BATCH_AXES) for k, v in after(sl, g).items()}
        _, vjp = jax.vjp(lambda w, xs: fn(w, _put(leaves, pos, xs)), full, [leaves[j] for j in pos])
        d_full, d_xs = vjp(g)
        return {k: scatter_leaf(d_full[k], sl[k], specs[k]) for k in sl}, d_xs

    @jax.custom_batching.custom_vmap
    def grads(sl, leaves, g):
        return backward(run, sl, leaves, g)

    @grads.def_vmap
    def _grads_rows(axis_size, in_batched, sl, leaves, g):
        """On a batch of rows (inside `per_example`'s vmap): one vjp of the vmapped module, the weight
        cotangent summed over the rows (what the custom_vjp batching rule would sum), unbatched."""
        if any(jax.tree.leaves(in_batched[0])):      # weights batched: not a per-layer FSDP call any more
            out = jax.vmap(grads, in_axes=jax.tree.map(lambda b: 0 if b else None, in_batched))(sl, leaves, g)
            return out, jax.tree.map(lambda _: True, out)
        widen = lambda x, b: x if b else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x))
        leaves, g = jax.tree.map(widen, (leaves, g), tuple(in_batched[1:]))
        d_sl, d_xs = backward(jax.vmap(run, in_axes=(None, 0)), sl, leaves, g)
        return (d_sl, d_xs), (jax.tree.map(lambda _: False, d_sl), [True] * len(d_xs))

    @jax.custom_vjp
    def call(sl, leaves):
        return run(gather(after(sl, [leaves[j] for j in pos])), leaves)

    def fwd(sl, leaves):
        return call(sl, leaves), (sl, leaves)

    def bwd(res, g):
        d_sl, d_xs = grads(*res, g)
        return d_sl, _put([None] * len(dyn), pos, d_xs)

    call.defvjp(fwd, bwd)
    return call(shards, [flat[i] for i in dyn])


@jax.custom_batching.custom_vmap
def after(tree: PyTree, like: PyTree) -> PyTree:
    """`tree` (float leaves), made to depend on one entry of the first leaf of `like`: + 0 * that entry.

    What orders a layer's weight gathers: XLA neither schedules an all-gather before the input
    (forward) or cotangent (backward) it now depends on, nor merges the backward's with the forward's
    (an optimization barrier does not survive to CSE; 0 * x is not folded, x may be inf or NaN, which
    then spreads to the step's non-finite gradient, skipped anyway). Under a vmap (the rows of
    `per_example`) the entry is row 0's, so that an unbatched `tree` stays unbatched.
    """
    leaves = jax.tree.leaves(like)
    if not leaves:
        return tree
    dep = 0.0 * jnp.ravel(leaves[0])[0]
    return jax.tree.map(lambda v: v + dep.astype(v.dtype), tree)


@after.def_vmap
def _after_rows(axis_size, in_batched, tree, like):
    if any(jax.tree.leaves(in_batched[0])):
        out = jax.vmap(after, in_axes=jax.tree.map(lambda b: 0 if b else None, in_batched))(tree, like)
        return out, jax.tree.map(lambda _: True, out)
    first = [x[0] if b else x for x, b in zip(jax.tree.leaves(like), jax.tree.leaves(in_batched[1]))]
    out = after(tree, first)
    return out, jax.tree.map(lambda _: False, out)


def _put(items: list, where: Sequence[int], values: Sequence) -> list:
    """A copy of `items` with items[where[j]] = values[j]."""
    out = list(items)
    for j, v in zip(where, values):
        out[j] = v
    return out


def make_interceptor(table: Dict[int, Tuple[jax.Array, P]]) -> Callable:
    """A `flax.linen.intercept_methods` interceptor that runs each module owning sharded parameters
    through `layer_call`.

    `table`: id(gathered leaf) -> (this device's slice, spec) for every parameter leaf given to the
    network; a module is recognised by its parameters being those very leaves. Modules whose parameters
    are not all in the table (made inside the network, traced anew by `jax.checkpoint`), that also hold
    submodule parameters, or that draw random numbers, run as they are, on the leaves gathered upfront.
    """
    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "setup" or module.scope is None:
            return next_fun(*args, **kwargs)
        variables = dict(module.variables)
        params = dict(variables.pop("params", {}))
        found = {k: table.get(id(v)) for k, v in params.items()}
        if (not params or any(f is None for f in found.values())
                or all(f[1] == P() for f in found.values())):
            return next_fun(*args, **kwargs)
        shards = {k: f[0] for k, f in found.items()}
        specs = {k: f[1] for k, f in found.items()}
        try:
            return layer_call(module, context.method_name, variables, shards, specs, args, kwargs)
        except flax.errors.InvalidRngError:      # the module draws random numbers: not re-applied alone
            return next_fun(*args, **kwargs)
    return interceptor


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
    batch_axes = tuple(a for a in sharding.BATCH_AXES if a in mesh.axis_names)
    batch_spec = P(batch_axes)

    def apply(fn, params, args, key, ids, **kwargs):
        if sharding.fsdp_size(mesh) == 1:
            return per_example(fn, params, args, kwargs, key, ids)
        specs = sharding.param_specs(params, mesh, rules, min_size)
        rows = lambda tree: jax.tree.map(lambda _: batch_spec, tree)

        def body(p, a, kw, k, i):
            # Every leaf gathered, for code that uses it directly; a gather whose leaf a module runs
            # through `layer_call` instead is dead code, removed by XLA.
            flat_p, flat_s = jax.tree.leaves(p), jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))
            flat_full = [gather_leaf(x, s) for x, s in zip(flat_p, flat_s)]
            table = {id(f): (x, s) for f, x, s in zip(flat_full, flat_p, flat_s)}
            full = jax.tree.unflatten(jax.tree.structure(p), flat_full)
            with nn.intercept_methods(make_interceptor(table)):
                return per_example(fn, full, a, kw, k, i)
        key_spec = None if key is None else P()
        return jax.shard_map(body, mesh=mesh, in_specs=(specs, rows(args), rows(kwargs), key_spec, batch_spec),
                             out_specs=batch_spec)(params, args, kwargs, key, ids)
    return apply


def global_ids(batch: int) -> jax.Array:
    """The step's example indices 0 .. batch - 1."""
    return jnp.arange(batch, dtype=jnp.int32)
