"""The training configuration schema (an ml_collections ConfigDict) and its validation.

The configs of this package (`di_jax/configs/*.py`) start from `base_config()` and override fields;
the command line overrides them again (`--config.method=di --config.gen_optim.lr=1e-4`). Names are
looked up in the registries: `method` in `di_jax.methods`, `teacher.kind` in `di_jax.teachers`,
`networks.kind` and `networks.generator.kind` in `di_jax.nets.families`, `ema.kind` in
`di_jax.train.state`, `eval.kind` in `di_jax.eval.evaluators`. `validate` runs
before anything is compiled and raises ValueError naming the offending field.
"""

from typing import Optional

import ml_collections

from di_jax import diffusion, methods

REMAT_MODES = ("none", "generator", "all")   # which networks run under jax.checkpoint (train/remat.py)
COMPUTE_DTYPES = ("float32", "bfloat16")
FAKE_WEIGHTS = ("edm", "one")              # config.fake_weight: the DSM loss weight of the fake score


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.method = "sim"                      # a name in di_jax.methods.METHODS: di | sim | sid | sds | dmd
    # SIM only; kwargs of the distance. The SIM paper does not state the pseudo-Huber c; 1.0 is chosen from
    # the issue-13 sweeps of c in {1e-3, 0.03, 0.3, 1}, 3 seeds each (experiments/README.md): no c differs
    # beyond seed spread on the digits main job (FD 8.7-9.4 +- 1.1-1.6), and on the toy learning-rate sweep
    # small c is worse (c = 1e-3 loses modes from lr 1e-2 and converges slower) while 0.3 and 1 are the best.
    c.distance = ml_collections.ConfigDict(dict(name="pseudo_huber", c=1.0))
    c.sid_alpha = 1.2                     # SiD only
    c.batch_size = 256                    # global batch, sharded over all devices
    c.num_steps = 1000                    # generator updates
    c.fake_steps = 1                      # fake-score (DSM) updates per generator update
    # False (official DI / SiD loops): each fake update and the generator phase draw their own z.
    # True: the generator phase's pass also feeds the first fake update (one generator forward fewer).
    c.share_generator_pass = False

    # noise levels: kind in diffusion.SIGMA_SAMPLERS plus its keyword arguments; "auto": the method's own
    # the fake score's DSM weight lambda(sigma): "edm" (EDM's, DI/SIM on CIFAR-10) or "one" (SIM's T2I recipe)
    c.fake_weight = "edm"
    c.sigma_gen = ml_collections.ConfigDict(dict(kind="auto"))
    c.sigma_fake = ml_collections.ConfigDict(dict(kind="auto"))

    # Adam (b1 = 0 in DI / SiD / SIM); weight_decay > 0: AdamW (decoupled, DMD2); clip: global norm, 0 off
    c.gen_optim = ml_collections.ConfigDict(dict(lr=1e-5, b1=0.0, b2=0.999, eps=1e-8, clip=0.0, weight_decay=0.0))
    c.fake_optim = ml_collections.ConfigDict(dict(lr=1e-5, b1=0.0, b2=0.999, eps=1e-8, clip=0.0, weight_decay=0.0))
    # EMA of the generator: EDM's rule (halflife_kimg, rampup; rampup 0: none), or StyleGAN2-ADA's with its own
    # names, kind="stylegan2", ema_kimg, ema_rampup (DI's GAN refinement, DI Table 9; di_jax.train.state)
    c.ema = ml_collections.ConfigDict(dict(halflife_kimg=500.0, rampup=0.05))

    # text-conditioned teachers (teacher.kind "pixart"): the directory of precomputed prompt embeddings the
    # step's conditioning is read from (di-jax embed-prompts; di_jax.train.conditions), the order's seed
    c.prompts = ml_collections.ConfigDict(dict(path="", seed=0))
    c.teacher = ml_collections.ConfigDict(dict(kind="ring", num_modes=8, radius=2.0, std=0.05, path=""))
    # the frozen teacher's parameters as stored on the devices: "float32" | "bfloat16" (half the memory; the
    # network computes in its own dtype, config.networks.dtype)
    c.teacher.dtype = "float32"
    # networks.dropout (network teachers): < 0 keeps the checkpoint's rate, >= 0 overrides it; which
    # network runs with dropout in which phase is the method's convention (di_jax.methods)
    # networks.generator (optional): kind "teacher_copy" (absent: the family's own generator) or "stylegan2" (a
    # pre-trained StyleGAN2-ADA generator refined with an edm family: path, truncation_psi, truncation_cutoff,
    # noise_mode; di_jax.nets.families, configs/digits_di_gan.py)
    c.networks = ml_collections.ConfigDict(dict(kind="mlp", hidden=128, depth=3, sigma_data=1.0,
                                                sigma_init=2.5, dropout=-1.0))
    # EDM's augmentation of the fake score's training samples (di_jax.augment; p = 0 disables); the
    # networks must take augment_dim = 9 augment labels (official CIFAR-10 teachers do)
    c.augment = ml_collections.ConfigDict(dict(p=0.0, xflip=1e8, yflip=1.0, scale=1.0, rotate_frac=1.0,
                                               aniso=1.0, translate_frac=1.0))

    c.log_every = 100
    c.ckpt_every = 1000
    c.sample_every = 0                    # 0: only at start and end
    c.profile = (0, 0)                    # (start, stop): jax.profiler trace of steps start..stop-1 (TensorBoard)
    c.num_samples = 2000                  # for pictures / metrics
    # FID during training (image runs): every N steps when `ref` (EDM .npz stats) and `inception`
    # (pytorch-fid weight file) are given
    c.fid = ml_collections.ConfigDict(dict(every=0, num=10000, batch=250, ref="", inception=""))
    # final evaluation (di_jax.eval.evaluators): "none" | "mixture" (exact metrics against an analytic
    # teacher) | "digits" (report.md: embedded classifier FD, coverage)
    c.eval = ml_collections.ConfigDict(dict(kind="none", num=1000, heun_steps=18))
    # Performance options (experiments/PERF.md). remat: "none" | "generator" | "all" wraps those networks
    # in jax.checkpoint (less memory, one extra forward each). networks.dtype (EDM networks only):
    # "float32" | "bfloat16" compute, parameters and optimiser state stay float32.
    c.remat = "none"
    c.networks.dtype = "float32"
    # train steps per compiled call (a lax.scan; bitwise the state of single steps): saves the per-step
    # dispatch of very small steps (the toys at batch 256 gained <= 17 %: compute-bound; experiments/README.md);
    # logging, checkpoints and pictures then happen at the first call boundary at or after their step
    c.steps_per_call = 1
    # gradient accumulation: each phase's batch runs as grad_accum micro-batches of batch_size / grad_accum in a
    # lax.scan inside the step (activation memory of one micro-batch; the same update as the whole batch)
    c.grad_accum = 1
    # Several processes (hosts): jax.distributed.initialize() first (di_jax.train.distributed). cluster: ""/0/-1
    # lets JAX detect the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes); else name it, process_id per process
    c.distributed = False
    c.cluster = ml_collections.ConfigDict(dict(coordinator="", num_processes=0, process_id=-1))
    c.num_devices = 0                     # devices in the mesh; 0: all
    # The mesh is data x fsdp (di_jax.train.sharding): fsdp > 1 shards generator, fake score, EMA, optimiser
    # state and teacher along its fsdp devices (leaves of >= min_shard_size elements, by `rules` first:
    # ((regex over the leaf path, "fsdp,_"), ...)); the batch is split over all devices
    c.mesh = ml_collections.ConfigDict(dict(fsdp=1, min_shard_size=2 ** 14, rules=()))
    return c


def _registered(field: str, value: str, registry) -> None:
    if value not in registry:
        raise ValueError(f"config.{field} must be one of {tuple(registry)}; got {value!r}")


def _positive(config, path: str) -> None:
    value = config
    for part in path.split("."):
        value = value[part]
    if not value > 0:
        raise ValueError(f"config.{path} must be > 0; got {value!r}")


def _validate_ema(ema: ml_collections.ConfigDict) -> None:
    """config.ema: kind "edm" (default) with halflife_kimg > 0, rampup >= 0; "stylegan2" with ema_kimg > 0,
    ema_rampup >= 0 or None; nothing else."""
    from di_jax.train.state import EMA_RULES

    kind = ema.get("kind", "edm")
    _registered("ema.kind", kind, EMA_RULES)
    fields = ("halflife_kimg", "rampup") if kind == "edm" else ("ema_kimg", "ema_rampup")
    extra = sorted(set(ema.keys()) - {"kind", *fields})
    if extra or fields[0] not in ema:
        raise ValueError(f"config.ema with kind {kind!r} takes exactly {', '.join(fields)}; "
                         f"got {', '.join(sorted(ema.keys()))}")
    scale, rampup = ema[fields[0]], ema.get(fields[1])
    if not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"config.ema.{fields[0]} must be > 0; got {scale!r}")
    if (rampup is None and kind == "edm") or (rampup is not None and not rampup >= 0):
        raise ValueError(f"config.ema.{fields[1]} must be >= 0; got {rampup!r}")


def validate(config: ml_collections.ConfigDict, num_devices: Optional[int]) -> None:
    """Checks a config before compiling; raises ValueError naming the field.

    Args:
      config: a config built from `base_config()`.
      num_devices: the devices of the mesh the batch is split over; None: not known yet (skips the
        checks that need it).
    """
    from di_jax import teachers
    from di_jax.eval import evaluators  # registries that import networks: loaded on demand
    from di_jax.nets import families

    methods.get(config.method).options(config)          # unknown method or bad method options
    _registered("teacher.kind", config.teacher.kind, teachers.TEACHERS)
    _registered("networks.kind", config.networks.kind, families.FAMILIES)
    _registered("eval.kind", config.eval.kind, evaluators.EVALUATORS)
    gen_kind = families.generator_kind(config.networks)
    _registered("networks.generator.kind", gen_kind, families.GENERATORS)
    if gen_kind in families.GENERATOR_FAMILIES and config.networks.kind not in families.GENERATOR_FAMILIES[gen_kind]:
        raise ValueError(f"config.networks.generator.kind={gen_kind!r} needs config.networks.kind in "
                         f"{families.GENERATOR_FAMILIES[gen_kind]}; got {config.networks.kind!r}")
    if gen_kind == "stylegan2":
        families.stylegan2_options(config.networks.generator)
    _validate_ema(config.ema)
    for path in ("batch_size", "num_steps", "fake_steps", "gen_optim.lr", "fake_optim.lr", "log_every",
                 "ckpt_every"):
        _positive(config, path)
    for opt in ("gen_optim", "fake_optim"):
        o = config[opt]
        if not (0.0 <= o.b1 < 1.0 and 0.0 <= o.b2 < 1.0):
            raise ValueError(f"config.{opt}.b1/b2 must lie in [0, 1); got {o.b1}, {o.b2}")
        if o.clip < 0:
            raise ValueError(f"config.{opt}.clip must be >= 0 (0 disables); got {o.clip}")
        if not 0 <= o.get("weight_decay", 0.0) < 1:
            raise ValueError(f"config.{opt}.weight_decay must lie in [0, 1) (0: Adam); got {o.weight_decay}")
    spc = config.get("steps_per_call", 1)
    if not isinstance(spc, int) or isinstance(spc, bool) or spc < 1:
        raise ValueError(f"config.steps_per_call must be an integer >= 1; got {spc!r}")
    mesh = config.get("mesh")
    if mesh is not None:
        if not isinstance(mesh.fsdp, int) or mesh.fsdp < 1:
            raise ValueError(f"config.mesh.fsdp must be an integer >= 1; got {mesh.fsdp!r}")
        if num_devices and num_devices % mesh.fsdp:
            raise ValueError(f"config.mesh.fsdp={mesh.fsdp} must divide the number of devices ({num_devices})")
        for rule in mesh.get("rules", ()):
            if len(rule) != 2 or not all(isinstance(r, str) for r in rule):
                raise ValueError(f"config.mesh.rules: each rule is (regex, spec) strings; got {rule!r}")
    accum = config.get("grad_accum", 1)
    if not isinstance(accum, int) or isinstance(accum, bool) or accum < 1:
        raise ValueError(f"config.grad_accum must be an integer >= 1; got {accum!r}")
    if config.batch_size % accum or (accum > 1 and num_devices and (config.batch_size // accum) % num_devices):
        raise ValueError(f"config.batch_size={config.batch_size} must split into config.grad_accum={accum} "
                         f"micro-batches that divide over the {num_devices or 'mesh'} devices")
    if accum > 1 and config.get("share_generator_pass", False):
        raise ValueError("config.share_generator_pass needs config.grad_accum=1 (the shared pass is one whole batch)")
    if config.teacher.get("dtype", "float32") not in COMPUTE_DTYPES:
        raise ValueError(f"config.teacher.dtype must be one of {COMPUTE_DTYPES}; got {config.teacher.dtype!r}")
    if config.get("num_devices", 0) < 0:
        raise ValueError(f"config.num_devices must be >= 0 (0: all devices); got {config.num_devices}")
    if num_devices and config.batch_size % num_devices:
        raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the number of "
                         f"devices ({num_devices})")
    if config.get("fake_weight", "edm") not in FAKE_WEIGHTS:
        raise ValueError(f"config.fake_weight must be one of {FAKE_WEIGHTS}; got {config.fake_weight!r}")
    for name in ("sigma_gen", "sigma_fake"):
        allowed = diffusion.SIGMA_SAMPLERS + ("auto",)
        if config[name].kind not in allowed:
            raise ValueError(f"config.{name}.kind must be one of {allowed}; got {config[name].kind!r}")
        extra = sorted(k for k in config[name] if k != "kind")
        if config[name].kind == "auto" and extra:
            raise ValueError(f"config.{name} sets {', '.join(extra)} with kind 'auto' (the method's own sampler, "
                             f"which ignores them); name the sampler, e.g. config.{name}.kind="
                             f"{methods.sigma_spec(config, name)['kind']!r}")
    fid = config.get("fid")
    if fid is not None and fid.every:
        for key in ("ref", "inception"):
            if not fid[key]:
                raise ValueError(f"config.fid.{key} must be set when config.fid.every > 0")
        _positive(config, "fid.num")
        _positive(config, "fid.batch")
    if config.get("remat", "none") not in REMAT_MODES:
        raise ValueError(f"config.remat must be one of {REMAT_MODES}; got {config.remat!r}")
    if config.networks.get("dtype", "float32") not in COMPUTE_DTYPES:
        raise ValueError(f"config.networks.dtype must be one of {COMPUTE_DTYPES}; got {config.networks.dtype!r}")
    aug = config.get("augment")
    if aug is not None:
        if not 0.0 <= aug.p <= 1.0:
            raise ValueError(f"config.augment.p must lie in [0, 1]; got {aug.p}")
        if aug.p > 0 and config.networks.kind != "edm":
            raise ValueError(f"config.augment.p > 0 needs a network family with augment labels (edm); "
                             f"got config.networks.kind={config.networks.kind!r}")
    profile = tuple(config.get("profile", (0, 0)))
    if len(profile) != 2 or not all(isinstance(v, int) for v in profile) or not (
            profile == (0, 0) or 0 <= profile[0] < profile[1] <= config.num_steps):
        raise ValueError(f"config.profile must be (start, stop) steps with 0 <= start < stop <= num_steps "
                         f"({config.num_steps}), or (0, 0) for none; got {config.profile}")
