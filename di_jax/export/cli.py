"""`di-jax export RUN_DIR --out FILE`: a run's distilled generator as .safetensors or .pt (PyTorch) weights.

Every failure (not a run directory, no such checkpoint, a bad output path or extension, .pt without
torch, Ctrl-C) prints one line `di-jax export: error: ...` on stderr and returns 2 (130 for Ctrl-C);
`--verbose` adds the full traceback before that line.
"""

import argparse
import json
import sys
import traceback

_USAGE = "di-jax export RUN_DIR --out FILE.{safetensors,pt} [--step N] [--raw] [--teacher-path PATH] [--verbose]"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage block and exit; we want one line
        raise _UsageError(f"{message} (usage: {_USAGE})")


def _parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, usage=_USAGE, description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="the --workdir of a `di-jax distill` run")
    p.add_argument("--out", required=True, help="the file to write: .safetensors (weights + config metadata) "
                                                "or .pt (torch.save state_dict, EDM generators, needs torch)")
    p.add_argument("--step", type=int, help="the checkpoint to export (default: the latest)")
    p.add_argument("--raw", action="store_true", help="export the raw generator weights instead of their EMA")
    p.add_argument("--teacher-path", help="the teacher checkpoint, if it moved since the run (replaces "
                                          "config.teacher.path; EDM generators take their architecture from it)")
    p.add_argument("--verbose", action="store_true", help="print the full traceback of an error")
    return p


def _error_line(e: BaseException) -> str:
    from di_jax.convert.errors import CheckpointError
    from di_jax.export.errors import ExportError
    from di_jax.train.run_dir import RunDirError

    text = " ".join(str(e).split())[:1000]
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, (ExportError, RunDirError, CheckpointError)):
        return text or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename + ': ' if isinstance(e.filename, str) else ''}{e.strerror}"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _report(prog: str, done) -> str:
    meta = done.metadata
    what = f"{meta['params'].upper()} generator, step {meta['step']}, {meta['method']}"
    lines = [f"{prog}: wrote {done.path} ({done.format}; {what}): {done.num_tensors} tensors, "
             f"{done.num_params} parameters, sha256 {done.sha256}"]
    if meta["kind"] == "edm":
        lines.append(f"{prog}: x0 = net(sigma_init * z, sigma_init, class_labels) with sigma_init "
                     f"{meta['sigma_init']}; net = {meta['precond']}(**kwargs), edm_config "
                     f"{json.dumps(json.loads(meta['edm_config']), sort_keys=True)}")
    else:
        lines.append(f"{prog}: x0 = mlp(z); {', '.join(f'{k} {meta[k]}' for k in ('hidden', 'depth', 'dim'))}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    prog, args = (argv[0] if argv else "di-jax export"), argv[1:]
    verbose = "--verbose" in args
    try:
        opts = _parser(prog).parse_args(args)
    except _UsageError as e:
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    try:
        from di_jax.export import export_generator
        from di_jax.export.formats import output_format
        from di_jax.train.run_dir import load_run

        output_format(opts.out)                 # a bad path or extension fails before the run is read
        overrides = {"teacher.path": opts.teacher_path} if opts.teacher_path is not None else None
        run = load_run(opts.run_dir, opts.step, overrides)
        done = export_generator(run, opts.out, "raw" if opts.raw else "ema")
    except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except  # every failure: one line
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {' '.join(_error_line(e).split())}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 2
    print(_report(prog, done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
