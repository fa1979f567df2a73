"""Reference statistics of a locally prepared tensorflow-datasets image dataset (never downloads)."""

from typing import Iterator

import numpy as np

from di_jax.eval.fid.features import FeatureFn, accumulate
from di_jax.eval.fid.stats import FidError, stats_finalize


def tfds_builder(name: str, data_dir: str | None):
    """The tfds builder of a prepared dataset; `FidError` if unknown or not prepared."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - unknown name, bad config
        raise FidError(f"unknown tfds dataset {name!r}: {type(e).__name__}") from e
    if not builder.is_prepared():
        raise FidError(f"tfds dataset {name!r} is not prepared under {builder.data_dir}; build it on a machine "
                       f"with internet (`tfds build {name} --data_dir DIR`) and pass its data_dir")
    return builder


def tfds_batches(name: str, *, split: str = "train", data_dir: str | None = None,
                 batch_size: int = 500) -> Iterator[np.ndarray]:
    """uint8 NHWC image batches of a locally prepared tfds dataset (never downloads)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    ds = tfds_builder(name, data_dir).as_dataset(split=split, shuffle_files=False)
    if "image" not in ds.element_spec:
        raise FidError(f"tfds dataset {name!r} has no 'image' feature")
    yield from tfds.as_numpy(ds.map(lambda ex: ex["image"]).batch(batch_size))


def stats_from_tfds(name: str, feature_fn: FeatureFn, *, split: str = "train", data_dir: str | None = None,
                    num: int | None = None, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Reference (mu, sigma) of a tfds dataset split (all of it, or its first `num` images).

    Args:
      name: tfds dataset name (e.g. 'cifar10'), prepared under `data_dir`.
      feature_fn: a `make_feature_fn(...)` result.
      split: dataset split.
      data_dir: tfds data_dir (default: tfds' own default).
      num: number of images (default: the whole split).
      batch_size: images per detector call.
    Returns: (mu [D], sigma [D, D]) in float64, for `save_stats`.
    """
    builder = tfds_builder(name, data_dir)
    if num is None:
        try:
            num = builder.info.splits[split].num_examples
        except Exception as e:  # noqa: BLE001 - unknown split
            raise FidError(f"tfds dataset {name!r} has no split {split!r}") from e
    batches = tfds_batches(name, split=split, data_dir=data_dir, batch_size=batch_size)
    stats, _ = accumulate(batches, feature_fn, num, splits=0)
    return stats_finalize(stats)
