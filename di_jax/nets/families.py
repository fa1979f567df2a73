"""Network families: how a run's generator and fake score are built around its teacher.

A `Networks` value tells the train step how to draw latents, run the generator, the fake-score
denoiser and the teacher denoiser, and how to initialise generator and fake parameters. Every
function is pure: parameters and rngs are arguments; `rng=None` means deterministic (no dropout).

`build_networks(config.networks, teacher)` looks `config.networks.kind` up in `FAMILIES` (the fake
score and the family's own generator):

  mlp   an MLP generator (2-D noise -> data) and an MLP fake denoiser (toys, analytic teachers)
  edm   generator and fake score start as copies of an EDM teacher; the generator is the teacher's
        denoiser at a fixed sigma_init (DI eq. B.3; SIM eq. B.4)

then `config.networks.generator.kind` up in `GENERATORS` (absent: "teacher_copy"):

  teacher_copy  the family's own generator (edm: the teacher copy above; mlp: the MLP generator)
  stylegan2     a pre-trained StyleGAN2-ADA generator x0 = G(z, c), z ~ N(0, I) of its z_dim, c the one-hot
                label, read from `generator.path` (`di_jax.convert.stylegan2_pickle.load_generator`); the
                fake score stays the family's (edm: a copy of the teacher). DI's GAN refinement (DI §4.2,
                Table 9: StyleGAN2-ADA generators refined against an EDM teacher).

A new family registers a builder `(cfg, teacher) -> Networks` in FAMILIES; a new generator a builder
`(cfg, teacher, nets) -> Networks` in GENERATORS that replaces the generator fields of `nets`.
"""

import math
import os
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


def generator_kind(cfg) -> str:
    """config.networks.generator.kind, "teacher_copy" when the config has no `generator` entry."""
    gen = cfg.get("generator")
    return "teacher_copy" if gen is None else gen.kind


def teacher_copy_networks(cfg, teacher: Teacher) -> Networks:
    """Generator and fake score as copies of a network teacher; x0 = D_theta(sigma_init z; sigma_init, labels).

    z ~ N(0, I) has the image shape (DI eq. B.3; SIM eq. B.4). Both start from the teacher's
    parameters and share its architecture, dropout rate and augment labels (`augment_dim`); each
    network runs in train mode exactly when the step passes it a dropout rng. With another generator
    kind (`GENERATORS`) only the fake score is used and sigma_init is not read.

    Args:
      cfg: config.networks (sigma_init).
      teacher: a network teacher whose `denoise` also serves the generator and the fake score.
    """
    denoise = teacher.denoise
    copy = lambda rng, teacher_params: jax.tree.map(jnp.array, teacher_params)
    shape = tuple(teacher.data_shape)
    generate = None
    if generator_kind(cfg) == "teacher_copy":
        sigma_init = cfg.sigma_init
        if not sigma_init > 0:
            raise ValueError(f"config.networks.sigma_init must be > 0; got {sigma_init}")

        def generate(params, z, labels, rng=None):
            return one_step_generate(lambda p, x, s, l: denoise(p, x, s, l, rng), params, z, sigma_init, labels)

    return Networks(data_shape=shape, latent_shape=shape, label_dim=teacher.label_dim,
                    generate=generate, fake_denoise=denoise, teacher_denoise=denoise,
                    init_generator=copy, init_fake=copy, augment_dim=teacher.augment_dim,
                    condition=teacher.condition)


STYLEGAN2_NOISE_MODES = ("const", "none")   # generator.noise_mode: the deterministic (rng None) calls


def stylegan2_snapshot_path(gen_cfg) -> str:
    """The local file of config.networks.generator.path (gs://...: a cached copy); one-line error if unset/absent."""
    from di_jax.convert.remote import local_copy  # pylint: disable=import-outside-toplevel

    path = gen_cfg.get("path", "")
    if not path:
        official = gen_cfg.get("official", "")
        hint = f"this recipe refines the official StyleGAN2-ADA snapshot {official}; " if official else ""
        raise ValueError(f"config.networks.generator.path is empty: {hint}pass "
                         f"--config.networks.generator.path=FILE (a StyleGAN2-ADA network-snapshot .pkl or a "
                         f"generator .safetensors of di_jax.convert.stylegan2_pickle.save_generator)")
    local = local_copy(path)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"config.networks.generator.path: no such file {path!r}")
    return local


def stylegan2_options(gen_cfg) -> Tuple[float, Optional[int], str]:
    """(truncation_psi, truncation_cutoff or None, deterministic noise_mode) of config.networks.generator."""
    psi = gen_cfg.get("truncation_psi", 1.0)
    if isinstance(psi, bool) or not isinstance(psi, (int, float)) or not math.isfinite(psi):
        raise ValueError(f"config.networks.generator.truncation_psi must be a finite number; got {psi!r}")
    cutoff = gen_cfg.get("truncation_cutoff", -1)
    if isinstance(cutoff, bool) or not isinstance(cutoff, int):
        raise ValueError(f"config.networks.generator.truncation_cutoff must be an integer (-1: all ws); got {cutoff!r}")
    mode = gen_cfg.get("noise_mode", "const")
    if mode not in STYLEGAN2_NOISE_MODES:
        raise ValueError(f"config.networks.generator.noise_mode must be one of {STYLEGAN2_NOISE_MODES} (the "
                         f"deterministic calls; train-mode calls draw random noise); got {mode!r}")
    return float(psi), (None if cutoff < 0 else cutoff), mode


def stylegan2_generator(cfg, teacher: Teacher, nets: Networks, loaded: Optional[Tuple[Any, dict]] = None) -> Networks:
    """`nets` with a pre-trained StyleGAN2-ADA generator (DI §4.2): x0 = G(z, c), z ~ N(0, I) [z_dim].

    The generator's trainable parameters are its torch parameters ('params'); its buffers (w_avg,
    noise_const, resample filters) are constants closed over. `generate(params, z, labels, rng)`:
    rng None is deterministic (generator.noise_mode 'const' or 'none', as the fake phase and every
    evaluation run it); an rng draws noise_mode 'random' noise from it (train mode, which the step
    gives the generator phase under the method's dropout convention). Truncation (psi, cutoff) as
    configured (1.0: none). Labels are one-hot [B, c_dim]. G's images are NCHW in [-1, 1], EDM's
    data space: resolution, channels and label count must be the teacher's (one-line ValueError).

    Args:
      cfg: config.networks (generator.path, truncation_psi, truncation_cutoff, noise_mode; dtype:
        the compute dtype of the blocks the official network runs in float16).
      teacher: an image teacher [C, R, R].
      nets: the family's networks (fake score and teacher kept).
      loaded: (module, variables) instead of reading generator.path (tests, benchmarks).
    """
    from di_jax.convert.stylegan2_pickle import load_generator  # pylint: disable=import-outside-toplevel

    gen_cfg = cfg.generator
    psi, cutoff, mode = stylegan2_options(gen_cfg)
    if loaded is None:
        dtype = jnp.dtype(cfg.get("dtype", "float32"))
        loaded = load_generator(stylegan2_snapshot_path(gen_cfg), dtype=dtype)
    module, variables = loaded
    shape = (module.img_channels, module.img_resolution, module.img_resolution)
    if tuple(teacher.data_shape) != shape:
        raise ValueError(f"config.networks.generator: the StyleGAN2 generator makes images {shape} (channels, "
                         f"resolution, resolution), the teacher's data are {tuple(teacher.data_shape)}")
    if teacher.condition is not None:
        raise ValueError("config.networks.generator: a StyleGAN2 generator takes class labels, not the teacher's "
                         "input conditioning (e.g. text embeddings)")
    if module.c_dim != teacher.label_dim:
        raise ValueError(f"config.networks.generator: the StyleGAN2 generator takes {module.c_dim} classes (c_dim), "
                         f"the teacher {teacher.label_dim}")
    params = variables["params"]
    buffers = jax.tree.map(jnp.asarray, variables["buffers"])
    conditional = module.c_dim > 0

    def generate(params, z, labels, rng=None):
        c = labels if conditional else None
        if rng is None:
            return module.apply({"params": params, "buffers": buffers}, z, c, psi, cutoff, noise_mode=mode)
        return module.apply({"params": params, "buffers": buffers}, z, c, psi, cutoff, noise_mode="random",
                            rngs={"noise": rng})

    return nets._replace(latent_shape=(module.z_dim,), generate=generate,
                         init_generator=lambda rng, teacher_params: jax.tree.map(jnp.array, params))


FAMILIES: Dict[str, Callable[[Any, Teacher], Networks]] = {"mlp": mlp_networks, "edm": teacher_copy_networks}
# generator kind -> (cfg, teacher, nets) -> nets with that generator; None: the family's own generator
GENERATORS: Dict[str, Optional[Callable[[Any, Teacher, Networks], Networks]]] = {
    "teacher_copy": None, "stylegan2": stylegan2_generator}
GENERATOR_FAMILIES = {"stylegan2": ("edm",)}    # the families (fake scores) a generator kind works with


def build_networks(cfg, teacher: Teacher) -> Networks:
    """The networks of `cfg.kind` (config.networks.kind, one of FAMILIES) around `teacher`, with the
    generator of `cfg.generator.kind` (one of GENERATORS; default the family's own)."""
    if cfg.kind not in FAMILIES:
        raise ValueError(f"config.networks.kind must be one of {tuple(FAMILIES)}; got {cfg.kind!r}")
    kind = generator_kind(cfg)
    if kind not in GENERATORS:
        raise ValueError(f"config.networks.generator.kind must be one of {tuple(GENERATORS)}; got {kind!r}")
    if kind in GENERATOR_FAMILIES and cfg.kind not in GENERATOR_FAMILIES[kind]:
        raise ValueError(f"config.networks.generator.kind={kind!r} needs config.networks.kind in "
                         f"{GENERATOR_FAMILIES[kind]}; got {cfg.kind!r}")
    nets = FAMILIES[cfg.kind](cfg, teacher)
    return nets if GENERATORS[kind] is None else GENERATORS[kind](cfg, teacher, nets)
