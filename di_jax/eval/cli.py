"""`di-jax fid`: FID / Inception Score of generated images, or reference statistics from tfds.

  di-jax fid --generator IMAGES --ref STATS.npz [--num 50000] --inception pt_inception-2015-12-05.pth
  di-jax fid --ref-from-tfds cifar10 --out STATS.npz [--tfds-data-dir DIR] --inception ...

IMAGES is a run directory (the --workdir of `di-jax distill`: its EMA generator, or the raw one with
`--raw`, of the latest or `--step` checkpoint draws seeds 0..num-1 with uniformly random classes, as
`di-jax sample RUN --seeds 0-{num-1} --classes random` does), a directory of PNG files (sorted by
name, converted to RGB) or an `.npz` whose `images` or `samples` array (or only array) is uint8 in
[0, 255] or float in [-1, 1], NHWC or NCHW (`di-jax sample --npz` writes one). From Python use
`di_jax.eval.fid.compute_fid(sample_fn, num, ref_stats, ...)`.
The Inception weights are pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (or the same keys as
.safetensors/.npz), given by `--inception` or the DI_JAX_INCEPTION environment variable.
Prints one JSON line `{"fid", "is_mean", "is_std", "num"}`. User errors: one line on stderr, exit 2.
"""

import argparse
import json
import os
import sys
from typing import Iterator, Optional

import numpy as np

from di_jax.eval import fid, inception_convert
from di_jax.train.run_dir import RunDirError

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise fid.FidError(message)


def _parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="FID / Inception Score with the TF 2015-12-05 Inception detector.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--generator", help="run directory, directory of PNGs or .npz of images (see module doc)")
    src.add_argument("--ref-from-tfds", metavar="NAME", help="build reference stats of a tfds dataset")
    p.add_argument("--ref", help="reference statistics .npz (EDM format: mu, sigma)")
    p.add_argument("--out", help="output .npz for --ref-from-tfds")
    p.add_argument("--num", type=int, help="number of images (default 50000; tfds: whole split)")
    p.add_argument("--split", default="train", help="tfds split (default train)")
    p.add_argument("--tfds-data-dir", help="tfds data_dir holding the prepared dataset")
    p.add_argument("--inception", default=os.environ.get("DI_JAX_INCEPTION"),
                   help="Inception weights (.pth/.safetensors/.npz); default $DI_JAX_INCEPTION")
    p.add_argument("--batch", type=int, default=250, help="images per detector call (default 250)")
    p.add_argument("--splits", type=int, default=10, help="Inception Score splits (0: skip IS)")
    p.add_argument("--step", type=int, help="run directory: the checkpoint step (default the latest)")
    p.add_argument("--raw", action="store_true", help="run directory: the raw generator instead of its EMA")
    return p


def _feature_fn(args) -> fid.FeatureFn:
    if not args.inception:
        raise fid.FidError(f"no Inception weights: pass --inception or set DI_JAX_INCEPTION "
                           f"(pytorch-fid's file: {WEIGHTS_URL})")
    return fid.make_feature_fn(inception_convert.load_inception(args.inception))


def _npz_images(path: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = data.files
            name = next((k for k in ("images", "samples") if k in keys), keys[0] if len(keys) == 1 else None)
            if name is None:
                raise fid.FidError(f"{path}: expected an 'images' or 'samples' array or a single array, found {keys}")
            images = data[name]
    except fid.FidError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise fid.FidError(f"cannot read images from {path}: {type(e).__name__}") from e
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise fid.FidError(f"{path}: images must be [N, H, W, C] or [N, C, H, W] with C in (1, 3), "
                           f"got {images.shape}")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise fid.FidError(f"{path}: images must be uint8 in [0, 255] or float in [-1, 1], got {images.dtype}")
    return images


def _png_batches(files: list[str], batch: int) -> Iterator[np.ndarray]:
    from PIL import Image

    for s in range(0, len(files), batch):
        imgs = [np.asarray(Image.open(f).convert("RGB")) for f in files[s:s + batch]]
        if len({im.shape for im in imgs}) != 1:
            raise fid.FidError(f"PNG images differ in size near {files[s]}")
        yield np.stack(imgs)


def run_batches(path: str, num: int, batch: int, step: Optional[int] = None, raw: bool = False) -> Iterator[np.ndarray]:
    """uint8 NHWC images of a run's generator for seeds 0..num-1 with random classes (`di-jax sample`'s loop)."""
    import jax

    from di_jax.sample import writers
    from di_jax.sample.generate import generate
    from di_jax.sample.seeds import seed_classes
    from di_jax.sample.sources import run_source

    source = run_source(path, step, raw)          # loaded now: a bad run directory fails before any compute
    if len(source.data_shape) != 3:
        raise fid.FidError(f"{path}: the run's samples have shape {source.data_shape}, not images")
    seeds = np.arange(num, dtype=np.uint32)
    classes = seed_classes(seeds, source.label_dim, "random")
    per_device = -(-batch // jax.device_count())
    return (writers.to_uint8(x) for _, _, x in generate(source, seeds, classes, per_device, progress=True))


def generator_batches(path: str, batch: int, num: int = 50000, step: Optional[int] = None,
                      raw: bool = False) -> Iterator[np.ndarray]:
    """Batches of images from a run directory, a PNG directory or an .npz file (validated before any compute)."""
    from di_jax.sample.sources import is_run_dir

    if is_run_dir(path):
        return run_batches(path, num, batch, step, raw)
    if step is not None or raw:
        raise fid.FidError(f"{path}: --step and --raw apply to run directories (with config.json and checkpoints/)")
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(".png"))
        if not files:
            raise fid.FidError(f"no .png files in {path}, and it is not a run directory (no config.json)")
        return _png_batches(files, batch)
    if not os.path.isfile(path):
        raise fid.FidError(f"generator images not found: {path}")
    if not path.endswith(".npz"):
        raise fid.FidError(f"{path}: expected a run directory, a PNG directory or an .npz of images")
    images = _npz_images(path)
    return (images[s:s + batch] for s in range(0, len(images), batch))


def _run(args) -> dict:
    if args.batch < 1 or (args.num is not None and args.num < 2):
        raise fid.FidError("--batch must be >= 1 and --num >= 2")
    if args.ref_from_tfds:
        if not args.out:
            raise fid.FidError("--ref-from-tfds needs --out STATS.npz")
        fid.tfds_builder(args.ref_from_tfds, args.tfds_data_dir)  # fail fast before loading weights
        mu, sigma = fid.stats_from_tfds(args.ref_from_tfds, _feature_fn(args), split=args.split,
                                        data_dir=args.tfds_data_dir, num=args.num, batch_size=args.batch)
        fid.save_stats(args.out, mu, sigma)
        return {"out": args.out, "dataset": args.ref_from_tfds, "split": args.split}
    if not args.ref:
        raise fid.FidError("--generator needs --ref STATS.npz (build one with --ref-from-tfds)")
    ref_mu, ref_sigma = fid.load_stats(args.ref)
    num = 50000 if args.num is None else args.num
    batches = generator_batches(args.generator, args.batch, num, args.step, args.raw)
    stats, is_state = fid.accumulate(batches, _feature_fn(args), num, args.splits)
    result = {"fid": fid.frechet_distance(*fid.stats_finalize(stats), ref_mu, ref_sigma), "num": num}
    if args.splits:
        result["is_mean"], result["is_std"] = fid.is_finalize(is_state)
    return result


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    prog = argv[0] if argv else "di-jax fid"
    try:
        result = _run(_parser(prog).parse_args(argv[1:]))
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except (fid.FidError, inception_convert.InceptionWeightsError, RunDirError) as e:
        print(f"{prog}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
