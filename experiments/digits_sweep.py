"""The digits main job over seeds and config variants: mean ± std of the distilled FD, and the step time.

    python experiments/digits_sweep.py --seeds 0,1,2 --variant c=1e-3:distance.c=0.001 \\
        --variant c=1:distance.c=1.0 --variant shared:share_generator_pass=True

Each (variant, seed) runs `di_jax/configs/digits_sim.py` (the main job, 800 steps) with the variant's
overrides and `seed`, through the library's `train_and_evaluate`, in a workdir under `--workdir`
(kept: pictures, report.md and metrics.json of every run). The step time is the median wall time of
steps 10..800 of that run (compilation excluded), on the machine and load of the moment. Writes
`<out>/<name>.md` (table: mean ± std over seeds, per-seed FDs) and `<out>/<name>.json` (every run).
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from typing import Any, Dict, List

import jax

from di_jax.configs import digits_sim
from di_jax.train.loop import train_and_evaluate

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_variant(spec: str) -> tuple:
    """'NAME:key=value,key=value' -> (NAME, {key: value}); a bare 'NAME' has no overrides."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"digits_sweep: error: --variant {spec!r}: expected key=value, got {item!r}")
        overrides[key] = _value(value)
    return name, overrides


def make_config(overrides: Dict[str, Any], seed: int):
    """The main job's config with `seed` and the dotted-key overrides applied."""
    config = digits_sim.get_config()
    config.seed = seed
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def time_steps(overrides: Dict[str, Any], steps: int, warmup: int = 3) -> Dict[str, Any]:
    """Compile time and per-step wall times of the main job's step (seed 0), without training a run."""
    from di_jax.bench.measure import cost_flops
    from di_jax.train.setup import setup

    run = setup(make_config(overrides, 0))
    state = run.state
    for _ in range(warmup):
        state, _ = run.compiled(state, run.teacher_params)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, _ = run.compiled(state, run.teacher_params)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4)
    return dict(compile_s=run.compile_seconds, step_ms=1e3 * statistics.median(times),
                gflops=cost_flops(run.compiled) / 1e9, q25_ms=1e3 * q[0], q75_ms=1e3 * q[2])


def run_one(overrides: Dict[str, Any], seed: int, workdir: str) -> Dict[str, Any]:
    config = make_config(overrides, seed)
    config.ckpt_every = config.num_steps
    if os.path.exists(workdir):
        shutil.rmtree(workdir)
    times: List[float] = []
    last = [time.perf_counter()]

    def on_step(step, state):
        jax.block_until_ready(state.step)
        now = time.perf_counter()
        if step >= 10:
            times.append(now - last[0])
        last[0] = now

    start = time.perf_counter()
    train_and_evaluate(config, workdir, on_step=on_step)
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    return dict(seed=seed, fd=metrics["distilled/fd"], label_accuracy=metrics["distilled/label_accuracy"],
                classes=metrics["distilled/classes_covered"], heun_fd=metrics["teacher_heun/fd"],
                step_ms=1e3 * statistics.median(times), wall_s=time.perf_counter() - start,
                skipped_gen=metrics["skipped_gen"], skipped_fake=metrics["skipped_fake"])


def _ms(values) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def table(runs: List[Dict[str, Any]], variants: List[tuple]) -> str:
    lines = ["| variant | overrides | seeds | distilled FD ↓ (mean ± std) | per seed | label accuracy | classes "
             "| step ms (median) |", "|---|---|---:|---:|---|---:|---:|---:|"]
    for name, overrides in variants:
        rs = [r for r in runs if r["variant"] == name]
        if not rs:
            continue
        ov = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(main job)"
        lines.append(f"| {name} | {ov} | {len(rs)} | {_ms([r['fd'] for r in rs])} | "
                     f"{' / '.join('%.2f' % r['fd'] for r in rs)} | {_ms([r['label_accuracy'] for r in rs])} | "
                     f"{min(r['classes'] for r in rs)}–{max(r['classes'] for r in rs)} | "
                     f"{statistics.median(r['step_ms'] for r in rs):.0f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", default=[], help="NAME[:key=value,...] (repeatable)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--name", default="digits_sweep", help="output file stem under --out")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--workdir", default="/tmp/digits_sweep")
    p.add_argument("--table-only", action="store_true", help="write the table of the runs in <name>.json, run nothing")
    p.add_argument("--time-steps", type=int, default=0, metavar="N",
                   help="only time N steps of each variant's step (no training, no FD); interleaved rounds")
    p.add_argument("--rounds", type=int, default=2, help="with --time-steps: rounds over the variants (load drift)")
    args = p.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant] or [("main job", {})]
    if args.time_steps:
        return time_table(variants, args)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, args.name + ".json")
    runs = []
    if os.path.exists(json_path):                     # resume an interrupted sweep
        with open(json_path) as f:
            runs = json.load(f)["runs"]
    for name, overrides in variants:
        for seed in seeds:
            if args.table_only or any(r["variant"] == name and r["seed"] == seed for r in runs):
                continue
            r = run_one(overrides, seed, os.path.join(args.workdir, f"{name}_seed{seed}".replace("/", "_")))
            runs.append(dict(variant=name, overrides=overrides, **r))
            print(f"{name} seed {seed}: FD {r['fd']:.2f}, label acc {r['label_accuracy']:.3f}, "
                  f"step {r['step_ms']:.0f} ms, {r['wall_s']:.0f} s", flush=True)
            with open(json_path, "w") as f:
                json.dump(dict(variants=variants, seeds=seeds, runs=runs), f, indent=1)
    text = table(runs, variants)
    with open(os.path.join(args.out, args.name + ".md"), "w") as f:
        f.write(f"Digits main job (di_jax/configs/digits_sim.py) over seeds {seeds}; jax {jax.__version__}, "
                f"{jax.devices()[0].platform}.\n\n" + text + "\n")
    print(text)


def time_table(variants: List[tuple], args) -> int:
    """--time-steps: each variant's step timed in `rounds` interleaved rounds; writes <name>.md/.json."""
    rows = []
    for r in range(args.rounds):
        for name, overrides in variants:
            t = time_steps(overrides, args.time_steps)
            rows.append(dict(variant=name, round=r, **t))
            print(f"{name} round {r}: compile {t['compile_s']:.1f} s, step {t['step_ms']:.1f} ms "
                  f"(IQR {t['q25_ms']:.1f}-{t['q75_ms']:.1f})", flush=True)
    lines = [f"Main-job step time (di_jax/configs/digits_sim.py, batch 64), {args.time_steps} timed steps after 3 "
             f"warm-up steps, {args.rounds} interleaved rounds; jax {jax.__version__}, {jax.devices()[0].platform}, "
             f"load average at the end {os.getloadavg()[0]:.1f}.", "",
             "| variant | overrides | compile s | GFLOP / step (XLA) | median step ms per round |",
             "|---|---|---:|---:|---|"]
    for name, overrides in variants:
        rs = [r for r in rows if r["variant"] == name]
        ov = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(main job)"
        lines.append(f"| {name} | {ov} | {statistics.median(r['compile_s'] for r in rs):.1f} | {rs[0]['gflops']:.2f} | "
                     f"{' / '.join('%.1f' % r['step_ms'] for r in rs)} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, args.name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, args.name + ".json"), "w") as f:
        json.dump(dict(variants=variants, rows=rows), f, indent=1)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
