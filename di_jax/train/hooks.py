"""What a run is made of beyond the step: its networks, teacher, pictures and final evaluation.

`build_run(config, workdir)` dispatches on `config.networks.kind`:
  * 'mlp': MLP generator and fake score against an analytic Gaussian-mixture teacher
    (scatter plots; mode coverage, teacher log-likelihood, energy distance).
  * 'edm': an EDM teacher network loaded through the converter (`config.teacher.path`: a converted
    directory, .pkl, .pt or .safetensors; empty: the embedded digits teacher); the generator and the
    fake score start as copies of it (sample grids, one row per class; the digits quality report
    when `config.eval.kind == 'digits'`; FID in the loop via `config.fid`).
"""

import os
from typing import Any, Callable, Dict, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from di_jax.train.networks import Networks, analytic_teacher, mlp_networks
from di_jax.train.state import TrainState


class Run(NamedTuple):
    nets: Networks
    teacher_params: Any
    draw: Callable[[TrainState, str], None]          # (state, tag) -> writes a picture to the workdir
    evaluate: Callable[[TrainState], Dict[str, Any]]  # final metrics


def generate_samples(nets: Networks, params, num: int, seed: int = 1234, batch: int = 4096, labels=None):
    """num generator samples with fixed latents (so pictures of different steps are comparable)."""
    gen = jax.jit(lambda p, z, l: nets.generate(p, z, l, None))
    out = []
    for i in range(0, num, batch):
        n = min(batch, num - i)
        z = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), i), (n,) + tuple(nets.latent_shape))
        out.append(np.asarray(gen(params, z, None if labels is None else labels[i:i + n])))
    return np.concatenate(out)


def make_fid_eval(config: ml_collections.ConfigDict, nets: Networks, feature_fn=None) -> Callable:
    """`fid_eval(state) -> {'fid', 'is_mean', 'is_std', 'num'}` of the EMA generator (issue: FID in the loop).

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
                               batch_size=config.fid.batch, rng=jax.random.PRNGKey(config.seed + 17))

    return fid_eval


def _toy_run(config: ml_collections.ConfigDict, workdir: str) -> Run:
    from di_jax.eval.mixture import mixture_metrics
    from di_jax.train.visualise import scatter_png

    teacher = analytic_teacher(config.teacher)
    nets = mlp_networks(config.networks, dim=teacher.dim)
    ref = np.asarray(teacher.sample(jax.random.PRNGKey(4321), config.num_samples))
    extent = float(np.abs(np.asarray(teacher.means)).max() + 1.0)

    def draw(state: TrainState, tag: str) -> None:
        x = generate_samples(nets, state.ema_params, config.num_samples)
        path = os.path.join(workdir, f"samples_{tag}.png")
        scatter_png(path, x, ref, extent=extent, title=f"{config.method} {tag} (EMA), grey: teacher")

    def evaluate(state: TrainState) -> Dict[str, Any]:
        out = {}
        for name, params in (("ema", state.ema_params), ("raw", state.gen_params)):
            x = generate_samples(nets, params, config.num_samples)
            for k, v in mixture_metrics(teacher, x, jax.random.PRNGKey(99), config.num_samples).items():
                out[f"{name}/{k}"] = v
        out["skipped_gen"] = int(state.skipped_gen)
        out["skipped_fake"] = int(state.skipped_fake)
        return out

    return Run(nets, teacher, draw, evaluate)


def load_edm_teacher(config: ml_collections.ConfigDict):
    """(module, params) of config.teacher.path ('' -> the embedded digits teacher), in networks.dtype."""
    from di_jax.convert import load_teacher
    from di_jax.teachers import digits as digits_teacher

    path = config.teacher.get("path", "") or digits_teacher.ASSET
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.teacher.path: no such file or directory {path!r}")
    module, params = load_teacher(path)
    dtype = config.networks.get("dtype", "float32")
    if dtype != "float32":
        module = module.clone(dtype=jnp.dtype(dtype), model=module.model.clone(dtype=jnp.dtype(dtype)))
    return module, params


def _edm_run(config: ml_collections.ConfigDict, workdir: str) -> Run:
    from di_jax.train.networks import edm_networks
    from di_jax.train.visualise import image_grid_png

    module, teacher_params = load_edm_teacher(config)
    res, channels = module.model.img_resolution, module.img_channels
    nets = edm_networks(module, (channels, res, res), module.label_dim, config.networks.sigma_init,
                        dropout=config.networks.get("teacher_dropout", False))
    ncol = config.get("grid_columns", 10)
    classes = min(nets.label_dim, 10) if nets.label_dim else 0
    grid_labels = None
    if classes:   # one row per class
        grid_labels = jax.nn.one_hot(np.repeat(np.arange(classes), ncol), nets.label_dim)
    num_grid = classes * ncol if classes else ncol * ncol
    scale = max(1, 64 // res)

    def draw(state: TrainState, tag: str) -> None:
        x = generate_samples(nets, state.ema_params, num_grid, seed=config.seed + 1234, batch=256,
                             labels=grid_labels)
        image_grid_png(os.path.join(workdir, f"samples_{tag}.png"), x.transpose(0, 2, 3, 1), nrow=ncol,
                       scale=scale, row_labels=[str(c) for c in range(classes)] if classes else None)

    def evaluate(state: TrainState) -> Dict[str, Any]:
        out = {"skipped_gen": int(state.skipped_gen), "skipped_fake": int(state.skipped_fake)}
        if config.eval.kind == "digits":
            from di_jax.train.report import digits_report
            extra = dict(method=config.method, steps=int(state.step), batch=config.batch_size,
                         sigma_init=config.networks.sigma_init)
            out.update(digits_report(nets, module, teacher_params, state.ema_params, workdir,
                                     num=config.eval.num, heun_steps=config.eval.heun_steps,
                                     extra=extra))
        return out

    return Run(nets, teacher_params, draw, evaluate)


def build_run(config: ml_collections.ConfigDict, workdir: str) -> Run:
    kind = config.networks.kind
    if kind == "mlp":
        return _toy_run(config, workdir)
    if kind == "edm":
        return _edm_run(config, workdir)
    raise ValueError(f"config.networks.kind must be one of ('mlp', 'edm'); got {kind!r}")
