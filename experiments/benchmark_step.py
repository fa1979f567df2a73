"""Step-throughput benchmark: a thin wrapper around `di-jax bench` (di_jax/bench/).

    python experiments/benchmark_step.py --config cifar10-ddpmpp --method di,sim --batch 2 \
        --torch eager,compile --json experiments/results/bench_cpu_cifar10.json

All options: `python experiments/benchmark_step.py --help`; the numbers and how they were taken are
in experiments/PERF.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from di_jax import bench  # noqa: E402

if __name__ == "__main__":
    sys.exit(bench.main(["benchmark_step.py"] + sys.argv[1:]))
