"""Throughput of the compiled toy train step on 1 vs N (simulated) devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/toy_step_throughput.py

Prints a markdown table: method, devices, global batch, compile time, steps/s (median of 5 timed
blocks of 200 steps after warm-up). On a CPU the simulated devices share the same cores, so more
devices measure sharding overhead, not speed-up; and every step is waited for there (XLA's
in-process CPU collectives can deadlock with several multi-device steps in flight).
"""

import argparse
import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from di_jax.configs import toy_ring  # noqa: E402
from di_jax.train import sharding  # noqa: E402
from di_jax.train.setup import setup  # noqa: E402


def measure(method: str, devices: int, batch: int, blocks: int = 5, block_steps: int = 200):
    config = toy_ring.get_config(method)
    config.batch_size = batch
    run = setup(config, mesh=sharding.make_mesh(devices))
    state, teacher, compiled, compile_s = run.state, run.teacher_params, run.compiled, run.compile_seconds
    sync = devices > 1 and jax.default_backend() == "cpu"

    def run(n, state):
        for _ in range(n):
            state, _ = compiled(state, teacher)
            if sync:
                jax.block_until_ready(state.step)
        return jax.block_until_ready(state)

    state = run(50, state)
    rates = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        state = run(block_steps, state)
        rates.append(block_steps / (time.perf_counter() - t0))
    return compile_s, float(np.median(rates))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="sim,di")
    parser.add_argument("--devices", default=f"1,{jax.device_count()}")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind} ({jax.device_count()} visible), jax {jax.__version__}\n")
    print("| method | devices | global batch | compile s | steps/s |")
    print("|---|---|---|---|---|")
    for method in args.methods.split(","):
        for n in map(int, args.devices.split(",")):
            compile_s, rate = measure(method, n, args.batch)
            print(f"| {method} | {n} | {args.batch} | {compile_s:.2f} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
