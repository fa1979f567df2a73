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
