"""Datasets as arrays in EDM's convention: images [N, C, H, W] float32 in [-1, 1], integer labels [N].

* `digits`: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels, 10 classes), which ship
  inside scikit-learn — the embedded dataset of the CPU main job; no download.
* `tfds_images`: any image dataset tensorflow-datasets has prepared locally (never downloads).
"""

from typing import Optional, Tuple

import numpy as np


def load_digits(resolution: int = 8, split: str = "all", test_fraction: float = 0.2,
                seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as ([N, 1, R, R] in [-1, 1], labels [N]); R = 8 or a multiple (nearest upsampling).

    split: 'all', or a fixed stratified-by-shuffle 'train' / 'test' partition (for the classifier).
    """
    from sklearn.datasets import load_digits as _sk_digits

    if resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8; got {resolution}")
    d = _sk_digits()
    images = (d.images.astype(np.float32) / 8.0 - 1.0)[:, None]          # 0..16 -> [-1, 1]
    if resolution > 8:
        f = resolution // 8
        images = images.repeat(f, axis=2).repeat(f, axis=3)
    labels = d.target.astype(np.int32)
    if split == "all":
        return images, labels
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test'; got {split!r}")
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    idx = order[:n_test] if split == "test" else order[n_test:]
    return images[idx], labels[idx]


def tfds_images(name: str, split: str = "train", data_dir: Optional[str] = None,
                limit: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Images and labels of a locally prepared tfds dataset, converted to [N, C, H, W] in [-1, 1]."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(f"tfds dataset {name!r} is not prepared under {builder.data_dir}; "
                                f"run `tfds build {name} --data_dir DIR` on a machine with internet")
    ds = builder.as_dataset(split=split if limit is None else f"{split}[:{limit}]")
    images, labels = [], []
    for ex in tfds.as_numpy(ds):
        images.append(ex["image"])
        labels.append(ex.get("label", 0))
    x = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return np.transpose(x, (0, 3, 1, 2)), np.asarray(labels, np.int32)
