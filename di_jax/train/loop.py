"""The training driver, `train_and_evaluate(config, workdir)`: set up, restore, loop, log, checkpoint, draw, evaluate.

Checkpoints (orbax) hold the complete TrainState — generator, fake score, EMA, both optimiser
states, step, base rng and skip counters — every `config.ckpt_every` steps, at the end, and when
SIGTERM or SIGINT arrives (the signal is honoured after the current step). A run restarted with the
same workdir resumes from the latest checkpoint; because the step's randomness is a function of
(base rng, step), a resumed run is bitwise identical to an uninterrupted one.

The workdir may be local or a bucket (`gs://...`: paths are `etils.epath` paths throughout). With
several processes (`config.distributed`, `di_jax.train.distributed`) every process runs this same
loop: all save checkpoints together (each writes its shards), all take part in gathering the
parameters that pictures and evaluations use, process 0 draws, evaluates and writes the files; a
SIGTERM to any process is a preemption notice that JAX's preemption service turns into one step at
which all save and stop.
"""

import json
import logging
import signal
import sys
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from di_jax.eval.evaluators import make_evaluation, make_fid_eval, make_pictures
from di_jax.train import distributed
from di_jax.train.run_dir import CHECKPOINTS, CONFIG_FILE, run_path
from di_jax.train.setup import setup
from di_jax.train.state import TrainState, param_count
from di_jax.train.step import make_train_step

log = logging.getLogger("di_jax")


class _StopFlag:
    """Turns SIGTERM/SIGINT into a request honoured after the current step (a second SIGINT aborts).

    Not installed (`handle=False`) in multi-process runs, where JAX's preemption service owns SIGTERM.
    """

    def __init__(self, handle: bool = True):
        self.requested = None
        self._old = {}
        self._handle_signals = handle

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT) if self._handle_signals else ():
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        log.warning("%s received: checkpointing after this step (Ctrl-C again to abort)", self.requested)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def checkpoint_dir(workdir: str) -> epath.Path:
    """Where the checkpoints of a run go: <workdir>/checkpoints (gs://bucket/run -> gs://bucket/run/checkpoints)."""
    return run_path(workdir) / CHECKPOINTS


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=config.get("ckpt_keep", 3), create=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def eval_view(state: TrainState) -> TrainState:
    """What pictures and evaluations read (generator, EMA, step, counters) as host numpy arrays on every
    process; all processes must call it (sharded parameters are all-gathered)."""
    light = state.replace(fake_params=None, gen_opt_state=None, fake_opt_state=None)
    return distributed.host_copy(light)


def restore_or_init(mngr: ocp.CheckpointManager, fresh: TrainState) -> TrainState:
    latest = mngr.latest_step()
    if latest is None:
        return fresh
    log.info("resuming from checkpoint at step %d", latest)
    try:
        return mngr.restore(latest, args=ocp.args.StandardRestore(fresh))
    except (ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"the checkpoint at step {latest} in {mngr.directory} does not fit this run's train state "
            f"(another network, method, config.mesh.fsdp or di_jax version wrote it): use a new --workdir. "
            f"({first})") from None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       on_step: Optional[Callable[[int, TrainState], None]] = None) -> TrainState:
    """Runs (or resumes) a distillation run in `workdir`, then evaluates it; returns the final state.

    Args:
      config: the run's config (`di_jax.configs`).
      workdir: checkpoints, TensorBoard scalars, pictures, metrics.json and reports go here.
      on_step: if given, `on_step(step, state)` runs on the host after every step (custom evaluation, tests).
    """
    distributed.initialize(config)      # before any other JAX call
    run = setup(config)   # validates the config and loads the teacher: no workdir is made for a bad run
    path = run_path(workdir)
    writes = distributed.is_writer()
    if writes:                          # what `di-jax sample` / `export` / `fid` rebuild the networks from
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    from clu import metric_writers, parameter_overview, periodic_actions  # imports TensorFlow: seconds
    mesh, nets, teacher = run.mesh, run.nets, run.teacher_params
    draw = make_pictures(config, nets, run.teacher, str(path))
    evaluate = make_evaluation(config, nets, run.teacher, str(path))

    writer = metric_writers.create_default_writer(str(path), just_logging=not writes)
    mngr = checkpoint_manager(workdir, config)
    state = restore_or_init(mngr, run.state)
    start = int(state.step)
    compiled, compile_s = run.compiled, run.compile_seconds
    log.info("train step compiled in %.2f s on %d device(s) (%s)", compile_s, mesh.size, jax.devices()[0].platform)
    if start == 0:
        writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})
        log.info("generator (%d params):\n%s", param_count(state.gen_params),
                 parameter_overview.get_parameter_overview(state.gen_params))
        log.info("fake score: %d params", param_count(state.fake_params))
        _draw(draw, writer, eval_view(state), "start", 0)
    writer.write_scalars(start, {"compile_seconds": compile_s})
    fid_eval = make_fid_eval(config, nets) if config.fid.every else None

    # XLA's in-process CPU collectives can deadlock when several multi-device executions are in flight
    # (observed with 8 simulated devices on 2 cores): on CPU meshes of >1 device, wait for each step.
    sync_each_step = jax.default_backend() == "cpu" and mesh.size > 1
    report = periodic_actions.ReportProgress(num_train_steps=config.num_steps, writer=writer)
    bar = _progress_bar(config.num_steps, start)
    last_saved = start if mngr.latest_step() == start else None
    profile, tracing = tuple(config.get("profile", (0, 0))), False
    per_call = config.get("steps_per_call", 1)
    single = None                 # one-step function for a tail shorter than steps_per_call (compiled on use)
    crossed = lambda every, before, after: bool(every) and after // every > before // every
    with _StopFlag(handle=not distributed.multi_process()) as stop:
        s = start
        while s < config.num_steps:
            if per_call == 1 or s + per_call <= config.num_steps:
                call, k = compiled, per_call
            else:
                single = single or make_train_step(config, nets, mesh)
                call, k = single, 1
            if s <= profile[0] < s + k and profile[1] > s:
                jax.profiler.start_trace(workdir)          # -> <workdir>/plugins/profile/<run>/ (TensorBoard)
                tracing = True
                log.info("profiling steps %d..%d into %s", s, profile[1] - 1, workdir)
            cond = () if run.conditions is None else (run.conditions.batch(s, k),)
            state, metrics = call(state, teacher, *cond)
            done = s + k
            if tracing and done >= profile[1]:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                tracing = False
            if sync_each_step:
                jax.block_until_ready(state.step)
            report(done)
            if bar is not None:
                bar.update(k)
            if on_step is not None:
                on_step(done, state)
            if crossed(config.log_every, s, done) or done == config.num_steps:
                scalars = {name: float(v) for name, v in jax.device_get(metrics).items()}
                writer.write_scalars(done, scalars)
                if bar is not None:
                    shown = {k.split("/")[-1]: f"{v:.3g}" for k, v in scalars.items()
                             if k in ("fake_loss", "gen/denoiser_gap", "gen/eps_gap")}
                    bar.set_postfix(skipped=int(scalars["skipped_gen"]), **shown)
            if fid_eval is not None and crossed(config.fid.every, s, done):
                view = eval_view(state)
                if writes:
                    scores = fid_eval(view)
                    log.info("step %d: FID %.3f (IS %.3f) over %d samples", done, scores["fid"],
                             scores.get("is_mean", float("nan")), scores["num"])
                    writer.write_scalars(done, {f"fid/{k}": v for k, v in scores.items()})
            if crossed(config.sample_every, s, done):
                _draw(draw, writer, eval_view(state), f"step{done:07d}", done)
            if distributed.preemption_reached(done):        # multi-process: the same step on every process
                stop.requested = "a preemption notice"
            if crossed(config.ckpt_every, s, done) or stop.requested:
                mngr.save(done, args=ocp.args.StandardSave(state))
                last_saved = done
            s = done
            if stop.requested:
                log.warning("stopped by %s at step %d; checkpoint saved, rerun the same command to resume",
                            stop.requested, done)
                break
        if tracing:                                         # stopped inside the profiled steps
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
        if last_saved != int(state.step):
            mngr.save(int(state.step), args=ocp.args.StandardSave(state), force=True)
        mngr.wait_until_finished()
    if bar is not None:
        bar.close()
    writer.flush()
    if int(state.step) == config.num_steps:
        view = eval_view(state)
        _draw(draw, writer, view, "end", int(state.step))
        results = evaluate(view) if writes else None
        if results:
            numeric = lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
            writer.write_scalars(int(state.step), {k: v for k, v in results.items() if numeric(v)})
            (path / "metrics.json").write_text(json.dumps(results, indent=2, default=float))
            log.info("final metrics: %s", json.dumps(results, default=float))
    writer.close()
    return state


def _draw(draw: Callable, writer: Any, state: TrainState, tag: str, step: int) -> None:
    """Draws the samples picture (process 0) and writes the same picture to TensorBoard (tag 'samples')."""
    from PIL import Image

    if not distributed.is_writer():
        return
    path = draw(state, tag)
    with epath.Path(path).open("rb") as f, Image.open(f) as img:
        writer.write_images(step, {"samples": np.asarray(img.convert("RGB"))[None]})


def _progress_bar(total: int, start: int) -> Optional[Any]:
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
