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


def run_one(overrides: Dict[str, Any], seed: int, workdir: str) -> Dict[str, Any]:
    config = digits_sim.get_config()
    config.seed = seed
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
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
    args = p.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant] or [("main job", {})]
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


if __name__ == "__main__":
    sys.exit(main())
