"""The optimiser update of one network on raveled vectors, replicated or per FSDP shard.

The optimisers run on the network's parameters raveled into one vector: a handful of element-wise
kernels instead of ~10 per parameter leaf, which is what keeps XLA:CPU's compile time of the CIFAR-10
step at about a minute (experiments/PERF.md, change 6; 551 s per leaf). Adam is
element-wise, so this is the same update as per leaf.

With the parameters sharded along the mesh's 'fsdp' axis (`sharding.param_specs`) the vector is
raveled per device, inside a `shard_map`: each device ravels its own blocks of the sharded leaves,
then the replicated (small) leaves, and keeps the optimiser state of exactly those elements. The
global optimiser vector is the devices' local vectors side by side, split along 'fsdp' (1/fsdp of
it per device, the same layout as the parameters). Norms (gradient norm, clipping, update norm)
add the sharded part over 'fsdp' once and the replicated part once.

A non-finite loss or gradient leaves parameters and optimiser state unchanged (`ok` False).
"""

from typing import Any, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from di_jax.train import sharding
from di_jax.train.state import make_optimizer, needs_params

PyTree = Any


def _select(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def _is_sharded(spec: P) -> bool:
    return any(axis is not None for axis in spec)


def local_size(shape, spec: P, mesh: jax.sharding.Mesh) -> int:
    """Elements of one device's block of a leaf of `shape` sharded by `spec`."""
    sizes = dict(mesh.shape)
    block = [d // (sizes[a] if a is not None else 1) for d, a in zip(shape, tuple(spec) + (None,) * len(shape))]
    return int(np.prod(block, dtype=np.int64))


def opt_vector_length(params: PyTree, specs: PyTree, mesh: jax.sharding.Mesh) -> int:
    """Length of the global optimiser vector: fsdp x (one device's raveled blocks); the raveled tree if fsdp = 1."""
    leaves = jax.tree.leaves(params)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))
    local = sum(local_size(np.shape(x), s, mesh) for x, s in zip(leaves, spec_leaves))
    return sharding.fsdp_size(mesh) * local


def opt_state_specs(opt_state: PyTree, vector_length: int, mesh: jax.sharding.Mesh) -> PyTree:
    """The optimiser state's specs: its vector leaves split along 'fsdp' (if > 1), scalars replicated."""
    split = sharding.fsdp_size(mesh) > 1

    def one(x):
        return P(sharding.FSDP_AXIS) if split and np.shape(x) == (vector_length,) else P()
    return jax.tree.map(one, opt_state)


class FlatUpdate:
    """`update(loss, grads, params, opt_state) -> (params, opt_state, ok, grad norm, update norm)` of one network.

    Args:
      cfg: the optimiser's config (`config.gen_optim` / `config.fake_optim`).
      specs: the parameters' PartitionSpecs (`sharding.param_specs`).
      mesh: the step's mesh.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, specs: PyTree, mesh: jax.sharding.Mesh):
        self.mesh, self.specs = mesh, specs
        self.with_params = needs_params(cfg)
        self.fsdp = sharding.fsdp_size(mesh) > 1 and any(
            _is_sharded(s) for s in jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P)))
        self.clip = float(cfg.clip)
        # FSDP: clipping needs the norm over all shards, so it is applied here rather than inside optax.
        self.tx = make_optimizer(cfg, clip=not self.fsdp)

    def init(self, params: PyTree) -> PyTree:
        """The optimiser state (zeros of the global vector; Adam's state is element-wise)."""
        n = opt_vector_length(params, self.specs, self.mesh) if self.fsdp else None
        return self.tx.init(jnp.zeros((n,), jnp.float32) if self.fsdp else ravel_pytree(params)[0])

    def __call__(self, loss, grads, params, opt_state) -> Tuple:
        if not self.fsdp:
            return self._replicated(loss, grads, params, opt_state)
        return self._sharded(loss, grads, params, opt_state)

    def _replicated(self, loss, grads, params, opt_state):
        flat_grads, unravel = ravel_pytree(grads)
        updates, new_opt_state = self.tx.update(flat_grads, opt_state,
                                                ravel_pytree(params)[0] if self.with_params else None)
        ok = jnp.isfinite(loss) & jnp.all(jnp.isfinite(flat_grads))
        new_params = jax.tree.map(lambda p, u: jnp.where(ok, p + u, p), params, unravel(updates))
        update_norm = jnp.where(ok, jnp.linalg.norm(updates), 0.0)
        return new_params, _select(ok, new_opt_state, opt_state), ok, jnp.linalg.norm(flat_grads), update_norm

    def _sharded(self, loss, grads, params, opt_state):
        specs = self.specs
        spec_leaves, treedef = jax.tree.flatten(specs, is_leaf=lambda s: isinstance(s, P))
        split = [i for i, s in enumerate(spec_leaves) if _is_sharded(s)]
        whole = [i for i, s in enumerate(spec_leaves) if not _is_sharded(s)]
        vector = opt_vector_length(params, specs, self.mesh)
        opt_specs = opt_state_specs(opt_state, vector, self.mesh)
        axis, clip, tx, with_params = sharding.FSDP_AXIS, self.clip, self.tx, self.with_params

        def ravel(leaves):
            """Local blocks of the sharded leaves, then the replicated leaves: (vector, length of sharded part)."""
            a = [jnp.ravel(leaves[i]) for i in split]
            b = [jnp.ravel(leaves[i]) for i in whole]
            return jnp.concatenate(a + b), sum(x.size for x in a)

        def sq_norm(vec, n_split):
            return jax.lax.psum(jnp.sum(jnp.square(vec[:n_split])), axis) + jnp.sum(jnp.square(vec[n_split:]))

        def local_update(loss, grads, params, opt_state):
            g_leaves, p_leaves = treedef.flatten_up_to(grads), treedef.flatten_up_to(params)
            g, n_split = ravel(g_leaves)
            gnorm = jnp.sqrt(sq_norm(g, n_split))
            bad = jax.lax.psum(jnp.sum(~jnp.isfinite(g[:n_split])), axis) + jnp.sum(~jnp.isfinite(g[n_split:]))
            ok = jnp.isfinite(loss) & (bad == 0)
            if clip > 0:      # optax.clip_by_global_norm with the norm over every shard
                g = jnp.where(gnorm < clip, g, (g / gnorm) * clip)
            updates, new_opt = tx.update(g, opt_state, ravel(p_leaves)[0] if with_params else None)
            unorm = jnp.where(ok, jnp.sqrt(sq_norm(updates, n_split)), 0.0)
            new_leaves, offset = list(p_leaves), 0
            for i in split + whole:
                p = p_leaves[i]
                u = updates[offset:offset + p.size].reshape(p.shape)
                offset += p.size
                new_leaves[i] = jnp.where(ok, p + u, p)
            return treedef.unflatten(new_leaves), _select(ok, new_opt, opt_state), ok, gnorm, unorm

        run = jax.shard_map(local_update, mesh=self.mesh, in_specs=(P(), specs, specs, opt_specs),
                            out_specs=(specs, opt_specs, P(), P(), P()),
                            check_vma=False)   # the replicated leaves' part is the same on every device
        return run(loss, grads, params, opt_state)


def make_updates(config: ml_collections.ConfigDict, gen_specs: PyTree, fake_specs: PyTree,
                 mesh: jax.sharding.Mesh) -> Tuple[FlatUpdate, FlatUpdate]:
    """The generator's and the fake score's updates."""
    return FlatUpdate(config.gen_optim, gen_specs, mesh), FlatUpdate(config.fake_optim, fake_specs, mesh)


def state_specs(state: Any, mesh: jax.sharding.Mesh, rules=(), min_size: int = sharding.MIN_SHARD_SIZE) -> Any:
    """PartitionSpecs of a whole TrainState (arrays or ShapeDtypeStructs): parameters and EMA by
    `sharding.param_specs`, optimiser vectors along 'fsdp' (see above), counters replicated."""
    gen = sharding.param_specs(state.gen_params, mesh, rules, min_size)
    fake = sharding.param_specs(state.fake_params, mesh, rules, min_size)
    opt = lambda o, p, s: opt_state_specs(o, opt_vector_length(p, s, mesh), mesh)
    return state.replace(step=P(), rng=P(), gen_params=gen, fake_params=fake, ema_params=gen,
                         gen_opt_state=opt(state.gen_opt_state, state.gen_params, gen),
                         fake_opt_state=opt(state.fake_opt_state, state.fake_params, fake),
                         skipped_gen=P(), skipped_fake=P())
