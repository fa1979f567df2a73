"""Shared loader for the EDM golden network files (tests/data/edm_golden)."""

import json
import pathlib

import numpy as np

GOLDEN_DIR = pathlib.Path(__file__).parent / "data" / "edm_golden"
CASES = ["ddpmpp_uncond_vp", "ddpmpp_cond_edm", "adm_cond_edm", "adm_multihead_iddpm"]


def load_case(name):
    """(npz, config with 'precond', state_dict in official order)."""
    d = np.load(GOLDEN_DIR / f"{name}.npz")
    cfg = dict(json.loads(str(d["config_json"])), precond=str(d["precond_class"]))
    sd = {str(k): d[f"param/{k}"] for k in d["state_dict_keys"]}
    return d, cfg, sd


def rel_err(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))
