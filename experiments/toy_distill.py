"""Distil the exact toy teachers (8-Gaussian ring, 5x5 grid) with DI, SIM, SiD and DMD; exact metrics.

    python experiments/toy_distill.py                       # all 4 methods x 2 teachers, config defaults
    python experiments/toy_distill.py --teachers ring --methods sim --steps 3000 --seeds 0,1
    python experiments/toy_distill.py --teachers mixture     # toy_mixture: 6 modes of unequal weights and widths

For every (teacher, method) it builds the config from di_jax/configs/toy_<teacher>.py:<method>, runs the
library's compiled train step (`di_jax.train.setup`, one device, no checkpoints) for the configured
number of steps, and evaluates the EMA generator with the analytic teacher (`di_jax.eval.mixture`):
mode coverage (fraction of modes holding >= 1/(4K) of the samples), mean and median teacher
log-likelihood of generated samples, the fraction of samples within 3 std of a mode, and the energy
distance to teacher samples. The teacher's own samples are a reference row. Writes
`<out>/toy_distill.md` (the table, also printed), `<out>/toy_distill.png` (a figure grid: one scatter
per (teacher, method), teacher samples in grey) and `<out>/toy_distill_<teacher>_<method>.png`.
"""

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from di_jax.configs import toy_grid, toy_mixture, toy_ring  # noqa: E402
from di_jax.eval import mixture as mixture_eval  # noqa: E402
from di_jax.eval.pictures import scatter_png  # noqa: E402
from di_jax.sampling import generate_samples  # noqa: E402
from di_jax.teachers import mixtures  # noqa: E402
from di_jax.train.setup import setup  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CONFIGS = {"ring": toy_ring, "grid": toy_grid, "mixture": toy_mixture}
METHOD_NAMES = {"di": "DI", "sim": "SIM (pseudo-Huber)", "sid": "SiD (alpha=1.2)", "dmd": "DMD", "sds": "SDS"}
EVAL_SEED = 99          # teacher reference samples
LATENT_SEED = 1234      # generator latents of the evaluation


def make_config(teacher: str, method: str, steps: Optional[int] = None, seed: int = 0,
                overrides: Optional[Dict[str, Any]] = None) -> ml_collections.ConfigDict:
    """di_jax/configs/toy_<teacher>.py:<method>, with `steps`, `seed` and dotted-key overrides applied."""
    config = CONFIGS[teacher].get_config(method)
    config.num_devices = 1
    config.seed = seed
    if steps is not None:
        config.num_steps = steps
    for key, value in (overrides or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def evaluate(teacher, x: np.ndarray, num_ref: int) -> Dict[str, float]:
    """Exact metrics of samples x [N, 2] against the analytic teacher (see module docstring)."""
    x = np.asarray(x)
    finite = bool(np.all(np.isfinite(x)))
    if not finite:
        nan = float("nan")
        return dict(finite=False, mode_coverage=nan, loglik=nan, loglik_median=nan, near_mode=nan,
                    energy_distance=nan)
    m = mixture_eval.mixture_metrics(teacher, x, jax.random.PRNGKey(EVAL_SEED), num_ref)
    logp = np.asarray(teacher.log_prob(x[:num_ref]))
    return dict(finite=True, mode_coverage=m["mode_coverage"], loglik=m["teacher_loglik"],
                loglik_median=float(np.median(logp)),
                near_mode=mixture_eval.near_mode_fraction(teacher, x[:num_ref], 3.0),
                energy_distance=m["energy_distance"])


def teacher_reference(teacher, num: int) -> Dict[str, float]:
    """The metrics of the teacher's own samples (independent of the reference draw)."""
    x = np.asarray(teacher.sample(jax.random.PRNGKey(EVAL_SEED + 1), num))
    return evaluate(teacher, x, num)


def distill(config: ml_collections.ConfigDict, num_eval: int = 4000, log_every: int = 0,
            log=print) -> Dict[str, Any]:
    """Runs config.num_steps compiled train steps from scratch; returns metrics, samples and timings.

    Keys: the `evaluate` metrics of the EMA generator (and 'raw_*' of the raw generator), 'steps',
    'wall_s' (the steps, compile excluded), 'compile_s', 'skipped_gen', 'skipped_fake', 'samples'
    (EMA samples [num_eval, 2]), 'reference' (teacher samples), 'teacher' (the mixture) and 'history'
    (metrics of the EMA generator every `log_every` steps, if > 0).
    """
    run = setup(config)
    teacher, nets, teacher_rep = run.teacher.params, run.nets, run.teacher_params
    state, compiled, compile_s = run.state, run.compiled, run.compile_seconds
    history = []
    t0 = time.perf_counter()
    wall = 0.0
    for s in range(config.num_steps):
        state, _ = compiled(state, teacher_rep)
        done = s + 1
        if log_every and (done % log_every == 0) and done < config.num_steps:
            jax.block_until_ready(state.step)
            wall += time.perf_counter() - t0
            x = generate_samples(nets, state.ema_params, num_eval, seed=LATENT_SEED)
            m = evaluate(teacher, x, num_eval)
            history.append(dict(step=done, **m))
            log(f"  step {done}: " + ", ".join(f"{k} {v:.3g}" for k, v in m.items() if k != "finite"))
            t0 = time.perf_counter()
    jax.block_until_ready(state)
    wall += time.perf_counter() - t0

    x = generate_samples(nets, state.ema_params, num_eval, seed=LATENT_SEED)
    x_raw = generate_samples(nets, state.gen_params, num_eval, seed=LATENT_SEED)
    out = evaluate(teacher, x, num_eval)
    out.update({f"raw_{k}": v for k, v in evaluate(teacher, x_raw, num_eval).items()})
    out.update(steps=int(state.step), wall_s=wall, compile_s=compile_s, skipped_gen=int(state.skipped_gen),
               skipped_fake=int(state.skipped_fake), history=history, samples=x, teacher=teacher,
               reference=np.asarray(teacher.sample(jax.random.PRNGKey(EVAL_SEED), num_eval)))
    if history:
        out["history"].append(dict(step=out["steps"], **{k: out[k] for k in history[0] if k != "step"}))
    return out


# ----------------------------------------------------------------------------------------------
# Pictures (PIL only: matplotlib is not a dependency).


def _scatter_image(points, reference, extent: float, size: int, title: str) -> Image.Image:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.png")
        scatter_png(path, np.asarray(points), reference, extent=extent, size=size, title=title)
        return Image.open(path).copy()


def figure_grid(path: str, panels: Sequence[Sequence[Optional[Image.Image]]], row_labels: Sequence[str],
                col_labels: Sequence[str], title: str = "") -> None:
    """Pastes equally sized panels into a labelled grid (rows x columns)."""
    first = next(p for row in panels for p in row if p is not None)
    w, h = first.size
    left, top = 60, 36 if title else 20
    img = Image.new("RGB", (left + len(col_labels) * (w + 4), top + len(row_labels) * (h + 4)), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((left, 4), title, fill=(0, 0, 0))
    for j, label in enumerate(col_labels):
        draw.text((left + j * (w + 4) + 4, top - 14), label, fill=(0, 0, 0))
    for i, label in enumerate(row_labels):
        draw.text((4, top + i * (h + 4) + h // 2), label, fill=(0, 0, 0))
        for j, panel in enumerate(panels[i]):
            if panel is not None:
                img.paste(panel, (left + j * (w + 4), top + i * (h + 4)))
    img.save(path)


# ----------------------------------------------------------------------------------------------
# Tables.


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if len(v) == 0:
        return "nan"
    if len(values) == 1:
        return f"{v[0]:.{digits}g}"
    return f"{v.mean():.{digits}g} ± {v.std():.2g}" + ("" if len(v) == len(values) else f" ({len(v)}/{len(values)})")


def table(rows: Sequence[Dict[str, Any]]) -> str:
    """Markdown table; each row: teacher, method, runs (list of distill outputs) or ref (metrics)."""
    lines = ["| teacher | method | mode coverage | mean teacher log-lik | median log-lik | within 3 std of a mode "
             "| energy distance | raw gen. log-lik | steps | seeds | wall s (per run) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        runs = row.get("runs") or [row["ref"]]
        col = lambda k: _fmt([r[k] for r in runs])
        if "ref" in row:
            lines.append(f"| {row['teacher']} | teacher samples (reference) | {col('mode_coverage')} | {col('loglik')} "
                         f"| {col('loglik_median')} | {col('near_mode')} | {col('energy_distance')} | – | – | – | – |")
            continue
        lines.append(f"| {row['teacher']} | {METHOD_NAMES.get(row['method'], row['method'])} | {col('mode_coverage')} "
                     f"| {col('loglik')} | {col('loglik_median')} | {col('near_mode')} | {col('energy_distance')} "
                     f"| {col('raw_loglik')} | {runs[0]['steps']} | {len(runs)} "
                     f"| {np.mean([r['wall_s'] for r in runs]):.1f} |")
    return "\n".join(lines)


def run_all(teachers: Sequence[str], methods: Sequence[str], steps: Optional[int], seeds: Sequence[int],
            out: str, num_eval: int = 4000, overrides: Optional[Dict[str, Any]] = None,
            log=print) -> Dict[str, Any]:
    """The whole experiment: runs, table (returned and written), figure grid and per-run PNGs."""
    os.makedirs(out, exist_ok=True)
    rows, panels, per_run = [], [], {}
    t_all = time.perf_counter()
    for teacher in teachers:
        base = make_config(teacher, methods[0], steps, 0, overrides)
        mix = mixtures.from_config(base.teacher)
        extent = float(np.abs(np.asarray(mix.means)).max() + 1.0)
        ref = teacher_reference(mix, num_eval)
        rows.append(dict(teacher=teacher, ref=ref))
        ref_samples = np.asarray(mix.sample(jax.random.PRNGKey(EVAL_SEED), num_eval))
        row_panels = [_scatter_image(ref_samples, None, extent, 300, f"{teacher}: teacher samples")]
        for method in methods:
            runs = []
            for seed in seeds:
                config = make_config(teacher, method, steps, seed, overrides)
                log(f"{teacher} {method} seed {seed}: {config.num_steps} steps ...")
                r = distill(config, num_eval, log=log)
                log(f"  {r['wall_s']:.1f} s (+{r['compile_s']:.1f} s compile): coverage {r['mode_coverage']:.3f}, "
                    f"log-lik {r['loglik']:.3g}, energy distance {r['energy_distance']:.3g}")
                runs.append(r)
            rows.append(dict(teacher=teacher, method=method, runs=runs))
            r = runs[0]
            title = f"{teacher} {method} seed {seeds[0]}: cov {r['mode_coverage']:.2f} ll {r['loglik']:.3g}"
            scatter_png(os.path.join(out, f"toy_distill_{teacher}_{method}.png"), r["samples"], r["reference"],
                        extent=extent, title=title)
            row_panels.append(_scatter_image(r["samples"], r["reference"], extent, 300, title))
            per_run[f"{teacher}/{method}"] = [
                {k: v for k, v in x.items() if k not in ("samples", "reference", "teacher")} for x in runs]
        panels.append(row_panels)
    md = table(rows)
    total = time.perf_counter() - t_all
    header = (f"# Toy distillation: exact teachers, EMA generator\n\n"
              f"Command: `python experiments/toy_distill.py {' '.join(sys.argv[1:])}`\n\n"
              f"jax {jax.__version__} on {jax.devices()[0].device_kind}; {num_eval} generated samples per run "
              f"(fixed latents), {num_eval} teacher samples for the energy distance; metrics of the EMA "
              f"generator except 'raw gen. log-lik' (the generator's current parameters). Mean ± std over seeds. "
              f"Total wall time {total:.0f} s.\n\n")
    with open(os.path.join(out, "toy_distill.md"), "w") as f:
        f.write(header + md + "\n")
    with open(os.path.join(out, "toy_distill.json"), "w") as f:
        json.dump(per_run, f, indent=1, default=float)
    figure_grid(os.path.join(out, "toy_distill.png"), panels, teachers,
                ["teacher"] + [METHOD_NAMES.get(m, m) for m in methods],
                title="blue: EMA generator samples, grey: teacher samples")
    return dict(table=md, rows=rows, wall_s=total)


# The ring log-likelihood investigation: SIM on the ring, one knob at a time from the paper's sigma.
PAPER_SIGMA = {"sigma_gen": {"kind": "sim"}}
LOG_UNIFORM = {"kind": "log_uniform", "sigma_min": 0.002, "sigma_max": 80.0}
ABLATION = [
    ("paper σ_gen ln σ ~ N(-3.5, 2.5²) (former default)", None, {}),
    ("paper σ_gen, 10000 steps", 10000, {}),
    ("paper σ_gen, fake_steps 2", None, {"fake_steps": 2}),
    ("paper σ_gen, fake_steps 5", None, {"fake_steps": 5}),
    ("paper σ_gen, generator lr 1e-4", None, {"gen_optim.lr": 1e-4}),
    ("paper σ_gen, generator lr 3e-4", None, {"gen_optim.lr": 3e-4}),
    ("paper σ_gen, generator lr 3e-3", None, {"gen_optim.lr": 3e-3}),
    ("paper σ_gen, fake lr 3e-3", None, {"fake_optim.lr": 3e-3}),
    ("paper σ_gen, both MLPs 256 wide x 4 deep", None, {"networks.hidden": 256, "networks.depth": 4}),
    ("paper σ_gen, fake σ log-uniform [0.002, 80]", None, {"sigma_fake": LOG_UNIFORM}),
    ("paper σ_gen, pseudo-Huber c 1.0", None, {"distance.c": 1.0}),
    ("paper σ_gen, pseudo-Huber c 0.01", None, {"distance.c": 0.01}),
    ("EDM σ_gen ln σ ~ N(-1.2, 1.2²) (new default)", None, {"sigma_gen": {"kind": "edm"}}),
    ("EDM σ_gen, generator lr 2e-3", None, {"sigma_gen": {"kind": "edm"}, "gen_optim.lr": 2e-3}),
    ("EDM σ_gen, 10000 steps", 10000, {"sigma_gen": {"kind": "edm"}}),
]


def ablation(seeds: Sequence[int], out: str, steps: int = 3000, num_eval: int = 4000, log=print) -> str:
    """SIM on the ring, one change at a time; writes <out>/toy_ring_sim_loglik.md and returns the table."""
    ref = teacher_reference(mixtures.from_config(make_config("ring", "sim").teacher), num_eval)
    lines = ["| variant | steps | mode coverage | mean teacher log-lik | median log-lik | within 3 std of a mode "
             "| energy distance | wall s (per run) |", "|---|---|---|---|---|---|---|---|",
             f"| teacher samples (reference) | – | {_fmt([ref['mode_coverage']])} | {_fmt([ref['loglik']])} "
             f"| {_fmt([ref['loglik_median']])} | {_fmt([ref['near_mode']])} | {_fmt([ref['energy_distance']])} | – |"]
    t_all = time.perf_counter()
    for name, n, overrides in ABLATION:
        runs = []
        for seed in seeds:
            config = make_config("ring", "sim", n or steps, seed, {**PAPER_SIGMA, **overrides})
            runs.append(distill(config, num_eval, log=log))
        col = lambda k: _fmt([r[k] for r in runs])
        line = (f"| {name} | {runs[0]['steps']} | {col('mode_coverage')} | {col('loglik')} | {col('loglik_median')} "
                f"| {col('near_mode')} | {col('energy_distance')} | {np.mean([r['wall_s'] for r in runs]):.1f} |")
        log(line)
        lines.append(line)
    md = "\n".join(lines)
    with open(os.path.join(out, "toy_ring_sim_loglik.md"), "w") as f:
        f.write("# SIM on the 8-Gaussian ring: what moves the teacher log-likelihood\n\n"
                f"Command: `python experiments/toy_distill.py --ablation --seeds {','.join(map(str, seeds))}`\n\n"
                f"configs/toy_ring.py:sim with one change at a time; EMA generator, {num_eval} samples; mean ± std "
                f"over seeds {list(seeds)}. "
                f"Total wall time {time.perf_counter() - t_all:.0f} s (2 shared CPU cores).\n\n"
                + md + "\n")
    return md


def _parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        out[key] = value
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teachers", default="ring,grid")
    parser.add_argument("--methods", default="di,sim,sid,dmd")
    parser.add_argument("--steps", type=int, default=None, help="default: the config's num_steps")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--num-eval", type=int, default=4000)
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. fake_steps=2 gen_optim.lr=3e-4 (values parsed as JSON)")
    parser.add_argument("--ablation", action="store_true",
                        help="instead: the SIM ring log-likelihood investigation (writes toy_ring_sim_loglik.md)")
    args = parser.parse_args()
    if args.ablation:
        os.makedirs(args.out, exist_ok=True)
        print(ablation([int(s) for s in args.seeds.split(",")], args.out, args.steps or 3000, args.num_eval))
        return
    result = run_all(args.teachers.split(","), args.methods.split(","), args.steps,
                     [int(s) for s in args.seeds.split(",")], args.out, args.num_eval, _parse_overrides(args.set))
    print()
    print(result["table"])
    print(f"\nwrote {args.out}/toy_distill.md, toy_distill.png; total {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
