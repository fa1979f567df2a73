"""Checks that the JAX step does not recompute the generator forward (PERF.md, "fusion").

    python experiments/fusion_check.py

Counts convolutions in the optimised HLO of one network forward and of the whole compiled step (tiny
config, batch 2): a DI step without recomputation needs 8 forward-equivalents of convolutions (gen fwd
1 + gen bwd 2 + fake fwd 1 + fake bwd 2 + fake and teacher fwd 2), SIM 10 (+ input-gradient backward
through fake and teacher); config.remat="generator" must add exactly one generator forward.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repo root

import jax  # noqa: E402
import numpy as np  # noqa: E402

from di_jax.bench import network_config, random_params  # noqa: E402
from di_jax.bench.jax_cell import bench_config  # noqa: E402
from di_jax.bench.measure import cost_flops  # noqa: E402
from di_jax.nets import build_network  # noqa: E402
from di_jax.teachers.edm import edm_teacher  # noqa: E402
from di_jax.train import sharding  # noqa: E402
from di_jax.train.setup import setup  # noqa: E402

NAME, BATCH = "tiny", 2


def convolutions(compiled) -> int:
    return len(re.findall(r"= [^ ]+ convolution\(", compiled.as_text()))


def main():
    cfg = network_config(NAME)
    module = build_network(cfg)
    r, ch, ld = cfg["img_resolution"], cfg["img_channels"], cfg["label_dim"]
    x, s = np.zeros((BATCH, ch, r, r), np.float32), np.ones((BATCH,), np.float32)
    labels = np.zeros((BATCH, ld), np.float32)
    params = random_params(module, cfg)
    fwd = jax.jit(lambda p: module.apply({"params": p}, x, s, class_labels=labels)).lower(params).compile()
    one = cost_flops(fwd)
    print("one forward: flops", one, "convolutions", convolutions(fwd))
    mesh = sharding.make_mesh(1)
    for method in ("di", "sim"):
        for remat in ("none", "generator"):
            config = bench_config(NAME, method, BATCH, "fp32", remat)
            step = setup(config, teacher=edm_teacher(module, params), mesh=mesh).compiled
            f = cost_flops(step)
            print(method, "remat", remat, "step flops", f, "ratio to one forward %.2f" % (f / one),
                  "convolutions", convolutions(step), "(%.2f x forward)" % (convolutions(step) / convolutions(fwd)))


if __name__ == "__main__":
    main()
