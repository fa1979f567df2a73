"""The registry of distillation methods: one entry per method, read by everything that needs one.

Config validation, the train step, the toy configs and the benchmark all look a method up here;
adding a method is one `register(Method(...))` plus its loss function in `di_jax.losses`:

    register(Method("my_method", losses.my_generator_loss, sigma_gen=dict(kind="edm")))

A method's generator loss has the one signature of `di_jax.losses`
`(x0, sigma, noise, fake_denoise, teacher_denoise, labels, weight=None, **options) -> (value [B], aux)`;
`options(config)` turns the config's method-specific fields into those keyword arguments.

Dropout conventions (`Method.dropout`), for networks built with dropout (the rate is the teacher
checkpoint's, `config.networks.dropout`); "train" = dropout on, "eval" = deterministic:

  convention  fake phase (DSM)          generator phase                             official code
  'shared'    G eval, fake train        G train; teacher + fake train, ONE mask     DI di_loss.py gloss (RNG reset)
  'eval'      G eval, fake train        G train; teacher + fake eval                SiD sid_training_loop.py
  'off'       all eval                  all eval                                    DMD2 (nets built with dropout 0)

In both official loops the fake phase's generator pass runs in eval mode under no_grad and the
generator phase draws a fresh z; `config.share_generator_pass` reuses one (train-mode) generator pass
for both phases instead (cheaper, correlated; see train/step.py).
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping

from di_jax import distances, losses

DROPOUT_CONVENTIONS = ("shared", "eval", "off")
EDM_SIGMA = dict(kind="edm")      # EDM's training distribution, ln sigma ~ N(-1.2, 1.2^2)


@dataclasses.dataclass(frozen=True)
class Method:
    """One distillation method.

    Attributes:
      name: the value of `config.method`.
      generator_loss: its per-example generator loss (`di_jax.losses`).
      sigma_gen: generator-phase noise levels of its reference implementation, a
        `diffusion.sample_sigma` spec (kind + kwargs); used when `config.sigma_gen.kind == 'auto'`.
      sigma_fake: fake-score-phase noise levels, likewise for `config.sigma_fake.kind == 'auto'`.
      needs_fake: whether it trains an online fake score (SDS does not).
      dropout: generator-phase dropout convention, one of DROPOUT_CONVENTIONS.
      options: config -> keyword arguments of `generator_loss` (validated when called).
      reference: where its loss and noise levels come from.
    """
    name: str
    generator_loss: Callable[..., losses.LossOutput]
    sigma_gen: Mapping[str, Any]
    sigma_fake: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(EDM_SIGMA))
    needs_fake: bool = True
    dropout: str = "eval"
    options: Callable[[Any], Dict[str, Any]] = lambda config: {}
    reference: str = ""

    def __post_init__(self):
        if self.dropout not in DROPOUT_CONVENTIONS:
            raise ValueError(f"Method.dropout must be one of {DROPOUT_CONVENTIONS}; got {self.dropout!r}")


METHODS: Dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds a method to the registry (a name may be registered once)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    """The registered method `name`; ValueError naming config.method otherwise."""
    if name not in METHODS:
        raise ValueError(f"config.method must be one of {tuple(METHODS)}; got {name!r}")
    return METHODS[name]


def sigma_spec(config, phase: str) -> dict:
    """The sigma sampler spec of `phase` ('sigma_gen' or 'sigma_fake'); kind 'auto' takes the method's own."""
    spec = dict(config[phase])
    if spec["kind"] == "auto":
        return dict(getattr(get(config.method), phase))
    return spec


register(Method(
    "di", losses.di_generator_loss, sigma_gen=EDM_SIGMA, dropout="shared",
    reference="Diff-Instruct (Luo et al. 2023) eq. 3.2, Alg. 1; official code: EDM sigma, w = 1"))
register(Method(
    "sim", losses.sim_generator_loss, sigma_gen=dict(kind="sim"),
    dropout="shared", options=lambda config: dict(distance=distances.from_config(config.distance)),
    reference="SIM (Luo et al. 2024) eq. 3.7, Alg. 2; ln sigma ~ N(-3.5, 2.5^2) in the generator phase; "
              "no training code is public: dropout as in DI's code (same authors)"))
register(Method(
    "sid", losses.sid_generator_loss, sigma_gen=dict(kind="sid", t_max=0.8), dropout="eval",
    options=lambda config: dict(alpha=config.sid_alpha),
    reference="SiD (Zhou et al. 2024) eq. 24 as in its official code (normaliser, alpha; t ~ U[0, 0.8), "
              "sigma on the Karras curve at 1 - t)"))
register(Method(
    "sds", losses.sds_generator_loss, sigma_gen=EDM_SIGMA, needs_fake=False, dropout="eval",
    reference="SDS (Poole et al. 2022) = DI with a Dirac generator (DI Cor. 3.4)"))
register(Method(
    "dmd", losses.dmd_generator_loss, sigma_gen=dict(kind="karras", index_range=(19, 979)), dropout="off",
    reference="DMD / DMD2 (Yin et al. 2024) distribution-matching gradient with its normaliser; DMD2's "
              "k ~ U{20..980} on its ascending 1000-point Karras grid; networks without dropout"))
