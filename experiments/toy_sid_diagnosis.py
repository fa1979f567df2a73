"""Why SiD (alpha = 1.2, official noise levels) diverges on the ring even at generator lr 1e-4.

    python experiments/toy_sid_diagnosis.py            # 10 variants x seeds 0,1,2, 2,000 steps, lr 1e-4

Each row is di_jax/configs/toy_ring.py:sid with generator lr 1e-4 (where toy_lr_sweep.py found SiD
diverging) and one change, trained from scratch by the library's compiled step
(`toy_distill.distill`) and evaluated on the EMA generator against the exact teacher. The changes
test the candidate causes one at a time:
  - alpha (1.0 = the SiD paper's AFHQ setting, 1.1): the (1 - alpha)||D_t - D_f||^2 term;
  - the noise levels: EDM's ln sigma ~ N(-1.2, 1.2^2) instead of SiD's sigma = karras(1 - t), t ~ U[0, 0.8);
    SiD's with t_max 0.5 (sigma <= 2.5) or with sigma_min 0.05 (no sigma below the modes' std);
  - the per-sample normaliser sg(max(mean|x0 - D_t|, floor)) with floor 0.05 or 1.0 instead of 1e-5
    (set through the module constant `losses._NORMALISER_MIN`, read when the step is traced);
  - the fake score: 5 fake updates per generator update, or the fake score trained on SiD's noise
    levels instead of EDM's.
Writes `<out>/toy_sid_diagnosis.md` (mean ± std over seeds, runs with coverage < 7/8) and `.json`.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))                    # experiments/

import jax  # noqa: E402
import toy_distill  # noqa: E402

from di_jax import losses  # noqa: E402

SID = {"sigma_gen.kind": "sid", "sigma_gen.t_max": 0.8}
VARIANTS = [   # (name, config overrides, normaliser floor)
    ("official (alpha 1.2, SiD sigma)", {}, None),
    ("alpha 1.0", {"sid_alpha": 1.0}, None),
    ("alpha 1.1", {"sid_alpha": 1.1}, None),
    ("EDM sigma", {"sigma_gen.kind": "edm"}, None),
    ("SiD sigma, t_max 0.5 (sigma <= 2.5)", {**SID, "sigma_gen.t_max": 0.5}, None),
    ("SiD sigma, sigma_min 0.05", {**SID, "sigma_gen.sigma_min": 0.05}, None),
    ("normaliser floor 0.05", {}, 0.05),
    ("normaliser floor 1.0", {}, 1.0),
    ("5 fake updates per step", {"fake_steps": 5}, None),
    ("fake score on SiD sigma", {"sigma_fake.kind": "sid", "sigma_fake.t_max": 0.8}, None),
]
KEYS = ("mode_coverage", "loglik", "near_mode", "energy_distance")


def _ms(values):
    return f"{statistics.mean(values):.3g} ± {statistics.pstdev(values):.2g}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--num-eval", type=int, default=2000)
    p.add_argument("--out", default=toy_distill.RESULTS)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    runs, t0, default_floor = [], time.time(), losses._NORMALISER_MIN
    for name, overrides, floor in VARIANTS:
        losses._NORMALISER_MIN = default_floor if floor is None else floor
        for seed in seeds:
            config = toy_distill.make_config("ring", "sid", args.steps, seed, {**overrides, "gen_optim.lr": args.lr})
            r = toy_distill.distill(config, args.num_eval, log=lambda *a: None)
            runs.append(dict(variant=name, seed=seed, **{k: float(r[k]) for k in KEYS}))
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {r[k]:.3g}" for k in KEYS), flush=True)
    losses._NORMALISER_MIN = default_floor
    wall = time.time() - t0
    lines = [f"# SiD on the ring at generator lr {args.lr:g}: which change stops the divergence", "",
             f"Command: `python experiments/toy_sid_diagnosis.py`; {args.steps} steps, seeds {seeds}, EMA generator, "
             f"{args.num_eval} samples; jax {jax.__version__} on {jax.devices()[0].platform}; {wall:.0f} s.", "",
             "| variant | mode coverage | teacher log-lik | within 3 std of a mode | energy distance "
             "| coverage < 7/8 |",
             "|---|---|---|---|---|---|"]
    for name, _, _ in VARIANTS:
        rs = [r for r in runs if r["variant"] == name]
        bad = sum(r["mode_coverage"] < 7 / 8 for r in rs)
        lines.append(f"| {name} | " + " | ".join(_ms([r[k] for r in rs]) for k in KEYS) + f" | {bad}/{len(rs)} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "toy_sid_diagnosis.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "toy_sid_diagnosis.json"), "w") as f:
        json.dump(dict(lr=args.lr, steps=args.steps, seeds=seeds, wall_s=wall, runs=runs), f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
