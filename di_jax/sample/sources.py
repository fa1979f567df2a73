"""What draws the images: a run directory's one-step generator, or a teacher with EDM's Heun sampler.

A `Source` is a pure `sample(params, z, labels) -> x` with its parameters and shapes, so that one
sharded loop (`generate`) serves both. A directory holding `params/` and `config.json` is a
converted teacher (`di-jax convert`); any other directory is read as a run directory.
"""

import os
from typing import Any, Callable, NamedTuple, Optional

from di_jax.train.run_dir import CHECKPOINTS, CONFIG_FILE, RunDirError, load_run


class Source(NamedTuple):
    description: str        # for summary lines, e.g. "runs/digits step 800 (EMA generator)"
    data_shape: tuple       # per-image shape of x ([C, H, W] for images, [D] for points)
    latent_shape: tuple     # per-image shape of z ~ N(0, I)
    label_dim: int          # 0: unconditional; else labels are one-hot [N, label_dim]
    params: Any
    sample: Callable        # (params, z [N, *latent_shape], labels [N, label_dim] | None) -> x [N, *data_shape]


def is_converted_teacher(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "params")) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def is_run_dir(path: str) -> bool:
    """A directory with a run's config.json or checkpoints/ (and not a converted teacher)."""
    return (os.path.isdir(path) and not is_converted_teacher(path)
            and (os.path.exists(os.path.join(path, CONFIG_FILE)) or os.path.isdir(os.path.join(path, CHECKPOINTS))))


def run_source(workdir: str, step: Optional[int] = None, raw: bool = False,
               teacher_path: Optional[str] = None) -> Source:
    """The EMA (or, with `raw`, the raw) generator of a run's latest (or `step`) checkpoint.

    `teacher_path` replaces the run's config.teacher.path (the networks are rebuilt around the teacher)
    when the teacher checkpoint has moved since the run.
    """
    run = load_run(workdir, step, {"teacher.path": teacher_path} if teacher_path else None)
    nets = run.nets
    sample = lambda p, z, l: nets.generate(p, z, l, None)
    what = "raw generator" if raw else "EMA generator"
    return Source(f"{workdir} step {run.step} ({what})", tuple(nets.data_shape), tuple(nets.latent_shape),
                  int(nets.label_dim), run.gen_params if raw else run.ema_params, sample)


def teacher_source(path: str, num_steps: int = 18) -> Source:
    """An EDM teacher checkpoint (.pkl / .pt / .safetensors / converted folder) with Heun's `num_steps` steps."""
    from di_jax.convert import load_teacher
    from di_jax.sampling import sample_network
    from di_jax.teachers.edm import edm_teacher

    if num_steps < 2:
        raise ValueError(f"Heun sampling needs at least 2 steps; got {num_steps}")
    module, params = load_teacher(path)
    if not hasattr(module, "sigma_range"):
        raise ValueError(f"{path} holds a {type(module).__name__} (a text-to-image teacher): di-jax sample draws "
                         "from EDM teachers and runs only")
    teacher = edm_teacher(module, params)
    sample = lambda p, z, l: sample_network(module, p, z, class_labels=l, num_steps=num_steps)
    return Source(f"{path} (teacher, Heun {num_steps} steps, {2 * num_steps - 1} NFE)", tuple(teacher.data_shape),
                  tuple(teacher.data_shape), int(teacher.label_dim), params, sample)


def open_source(path: str, step: Optional[int] = None, raw: bool = False, heun_steps: Optional[int] = None,
                teacher_path: Optional[str] = None) -> Source:
    """A run directory's generator or a teacher checkpoint, told apart as the module doc says.

    `step`, `raw` and `teacher_path` apply to run directories only, `heun_steps` (default 18) to teachers only.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    if os.path.isdir(path) and not is_converted_teacher(path):
        if heun_steps is not None:
            raise RunDirError(f"{path}: a run's generator takes one step; Heun steps apply to teachers")
        return run_source(path, step, raw, teacher_path)
    if step is not None or raw or teacher_path:
        raise ValueError(f"{path} is a teacher checkpoint: a checkpoint step, the raw generator and "
                         f"--teacher-path apply to runs")
    return teacher_source(path, 18 if heun_steps is None else heun_steps)
