"""Where one network's time goes: forward and forward+backward, JAX vs the PyTorch port, per kernel class.

    python experiments/profile_network.py --config cifar10-ddpmpp --batch 2

Times the jitted forward and the gradient w.r.t. the parameters of one EDM network (random weights,
float32) as the median of --repeats calls, then profiles three gradient calls: JAX with
`jax.profiler` (perfetto trace, kernels grouped by name without their numeric suffix) and the PyTorch
port (`di_jax.bench.torch_reference`) with `torch.profiler` (self time per aten op). Prints markdown
tables. experiments/PERF.md uses it to explain the CPU JAX/PyTorch ratio of the step benchmark.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repo root

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from di_jax import bench  # noqa: E402
from di_jax.bench.measure import device_name  # noqa: E402
from di_jax.nets import build_network  # noqa: E402


def _median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def profile_jax(cfg, batch, repeats, top):
    module = build_network(cfg)
    res, ch, ld = cfg["img_resolution"], cfg["img_channels"], cfg.get("label_dim", 0)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, ch, res, res))
    sigma = jnp.ones((batch,))
    labels = jnp.zeros((batch, ld)) if ld else None
    params = bench.random_params(module, cfg)
    apply = lambda p: module.apply({"params": p}, x, sigma, class_labels=labels)
    fwd = jax.jit(apply).lower(params).compile()
    grad = jax.jit(jax.grad(lambda p: jnp.sum(apply(p) ** 2))).lower(params).compile()
    times = {"forward": _median_ms(lambda: jax.block_until_ready(fwd(params)), repeats),
             "forward + backward": _median_ms(lambda: jax.block_until_ready(grad(params)), repeats)}
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(3):
                jax.block_until_ready(grad(params))
        trace = json.load(gzip.open(glob.glob(os.path.join(d, "**", "*perfetto_trace.json.gz"), recursive=True)[0]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    kernels = collections.Counter()
    for e in events:
        name = e.get("name", "")
        wrapper = name.startswith(("ThunkExecutor", "$", "Slinky", "Pjit", "CommonPjRt", "end: "))
        if e.get("ph") != "X" or "dur" not in e or wrapper:
            continue
        kernels[re.sub(r"[._]\d+$", "", name)] += e["dur"] / 3e3      # us over 3 calls -> ms per call
    return times, kernels.most_common(top)


def profile_torch(cfg, batch, repeats, top):
    import torch

    from di_jax.bench.torch_reference.networks import build_network as build_torch

    net = build_torch(cfg)
    res, ch, ld = cfg["img_resolution"], cfg["img_channels"], cfg.get("label_dim", 0)
    x, sigma = torch.randn(batch, ch, res, res), torch.ones(batch)
    labels = torch.zeros(batch, ld) if ld else None

    def forward():
        with torch.no_grad():
            net(x, sigma, labels)

    def grad():
        net.zero_grad()
        (net(x, sigma, labels) ** 2).sum().backward()

    times = {"forward": _median_ms(forward, repeats), "forward + backward": _median_ms(grad, repeats)}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            grad()
    ops = sorted(((e.key, e.self_cpu_time_total / 3e3) for e in prof.key_averages()), key=lambda kv: -kv[1])
    return times, ops[:top]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="cifar10-ddpmpp", help="a di-jax bench network name")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--no-torch", action="store_true")
    args = p.parse_args(argv)
    cfg = bench.network_config(args.config)
    results = {"JAX": profile_jax(cfg, args.batch, args.repeats, args.top)}
    if not args.no_torch:
        results["PyTorch eager"] = profile_torch(cfg, args.batch, args.repeats, args.top)
    print(f"{args.config}, batch {args.batch}, float32, {device_name()}, jax {jax.__version__}\n")
    print("| one network | " + " | ".join(results) + " |\n|---|" + "---:|" * len(results))
    for k in ("forward", "forward + backward"):
        print(f"| {k} | " + " | ".join(f"{r[0][k]:.0f} ms" for r in results.values()) + " |")
    for name, (_, top) in results.items():
        print(f"\n{name}, forward + backward, top kernels (ms per call):\n\n| kernel | ms |\n|---|---:|")
        for k, ms in top:
            print(f"| `{k[:60]}` | {ms:.1f} |")


if __name__ == "__main__":
    main()
