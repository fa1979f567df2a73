"""The embedded evaluator of the digits main job: a small CNN digit classifier.

Its penultimate features give a Fréchet distance (FD) between generated and real digits — the same
statistic as FID with a detector that fits 8x8 digits — and its predictions give per-class coverage.
The trained parameters ship in `di_jax/assets/digits_classifier.msgpack`
(reproduced by `experiments/train_digits_classifier.py`).
"""

import os
from typing import Dict, Optional, Tuple

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from di_jax.eval.fid import frechet_distance

ASSET = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "digits_classifier.msgpack")
NUM_CLASSES = 10


class DigitClassifier(nn.Module):
    """Images [N, 1, 8, 8] in [-1, 1] (NCHW, EDM layout) -> (features [N, F], logits [N, 10])."""
    width: int = 32
    features: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
        if x.ndim != 4 or x.shape[1:] != (1, 8, 8):
            raise ValueError(f"digit images must have shape [N, 1, 8, 8]; got {x.shape}")
        h = jnp.transpose(x, (0, 2, 3, 1))
        h = nn.silu(nn.Conv(self.width, (3, 3), name="conv0")(h))
        h = nn.silu(nn.Conv(self.width * 2, (3, 3), strides=2, name="conv1")(h))     # 4x4
        h = nn.silu(nn.Conv(self.width * 2, (3, 3), name="conv2")(h))
        h = h.reshape(h.shape[0], -1)
        feats = nn.silu(nn.Dense(self.features, name="penultimate")(h))
        return feats, nn.Dense(NUM_CLASSES, name="head")(feats)


def init_params(rng: jax.Array) -> dict:
    return DigitClassifier().init(rng, jnp.zeros((1, 1, 8, 8)))["params"]


def load_params(path: str = ASSET) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"digit classifier weights not found at {path}; "
                                f"run experiments/train_digits_classifier.py")
    with open(path, "rb") as f:
        return flax.serialization.from_bytes(init_params(jax.random.PRNGKey(0)), f.read())


@jax.jit
def _apply(params, x):
    return DigitClassifier().apply({"params": params}, x)


def features_and_predictions(params, images: np.ndarray, batch: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
    """Penultimate features (float64) and predicted classes of images [N, 1, 8, 8] in [-1, 1]."""
    images = np.asarray(images, np.float32)
    if images.shape[1:] != (1, 8, 8):
        raise ValueError(f"digit images must have shape [N, 1, 8, 8]; got {images.shape}")
    feats, preds = [], []
    for i in range(0, len(images), batch):
        f, logits = _apply(params, jnp.clip(images[i:i + batch], -1, 1))
        feats.append(np.asarray(f, np.float64))
        preds.append(np.asarray(jnp.argmax(logits, -1)))
    return np.concatenate(feats), np.concatenate(preds)


def feature_stats(feats: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    return feats.mean(0), np.cov(feats, rowvar=False)


def evaluate_images(params, images: np.ndarray, ref_stats: Tuple[np.ndarray, np.ndarray],
                    labels: Optional[np.ndarray] = None) -> Dict[str, float]:
    """FD to the reference statistics, classes covered, and (if labels given) class-conditional accuracy.

    A class counts as covered when it receives at least 1/(4*10) of the predictions.
    """
    feats, preds = features_and_predictions(params, images)
    mu, sigma = feature_stats(feats)
    frac = np.bincount(preds, minlength=NUM_CLASSES) / len(preds)
    out = dict(fd=frechet_distance(mu, sigma, *ref_stats),
               classes_covered=int(np.sum(frac >= 1.0 / (4 * NUM_CLASSES))),
               min_class_fraction=float(frac.min()))
    if labels is not None:
        out["label_accuracy"] = float(np.mean(preds == np.asarray(labels)))
    return out
