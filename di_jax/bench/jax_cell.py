"""One JAX cell of `di-jax bench`: the library's compiled train step on a named network, timed.

The step is the one every run uses, built by `di_jax.train.setup.setup` (fake-score DSM phase +
generator phase + EMA, one jit, donated state) around a teacher with random weights and dropout on
(the official DI convention); the generator-phase noise levels are each method's own
(`config.sigma_gen.kind = "auto"`).
"""

import os
import statistics
import time
from typing import Any, Dict, Optional

from di_jax.bench import measure
from di_jax.bench.networks import BenchError, network_config, random_params, sigma_init

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}     # bench name -> config.networks.dtype


def bench_config(name: str, method: str, batch: int, precision: str, remat: str = "none", devices: int = 1,
                 seed: int = 0):
    """The training config of one cell: `base_config()` with an EDM teacher-copy generator."""
    from di_jax.configs.base import base_config

    if precision not in PRECISIONS:
        raise BenchError(f"unknown precision {precision!r}; choose from {tuple(PRECISIONS)}")
    config = base_config()
    config.seed = seed
    config.method = method
    config.batch_size = batch
    config.remat = remat
    config.num_devices = devices
    config.teacher.kind = "edm"
    config.networks.update(kind="edm", sigma_init=sigma_init(name),
                           dtype=PRECISIONS[precision])
    return config


def run_jax(name: str, method: str, batch: int, precision: str, remat: str = "none", steps: int = 20,
            warmup: int = 3, devices: int = 1, seed: int = 0, pipelined_steps: Optional[int] = None,
            trace: Optional[str] = None) -> Dict[str, Any]:
    """Compiles and times the train step of one (network, method, batch, precision, remat) cell.

    Args:
      name: a network name of `di_jax.bench.networks.NETWORKS`.
      method: a method of `di_jax.methods.METHODS`.
      batch: the global batch size (divisible by `devices`).
      precision: 'fp32' or 'bf16' (compute dtype; parameters and optimiser state stay float32).
      remat: a mode of `di_jax.configs.base.REMAT_MODES`.
      steps: individually timed steps; their median is reported.
      warmup: untimed steps after compilation.
      devices: JAX devices in the data-parallel mesh.
      seed: seed of the random weights and of the run.
      pipelined_steps: steps dispatched back to back for `pipelined_images_per_s` (default: `steps`).
      trace: if set, 3 more steps run under `jax.profiler` into `<trace>/<cell>/plugins/profile/`
        (TensorBoard's profile plugin), after the timed steps so that tracing costs them nothing.

    Returns:
      The cell's numbers (compile_s, median_ms, images_per_s, ..., finite_loss), as in the JSON output.
    """
    import jax
    import numpy as np

    from di_jax.nets import build_network
    from di_jax.teachers.edm import edm_teacher
    from di_jax.train import sharding
    from di_jax.train.setup import setup
    from di_jax.train.state import param_count

    if devices > jax.device_count():
        raise BenchError(f"--devices {devices} exceeds the {jax.device_count()} visible devices")
    if batch % devices:
        raise BenchError(f"batch {batch} is not divisible by the number of devices ({devices})")
    net_cfg = network_config(name)
    config = bench_config(name, method, batch, precision, remat, devices, seed)
    module = build_network(dict(net_cfg, dtype=config.networks.dtype))

    rss = measure.RssPeak()
    teacher = edm_teacher(module, random_params(module, net_cfg, seed))
    s = setup(config, teacher=teacher, mesh=sharding.make_mesh(devices))
    compiled, state, teacher_params, compile_s = s.compiled, s.state, s.teacher_params, s.compile_seconds
    del s, teacher                     # the unreplicated teacher may be freed, as in a training run
    flops = measure.cost_flops(compiled)
    xla_mem = measure.xla_memory_bytes(compiled)
    for _ in range(warmup):
        state, metrics = compiled(state, teacher_params)
    jax.block_until_ready(state)
    with rss:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, teacher_params)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t0)
        n_pipe = steps if pipelined_steps is None else pipelined_steps
        t0 = time.perf_counter()
        for _ in range(n_pipe):
            state, metrics = compiled(state, teacher_params)
        jax.block_until_ready(state)
        pipelined = (time.perf_counter() - t0) / max(n_pipe, 1)
    trace_dir = None
    if trace:
        trace_dir = os.path.join(trace, f"{name}_{method}_b{batch}_{precision}_remat-{remat}_d{devices}")
        jax.profiler.start_trace(trace_dir)
        for _ in range(3):
            state, metrics = compiled(state, teacher_params)
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
    # no generator update was skipped for a non-finite loss/gradient, and the last gradient is finite
    finite = int(metrics["skipped_gen"]) == 0 and bool(np.isfinite(float(metrics["gen_grad_norm"])))
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        peak, peak_kind = stats["peak_bytes_in_use"], "device peak"
    else:
        peak, peak_kind = rss.growth, "host RSS+"
    median = statistics.median(times)
    return dict(framework="jax", compile_s=round(compile_s, 2), median_ms=round(median * 1e3, 2),
                images_per_s=round(batch / median, 2), pipelined_images_per_s=round(batch / pipelined, 2),
                peak_mem_mib=measure.mib(peak), peak_mem_kind=peak_kind, xla_mem_mib=measure.mib(xla_mem),
                flops_per_step=flops, flops_per_s=None if flops is None else flops / median,
                params=param_count(state.gen_params), finite_loss=finite, steps=steps, warmup=warmup,
                **(dict(trace=trace_dir) if trace_dir else {}))
