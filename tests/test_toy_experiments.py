"""Smoke tests of the toy experiment scripts (experiments/toy_distill.py, toy_lr_sweep.py): seconds, not minutes."""

import json
import math
import os
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

import toy_distill  # noqa: E402
import toy_lr_sweep  # noqa: E402

SMALL = {"batch_size": 64, "networks.hidden": 32}


def test_toy_distill_writes_table_and_pngs(tmp_path):
    result = toy_distill.run_all(["ring"], ["sim"], steps=10, seeds=[0], out=str(tmp_path), num_eval=300,
                                 overrides=SMALL, log=lambda *a: None)
    names = set(os.listdir(tmp_path))
    assert {"toy_distill.md", "toy_distill.png", "toy_distill_ring_sim.png", "toy_distill.json"} <= names
    md = (tmp_path / "toy_distill.md").read_text()
    assert "teacher samples (reference)" in md and "SIM (pseudo-Huber)" in md
    assert result["table"] in md
    grid = Image.open(tmp_path / "toy_distill.png")
    assert grid.size[0] > grid.size[1] > 100            # one row: teacher panel + one method panel

    run = json.load(open(tmp_path / "toy_distill.json"))["ring/sim"][0]
    assert run["steps"] == 10 and run["finite"] and run["skipped_gen"] == 0
    for key in ("mode_coverage", "loglik", "loglik_median", "near_mode", "energy_distance", "wall_s"):
        assert math.isfinite(run[key]), key
    assert 0.0 <= run["mode_coverage"] <= 1.0 and 0.0 <= run["near_mode"] <= 1.0 and run["energy_distance"] >= 0


def test_distill_reports_history_and_teacher_reference():
    config = toy_distill.make_config("grid", "di", steps=6, seed=1, overrides=SMALL)
    assert config.teacher.kind == "grid" and config.seed == 1 and config.networks.hidden == 32
    r = toy_distill.distill(config, num_eval=200, log_every=3, log=lambda *a: None)
    assert [h["step"] for h in r["history"]] == [3, 6]
    assert r["samples"].shape == (200, 2) and np.all(np.isfinite(r["samples"]))
    ref = toy_distill.teacher_reference(r["teacher"], 2000)
    assert ref["mode_coverage"] == 1.0 and ref["near_mode"] > 0.97       # 2-D: P(|z| <= 3) = 0.989


def test_lr_sweep_table_and_plot(tmp_path):
    runs = toy_lr_sweep.sweep(["sim"], [1e-3, 1.0], [0], steps=4, num_eval=200, log=lambda *a: None)
    assert len(runs) == 2 and {r["lr"] for r in runs} == {1e-3, 1.0}
    md = toy_lr_sweep.table(runs, ["sim"], [1e-3, 1.0])
    assert md.count("\n") == 3 and "/1 |" in md
    toy_lr_sweep.plot(str(tmp_path / "sweep.png"), runs, ["sim"], [1e-3, 1.0])
    assert Image.open(tmp_path / "sweep.png").size[0] > 0


def test_lr_sweep_entries_name_their_overrides():
    assert toy_lr_sweep._method("sim_c0.03") == ("sim", {"distance.c": 0.03})
    assert toy_lr_sweep._method("sid_a1") == ("sid", {"sid_alpha": 1.0})
    assert toy_lr_sweep._label("sid_a1.1") == "SiD, alpha = 1.1" and toy_lr_sweep._label("di") == "DI"
    with pytest.raises(SystemExit, match="unknown method 'sid_ax'"):
        toy_lr_sweep._method("sid_ax")


def test_toy_convergence_study_and_lr_sweep_write_tables_curves_and_reuse_the_cache(tmp_path):
    import toy_convergence

    out, cache = tmp_path / "out", tmp_path / "cache"
    common = ["--steps", "20", "--eval-every", "10", "--seeds", "0", "--num-eval", "300", "--workers", "0",
              "--cache", str(cache), "--out", str(out), "--budgets", "10"]
    toy_convergence.main(common + ["--methods", "sim_l2,dmd", "--testbeds", "ring,mixture"])
    runs = json.load(open(out / "toy_convergence.json"))
    assert [(r["testbed"], r["method"]) for r in runs] == [("ring", "sim_l2"), ("ring", "dmd"),
                                                          ("mixture", "sim_l2"), ("mixture", "dmd")]
    for r in runs:
        assert [h["step"] for h in r["history"]] == [10, 20]
        last = r["history"][-1]
        assert 0 <= last["precision"] <= 1 and 0 <= last["recall"] <= 1 and 0 <= last["weight_err"] <= 1
        assert math.isfinite(last["loglik"]) and last["energy"] >= 0 and last["skipped_gen"] == 0
    md = (out / "toy_convergence.md").read_text()
    assert "**ring, 10 steps**" in md and "**mixture, 20 steps**" in md and "| SIM-L2 |" in md
    assert Image.open(out / "toy_convergence.png").size[0] > 1000
    assert Image.open(out / "toy_convergence_samples.png").size[0] > 400
    cached = sorted(os.listdir(cache))
    assert len(cached) == 4 and cached[0].endswith("_n20_e10.json")

    mtimes = {n: os.path.getmtime(cache / n) for n in cached}
    toy_convergence.main(common + ["--methods", "sim_l2,dmd", "--testbeds", "ring,mixture"])   # all from the cache
    assert {n: os.path.getmtime(cache / n) for n in cached} == mtimes
    assert json.load(open(out / "toy_convergence.json")) == runs

    toy_convergence.main(common + ["--methods", "di", "--lr-sweep", "--lrs", "1e-3,0.1", "--name", "lr"])
    lr_md = (out / "lr.md").read_text()
    assert "| DI |" in lr_md and "lr 0.001" in lr_md and "lr 0.1" in lr_md
    assert {r["lr"] for r in json.load(open(out / "lr.json"))} == {1e-3, 0.1}


def test_toy_convergence_refuses_unknown_names():
    import toy_convergence

    with pytest.raises(SystemExit):
        toy_convergence.main(["--methods", "gan"])
    with pytest.raises(SystemExit):
        toy_convergence.main(["--testbeds", "spiral"])
