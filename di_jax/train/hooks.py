"""What a run is made of beyond the step: its networks, teacher, pictures and final evaluation.

`build_run(config, workdir)` dispatches on `config.networks.kind`:
  * 'mlp': MLP generator and fake score against an analytic Gaussian-mixture teacher
    (scatter plots; mode coverage, teacher log-likelihood, energy distance).
"""

import os
from typing import Any, Callable, Dict, NamedTuple

import jax
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


def build_run(config: ml_collections.ConfigDict, workdir: str) -> Run:
    kind = config.networks.kind
    if kind == "mlp":
        return _toy_run(config, workdir)
    raise ValueError(f"config.networks.kind must be one of ('mlp',); got {kind!r}")
