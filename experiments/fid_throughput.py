"""Throughput of FID feature extraction (InceptionV3 pool3 + logits) on the available devices.

  python experiments/fid_throughput.py [--batches 4,16] [--sizes 32,64] [--reps 3]

Weights are random (throughput does not depend on their values), laid out exactly as
`inception_convert.load_inception` would produce them. Prints a Markdown table of images/s, timed
over `--reps` calls after one warm-up (compile) call, including host transfer of the outputs.
"""

import argparse
import time

import jax
import numpy as np

from di_jax.eval import fid, inception_convert


def random_variables(seed: int = 0):
    rng = np.random.default_rng(seed)
    shapes = inception_convert.variable_shapes()
    return jax.tree.map(lambda s: (rng.standard_normal(s) * 0.05).astype(np.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="4,16")
    p.add_argument("--sizes", default="32,64")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    variables = random_variables()
    for leaf in jax.tree.leaves(variables["batch_stats"]):  # keep running_var positive
        np.abs(leaf, out=leaf)
    feature_fn = fid.make_feature_fn(variables)
    devs = jax.devices()
    print(f"devices: {len(devs)} x {devs[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}\n")
    print("| input | batch | compile+1st (s) | s/batch | images/s |")
    print("|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
            t0 = time.perf_counter()
            feature_fn(images)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(args.reps):
                feats, _ = feature_fn(images)
            dt = (time.perf_counter() - t0) / args.reps
            assert feats.shape == (batch, 2048) and np.isfinite(feats).all()
            print(f"| {size}x{size} | {batch} | {first:.1f} | {dt:.2f} | {batch / dt:.1f} |", flush=True)


if __name__ == "__main__":
    main()
