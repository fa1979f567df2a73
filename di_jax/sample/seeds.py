"""Seeds: parsing "0-49999,60,70-79", and what each seed fixes (its latents and its class label).

The image of seed s depends on s alone: its latents are `jax.random.normal(PRNGKey(s), latent_shape)`
and, with random classes, its class is drawn from `fold_in(PRNGKey(s), 1)`. So the same seed gives
the same image whatever the batch size, the device count or the other seeds asked for.
"""

import re

import jax
import numpy as np

MAX_SEED = 2**32 - 1           # PRNGKey takes a uint32 seed
MAX_COUNT = 10_000_000         # seeds per call (a guard against "0-4294967295")
CLASS_MODES = ("cycle", "random")
_PART = re.compile(r"(\d+)(?:-(\d+))?")


class SeedsError(ValueError):
    """A malformed seed list or class choice (one-line message)."""


def parse_seeds(text: str) -> np.ndarray:
    """Seeds of "A-B,C,..." (inclusive ranges, in the given order) as uint32; no seed may repeat."""
    parts, count = [], 0
    for part in str(text).split(","):
        m = _PART.fullmatch(part.strip())
        if not m:
            raise SeedsError(f"{part.strip()!r} is not a seed or a range A-B of seeds (e.g. 0-63,100)")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise SeedsError(f"{part.strip()!r} is an empty range (A-B needs A <= B)")
        if hi > MAX_SEED:
            raise SeedsError(f"{part.strip()!r}: seeds must lie in 0..{MAX_SEED}")
        count += hi - lo + 1
        if count > MAX_COUNT:
            raise SeedsError(f"more than {MAX_COUNT:,} seeds in {str(text)[:60]!r}")
        parts.append((lo, hi))
    seeds = np.concatenate([np.arange(lo, hi + 1, dtype=np.int64) for lo, hi in parts])
    values, counts = np.unique(seeds, return_counts=True)
    if counts.max() > 1:
        raise SeedsError(f"seed {values[counts > 1][0]} is given more than once")
    return seeds.astype(np.uint32)


def format_seeds(seeds: np.ndarray) -> str:
    """The inverse of `parse_seeds` (consecutive runs written as ranges), shortened past 80 characters."""
    seeds, parts, start = [int(s) for s in seeds], [], 0
    for i in range(1, len(seeds) + 1):
        if i == len(seeds) or seeds[i] != seeds[i - 1] + 1:
            parts.append(str(seeds[start]) if i - 1 == start else f"{seeds[start]}-{seeds[i - 1]}")
            start = i
    text = ",".join(parts)
    return text if len(text) <= 80 else text[:77] + "..."


def seed_latents(seeds: jax.Array, shape: tuple) -> jax.Array:
    """Latents [N, *shape] of uint32 seeds [N]: row i is `normal(PRNGKey(seeds[i]), shape)` (jittable)."""
    return jax.vmap(lambda s: jax.random.normal(jax.random.PRNGKey(s), tuple(shape)))(seeds)


def seed_classes(seeds: np.ndarray, label_dim: int, mode) -> np.ndarray:
    """Class index per seed (int32 [N]): `mode` K (all class K), "cycle" (seed % label_dim) or "random".

    "random" draws seed s's class uniformly from `fold_in(PRNGKey(s), 1)`. Unconditional sources
    (label_dim 0) get zeros for "cycle"/"random" and refuse a class K.
    """
    seeds = np.asarray(seeds, np.uint32)
    if isinstance(mode, (int, np.integer)) and not isinstance(mode, bool):
        if not label_dim:
            raise SeedsError(f"class {mode} asked of an unconditional model (it takes no class labels)")
        if not 0 <= mode < label_dim:
            raise SeedsError(f"class {mode} out of range: the model has classes 0..{label_dim - 1}")
        return np.full(len(seeds), mode, np.int32)
    if mode not in CLASS_MODES:
        raise SeedsError(f"classes must be a class index or one of {CLASS_MODES}; got {mode!r}")
    if not label_dim:
        return np.zeros(len(seeds), np.int32)
    if mode == "cycle":
        return (seeds.astype(np.int64) % label_dim).astype(np.int32)
    draw = jax.jit(jax.vmap(lambda s: jax.random.randint(jax.random.fold_in(jax.random.PRNGKey(s), 1), (), 0,
                                                         label_dim)))
    return np.asarray(draw(seeds), np.int32)
