"""Exact-score testbeds trained to convergence (issue 20): curves over seeds, tables at fixed budgets.

    python experiments/toy_convergence.py                 # 5 methods x ring, grid, mixture x seeds 0,1,2 x 50,000 steps
    python experiments/toy_convergence.py --lr-sweep      # the ring's generator-lr sweep at a converged budget
    python experiments/toy_convergence.py --speed --methods sim,di   # steps/s: one step per call vs lax.scan blocks

Methods: DI, SIM (pseudo-Huber, c = 1), SIM-L2, SiD (alpha = 1.2, its official noise levels) and DMD,
each with di_jax/configs/toy_<testbed>.py:<method> (Adam b1 = 0, lr 1e-3 for both networks, batch 256,
EMA half-life 50k images). Testbeds: the 8-Gaussian ring, the 5x5 grid and `toy_mixture` (6 modes of
unequal weights and widths). Every run trains with the library's compiled step in blocks of
`--eval-every` steps per call (`config.steps_per_call`, a lax.scan) and evaluates the EMA generator
after each block on 4,000 fixed latents against the exact teacher (`di_jax.eval.mixture`):
  loglik     mean teacher log-likelihood of the samples (teacher's own samples: ring +1.06)
  precision  fraction of samples within 3 std (their nearest mode's) of a mode (teacher: 0.989)
  recall     fraction of modes holding their weight within 25 % (relative)
  weight_err total variation between the modes' sample shares and their weights
  energy     energy distance to 4,000 teacher samples
Runs go to worker processes (`--workers`, one XLA thread each: on this 2-core CPU the study ran at
2 x 189 steps/s, one process with both threads at 235-344; experiments/README.md). Each finished run is cached as JSON
under `--cache` and skipped when the command is run again, so an interrupted study resumes.
Writes <out>/<name>.md (tables at 5k, 20k and the final step: mean ± std over seeds), <name>.json
(every run's curve) and <name>.png (curves: mean over seeds, band min..max), and for the study
<name>_samples.png (the final EMA samples of seed 0).
"""

import argparse
import concurrent.futures as futures
import json
import multiprocessing
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))                    # experiments/
import plots  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TESTBEDS = ("ring", "grid", "mixture")
METHODS = {"di": ("di", {}), "sim": ("sim", {}), "sim_l2": ("sim", {"distance": {"name": "l2"}}),
           "sid": ("sid", {}), "dmd": ("dmd", {})}
LABELS = {"di": "DI", "sim": "SIM (pseudo-Huber)", "sim_l2": "SIM-L2", "sid": "SiD (alpha=1.2)", "dmd": "DMD"}
COLOURS = {"di": (220, 80, 30), "sim": (31, 90, 200), "sim_l2": (0, 170, 200), "sid": (40, 160, 60),
           "dmd": (150, 60, 170)}
METRICS = (("loglik", "mean teacher log-lik"), ("precision", "precision (within 3 std)"),
           ("recall", "recall (mass within 25 %)"), ("weight_err", "mode weight error (TV)"),
           ("energy", "energy distance"))
LRS = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
EVAL_SEED, LATENT_SEED = 99, 1234
PRECISION_GOAL = 0.8         # the table's "steps to" column: precision >= this with recall 1 at 5 evaluations in a row
LOGLIK_FLOOR = -50.0        # curves draw lower log-likelihoods (diverged runs) at this value
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def job_name(job: Dict[str, Any]) -> str:
    lr = "" if job["lr"] is None else f"_lr{job['lr']:g}"
    return f"{job['testbed']}_{job['method']}_s{job['seed']}{lr}_n{job['steps']}_e{job['eval_every']}"


def make_config(testbed: str, method: str, seed: int, steps: int, eval_every: int, lr: Optional[float] = None):
    """toy_<testbed>.py:<method> with the seed, steps, steps per call and (optionally) generator lr set
    (`toy_distill.make_config`; a section override such as SIM-L2's distance replaces the whole section)."""
    import toy_distill

    base, overrides = METHODS[method]
    overrides = {**overrides, "steps_per_call": eval_every, **({} if lr is None else {"gen_optim.lr": lr})}
    return toy_distill.make_config(testbed, base, steps, seed, overrides)


def evaluate(mixture, x: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """The five metrics of samples x against the exact teacher (NaN for non-finite samples)."""
    from di_jax.eval import mixture as mx

    if not np.all(np.isfinite(x)):
        return {key: float("nan") for key, _ in METRICS}
    shares = mx.share_metrics(mixture, x)
    return dict(loglik=float(np.mean(np.asarray(mixture.log_prob(x)))),
                precision=mx.near_mode_fraction(mixture, x, 3.0), recall=shares["mode_recall"],
                weight_err=shares["weight_error"], energy=mx.energy_distance(x, reference),
                coverage=shares["mode_coverage"])


def run_job(job: Dict[str, Any], cache: str) -> Dict[str, Any]:
    """Trains one run in blocks of eval_every steps, evaluating the EMA generator after each; caches the result."""
    import jax

    from di_jax.train.setup import setup

    path = os.path.join(cache, job_name(job) + ".json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    config = make_config(job["testbed"], job["method"], job["seed"], job["steps"], job["eval_every"], job["lr"])
    run = setup(config)
    mixture, nets = run.teacher.params, run.nets
    generate = jax.jit(lambda p, z: nets.generate(p, z, None))
    z = jax.random.normal(jax.random.PRNGKey(LATENT_SEED), (job["num_eval"],) + tuple(nets.latent_shape))
    reference = np.asarray(mixture.sample(jax.random.PRNGKey(EVAL_SEED), job["num_eval"]))
    state, history, train_s = run.state, [], 0.0
    for _ in range(job["steps"] // job["eval_every"]):
        t0 = time.perf_counter()
        state, metrics = run.compiled(state, run.teacher_params)
        jax.block_until_ready(state)
        train_s += time.perf_counter() - t0
        x = np.asarray(generate(state.ema_params, z))
        history.append(dict(step=int(state.step), skipped_gen=int(metrics["skipped_gen"]),
                            fake_loss=float(metrics["fake_loss"]), **evaluate(mixture, x, reference)))
    raw = evaluate(mixture, np.asarray(generate(state.gen_params, z)), reference)
    samples = np.asarray(generate(state.ema_params, z[:1000]))
    out = dict(job, history=history, raw=raw, train_s=train_s, compile_s=run.compile_seconds,
               samples=np.where(np.isfinite(samples), samples, 1e9).round(4).tolist() if job["seed"] == 0 else None)
    os.makedirs(cache, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(path + ".tmp", path)
    return out


def run_all(jobs: Sequence[Dict[str, Any]], cache: str, workers: int, log=print) -> List[Dict[str, Any]]:
    """Runs the jobs (cached ones are read back) in `workers` single-threaded processes (0: in this process);
    logs each as it ends."""
    results, t0 = {}, time.perf_counter()

    def record(i, r):
        results[i] = r
        last = r["history"][-1]
        log(f"[{len(results)}/{len(jobs)} {time.perf_counter() - t0:6.0f} s] {job_name(r)}: "
            + ", ".join(f"{k} {last[k]:.3g}" for k, _ in METRICS) + f" ({r['train_s']:.0f} s training)")

    if workers < 1:
        for i, job in enumerate(jobs):
            record(i, run_job(job, cache))
        return [results[i] for i in range(len(jobs))]
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD).strip()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(run_job, job, cache): i for i, job in enumerate(jobs)}
        for done in futures.as_completed(pending):
            record(pending[done], done.result())
    return [results[i] for i in range(len(jobs))]


def _at(run: Dict[str, Any], step: int) -> Optional[Dict[str, float]]:
    """The evaluation at the last block ending at or before `step` (None before the first)."""
    rows = [h for h in run["history"] if h["step"] <= step]
    return rows[-1] if rows else None


def _ms(values, digits: int = 3) -> str:
    v = np.asarray([x for x in values], np.float64)
    ok = v[np.isfinite(v)]
    if len(ok) == 0:
        return "nan"
    s = f"{ok.mean():.{digits}g} ± {ok.std():.2g}"
    return s if len(ok) == len(v) else s + f" ({len(ok)}/{len(v)} finite)"


def steps_to(run: Dict[str, Any], precision: float = PRECISION_GOAL, hold: int = 5) -> Optional[int]:
    """The first evaluated step with precision >= `precision` and recall 1 at it and the next `hold` - 1
    evaluations (or to the end of the run, if fewer are left); None: never."""
    ok = [h["precision"] >= precision and h["recall"] == 1.0 for h in run["history"]]
    for i in range(len(ok)):
        if all(ok[i:i + hold]):
            return run["history"][i]["step"]
    return None


def study_table(runs: Sequence[Dict[str, Any]], budgets: Sequence[int]) -> str:
    """Per testbed and budget: methods x metrics, mean ± std over seeds; at the final budget also the steps
    each seed needed to reach precision >= PRECISION_GOAL with recall 1 (held for 5 evaluations)."""
    lines = []
    for testbed in dict.fromkeys(r["testbed"] for r in runs):
        for budget in budgets:
            final = budget == budgets[-1]
            goal = f"steps to precision {PRECISION_GOAL:g} + recall 1 (held 5 evaluations), per seed"
            extra = f" | {goal} |" if final else " |"
            lines += [f"\n**{testbed}, {budget:,} steps**\n",
                      "| method | " + " | ".join(t for _, t in METRICS) + " | seeds with recall 1" + extra,
                      "|---|" + "---|" * (len(METRICS) + 1 + final)]
            for method in dict.fromkeys(r["method"] for r in runs):
                group = [r for r in runs if r["testbed"] == testbed and r["method"] == method]
                rows = [h for h in (_at(r, budget) for r in group) if h is not None]
                if not rows:
                    continue
                cells = [_ms([h[k] for h in rows]) for k, _ in METRICS]
                full = sum(h["recall"] == 1.0 for h in rows)
                reach = ""
                if final:
                    reached = ("never" if n is None else f"{n / 1000:g}k" for n in map(steps_to, group))
                    reach = " " + " / ".join(reached) + " |"
                lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + f" | {full}/{len(rows)} |" + reach)
    return "\n".join(lines)


def lr_table(runs: Sequence[Dict[str, Any]], metric: str = "loglik") -> str:
    """Methods x learning rates: the final metric (mean ± std over seeds) and runs that lost a mode."""
    lrs = sorted(dict.fromkeys(r["lr"] for r in runs))
    lines = ["| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    for method in dict.fromkeys(r["method"] for r in runs):
        cells = []
        for lr in lrs:
            final = [r["history"][-1] for r in runs if r["method"] == method and r["lr"] == lr]
            lost = sum(not (h["recall"] == 1.0) for h in final)
            cells.append(_ms([h[metric] for h in final]) + (f", recall < 1 in {lost}/{len(final)}" if lost else ""))
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_panels(runs: Sequence[Dict[str, Any]], rows: Sequence[str], row_key: str, row_title) -> List[dict]:
    """plots.curves_png panels: one row per value of `row_key`, one column per metric, one line per method."""
    panels = []
    for row in rows:
        for key, title in METRICS:
            series = []
            for method in dict.fromkeys(r["method"] for r in runs):
                group = [r for r in runs if r[row_key] == row and r["method"] == method]
                if not group:
                    continue
                steps = np.asarray([h["step"] for h in group[0]["history"]])
                vals = np.asarray([[h[key] for h in r["history"]] for r in group], np.float64)
                series.append(dict(x=steps, y=vals, colour=COLOURS[method], label=LABELS[method]))
            panels.append(dict(title=f"{row_title(row)}: {title}", series=series, log_y=key == "energy",
                               y_floor=LOGLIK_FLOOR if key == "loglik" else None,
                               y_range=(0.0, 1.0) if key in ("precision", "recall") else None))
    return panels


def speed(methods: Sequence[str], blocks: Sequence[int], steps: int = 3000) -> str:
    """Steps/s of the toy ring step (one process, this CPU's default threads): per-call vs scanned blocks."""
    import jax

    from di_jax.train.setup import setup

    lines = ["| method | steps per call | compile s | steps/s | speed-up |", "|---|---|---|---|---|"]
    for method in methods:
        base = None
        for k in blocks:
            run = setup(make_config("ring", method, 0, steps, k))
            state = run.state
            state, _ = run.compiled(state, run.teacher_params)           # warm-up
            jax.block_until_ready(state)
            t0 = time.perf_counter()
            for _ in range(steps // k):
                state, _ = run.compiled(state, run.teacher_params)
            jax.block_until_ready(state)
            rate = (steps // k) * k / (time.perf_counter() - t0)
            base = base or rate
            lines.append(f"| {LABELS[method]} | {k} | {run.compile_seconds:.2f} | {rate:.0f} | {rate / base:.2f}x |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"from {list(METHODS)}")
    parser.add_argument("--testbeds", default=",".join(TESTBEDS), help=f"from {list(TESTBEDS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (study 50000, --lr-sweep 20000)")
    parser.add_argument("--eval-every", type=int, default=1000, help="steps per block (evaluation period)")
    parser.add_argument("--budgets", default="5000,20000", help="steps of the table columns (and the final step)")
    parser.add_argument("--lr-sweep", action="store_true", help="ring only, generator lr over --lrs")
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in LRS))
    parser.add_argument("--speed", action="store_true", help="only measure steps/s per call vs scanned blocks")
    parser.add_argument("--num-eval", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (0: run in this process)")
    parser.add_argument("--name", default=None, help="output stem (default toy_convergence / toy_convergence_lr)")
    parser.add_argument("--cache", default=os.path.join("runs", "toy_convergence_cache"))
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; choose from {list(METHODS)}")
    if args.speed:
        import jax

        t0 = time.perf_counter()
        md = speed(methods, (1, 10, 100, 1000))
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, (args.name or "toy_step_speed") + ".md"), "w") as f:
            command = " ".join(sys.argv[1:] if argv is None else argv)
            f.write(f"# Toy ring train step: steps per compiled call\n\n"
                    f"Command: `python experiments/toy_convergence.py {command}`\n\n"
                    f"One process, XLA's default threads, "
                    f"jax {jax.__version__} on {jax.devices()[0].device_kind}; 3,000 timed steps after one warm-up "
                    f"call; {time.perf_counter() - t0:.0f} s in all.\n\n{md}\n")
        return
    testbeds = ["ring"] if args.lr_sweep else args.testbeds.split(",")
    for t in testbeds:
        if t not in TESTBEDS:
            parser.error(f"unknown testbed {t!r}; choose from {list(TESTBEDS)}")
    steps = args.steps or (20000 if args.lr_sweep else 50000)
    if steps % args.eval_every:
        parser.error(f"--steps ({steps}) must be a multiple of --eval-every ({args.eval_every})")
    lrs = [float(x) for x in args.lrs.split(",")] if args.lr_sweep else [None]
    seeds = [int(s) for s in args.seeds.split(",")]
    name = args.name or ("toy_convergence_lr" if args.lr_sweep else "toy_convergence")
    jobs = [dict(testbed=t, method=m, seed=s, lr=lr, steps=steps, eval_every=args.eval_every, num_eval=args.num_eval)
            for s in seeds for t in testbeds for lr in lrs for m in methods]     # seed-major: early partial results
    t0 = time.perf_counter()
    runs = run_all(jobs, args.cache, args.workers)
    wall = time.perf_counter() - t0
    train = sum(r["train_s"] for r in runs)
    os.makedirs(args.out, exist_ok=True)
    command = "python experiments/toy_convergence.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"Command: `{command.strip()}`\n\n{len(runs)} runs of {steps:,} steps, EMA generator evaluated every "
              f"{args.eval_every:,} steps on {args.num_eval:,} fixed latents; {args.workers} single-threaded worker "
              f"processes; wall time of this invocation {wall:.0f} s (runs read back from the cache count 0 s), "
              f"training time summed over runs {train:.0f} s ({len(runs) * steps / train:.0f} steps/s per worker, "
              f"evaluation excluded).\n")
    if args.lr_sweep:
        body = "\n\n".join(f"**{t}** (final step, mean ± std over seeds {seeds})\n\n" + lr_table(runs, k)
                           for k, t in METRICS)
        panels = []
        for lr in sorted(dict.fromkeys(r["lr"] for r in runs)):
            panels += curve_panels(runs, [lr], "lr", lambda v: f"lr {v:g}")
        title = "Generator learning-rate sweep on the 8-Gaussian ring, trained to a converged budget"
    else:
        budgets = [int(b) for b in args.budgets.split(",") if int(b) < steps] + [steps]
        body = study_table(runs, budgets)
        panels = curve_panels(runs, testbeds, "testbed", lambda v: v)
        title = "Exact-score testbeds trained to convergence"
        _samples_png(os.path.join(args.out, name + "_samples.png"), runs, testbeds, methods)
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(f"# {title}\n\n{header}\n{body}\n")
    slim = [{k: v for k, v in r.items() if k != "samples"} for r in runs]
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(slim, f, indent=0, default=float)
    plots.curves_png(os.path.join(args.out, name + ".png"), panels, columns=len(METRICS))
    print(body)
    print(f"\nwrote {args.out}/{name}.md, .json, .png; wall {wall:.0f} s")


def _samples_png(path: str, runs, testbeds, methods) -> None:
    """Final EMA samples of seed 0 per (testbed, method), teacher samples in grey behind."""
    from di_jax.eval.pictures import scatter_png

    tiles = []
    for t in testbeds:
        for m in methods:
            r = next((r for r in runs if r["testbed"] == t and r["method"] == m and r.get("samples")), None)
            if r is None:
                continue
            ref = _teacher_samples(t, 1000)
            tiles.append((f"{t}: {LABELS[m]}", np.asarray(r["samples"]), ref))
    plots.scatter_grid_png(path, tiles, columns=len(methods), scatter=scatter_png)


def _teacher_samples(testbed: str, n: int) -> np.ndarray:
    import jax

    from di_jax.teachers import build_teacher

    teacher = build_teacher(make_config(testbed, "sim", 0, 1, 1))
    return np.asarray(teacher.params.sample(jax.random.PRNGKey(EVAL_SEED + 1), n))


if __name__ == "__main__":
    main()
