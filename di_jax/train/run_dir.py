"""A finished (or running) run directory, read back: `load_run(workdir, step=None) -> Run`.

    run = load_run("runs/digits")                 # config.json + the latest checkpoint
    x = run.nets.generate(run.ema_params, z, labels, None)

`train_and_evaluate` writes `<workdir>/config.json` (the run's config) and `<workdir>/checkpoints/<step>`
(orbax, the whole `TrainState`). The networks are rebuilt from the config and the teacher it names
(a generator initialised from a teacher takes its architecture from it), then the checkpoint is
restored into that structure. `di-jax sample`, `di-jax export` and `di-jax fid` start here. Every
malformed directory is a `RunDirError` with a one-line message.
"""

import json
import os
from typing import Any, NamedTuple, Optional

import jax
import ml_collections
from etils import epath

PyTree = Any
CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"


def run_path(workdir: str) -> epath.Path:
    """A run directory as a path: gs:// (any epath URL) stays as it is, a local path becomes absolute."""
    from di_jax.convert.remote import is_url

    text = os.fspath(workdir)
    return epath.Path(text) if is_url(text) else epath.Path(os.path.abspath(text))


class RunDirError(ValueError):
    """A run directory that cannot be read (one-line message naming the path and what is wrong)."""


class Run(NamedTuple):
    workdir: str
    config: ml_collections.ConfigDict
    step: int                   # the checkpoint's step (generator updates done)
    teacher: Any                # di_jax.teachers.Teacher
    nets: Any                   # di_jax.nets.families.Networks
    gen_params: PyTree          # the raw generator
    ema_params: PyTree          # its EMA (what pictures, FID and reports use)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's config from `<workdir>/config.json` (RunDirError if missing or unreadable)."""
    if not run_path(workdir).is_dir():
        raise RunDirError(f"{workdir}: not a directory (a run directory is the --workdir of `di-jax distill`)")
    path = run_path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{workdir}: no {CONFIG_FILE}; is it the --workdir of a `di-jax distill` run?")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(data, dict) or "method" not in data or "networks" not in data:
        raise RunDirError(f"{path}: not a di_jax run config (no 'method' / 'networks')")
    return ml_collections.ConfigDict(data)


def checkpoint_steps(workdir: str) -> list:
    """The steps with a finished checkpoint in `<workdir>/checkpoints`, ascending."""
    root = run_path(workdir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def load_run(workdir: str, step: Optional[int] = None, config_overrides: Optional[dict] = None) -> Run:
    """Rebuilds a run's networks and restores its generator (raw and EMA) from a checkpoint.

    Args:
      workdir: the run directory.
      step: the checkpoint to read; default the latest.
      config_overrides: dotted keys replacing config values before the networks are built (e.g. a
        teacher checkpoint that has moved: {"teacher.path": "/new/place/teacher.pkl"}).
    """
    import orbax.checkpoint as ocp

    from di_jax.configs.base import validate
    from di_jax.nets.families import build_networks
    from di_jax.teachers import build_teacher
    from di_jax.train import sharding
    from di_jax.train.setup import fresh_state

    config = read_config(workdir)
    for key, value in (config_overrides or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    steps = checkpoint_steps(workdir)
    if not steps:
        raise RunDirError(f"{workdir}: no checkpoint in {os.path.join(workdir, CHECKPOINTS)} "
                          f"(the run wrote none yet)")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise RunDirError(f"{workdir}: no checkpoint at step {step}; it has {', '.join(map(str, steps))}")
    config.num_devices = 1                     # restoring needs one device; callers shard the result
    try:
        validate(config, None)
        teacher = build_teacher(config)
    except (ValueError, OSError) as e:
        raise RunDirError(f"{workdir}: its config does not rebuild the run: {str(e).splitlines()[0]}") from None
    nets = build_networks(config.networks, teacher)
    # The optimiser vectors' layout is that of the run's fsdp axis (train/flat_update.py): build the state's
    # shapes for it, then restore every array onto this process's first device.
    fsdp = config.mesh.fsdp if "mesh" in config else 1
    layout = jax.sharding.AbstractMesh((1, fsdp), sharding.BATCH_AXES)
    shapes = jax.eval_shape(lambda: fresh_state(config, nets, teacher.params, layout))
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    fresh = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one), shapes)
    path = run_path(workdir) / CHECKPOINTS
    try:
        with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False)) as mngr:
            state = mngr.restore(step, args=ocp.args.StandardRestore(fresh))
    except Exception as e:  # orbax raises many types for truncated / foreign checkpoints
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RunDirError(f"{workdir}: the checkpoint at step {step} does not restore into this run's "
                          f"networks ({type(e).__name__}: {first})") from None
    return Run(workdir, config, int(step), teacher, nets, state.gen_params, state.ema_params)
