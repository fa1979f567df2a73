"""Time checkpoint conversion for the full-size CIFAR-10 DDPM++ cond VP config (~55.7M params).

Random weights shaped like the official `edm-cifar10-32x32-cond-vp.pkl`: the Flax parameter
shapes come from `jax.eval_shape` of the network, the official state_dict from the mapping table
(`flax_to_state_dict`). The state_dict is written as a torch.save `.pt`, a `.safetensors` and an
EDM-style `.pkl` (persistence records + legacy storage blobs, see tests/convert_writers.py);
each is then read, mapped to Flax and written with orbax. Needs torch for writing the inputs.

    python experiments/convert_timing.py [--repeats 3]
"""

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from di_jax import convert  # noqa: E402
from di_jax.convert import catalogue  # noqa: E402
from di_jax.convert import config as config_lib  # noqa: E402

try:
    from di_jax.convert.edm_mapping import flax_to_state_dict, state_dict_to_flax  # noqa: E402
    MAPPING = True
except ImportError:  # networks not available yet: time the readers only
    MAPPING = False

CIFAR_COND_VP = dict(precond="VPPrecond", model_type="SongUNet", img_resolution=32, img_channels=3,
                     label_dim=10, augment_dim=9, model_channels=128, channel_mult=[2, 2, 2], num_blocks=4,
                     attn_resolutions=[16], dropout=0.13, embedding_type="positional", channel_mult_noise=1,
                     encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])
OFFICIAL_PARAMS = 55_735_299  # spec edm_architecture.md section 6 (parameters, buffers excluded)


def random_state_dict(config):
    """Random float32 tensors with the official keys/shapes (from the catalogue, section 5).

    When the Flax networks and mapping table are available, the shapes are also derived the other
    way, `flax_to_state_dict(jax.eval_shape(init))`, and must agree.
    """
    shapes = catalogue.expected_shapes(config)
    rng = np.random.default_rng(0)
    taps = np.asarray(config["resample_filter"], np.float32)
    sd = collections.OrderedDict(
        (k, (np.outer(taps, taps) / taps.sum() ** 2).reshape(s) if k.endswith("resample_filter")
         else (0.02 * rng.standard_normal(s)).astype(np.float32)) for k, s in shapes.items())
    if MAPPING:
        from di_jax.nets import build_network  # pylint: disable=import-outside-toplevel

        module = build_network(config)
        r, c = config["img_resolution"], config["img_channels"]
        x, sigma = jax.ShapeDtypeStruct((1, c, r, r), np.float32), jax.ShapeDtypeStruct((1,), np.float32)
        labels = jax.ShapeDtypeStruct((1, config["label_dim"]), np.float32) if config["label_dim"] else None
        init = lambda x, s, y: module.init(jax.random.key(0), x, s, class_labels=y)  # noqa: E731
        abstract = jax.eval_shape(init, x, sigma, labels)["params"]
        mapped = flax_to_state_dict(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract), config)
        assert {k: tuple(v.shape) for k, v in mapped.items()} == dict(shapes), "mapping disagrees with catalogue"
    return sd


def nest(sd):
    tree = {}
    for key, v in sd.items():
        *path, leaf = key.split(".")
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def timed(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    import safetensors.numpy  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    from convert_writers import edm_pickle_bytes  # pylint: disable=import-outside-toplevel

    cfg = config_lib.complete(CIFAR_COND_VP)
    sd = random_state_dict(cfg)
    n_params = sum(v.size for k, v in sd.items() if not catalogue.is_buffer(k))
    print(f"state_dict: {len(sd)} tensors, {n_params:,} parameters (official {OFFICIAL_PARAMS:,}), "
          f"{sum(v.nbytes for v in sd.values()) / 2**20:.1f} MiB; jax {jax.__version__}, "
          f"{os.cpu_count()} CPUs, best of {args.repeats}")
    work = tempfile.mkdtemp(prefix="convert_timing_")
    try:
        files = {"pt": os.path.join(work, "net.pt"), "safetensors": os.path.join(work, "net.safetensors"),
                 "pkl": os.path.join(work, "net.pkl")}
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, files["pt"])
        safetensors.numpy.save_file(dict(sd), files["safetensors"])
        with open(files["pkl"], "wb") as f:
            f.write(edm_pickle_bytes(sd, cfg["precond"], {k: v for k, v in cfg.items() if k != "precond"}, "",
                                     extras=False))
        override = {"precond": cfg["precond"], "dropout": cfg["dropout"]}
        rows = []
        for name, path, use_torch in (("pkl (no torch)", files["pkl"], None), ("pt (torch-free)", files["pt"], False),
                                      ("pt (torch.load)", files["pt"], True),
                                      ("safetensors", files["safetensors"], None)):
            t_read, (got, got_cfg) = timed(lambda: convert.read_checkpoint(path, override, use_torch), args.repeats)
            assert got_cfg == cfg and all(np.array_equal(got[k], v) for k, v in sd.items()), name
            if MAPPING:
                t_map, params = timed(lambda: state_dict_to_flax(got, got_cfg), args.repeats)
            else:  # no mapping table yet: the same tensors nested by key name (orbax cost is size-bound)
                t_map, params = float("nan"), nest(got)

            def write():
                out = tempfile.mkdtemp(dir=work)
                with ocp.StandardCheckpointer() as ckptr:
                    ckptr.save(os.path.join(out, "params"), params)
                    ckptr.wait_until_finished()
                return out
            t_write, _ = timed(write, args.repeats)
            if not MAPPING:
                rows.append((name, os.path.getsize(path) / 2**20, t_read, t_map, t_write))
                continue

            def full():
                out = os.path.join(tempfile.mkdtemp(dir=work), "conv")
                convert.convert_checkpoint(path, out, override, use_torch)
                return out
            t_full, out_dir = timed(full, args.repeats)
            t_load, _ = timed(lambda: convert.load_teacher(out_dir), args.repeats)
            rows.append((name, os.path.getsize(path) / 2**20, t_read, t_map, t_write, t_full, t_load))
        head = ["input", "MiB", "read (+checks)", "map", "orbax write", "convert_checkpoint", "load_teacher(dir)"]
        head = head if MAPPING else head[:3] + ["map (no mapping table)", "orbax write (tensors nested by key)"]
        print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
        for name, mib, *ts in rows:
            print(f"| {name} | {mib:.1f} | " + " | ".join(f"{t:.2f} s" if np.isfinite(t) else "n/a" for t in ts) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
