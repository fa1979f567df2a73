"""The named networks of `di-jax bench`: EDM network configs, the generator's sigma_init, random weights.

A name selects a network config dict (for `di_jax.nets.build_network` and for the PyTorch reference's
`torch_reference.networks.build_network`, which read the same keys) and the sigma_init of the
one-step generator built from it (DI Table 7). Throughput does not depend on the weights, so the
benchmark runs random ones.
"""

from typing import Dict, Optional, Tuple


class BenchError(ValueError):
    """A bad command-line value: printed as one line, exit status 2."""


# Smallest useful SongUNet (one level, attention in dec.8x8_in0, labels), for tests: XLA's CPU compile
# time of the full step grows with the number of blocks, not with their width.
TINY = dict(precond="VPPrecond", model_type="SongUNet", img_resolution=8, img_channels=3, label_dim=10,
            augment_dim=0, model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[8],
            dropout=0.1, embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
            decoder_type="standard", resample_filter=[1, 1])

# PixArt-XL-2-512x512 (the SIM paper's T2I teacher, spec t2i_and_gan.md): 28 blocks, 16 heads x 72, latents
# 4 x 64 x 64, T5-XXL text of up to 120 tokens x 4096; sized ahead of time only (`di-jax bench --aot`).
PIXART_XL_512 = dict(family="pixart", num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                     num_layers=28, patch_size=2, sample_size=64, caption_channels=4096, cross_attention_dim=1152,
                     max_length=120)

# name -> (preset in di_jax.nets.presets, a config dict, or None for TINY; sigma_init of the generator)
NETWORKS: Dict[str, Tuple[Optional[str | dict], float]] = {
    "cifar10-ddpmpp": ("cifar10-32x32-cond-vp", 2.5),       # official DDPM++ cond VP, 55.7M params
    "cifar10-ddpmpp-uncond": ("cifar10-32x32-uncond-vp", 2.5),
    "imagenet64-adm": ("imagenet-64x64-cond-adm", 5.0),     # official ADM, 296M params
    "tiny": (None, 2.5),
    "pixart-xl-2-512": (PIXART_XL_512, 2.5),                # 611M params; --aot only (the paper states no sigma_init)
}
AOT_ONLY = ("pixart-xl-2-512",)


def _check(name: str) -> None:
    if name not in NETWORKS:
        raise BenchError(f"unknown network config {name!r}; choose from {sorted(NETWORKS)}")


def network_config(name: str) -> dict:
    """The network config dict of a bench name (float32; `use_fp16` dropped).

    Args:
      name: one of `NETWORKS`.
    """
    _check(name)
    preset, _ = NETWORKS[name]
    if preset is None:
        return dict(TINY)
    if isinstance(preset, dict):
        return dict(preset)
    from di_jax.nets.presets import edm_config_presets
    cfg = dict(edm_config_presets()[preset])
    cfg.pop("use_fp16", None)
    return cfg


def sigma_init(name: str) -> float:
    """The generator's sigma_init for the network `name` (DI Table 7)."""
    _check(name)
    return NETWORKS[name][1]


def param_shapes(module, net_cfg: dict, seed: int = 0):
    """The parameter tree of an EDM network as ShapeDtypeStructs (`jax.eval_shape` of its init: nothing compiled)."""
    import jax
    import numpy as np

    res, ch, label_dim = net_cfg["img_resolution"], net_cfg["img_channels"], net_cfg.get("label_dim", 0)
    x = np.zeros((1, ch, res, res), np.float32)
    labels = np.zeros((1, label_dim), np.float32) if label_dim else None
    return jax.eval_shape(lambda k: module.init(k, x, np.ones((1,), np.float32), class_labels=labels)["params"],
                          jax.random.PRNGKey(seed))


def random_params(module, net_cfg: dict, seed: int = 0):
    """Random parameters of an EDM network built from `net_cfg` (throughput does not depend on them).

    Shapes come from `jax.eval_shape` of the module's init and values from numpy: kernels
    N(0, 1/fan_in), GroupNorm scales 1, biases 0. Nothing is compiled (a jitted Flax init of even the
    tiny network takes ~25 s of XLA:CPU compile on 2 cores; this takes ~0.5 s), and unlike EDM's own
    init no layer is zero, so every path of the network (dropout included) affects its output.

    Args:
      module: the Flax module, `di_jax.nets.build_network(net_cfg)`.
      net_cfg: its config dict (image resolution, channels, label_dim).
      seed: the seed of the numpy generator.
    """
    import jax
    import numpy as np

    shapes = param_shapes(module, net_cfg, seed)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        if name == "bias":
            return np.zeros(leaf.shape, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1])) or 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree.map(jax.numpy.asarray, jax.tree_util.tree_map_with_path(fill, shapes))
