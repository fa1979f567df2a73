"""Device mesh and shardings: a 'data' x 'fsdp' mesh, the batch over both, parameters replicated or FSDP-sharded.

The mesh has two axes. The batch (every per-example array drawn inside the step) is split over all
devices, 'data' and 'fsdp' together. Parameter trees (generator, fake score, EMA, optimiser state,
the frozen teacher) are replicated over 'data' and, when the 'fsdp' axis has more than one device,
sharded along it (ZeRO-3 / FSDP): each device stores 1/fsdp of every large leaf and XLA all-gathers
a layer's weights where they are used and reduce-scatters their gradients. With fsdp = 1 (the
default) this is plain data parallelism, the `jax.jit`-with-shardings equivalent of pmap.

Which leaves are sharded along which dimension: the first of `rules` (regex over the leaf's
'/'-joined path, spec) that matches, else the automatic rule: a leaf of at least `min_size` elements
is split along its largest dimension divisible by the fsdp size (big_vision's rule), other leaves
are replicated. A spec is a comma-separated list of mesh axis names or '_' (not split) per dimension,
e.g. "fsdp,_" for a [in, out] kernel split along its input; "" replicates.
"""

import re
from typing import Any, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)          # the batch is split over both axes
MIN_SHARD_SIZE = 2 ** 14                     # elements; smaller leaves (biases, norms) stay replicated
PyTree = Any


def make_mesh(num_devices: Optional[int] = None, fsdp: int = 1) -> Mesh:
    """A ('data', 'fsdp') mesh over the first `num_devices` devices (default: all, across hosts).

    'fsdp' has `fsdp` devices (neighbours in the device order: on TPU, the fast links), 'data' the rest.
    """
    n = num_devices or jax.device_count()
    if n > jax.device_count():
        raise ValueError(f"num_devices={n} exceeds the {jax.device_count()} available devices")
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"the fsdp axis ({fsdp}) must divide the number of devices ({n})")
    # Auto axes: the compiler propagates shardings from the constraints placed in the step.
    auto = (jax.sharding.AxisType.Auto,) * 2
    shape = (n // fsdp, fsdp)
    if n == jax.device_count():
        return jax.make_mesh(shape, BATCH_AXES, axis_types=auto)
    return Mesh(np.array(jax.devices()[:n]).reshape(shape), BATCH_AXES, axis_types=auto)


def fsdp_size(mesh: Mesh) -> int:
    return int(dict(mesh.shape).get(FSDP_AXIS, 1))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh, everything else replicated."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    return NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0]))


def shard_batch(x: jax.Array, mesh: Mesh) -> jax.Array:
    """Inside jit: constrain an array's batch axis to all devices of the mesh."""
    return jax.lax.with_sharding_constraint(x, batch_sharded(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Puts a host pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def leaf_name(path) -> str:
    """'Dense_0/kernel' for a tree path (dict keys, attributes and indices joined by '/')."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def parse_spec(text: str, ndim: int, name: str = "") -> P:
    """'fsdp,_' -> P('fsdp', None); '' -> P() (replicated). The spec must name one entry per dimension."""
    text = text.strip()
    if not text:
        return P()
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != ndim:
        raise ValueError(f"partition rule spec {text!r} has {len(parts)} entries but {name or 'the leaf'} has "
                         f"{ndim} dimensions")
    return P(*[None if p in ("_", "None", "") else p for p in parts])


def auto_spec(shape: Tuple[int, ...], fsdp: int, min_size: int = MIN_SHARD_SIZE) -> P:
    """The automatic FSDP rule: split the largest dimension divisible by `fsdp` if the leaf is big enough."""
    if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: (-shape[d], d)):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = FSDP_AXIS
            return P(*spec)
    return P()


def param_specs(tree: PyTree, mesh: Mesh, rules: Sequence[Tuple[str, str]] = (),
                min_size: int = MIN_SHARD_SIZE) -> PyTree:
    """A PartitionSpec per leaf of a parameter tree (arrays or ShapeDtypeStructs), by `rules` then `auto_spec`."""
    fsdp = fsdp_size(mesh)
    compiled = [(re.compile(pattern), spec) for pattern, spec in rules]

    def one(path, leaf):
        shape = tuple(np.shape(leaf))
        name = leaf_name(path)
        for pattern, spec in compiled:
            if pattern.search(name):
                p = parse_spec(spec, len(shape), name)
                for dim, axis in enumerate(p):
                    if axis is not None and shape[dim] % int(dict(mesh.shape)[axis]):
                        raise ValueError(f"partition rule {pattern.pattern!r} -> {spec!r}: dimension {dim} of "
                                         f"{name} {shape} is not divisible by the {axis!r} axis")
                return p
        return auto_spec(shape, fsdp, min_size)
    return jax.tree_util.tree_map_with_path(one, tree)


def named(specs: PyTree, mesh: Mesh) -> PyTree:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))


def shard_params(tree: PyTree, mesh: Mesh, rules: Sequence[Tuple[str, str]] = (),
                 min_size: int = MIN_SHARD_SIZE) -> PyTree:
    """Puts a host parameter tree on the mesh, sharded by `param_specs`."""
    return jax.device_put(tree, named(param_specs(tree, mesh, rules, min_size), mesh))


def mesh_rules(config: Any) -> Tuple[tuple, int]:
    """(partition rules, minimum size of a sharded leaf) of config.mesh."""
    m = config.get("mesh") or {}
    return tuple(tuple(r) for r in m.get("rules", ())), int(m.get("min_shard_size", MIN_SHARD_SIZE))
