"""`di-jax bench --aot`: what a train step needs per device, from its ahead-of-time compilation alone.

No weights are made and nothing runs: the step is lowered from abstract arrays (shapes, dtypes and
shardings) and compiled, and XLA reports per device the bytes of the arguments (state + frozen
teacher), temporaries (activations, gradients, optimiser temporaries) and outputs not aliased with the
donated state (`compiled.memory_analysis()`), and the FLOPs of one step (`cost_analysis()`). This is how
a run at PixArt-XL-2 size (the SIM paper's SIM-DiT-600M, 610M parameters per network) is sized on a
machine that could not hold it: the per-device bytes are affine in the batch, so two compiles give the
slope and the largest batch that fits a device of `--fit-gb` GiB, which is then compiled to confirm.
"""

import sys
import time
from typing import Any, Dict, List, Optional

from di_jax.bench.networks import BenchError

MAX_FIT_COMPILES = 3           # compiles per --fit-gb budget
MIB = 2.0 ** 20
GIB = 2.0 ** 30


def bench_teacher(name: str, precision: str, remat: str):
    """(Teacher with abstract parameters, network config dict) of a bench network name."""
    import jax
    import numpy as np

    from di_jax.bench import networks
    from di_jax.bench.jax_cell import PRECISIONS

    dtype = PRECISIONS[precision]
    net_cfg = networks.network_config(name)
    if net_cfg.get("family") == "pixart":
        from di_jax.nets.pixart import PixArtTransformer2DModel
        from di_jax.teachers.discrete import TextCondition, pixart_teacher

        kw = {k: v for k, v in net_cfg.items() if k not in ("family", "max_length")}
        module = PixArtTransformer2DModel(**kw, dtype=jax.numpy.dtype(dtype), remat=remat != "none")
        size, tokens, width = module.sample_size, net_cfg["max_length"], module.caption_channels
        args = (np.zeros((1, module.in_channels, size, size), np.float32), np.zeros((1, tokens, width), np.float32),
                np.zeros((1,), np.int32), np.ones((1, tokens), np.float32))
        params = jax.eval_shape(lambda k: module.init(k, *args)["params"], jax.random.PRNGKey(0))
        condition = TextCondition(jax.ShapeDtypeStruct((tokens, width), np.float32),
                                  jax.ShapeDtypeStruct((tokens,), np.float32))
        return pixart_teacher(module, params)._replace(condition=condition), net_cfg
    from di_jax.nets import build_network
    from di_jax.teachers.edm import edm_teacher

    module = build_network(dict(net_cfg, dtype=dtype))
    return edm_teacher(module, networks.param_shapes(module, net_cfg)), net_cfg


def _abstract(tree, specs, mesh):
    import jax

    place = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.NamedSharding(mesh, s))
    return jax.tree.map(place, tree, specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))


def aot_cell(name: str, method: str, batch: int, precision: str, remat: str = "none", devices: int = 1,
             fsdp: int = 1, grad_accum: int = 1, teacher_dtype: str = "float32") -> Dict[str, Any]:
    """Per-device memory (MiB) and GFLOPs of one compiled train step; nothing is allocated or run."""
    import jax
    import numpy as np

    from di_jax.bench.jax_cell import bench_config
    from di_jax.nets.families import build_networks
    from di_jax.train import flat_update, sharding
    from di_jax.train.setup import fresh_state
    from di_jax.train.step import make_train_step

    teacher, _ = bench_teacher(name, precision, remat)
    config = bench_config(name, method, batch, precision, "none" if teacher.condition is not None else remat,
                          devices)
    config.mesh.fsdp, config.grad_accum, config.teacher.dtype = fsdp, grad_accum, teacher_dtype
    mesh = sharding.make_mesh(devices, fsdp=fsdp)
    nets = build_networks(config.networks, teacher)
    rules, min_size = sharding.mesh_rules(config)
    state = jax.eval_shape(lambda p: fresh_state(config, nets, p, mesh), teacher.params)
    state = _abstract(state, flat_update.state_specs(state, mesh, rules, min_size), mesh)
    t_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, np.dtype(teacher_dtype)), teacher.params)
    t_params = _abstract(t_params, sharding.param_specs(teacher.params, mesh, rules, min_size), mesh)
    cond = ()
    if nets.condition is not None:
        batch_spec = sharding.batch_sharded(mesh)
        cond = (jax.tree.map(lambda s: jax.ShapeDtypeStruct((batch,) + s.shape, s.dtype, sharding=batch_spec),
                             nets.condition),)
    t0 = time.perf_counter()
    compiled = make_train_step(config, nets, mesh).lower(state, t_params, *cond).compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(teacher.params))
    argument, temp = m.argument_size_in_bytes / MIB, m.temp_size_in_bytes / MIB
    unaliased_out = max(m.output_size_in_bytes - m.alias_size_in_bytes, 0) / MIB
    return dict(config=name, method=method, batch=batch, precision=precision, remat=remat, devices=devices,
                fsdp=fsdp, grad_accum=grad_accum, teacher_dtype=teacher_dtype, params=n_params,
                compile_s=round(seconds, 1), argument_mib=round(argument, 1), temp_mib=round(temp, 1),
                output_unaliased_mib=round(unaliased_out, 1),
                total_mib=round(argument + temp + unaliased_out, 1),
                gflops=round(float((cost or {}).get("flops", float("nan"))) / 1e9, 1))


def largest_batch(rows: List[dict], gib: float, multiple: int) -> Optional[int]:
    """The largest batch (a multiple of `multiple`) whose per-device total fits `gib` GiB on the line through
    the two measured batches nearest the budget; None if the smallest measured batch does not fit."""
    budget = gib * GIB / MIB
    rows = sorted({r["batch"]: r for r in rows if r["batch"] > 0}.values(), key=lambda r: r["batch"])
    if rows[0]["total_mib"] > budget:
        return None
    below = [r for r in rows if r["total_mib"] <= budget]
    above = [r for r in rows if r["total_mib"] > budget]
    a, b = (below[-1], above[0]) if above else (below[-2], below[-1])
    slope = (b["total_mib"] - a["total_mib"]) / (b["batch"] - a["batch"])
    if slope <= 0:
        raise BenchError("per-device memory did not grow with the batch: cannot extrapolate")
    fit = a["batch"] + int((budget - a["total_mib"]) // slope)
    return max(multiple, fit // multiple * multiple)


def run_aot(args) -> dict:
    """The --aot grid: each (config, method, precision, remat) at each --batch; with --fit-gb the largest
    batch per budget (extrapolated from the first two batches, then compiled to confirm)."""
    rows = []
    for c in args.config:
        for m in args.method:
            for p in args.precision:
                for r in args.remat:
                    cell_rows = []
                    for b in args.batch:
                        print(f"[bench --aot] {c} {m} batch {b} {p} remat={r} ...", file=sys.stderr, flush=True)
                        cell_rows.append(aot_cell(c, m, b, p, r, args.devices or 1, args.fsdp, args.grad_accum))
                    for gib in args.fit_gb or ():
                        if len(cell_rows) < 2:
                            raise BenchError("--fit-gb needs two --batch values to extrapolate from")
                        measured = [r for r in cell_rows if r["batch"] > 0]
                        for _ in range(MAX_FIT_COMPILES):      # secant steps, each confirmed by a compile
                            fit = largest_batch(measured, gib, args.devices or 1)
                            if fit is None or fit in [r["batch"] for r in measured]:
                                break
                            print(f"[bench --aot] {c} {m} batch {fit} (fits {gib} GiB?) ...", file=sys.stderr,
                                  flush=True)
                            measured.append(aot_cell(c, m, fit, p, r, args.devices or 1, args.fsdp, args.grad_accum))
                        fitting = [x for x in measured if x["total_mib"] <= gib * GIB / MIB]
                        best = max(fitting, key=lambda x: x["batch"]) if fitting else dict(measured[0], batch=0)
                        cell_rows.append(dict(best, fits_gb=gib, note="" if fitting else "batch 1 does not fit"))
                    rows.extend(cell_rows)
    return dict(kind="aot", rows=rows)


def aot_markdown(result: dict) -> str:
    cols = ("config", "method", "batch", "precision", "remat", "devices", "fsdp", "params", "argument_mib",
            "temp_mib", "output_unaliased_mib", "total_mib", "gflops", "compile_s", "fits_gb")
    lines = ["Per-device memory of the compiled train step (XLA memory analysis, MiB) and GFLOPs per step; "
             "ahead of time, no weights. A row with fits_gb: the largest compiled batch within that budget.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in cols) + " |")
    return "\n".join(lines)
