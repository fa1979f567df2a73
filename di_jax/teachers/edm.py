"""EDM teachers: preconditioned EDM networks loaded through the converter, as `Teacher` values."""

import os

import jax.numpy as jnp

from di_jax.teachers.base import Teacher


def network_denoiser(module, dropout: bool = False):
    """`denoise(params, x, sigma, labels, rng)` of a preconditioned EDM module (NCHW images).

    With `dropout`, the network runs in train mode whenever it is given an rng (the official DI code
    distils with the teacher's dropout on); `rng=None` is always deterministic.
    """
    def denoise(params, x, sigma, labels, rng=None):
        train = dropout and rng is not None
        return module.apply({"params": params}, x, sigma, class_labels=labels, train=train,
                            rngs={"dropout": rng} if train else {})

    return denoise


def edm_teacher(module, params, dropout: bool = False) -> Teacher:
    """A `Teacher` of an EDM module and its parameters (e.g. random ones, for benchmarks)."""
    res, channels = module.model.img_resolution, module.img_channels
    return Teacher(params=params, denoise=network_denoiser(module, dropout), data_shape=(channels, res, res),
                   label_dim=module.label_dim, module=module)


def load(config) -> Teacher:
    """The teacher at config.teacher.path ('' -> the embedded digits teacher) in config.networks.dtype.

    The path may be a converted directory, an official .pkl, a .pt or a .safetensors file.
    """
    from di_jax.convert import load_teacher
    from di_jax.teachers import digits

    path = config.teacher.get("path", "") or digits.ASSET
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.teacher.path: no such file or directory {path!r}")
    module, params = load_teacher(path)
    dtype = config.networks.get("dtype", "float32")
    if dtype != "float32":
        module = module.clone(dtype=jnp.dtype(dtype), model=module.model.clone(dtype=jnp.dtype(dtype)))
    return edm_teacher(module, params, dropout=config.networks.get("teacher_dropout", False))
