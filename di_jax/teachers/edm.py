"""EDM teachers: preconditioned EDM networks loaded through the converter, as `Teacher` values."""

import os

import jax.numpy as jnp

from di_jax.teachers.base import Teacher


def network_denoiser(module):
    """`denoise(params, x, sigma, labels, rng, augment_labels=None)` of a preconditioned EDM module (NCHW).

    The network runs in train mode (dropout at its own rate) exactly when it is given an rng; the
    train step decides which network gets one (the method's convention, `di_jax.methods`).
    """
    def denoise(params, x, sigma, labels, rng=None, augment_labels=None):
        train = rng is not None
        return module.apply({"params": params}, x, sigma, class_labels=labels, augment_labels=augment_labels,
                            train=train, rngs={"dropout": rng} if train else {})

    return denoise


def with_dropout(module, rate: float):
    """`module` with its UNet's dropout rate set to `rate` (0 disables)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"config.networks.dropout must lie in [0, 1) (or < 0: the checkpoint's rate); got {rate}")
    return module.clone(model=module.model.clone(dropout=float(rate)))


def edm_teacher(module, params) -> Teacher:
    """A `Teacher` of an EDM module and its parameters (e.g. random ones, for benchmarks)."""
    res, channels = module.model.img_resolution, module.img_channels
    return Teacher(params=params, denoise=network_denoiser(module), data_shape=(channels, res, res),
                   label_dim=module.label_dim, module=module, augment_dim=int(module.model.augment_dim or 0))


def load(config) -> Teacher:
    """The teacher at config.teacher.path ('' -> the embedded digits teacher) in config.networks.dtype.

    The path may be a converted directory, an official .pkl, a .pt or a .safetensors file, local or in
    a bucket (gs://...; copied once to a local cache, `di_jax.convert.remote`). Its
    dropout rate is the checkpoint's (the official CIFAR-10 teachers: 0.13) unless
    config.networks.dropout >= 0 overrides it.
    """
    from di_jax.convert import load_teacher
    from di_jax.teachers import digits

    official = config.teacher.get("official", "")
    if official and not config.teacher.get("path", ""):
        raise ValueError(f"config.teacher.path is empty: this recipe distils the official EDM checkpoint {official} "
                         f"(https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/{official}); pass "
                         f"--config.teacher.path=FILE")
    from di_jax.convert.remote import local_copy

    path = local_copy(config.teacher.get("path", "") or digits.ASSET)    # gs://...: a cached local copy
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.teacher.path: no such file or directory {path!r}")
    module, params = load_teacher(path)
    if not hasattr(module, "sigma_range"):      # a diffusers folder's PixArt transformer, not an EDM network
        raise ValueError(f"config.teacher.path {path} holds a {type(module).__name__}: set config.teacher.kind="
                         "'pixart' for text-to-image (diffusers) teachers")
    dtype = config.networks.get("dtype", "float32")
    if dtype != "float32":
        module = module.clone(dtype=jnp.dtype(dtype), model=module.model.clone(dtype=jnp.dtype(dtype)))
    rate = config.networks.get("dropout", -1.0)
    if rate >= 0:
        module = with_dropout(module, rate)
    return edm_teacher(module, params)
