"""Network families: how a run's generator and fake score are built around its teacher.

A `Networks` value tells the train step how to draw latents, run the generator, the fake-score
denoiser and the teacher denoiser, and how to initialise generator and fake parameters. Every
function is pure: parameters and rngs are arguments; `rng=None` means deterministic (no dropout).

`build_networks(config.networks, teacher)` looks `config.networks.kind` up in `FAMILIES`:

  mlp   an MLP generator (2-D noise -> data) and an MLP fake denoiser (toys, analytic teachers)
  edm   generator and fake score start as copies of an EDM teacher; the generator is the teacher's
        denoiser at a fixed sigma_init (DI eq. B.3; SIM eq. B.4)

A new family (e.g. a StyleGAN2 generator) registers a builder `(cfg, teacher) -> Networks` here.
"""

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from di_jax.nets.mlp import MLPDenoiser, MLPGenerator
from di_jax.sampling import one_step_generate
from di_jax.teachers.base import Teacher

PyTree = Any


class Networks(NamedTuple):
    data_shape: Tuple[int, ...]     # per-example shape of x0
    latent_shape: Tuple[int, ...]   # per-example shape of z ~ N(0, I)
    label_dim: int                  # 0: unconditional; else labels are one-hot [B, label_dim]
    generate: Callable              # (gen_params, z, labels, rng) -> x0
    fake_denoise: Callable          # (fake_params, x, sigma, labels, rng[, augment_labels=...]) -> D
    teacher_denoise: Callable       # (teacher_params, x, sigma, labels, rng) -> D
    init_generator: Callable        # (rng, teacher_params) -> gen_params
    init_fake: Callable             # (rng, teacher_params) -> fake_params
    augment_dim: int = 0            # augment labels fake_denoise takes (keyword, di_jax.augment); 0: none
    condition: Optional[Any] = None  # one example's input conditioning (Teacher.condition): the step's input


def mlp_networks(cfg, teacher: Teacher) -> Networks:
    """MLP generator (noise of the data's dimension -> data) and an MLP fake denoiser.

    Args:
      cfg: config.networks (hidden, depth, sigma_data).
      teacher: a teacher of flat data [D].
    """
    (dim,) = teacher.data_shape
    gen = MLPGenerator(cfg.hidden, cfg.depth, dim)
    fake = MLPDenoiser(cfg.hidden, cfg.depth, cfg.sigma_data)
    z0, x0 = jnp.zeros((1, dim)), jnp.zeros((1, dim))

    def generate(params, z, labels, rng=None):
        return gen.apply({"params": params}, z)

    def fake_denoise(params, x, sigma, labels, rng=None, augment_labels=None):
        return fake.apply({"params": params}, x, sigma)

    return Networks(
        data_shape=(dim,), latent_shape=(dim,), label_dim=teacher.label_dim,
        generate=generate, fake_denoise=fake_denoise, teacher_denoise=teacher.denoise,
        init_generator=lambda rng, teacher_params: gen.init(rng, z0)["params"],
        init_fake=lambda rng, teacher_params: fake.init(rng, x0, jnp.ones((1,)))["params"])


def teacher_copy_networks(cfg, teacher: Teacher) -> Networks:
    """Generator and fake score as copies of a network teacher; x0 = D_theta(sigma_init z; sigma_init, labels).

    z ~ N(0, I) has the image shape (DI eq. B.3; SIM eq. B.4). Both start from the teacher's
    parameters and share its architecture, dropout rate and augment labels (`augment_dim`); each
    network runs in train mode exactly when the step passes it a dropout rng.

    Args:
      cfg: config.networks (sigma_init).
      teacher: a network teacher whose `denoise` also serves the generator and the fake score.
    """
    sigma_init = cfg.sigma_init
    if not sigma_init > 0:
        raise ValueError(f"config.networks.sigma_init must be > 0; got {sigma_init}")
    denoise = teacher.denoise

    def generate(params, z, labels, rng=None):
        return one_step_generate(lambda p, x, s, l: denoise(p, x, s, l, rng), params, z, sigma_init, labels)

    copy = lambda rng, teacher_params: jax.tree.map(jnp.array, teacher_params)
    shape = tuple(teacher.data_shape)
    return Networks(data_shape=shape, latent_shape=shape, label_dim=teacher.label_dim,
                    generate=generate, fake_denoise=denoise, teacher_denoise=denoise,
                    init_generator=copy, init_fake=copy, augment_dim=teacher.augment_dim,
                    condition=teacher.condition)


FAMILIES: Dict[str, Callable[[Any, Teacher], Networks]] = {"mlp": mlp_networks, "edm": teacher_copy_networks}


def build_networks(cfg, teacher: Teacher) -> Networks:
    """The networks of `cfg.kind` (config.networks.kind, one of FAMILIES) around `teacher`."""
    if cfg.kind not in FAMILIES:
        raise ValueError(f"config.networks.kind must be one of {tuple(FAMILIES)}; got {cfg.kind!r}")
    return FAMILIES[cfg.kind](cfg, teacher)
