"""The train step's input conditioning: batches of precomputed prompt embeddings, host by host.

Networks conditioned on text (`nets.condition`, e.g. a PixArt teacher's `TextCondition([L, C], [L])`)
take the step's conditioning as an input instead of drawing class labels. `make_source(config, nets,
mesh)` returns `source(step, k)`: the global batch for train steps step .. step + k - 1, read from the
prompt-embedding directory `config.prompts.path` (`di-jax embed-prompts`, `di_jax.text.embeddings`).
Each host reads only its own rows (`process_index` / `process_count`) and the global array is made
from the hosts' slices, so a pod never moves prompts between hosts. The rows of step s are a keyed
permutation of the directory (seed `config.prompts.seed`) at position s: a resumed run continues
with the prompts it would have seen, and the result does not depend on the number of hosts.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from di_jax.train import sharding

PyTree = Any


class ConditionSource(NamedTuple):
    """`batch(step, k)`: the conditioning of k steps from `step` (k = 1: [B, ...]; k > 1: [k, B, ...]);
    `spec(k)`: its shapes, dtypes and shardings (for ahead-of-time compilation)."""
    batch: Callable[[int, int], PyTree]
    spec: Callable[[int], PyTree]


def _layout(mesh, k: int) -> NamedSharding:
    axes = tuple(a for a in sharding.BATCH_AXES if a in mesh.axis_names)
    return NamedSharding(mesh, P(axes) if k == 1 else P(None, axes))


def make_source(config: ml_collections.ConfigDict, nets, mesh: jax.sharding.Mesh) -> Optional[ConditionSource]:
    """The run's conditioning source; None when the networks draw their own labels (nets.condition None)."""
    if nets.condition is None:
        return None
    from di_jax.convert.remote import local_copy
    from di_jax.text.embeddings import PromptEmbeddings

    prompts = config.get("prompts") or {}
    path = prompts.get("path", "")
    if not path:
        raise ValueError("config.prompts.path is empty: text-conditioned networks train on a directory of prompt "
                         "embeddings (make one with di-jax embed-prompts)")
    data = PromptEmbeddings(local_copy(path))
    seed = int(prompts.get("seed", 0))
    fields = nets.condition._fields            # e.g. ('embeddings', 'mask'): read by name from the batches
    want = {f: tuple(getattr(nets.condition, f).shape) for f in fields}
    have = dict(embeddings=(data.max_length, data.width), mask=(data.max_length,))
    if any(want[f] != have.get(f) for f in fields):
        raise ValueError(f"config.prompts.path {path}: embeddings of {data.max_length} tokens x {data.width} "
                         f"channels, the networks take {want}")
    batch_size = config.batch_size
    if batch_size % jax.process_count():
        raise ValueError(f"config.batch_size {batch_size} must be divisible by the {jax.process_count()} processes")

    def spec(k: int) -> PyTree:
        lead = (batch_size,) if k == 1 else (k, batch_size)
        return type(nets.condition)(**{f: jax.ShapeDtypeStruct(lead + want[f], getattr(nets.condition, f).dtype,
                                                               sharding=_layout(mesh, k)) for f in fields})

    def batch(step: int, k: int = 1) -> PyTree:
        rows = [data.batch(s, batch_size, seed, jax.process_index(), jax.process_count(),
                           dtype=np.dtype(nets.condition.embeddings.dtype)) for s in range(step, step + k)]
        out = {}
        for f in fields:
            local = np.stack([np.asarray(getattr(r, f), getattr(nets.condition, f).dtype) for r in rows])
            local = local[0] if k == 1 else local
            global_shape = ((batch_size,) if k == 1 else (k, batch_size)) + want[f]
            out[f] = jax.make_array_from_process_local_data(_layout(mesh, k), local, global_shape)
        return type(nets.condition)(**out)

    return ConditionSource(batch, spec)
