"""Files of samples: one PNG per seed (EDM's generate.py layout), an .npz, a grid, a scatter plot.

Images are quantised like EDM: uint8 = clip(x * 127.5 + 128, 0, 255) of x in [-1, 1], NCHW -> NHWC.
"""

import math
import os
from typing import Optional

import numpy as np

from di_jax.eval.pictures import image_grid_png, scatter_png

GRID_MAX = 256      # images in a grid picture (the first ones, in seed order)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC images of float NCHW images in [-1, 1] (EDM's rounding: truncation after +128)."""
    x = np.asarray(images, np.float32)
    if x.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W]; got shape {x.shape}")
    return np.clip(x * np.float32(127.5) + np.float32(128), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def png_path(out: str, seed: int, subdirs: bool = False) -> str:
    """`out/{seed:06d}.png`, or `out/{seed - seed % 1000:06d}/{seed:06d}.png` with `subdirs`."""
    seed = int(seed)
    return os.path.join(out, f"{seed - seed % 1000:06d}" if subdirs else "", f"{seed:06d}.png")


def write_pngs(out: str, seeds: np.ndarray, images: np.ndarray, subdirs: bool = False) -> None:
    """One PNG per seed of uint8 NHWC images (grey for one channel, RGB for three)."""
    from PIL import Image

    for seed, img in zip(seeds, images):
        path = png_path(out, seed, subdirs)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)


def write_npz(path: str, seeds: np.ndarray, samples: np.ndarray, labels: Optional[np.ndarray] = None) -> None:
    """`samples` (uint8 [N, H, W, C] images or float [N, D] points), `seeds` and, if given, class `labels`."""
    arrays = dict(samples=samples, seeds=np.asarray(seeds, np.uint32))
    if labels is not None:
        arrays["labels"] = np.asarray(labels, np.int32)
    np.savez(path, **arrays)


def grid_columns(count: int, label_dim: int, cycle: bool) -> int:
    """label_dim columns when classes cycle with the seed (one class per column), else a square grid."""
    return label_dim if cycle and 2 <= label_dim <= 32 else max(1, math.ceil(math.sqrt(count)))


def write_grid(path: str, images: np.ndarray, columns: int) -> None:
    """A grid of float NCHW images in [-1, 1], scaled up to about 64 pixels per image."""
    scale = max(1, 64 // images.shape[-1])
    image_grid_png(path, np.asarray(images).transpose(0, 2, 3, 1), nrow=columns, scale=scale)


def write_scatter(path: str, points: np.ndarray, title: str = "") -> None:
    """A scatter plot of 2-D points (the first two coordinates), the square fitted to them."""
    xy = np.asarray(points, np.float64)[:, :2]
    finite = np.abs(xy[np.isfinite(xy)])
    extent = float(np.ceil(finite.max() + 0.5)) if finite.size else 3.0
    scatter_png(path, points, extent=extent, title=title)
