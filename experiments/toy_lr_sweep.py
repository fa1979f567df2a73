"""The SIM paper's robustness claim on the 8-Gaussian ring: generator learning rate x seed x method.

    python experiments/toy_lr_sweep.py     # lr 1e-4..1e-1 (6 values) x seeds 0,1,2 x SIM, SIM (paper sigma), DI, SiD

Claim under test (SIM paper): SIM with the pseudo-Huber distance stays stable at a large generator
learning rate where DI and SiD do not. Each run is di_jax/configs/toy_ring.py:<method> with only
`gen_optim.lr` (and the seed) changed — the fake-score lr, batch, steps and everything else stay at
the config's values — trained from scratch with the library's compiled step
(`experiments/toy_distill.distill`) and evaluated on the EMA generator and the raw generator with the
exact teacher. 'sim_paper' is SIM with the paper's generator noise levels ln sigma ~ N(-3.5, 2.5^2)
instead of the toy default (EDM's, the same as DI's). Writes `<out>/toy_lr_sweep.md` (mean ± std over
seeds; counts of runs with non-finite samples, with skipped updates and with coverage < 7/8),
`<out>/toy_lr_sweep.json` (every run) and `<out>/toy_lr_sweep.png` (metric vs lr per method).
"""

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))                    # experiments/

import jax  # noqa: E402
import numpy as np  # noqa: E402
import toy_distill  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

RESULTS = toy_distill.RESULTS
METHODS = {"sim": ("sim", {}), "sim_paper": ("sim", {"sigma_gen": {"kind": "sim"}}),
           "di": ("di", {}), "sid": ("sid", {}), "dmd": ("dmd", {})}
LABELS = {"sim": "SIM (pseudo-Huber)", "sim_paper": "SIM, paper sigma_gen", "di": "DI", "sid": "SiD (alpha=1.2)",
          "dmd": "DMD"}
COLOURS = {"sim": (31, 90, 200), "sim_paper": (120, 170, 240), "di": (220, 80, 30), "sid": (40, 160, 60),
           "dmd": (150, 60, 170)}
C_COLOURS = ((20, 20, 90), (60, 110, 230), (150, 190, 250), (0, 170, 200), (90, 90, 90), (200, 120, 0))


PARAMETRISED = {"sim_c": ("sim", "distance.c", "SIM, c = {:g}"), "sid_a": ("sid", "sid_alpha", "SiD, alpha = {:g}")}


def _parametrised(name: str):
    """('sim_c', value) for 'sim_c0.03' etc., or None for a plain method name."""
    for prefix in PARAMETRISED:
        if name.startswith(prefix):
            try:
                return prefix, float(name[len(prefix):])
            except ValueError:
                break
    return None


def _method(name: str):
    """(method, overrides) of a sweep entry: a METHODS name, 'sim_c<c>' (SIM with pseudo-Huber c) or
    'sid_a<alpha>' (SiD with that alpha)."""
    p = _parametrised(name)
    if p:
        method, key, _ = PARAMETRISED[p[0]]
        return method, {key: p[1]}
    if name not in METHODS:
        raise SystemExit(f"toy_lr_sweep: error: unknown method {name!r}; choose from {sorted(METHODS)}, "
                         f"sim_c<c> or sid_a<alpha>")
    return METHODS[name]


def _label(name: str) -> str:
    p = _parametrised(name)
    return PARAMETRISED[p[0]][2].format(p[1]) if p else LABELS[name]


def _colour(name: str, methods: Sequence[str]):
    if _parametrised(name):
        ps = [m for m in methods if _parametrised(m)]
        return C_COLOURS[ps.index(name) % len(C_COLOURS)]
    return COLOURS[name]


METRICS = (("mode_coverage", "mode coverage"), ("loglik", "mean teacher log-lik (clipped at -200)"),
           ("near_mode", "within 3 std of a mode"), ("energy_distance", "energy distance (log)"))


def _print(line: str) -> None:
    print(line, flush=True)


def sweep(methods: Sequence[str], lrs: Sequence[float], seeds: Sequence[int], steps: int, num_eval: int,
          log=_print) -> List[Dict[str, Any]]:
    runs = []
    for name in methods:
        method, overrides = _method(name)
        for lr in lrs:
            for seed in seeds:
                config = toy_distill.make_config("ring", method, steps, seed, {**overrides, "gen_optim.lr": lr})
                r = toy_distill.distill(config, num_eval, log=log)
                keep = {k: v for k, v in r.items() if k not in ("samples", "reference", "teacher", "history")}
                runs.append(dict(method=name, lr=lr, seed=seed, **keep))
                log(f"{name} lr {lr:g} seed {seed}: coverage {r['mode_coverage']:.3f}, log-lik {r['loglik']:.3g}, "
                    f"near {r['near_mode']:.3f}, energy {r['energy_distance']:.3g}, skipped {r['skipped_gen']}, "
                    f"{r['wall_s']:.1f} s")
    return runs


def _ms(values) -> str:
    v = np.asarray(values, np.float64)
    ok = v[np.isfinite(v)]
    if len(ok) == 0:
        return "nan"
    s = f"{ok.mean():.3g} ± {ok.std():.2g}"
    return s if len(ok) == len(v) else s + f" ({len(ok)} finite)"


def table(runs: Sequence[Dict[str, Any]], methods: Sequence[str], lrs: Sequence[float]) -> str:
    lines = ["| method | generator lr | mode coverage | mean teacher log-lik | within 3 std of a mode "
             "| energy distance | raw gen. log-lik | non-finite runs | runs with skipped updates "
             "| runs with coverage < 7/8 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in methods:
        for lr in lrs:
            rs = [r for r in runs if r["method"] == name and r["lr"] == lr]
            n = len(rs)
            nonfinite = sum(not (r["finite"] and r["raw_finite"]) for r in rs)
            skipped = sum(r["skipped_gen"] > 0 for r in rs)
            low = sum(not (r["mode_coverage"] >= 7 / 8) for r in rs)
            col = lambda k: _ms([r[k] for r in rs])
            lines.append(f"| {_label(name)} | {lr:g} | {col('mode_coverage')} | {col('loglik')} | {col('near_mode')} "
                         f"| {col('energy_distance')} | {col('raw_loglik')} "
                         f"| {nonfinite}/{n} | {skipped}/{n} | {low}/{n} |")
    return "\n".join(lines)


def _transform(key: str, v: np.ndarray) -> np.ndarray:
    if key == "energy_distance":
        return np.log10(np.maximum(v, 1e-6))
    return np.maximum(v, -200.0) if key == "loglik" else v


def plot(path: str, runs: Sequence[Dict[str, Any]], methods: Sequence[str], lrs: Sequence[float]) -> None:
    """One panel per metric: mean over seeds vs log10 lr, one line per method, seed values as dots (PIL)."""
    pw, ph, ml, mt, mb = 330, 260, 52, 28, 36
    img = Image.new("RGB", (len(METRICS) * pw + 10, ph + 40), "white")
    draw = ImageDraw.Draw(img)
    lx = np.log10(np.asarray(lrs, np.float64))
    x_lo, x_hi = lx.min() - 0.3, lx.max() + 0.3
    for p, (key, title) in enumerate(METRICS):
        ox = p * pw
        vals = np.asarray([r[key] for r in runs], np.float64)
        vals = vals[np.isfinite(vals)]
        vals = _transform(key, vals)
        lo, hi = (vals.min(), vals.max()) if len(vals) else (0.0, 1.0)
        if key == "mode_coverage":
            lo, hi = 0.0, 1.0
        pad = 0.05 * (hi - lo or 1.0)
        lo, hi = lo - pad, hi + pad
        tx = lambda v: ox + ml + (v - x_lo) / (x_hi - x_lo) * (pw - ml - 12)
        ty = lambda v: mt + (hi - v) / (hi - lo) * (ph - mt - mb)
        draw.rectangle([tx(x_lo), ty(hi), tx(x_hi), ty(lo)], outline=(160, 160, 160))
        draw.text((ox + ml, 6), title, fill=(0, 0, 0))
        for t in np.linspace(lo, hi, 5):
            label = f"{10 ** t:.2g}" if key == "energy_distance" else f"{t:.3g}"
            draw.text((ox + 2, ty(t) - 5), label, fill=(90, 90, 90))
        for v, lr in zip(lx, lrs):
            draw.text((tx(v) - 12, ph - mb + 8), f"{lr:g}", fill=(90, 90, 90))
        draw.text((ox + ml + 80, ph - mb + 22), "generator lr", fill=(0, 0, 0))
        for name in methods:
            colour = _colour(name, methods)
            pts = []
            for v, lr in zip(lx, lrs):
                seeds = np.asarray([r[key] for r in runs if r["method"] == name and r["lr"] == lr], np.float64)
                seeds = seeds[np.isfinite(seeds)]
                seeds = _transform(key, seeds)
                for s in seeds:
                    draw.ellipse([tx(v) - 2, ty(s) - 2, tx(v) + 2, ty(s) + 2], fill=colour)
                if len(seeds):
                    pts.append((tx(v), ty(seeds.mean())))
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
    for i, name in enumerate(methods):
        draw.rectangle([10 + i * 190, ph + 18, 22 + i * 190, ph + 30], fill=_colour(name, methods))
        draw.text((26 + i * 190, ph + 18), _label(name), fill=(0, 0, 0))
    img.save(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="sim,sim_paper,di,sid",
                        help=f"from {sorted(METHODS)}, sim_c<c> (SIM with pseudo-Huber c, e.g. sim_c0.03) "
                             "or sid_a<alpha> (SiD with that alpha, e.g. sid_a1)")
    parser.add_argument("--name", default="toy_lr_sweep", help="output file stem under --out")
    parser.add_argument("--lrs", default="1e-4,1e-3,3e-3,1e-2,3e-2,1e-1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--num-eval", type=int, default=2000)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    methods = args.methods.split(",")
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    runs = sweep(methods, lrs, seeds, args.steps, args.num_eval)
    total = time.perf_counter() - t0
    md = table(runs, methods, lrs)
    with open(os.path.join(args.out, args.name + ".md"), "w") as f:
        f.write(f"# Generator learning-rate sweep on the 8-Gaussian ring\n\n"
                f"Command: `python experiments/toy_lr_sweep.py {' '.join(sys.argv[1:])}`\n\n"
                f"di_jax/configs/toy_ring.py:<method> with gen_optim.lr changed "
                f"(Adam b1=0, b2=0.999; fake lr 1e-3 fixed), "
                f"{args.steps} steps, seeds {seeds}; EMA generator metrics ({args.num_eval} samples) as mean ± std "
                f"over seeds, except 'raw gen. log-lik' (the generator's current parameters). "
                f"jax {jax.__version__} on {jax.devices()[0].device_kind}; total wall time {total:.0f} s.\n\n"
                + md + "\n")
    with open(os.path.join(args.out, args.name + ".json"), "w") as f:
        json.dump(runs, f, indent=1, default=float)
    plot(os.path.join(args.out, args.name + ".png"), runs, methods, lrs)
    print()
    print(md)
    print(f"\nwrote {args.out}/{args.name}.md, .json, .png; total {total:.0f} s")


if __name__ == "__main__":
    main()
