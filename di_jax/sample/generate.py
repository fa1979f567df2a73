"""The sharded generation loop: seeds in, images out, on every device (and host) of the mesh.

Each compiled call draws a global batch of `batch` seeds per device: the seeds (and their class
indices) are split over all devices of the mesh, the latents are drawn from the seeds on the devices
(`seeds.seed_latents`), the parameters are replicated. The seed list is padded to a whole number of
global batches and the padding dropped, so every call has the same shape (one compilation).

Multi-host (untested here, no multi-host machine): every process runs this loop with the same
seeds; `make_array_from_callback` gives each process only its own slice of a global batch, and the
images are all-gathered so that every process gets every chunk (the CLI writes files on process 0).
"""

from typing import Iterator, Optional, Tuple

import jax
import numpy as np
from jax.experimental import multihost_utils

from di_jax.sample.seeds import seed_latents
from di_jax.sample.sources import Source
from di_jax.train import sharding


def plan(num: int, batch: int, num_devices: int) -> Tuple[int, int]:
    """(per-device batch, padded seed count): `batch` shrunk for short seed lists, then a whole number of calls."""
    if batch < 1:
        raise ValueError(f"the batch size must be >= 1; got {batch}")
    per_device = min(batch, -(-num // num_devices))
    width = per_device * num_devices
    return per_device, -(-num // width) * width


def draw_fn(source: Source, mesh: jax.sharding.Mesh):
    """jit(params, seeds [G] uint32, classes [G] int32) -> images [G, *data_shape], batch split over the mesh."""
    replicated, split = sharding.replicated(mesh), sharding.batch_sharded(mesh)

    def draw(params, seeds, classes):
        z = seed_latents(seeds, source.latent_shape)
        labels = jax.nn.one_hot(classes, source.label_dim) if source.label_dim else None
        return source.sample(params, z, labels)

    return jax.jit(draw, in_shardings=(replicated, split, split), out_shardings=split)


def generate(source: Source, seeds: np.ndarray, classes: np.ndarray, batch: int = 64,
             mesh: Optional[jax.sharding.Mesh] = None,
             progress: bool = False) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields (seeds, classes, images) chunks in seed order; images are host float arrays [n, *data_shape].

    Args:
      source: what draws (`sources.open_source`).
      seeds: uint32 [N] (`seeds.parse_seeds`).
      classes: int32 [N] class index per seed (`seeds.seed_classes`; ignored by unconditional sources).
      batch: images per device per compiled call (shrunk when there are fewer seeds).
      mesh: a `sharding.make_mesh` mesh (the batch is split over all its devices); default all devices.
      progress: a tqdm bar on stderr (process 0).
    """
    mesh = sharding.make_mesh() if mesh is None else mesh
    seeds, classes = np.asarray(seeds, np.uint32), np.asarray(classes, np.int32)
    num = len(seeds)
    if num == 0 or classes.shape != seeds.shape:
        raise ValueError(f"need one class per seed and at least one seed; got {classes.shape} for {seeds.shape}")
    per_device, padded = plan(num, batch, mesh.size)
    width = per_device * mesh.size
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], padded - num)])
    all_seeds, all_classes = pad(seeds), pad(classes)
    draw = draw_fn(source, mesh)
    params = sharding.replicate(source.params, mesh)
    split = sharding.batch_sharded(mesh)
    from tqdm.auto import tqdm

    bar = tqdm(total=num, unit="img", disable=not progress or jax.process_index() != 0, dynamic_ncols=True)
    try:
        for start in range(0, padded, width):
            stop, keep = start + width, min(width, num - start)
            global_in = [jax.make_array_from_callback((width,), split, lambda idx, a=a: a[start:stop][idx])
                         for a in (all_seeds, all_classes)]
            images = draw(params, *global_in)
            images = np.asarray(images) if images.is_fully_addressable else \
                multihost_utils.process_allgather(images, tiled=True)
            bar.update(keep)
            yield seeds[start:start + keep], classes[start:start + keep], images[:keep]
    finally:
        bar.close()
