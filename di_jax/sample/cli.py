"""`di-jax sample SOURCE --out DIR --seeds 0-63`: images of a run's distilled generator or of a teacher.

  di-jax sample runs/digits --out samples/ --seeds 0-99 --grid          # EMA generator, latest checkpoint
  di-jax sample runs/digits --out raw/ --seeds 0-49999 --step 400 --raw --subdirs --npz --no-png
  di-jax sample teacher.pkl --out heun/ --seeds 0-63 --steps 18 --classes random

Every failure prints one line `di-jax sample: error: ...` on stderr and returns 2 (130 for Ctrl-C);
`--verbose` prints the full traceback first.
"""

import argparse
import os
import sys
import time

from di_jax.command import OneLineParser, run_command

_EPILOG = """\
sources: a run directory (the --workdir of `di-jax distill`; its EMA generator unless --raw) or an
EDM teacher (.pkl / .pt / .safetensors file or a `di-jax convert` folder) sampled with EDM's
deterministic Heun sampler (--steps).

seeds: the image of seed s depends on s alone (latents normal(PRNGKey(s)); with --classes random its
class from fold_in(PRNGKey(s), 1)): the same seed gives the same image for any --batch or device count.

classes of conditional models: --classes cycle (default) gives seed s class s % label_dim (balanced,
and a --grid of consecutive seeds has one class per column); --classes random draws one per seed;
--class K gives every image class K. Unconditional models refuse --class.

outputs (in --out): DIR/{seed:06d}.png (with --subdirs DIR/{seed - seed % 1000:06d}/{seed:06d}.png),
with --npz DIR/samples.npz (samples: uint8 [N, H, W, C], seeds: uint32 [N], labels: int32 [N] for
conditional models; `di-jax fid --generator DIR/samples.npz` reads it), with --grid DIR/grid.png (the
first 256 images). Runs of points (the 2-D toys) always write DIR/samples.npz (samples: float32 [N, D],
seeds) and DIR/scatter.png, and nothing else.
"""


def _seeds_arg(text: str):
    from di_jax.sample.seeds import SeedsError, parse_seeds

    try:
        return parse_seeds(text)
    except SeedsError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count_arg(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        return value
    return parse


def _parser(prog: str) -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description="Draw " + __doc__.splitlines()[0].split(": ", 1)[1], epilog=_EPILOG,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="run directory or teacher checkpoint (see below)")
    p.add_argument("--out", required=True, help="output directory (created; existing files are overwritten)")
    p.add_argument("--seeds", type=_seeds_arg, default="0-63", help="seeds, e.g. 0-49999,60,70-79 (default 0-63)")
    p.add_argument("--batch", type=_count_arg(1), default=64, help="images per device per call (default 64)")
    p.add_argument("--step", type=_count_arg(0), help="run: the checkpoint step (default the latest)")
    p.add_argument("--raw", action="store_true", help="run: the raw generator instead of its EMA")
    p.add_argument("--teacher-path", help="run: the teacher checkpoint, if it moved since the run "
                   "(replaces config.teacher.path; the generator is rebuilt around it)")
    p.add_argument("--steps", type=_count_arg(2), help="teacher: Heun steps (default 18; 2 * steps - 1 NFE)")
    cls = p.add_mutually_exclusive_group()
    cls.add_argument("--class", dest="class_", type=_count_arg(0), metavar="K", help="every image of class K")
    cls.add_argument("--classes", choices=("cycle", "random"), default="cycle",
                     help="per-seed classes: seed %% label_dim (cycle, default) or random")
    p.add_argument("--subdirs", action="store_true", help="PNGs in folders of 1000 seeds")
    p.add_argument("--npz", action="store_true", help="also write samples.npz")
    p.add_argument("--grid", action="store_true", help="also write grid.png")
    p.add_argument("--no-png", action="store_true", help="no PNG per seed (with --npz and/or --grid)")
    p.add_argument("--verbose", action="store_true", help="print the full traceback of an error")
    return p


def run(args) -> str:
    """Draws and writes the samples of parsed arguments; returns the summary line."""
    import jax
    import numpy as np

    from di_jax.sample import writers
    from di_jax.sample.generate import generate
    from di_jax.sample.seeds import format_seeds, parse_seeds, seed_classes
    from di_jax.sample.sources import open_source

    t0 = time.perf_counter()
    seeds = args.seeds if isinstance(args.seeds, np.ndarray) else parse_seeds(args.seeds)
    source = open_source(args.source, args.step, args.raw, args.steps, args.teacher_path)
    mode = args.class_ if args.class_ is not None else args.classes
    classes = seed_classes(seeds, source.label_dim, mode)
    points = len(source.data_shape) == 1
    if not points and len(source.data_shape) != 3:
        raise ValueError(f"{args.source}: samples of shape {source.data_shape} are neither images nor points")
    if not points and args.no_png and not (args.npz or args.grid):
        raise ValueError("--no-png leaves nothing to write: add --npz and/or --grid")
    writing = jax.process_index() == 0            # every process generates its slice; process 0 writes
    if writing:
        os.makedirs(args.out, exist_ok=True)
    kept, grid = [], []
    for s, c, x in generate(source, seeds, classes, args.batch, progress=True):
        if not writing:
            continue
        if points:
            kept.append(x.astype(np.float32))
            continue
        u8 = writers.to_uint8(x)
        if not args.no_png:
            writers.write_pngs(args.out, s, u8, args.subdirs)
        if args.npz:
            kept.append(u8)
        if args.grid and sum(map(len, grid)) < writers.GRID_MAX:
            grid.append(x[:writers.GRID_MAX - sum(map(len, grid))])
    written = []
    if writing and kept:
        labels = classes if source.label_dim else None
        writers.write_npz(os.path.join(args.out, "samples.npz"), seeds, np.concatenate(kept), labels)
        written.append("samples.npz")
    if writing and points:
        writers.write_scatter(os.path.join(args.out, "scatter.png"), np.concatenate(kept), source.description)
        written.append("scatter.png")
    if writing and grid:
        images = np.concatenate(grid)
        columns = writers.grid_columns(len(images), source.label_dim, cycle=mode == "cycle")
        writers.write_grid(os.path.join(args.out, "grid.png"), images, columns)
        written.append("grid.png")
    if not points and not args.no_png:
        written.insert(0, f"{len(seeds)} PNGs")
    what = "points" if points else "images"
    return (f"{len(seeds)} {what} (seeds {format_seeds(seeds)}) of {source.description} -> {args.out}: "
            f"{', '.join(written)} in {time.perf_counter() - t0:.1f} s")


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    prog = argv[0] if argv else "di-jax sample"
    return run_command(prog, _parser(prog), argv[1:], lambda args: f"{prog}: {run(args)}",
                       messages=(ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
