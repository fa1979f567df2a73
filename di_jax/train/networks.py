"""The networks a distillation run needs, bundled as pure functions.

A `Networks` value tells the train step how to draw latents, run the generator, the fake-score
denoiser and the teacher denoiser, and how to initialise generator and fake parameters. Every
function is pure: parameters and rngs are arguments. `rng=None` means deterministic (no dropout).
"""

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from di_jax.nets.mlp import MLPDenoiser, MLPGenerator
from di_jax.teachers.analytic import GaussianMixture

PyTree = Any


class Networks(NamedTuple):
    data_shape: Tuple[int, ...]     # per-example shape of x0
    latent_shape: Tuple[int, ...]   # per-example shape of z ~ N(0, I)
    label_dim: int                  # 0: unconditional; else labels are one-hot [B, label_dim]
    generate: Callable              # (gen_params, z, labels, rng) -> x0
    fake_denoise: Callable          # (fake_params, x, sigma, labels, rng) -> D
    teacher_denoise: Callable       # (teacher_params, x, sigma, labels, rng) -> D
    init_generator: Callable        # (rng, teacher_params) -> gen_params
    init_fake: Callable             # (rng, teacher_params) -> fake_params


def ring_mixture(num_modes: int = 8, radius: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """K equal-weight isotropic Gaussians evenly spaced on a circle."""
    angle = 2 * np.pi * np.arange(num_modes) / num_modes
    return GaussianMixture.create(radius * np.stack([np.cos(angle), np.sin(angle)], -1).astype(np.float32), std)


def grid_mixture(side: int = 5, spacing: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """side x side equal-weight Gaussians on a square grid centred at 0."""
    coords = (np.arange(side) - (side - 1) / 2) * spacing
    means = np.stack(np.meshgrid(coords, coords, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    return GaussianMixture.create(means, std)


def analytic_teacher(cfg: ml_collections.ConfigDict) -> GaussianMixture:
    if cfg.kind == "ring":
        return ring_mixture(cfg.num_modes, cfg.radius, cfg.std)
    if cfg.kind == "grid":
        return grid_mixture(int(round(np.sqrt(cfg.num_modes))), cfg.get("spacing", 1.0), cfg.std)
    raise ValueError(f"config.teacher.kind must be 'ring' or 'grid' for analytic teachers; got {cfg.kind!r}")


def mlp_networks(cfg: ml_collections.ConfigDict, dim: int = 2) -> Networks:
    """MLP generator (2-D noise -> data) and an MLP fake denoiser, against an analytic teacher.

    The teacher parameters are the GaussianMixture itself (a pytree), so the exact teacher denoiser
    is `teacher_params.denoise`.
    """
    gen = MLPGenerator(cfg.hidden, cfg.depth, dim)
    fake = MLPDenoiser(cfg.hidden, cfg.depth, cfg.sigma_data)
    z0, x0 = jnp.zeros((1, dim)), jnp.zeros((1, dim))

    def generate(params, z, labels, rng=None):
        return gen.apply({"params": params}, z)

    def fake_denoise(params, x, sigma, labels, rng=None):
        return fake.apply({"params": params}, x, sigma)

    def teacher_denoise(mixture: GaussianMixture, x, sigma, labels, rng=None):
        return mixture.denoise(x, sigma)

    return Networks(
        data_shape=(dim,), latent_shape=(dim,), label_dim=0,
        generate=generate, fake_denoise=fake_denoise, teacher_denoise=teacher_denoise,
        init_generator=lambda rng, teacher: gen.init(rng, z0)["params"],
        init_fake=lambda rng, teacher: fake.init(rng, x0, jnp.ones((1,)))["params"])


def one_hot_labels(labels: Optional[jax.Array], label_dim: int) -> Optional[jax.Array]:
    """Integer class labels [B] -> one-hot float32 [B, label_dim]; None for unconditional networks."""
    if label_dim == 0 or labels is None:
        return None
    return jax.nn.one_hot(labels, label_dim, dtype=jnp.float32)


def edm_networks(module, img_shape: Tuple[int, int, int], label_dim: int, sigma_init: float,
                 dropout: bool = False) -> Networks:
    """EDM denoiser networks: the generator is the teacher's own denoiser at a fixed sigma_init.

    x0 = g_theta(z) = D_theta(sigma_init z; sigma_init, labels), z ~ N(0, I) (DI eq. B.3; SIM eq. B.4);
    generator and fake score are initialised as copies of the teacher. `module` is a preconditioned
    EDM network (`di_jax.nets.build_network`) called on NCHW images. With `dropout`, networks run in
    train mode whenever the step gives them an rng (the official DI code runs all three so).
    """
    if not sigma_init > 0:
        raise ValueError(f"sigma_init must be > 0; got {sigma_init}")

    def denoise(params, x, sigma, labels, rng=None):
        train = dropout and rng is not None
        return module.apply({"params": params}, x, sigma, class_labels=labels, train=train,
                            rngs={"dropout": rng} if train else {})

    def generate(params, z, labels, rng=None):
        return denoise(params, sigma_init * z, jnp.full((z.shape[0],), sigma_init, z.dtype), labels, rng)

    copy = lambda rng, teacher: jax.tree.map(jnp.array, teacher)
    return Networks(data_shape=tuple(img_shape), latent_shape=tuple(img_shape), label_dim=label_dim,
                    generate=generate, fake_denoise=denoise, teacher_denoise=denoise,
                    init_generator=copy, init_fake=copy)
