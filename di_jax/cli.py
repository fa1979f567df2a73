"""The `di-jax` command line: `di-jax {distill,convert,bench,fid,sample,export,embed-prompts} ...`.

Each sub-command lives in its own module and is imported only when used, so that
`di-jax convert` does not pay for TensorFlow and `di-jax distill` does not import torch
(`embed-prompts` does: the T5 encoder runs in PyTorch).
"""

import importlib
import sys

_COMMANDS = {
    "distill": ("di_jax.main", "Distil a teacher into a one-step generator (the main job)."),
    "convert": ("di_jax.convert.cli", "Convert an EDM .pkl / .pt / .safetensors checkpoint to Flax."),
    "bench": ("di_jax.bench", "Benchmark the compiled train step."),
    "fid": ("di_jax.eval.cli", "FID / Inception Score of a generator against reference statistics."),
    "sample": ("di_jax.sample.cli", "Draw images from a run's distilled generator or from a teacher."),
    "export": ("di_jax.export.cli", "Export a run's distilled generator to .safetensors / .pt (PyTorch)."),
    "embed-prompts": ("di_jax.text.cli", "Precompute T5 text embeddings of prompts (text-to-image teachers)."),
}


def _usage() -> str:
    lines = ["usage: di-jax COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<13} {help_}" for name, (_, help_) in _COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in _COMMANDS:
        print(f"di-jax: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(_COMMANDS[name][0])
    return module.main([f"di-jax {name}"] + rest) or 0


if __name__ == "__main__":
    sys.exit(main())
