"""`di-jax export RUN_DIR --out FILE`: a run's distilled generator as .safetensors or .pt (PyTorch) weights.

Every failure (not a run directory, no such checkpoint, a bad output path or extension, .pt without
torch, Ctrl-C) prints one line `di-jax export: error: ...` on stderr and returns 2 (130 for Ctrl-C);
`--verbose` adds the full traceback before that line.
"""

import argparse
import json
import sys

from di_jax.command import OneLineParser, run_command

_USAGE = "di-jax export RUN_DIR --out FILE.{safetensors,pt} [--step N] [--raw] [--teacher-path PATH] [--verbose]"


def _parser(prog: str) -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, usage=_USAGE, description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="the --workdir of a `di-jax distill` run")
    p.add_argument("--out", required=True, help="the file to write: .safetensors (weights + config metadata) "
                                                "or .pt (torch.save state_dict, EDM generators, needs torch)")
    p.add_argument("--step", type=int, help="the checkpoint to export (default: the latest)")
    p.add_argument("--raw", action="store_true", help="export the raw generator weights instead of their EMA")
    p.add_argument("--teacher-path", help="the teacher checkpoint, if it moved since the run (replaces "
                                          "config.teacher.path; EDM generators take their architecture from it)")
    p.add_argument("--verbose", action="store_true", help="print the full traceback of an error")
    return p


def _library_errors() -> tuple:
    """The errors whose message is printed alone (imported only when one is reported)."""
    from di_jax.convert.errors import CheckpointError
    from di_jax.export.errors import ExportError
    from di_jax.train.run_dir import RunDirError

    return ExportError, RunDirError, CheckpointError


def _report(prog: str, done) -> str:
    meta = done.metadata
    what = f"{meta['params'].upper()} generator, step {meta['step']}, {meta['method']}"
    lines = [f"{prog}: wrote {done.path} ({done.format}; {what}): {done.num_tensors} tensors, "
             f"{done.num_params} parameters, sha256 {done.sha256}"]
    if meta["kind"] == "edm":
        lines.append(f"{prog}: x0 = net(sigma_init * z, sigma_init, class_labels) with sigma_init "
                     f"{meta['sigma_init']}; net = {meta['precond']}(**kwargs), edm_config "
                     f"{json.dumps(json.loads(meta['edm_config']), sort_keys=True)}")
    elif meta["kind"] == "stylegan2":
        lines.append(f"{prog}: {meta['generator']}; truncation_psi {meta['truncation_psi']}, noise_mode "
                     f"{meta['noise_mode']}; G = StyleGAN2-ADA Generator(**{meta['stylegan2_generator_kwargs']})")
    else:
        lines.append(f"{prog}: x0 = mlp(z); {', '.join(f'{k} {meta[k]}' for k in ('hidden', 'depth', 'dim'))}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    prog = argv[0] if argv else "di-jax export"

    def body(opts) -> str:
        from di_jax.export import export_generator
        from di_jax.export.formats import output_format
        from di_jax.train.run_dir import load_run

        output_format(opts.out)                 # a bad path or extension fails before the run is read
        overrides = {"teacher.path": opts.teacher_path} if opts.teacher_path is not None else None
        run = load_run(opts.run_dir, opts.step, overrides)
        return _report(prog, export_generator(run, opts.out, "raw" if opts.raw else "ema"))

    return run_command(prog, _parser(prog), argv[1:], body, messages=_library_errors)


if __name__ == "__main__":
    sys.exit(main())
