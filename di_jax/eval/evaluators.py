"""What a run shows and measures: sample pictures, the final evaluation (by name), FID in the loop.

`EVALUATORS[config.eval.kind](config, nets, teacher, workdir)` returns `evaluate(state) -> metrics`:

  none     the skip counters only
  mixture  exact metrics of EMA and raw generator samples against an analytic mixture teacher
           (mode coverage, teacher log-likelihood, energy distance)
  digits   the digits quality report (`digits_report`: embedded classifier FD, coverage, label
           accuracy; writes report.md)

`make_pictures` draws samples of the EMA generator (scatter plots for 2-D data, image grids with one
row per class otherwise). Every evaluation draw is seeded `config.seed + EVAL_SEEDS[name]`.
"""

import os
from typing import Any, Callable, Dict

import jax
import numpy as np

from di_jax.nets.families import Networks, generator_kind
from di_jax.sampling import generate_samples
from di_jax.teachers import Teacher
from di_jax.train.state import TrainState

Evaluate = Callable[[TrainState], Dict[str, Any]]

# Offsets added to config.seed for each evaluation draw (fixed: pictures of different steps compare).
EVAL_SEEDS = dict(pictures=1234, fid=17, mixture_reference=4321, mixture_metrics=99, digits_report=2024)


def _seed(config, name: str) -> int:
    return config.seed + EVAL_SEEDS[name]


def _skips(state: TrainState) -> Dict[str, Any]:
    return {"skipped_gen": int(state.skipped_gen), "skipped_fake": int(state.skipped_fake)}


def make_pictures(config, nets: Networks, teacher: Teacher, workdir: str) -> Callable[[TrainState, str], str]:
    """`draw(state, tag) -> path` writing `samples_<tag>.png` of the EMA generator to `workdir`."""
    from di_jax.eval.pictures import image_grid_png, scatter_png

    seed = _seed(config, "pictures")
    if len(nets.data_shape) == 1:          # points: scatter over teacher samples
        ref = np.asarray(teacher.params.sample(jax.random.PRNGKey(_seed(config, "mixture_reference")),
                                               config.num_samples))
        extent = float(np.abs(np.asarray(teacher.params.means)).max() + 1.0)

        def draw_points(state: TrainState, tag: str) -> str:
            x = generate_samples(nets, state.ema_params, config.num_samples, seed=seed)
            path = os.path.join(workdir, f"samples_{tag}.png")
            scatter_png(path, x, ref, extent=extent, title=f"{config.method} {tag} (EMA), grey: teacher")
            return path
        return draw_points

    ncol = config.get("grid_columns", 10)
    classes = min(nets.label_dim, 10) if nets.label_dim else 0
    labels = jax.nn.one_hot(np.repeat(np.arange(classes), ncol), nets.label_dim) if classes else None
    num = classes * ncol if classes else ncol * ncol
    scale = max(1, 64 // nets.data_shape[-1])

    def draw_images(state: TrainState, tag: str) -> str:      # one row per class
        x = generate_samples(nets, state.ema_params, num, seed=seed, batch=256, labels=labels)
        path = os.path.join(workdir, f"samples_{tag}.png")
        image_grid_png(path, x.transpose(0, 2, 3, 1), nrow=ncol, scale=scale,
                       row_labels=[str(c) for c in range(classes)] if classes else None)
        return path
    return draw_images


def no_evaluation(config, nets: Networks, teacher: Teacher, workdir: str) -> Evaluate:
    return _skips


def mixture_evaluation(config, nets: Networks, teacher: Teacher, workdir: str) -> Evaluate:
    """Exact metrics against an analytic mixture teacher, for the EMA ('ema/') and raw ('raw/') generator."""
    from di_jax.eval.mixture import mixture_metrics

    if not hasattr(teacher.params, "log_prob"):
        raise ValueError("config.eval.kind='mixture' needs an analytic teacher "
                         "(config.teacher.kind ring, grid or mixture)")

    def evaluate(state: TrainState) -> Dict[str, Any]:
        out = {}
        for name, params in (("ema", state.ema_params), ("raw", state.gen_params)):
            x = generate_samples(nets, params, config.num_samples, seed=_seed(config, "pictures"))
            rng = jax.random.PRNGKey(_seed(config, "mixture_metrics"))
            for k, v in mixture_metrics(teacher.params, x, rng, config.num_samples).items():
                out[f"{name}/{k}"] = v
        return {**out, **_skips(state)}
    return evaluate


def digits_evaluation(config, nets: Networks, teacher: Teacher, workdir: str) -> Evaluate:
    """The digits report of the EMA generator (needs a class-conditional 8x8 network teacher)."""
    from di_jax.eval.digits_report import digits_report

    if teacher.module is None:
        raise ValueError("config.eval.kind='digits' needs a network teacher (config.teacher.kind='edm')")

    gan = generator_kind(config.networks) == "stylegan2"

    def evaluate(state: TrainState) -> Dict[str, Any]:
        extra = dict(method=config.method, steps=int(state.step), batch=config.batch_size)
        start, final_name = None, "distilled generator (EMA), 1 NFE"
        if gan:       # DI Table 3: the pre-trained GAN before and after DI refinement
            extra.update(generator="stylegan2", snapshot=os.path.basename(config.networks.generator.path))
            start = ("GAN before refinement (its snapshot), 1 NFE", "gan_before",
                     nets.init_generator(jax.random.PRNGKey(0), teacher.params))
            final_name = "GAN after DI refinement (EMA), 1 NFE"
        else:
            extra.update(sigma_init=config.networks.sigma_init)
        report = digits_report(nets, teacher.module, teacher.params, state.ema_params, workdir,
                               num=config.eval.num, heun_steps=config.eval.heun_steps,
                               seed=_seed(config, "digits_report"), extra=extra, start=start, final_name=final_name)
        return {**_skips(state), **report}
    return evaluate


EVALUATORS: Dict[str, Callable[..., Evaluate]] = {"none": no_evaluation, "mixture": mixture_evaluation,
                                                  "digits": digits_evaluation}


def make_evaluation(config, nets: Networks, teacher: Teacher, workdir: str) -> Evaluate:
    """The final evaluation of `config.eval.kind` (one of EVALUATORS)."""
    kind = config.eval.kind
    if kind not in EVALUATORS:
        raise ValueError(f"config.eval.kind must be one of {tuple(EVALUATORS)}; got {kind!r}")
    return EVALUATORS[kind](config, nets, teacher, workdir)


def make_fid_eval(config, nets: Networks, feature_fn=None) -> Evaluate:
    """`fid_eval(state) -> {'fid', 'is_mean', 'is_std', 'num'}` of the EMA generator (config.fid).

    Samples carry uniformly random class labels; single-channel images are repeated to RGB.
    """
    from di_jax.eval import fid, inception_convert

    for key in ("ref", "inception"):
        if not os.path.exists(config.fid[key]):
            raise FileNotFoundError(f"config.fid.{key}: no such file {config.fid[key]!r}")
    ref_stats = fid.load_stats(config.fid.ref)
    if feature_fn is None:
        feature_fn = fid.make_feature_fn(inception_convert.load_inception(config.fid.inception))
    generate = jax.jit(lambda p, z, l: nets.generate(p, z, l, None))

    def fid_eval(state: TrainState) -> Dict[str, Any]:
        def sample_fn(rng, batch):
            kz, kl = jax.random.split(rng)
            z = jax.random.normal(kz, (batch,) + tuple(nets.latent_shape))
            labels = None
            if nets.label_dim:
                labels = jax.nn.one_hot(jax.random.randint(kl, (batch,), 0, nets.label_dim), nets.label_dim)
            x = np.asarray(generate(state.ema_params, z, labels)).transpose(0, 2, 3, 1)    # NCHW -> NHWC
            return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x

        return fid.compute_fid(sample_fn, config.fid.num, ref_stats, feature_fn=feature_fn,
                               batch_size=config.fid.batch, rng=jax.random.PRNGKey(_seed(config, "fid")))
    return fid_eval
