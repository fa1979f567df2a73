"""`di-jax convert IN OUT [--config JSON]`: EDM .pkl / torch .pt / .safetensors -> orbax params + config.json.

Bad input (unreadable, unsafe, wrong format, wrong architecture, bad arguments) prints one line
`di-jax convert: error: ...` on stderr and returns 2; no traceback.
"""

import argparse
import sys

_USAGE = "di-jax convert IN OUT [--config JSON_OR_FILE] [--no-torch]"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage block and exit; we want one line
        raise _UsageError(f"{message} (usage: {_USAGE})")


def _parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, usage=_USAGE, description=__doc__.splitlines()[0])
    p.add_argument("input", help="EDM .pkl snapshot, torch.save .pt/.pth state_dict or .safetensors file")
    p.add_argument("output", help="new directory for the orbax params and config.json")
    p.add_argument("--config", help="JSON object (or a file holding one) overriding the recorded/inferred "
                                    "network config, e.g. '{\"precond\": \"VPPrecond\"}'")
    p.add_argument("--no-torch", action="store_true", help="read .pt files without torch even if installed")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    prog, args = (argv[0] if argv else "di-jax convert"), argv[1:]
    try:
        opts = _parser(prog).parse_args(args)
    except _UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    from di_jax import convert  # pylint: disable=import-outside-toplevel
    from di_jax.convert import config as config_lib  # pylint: disable=import-outside-toplevel

    try:
        override = config_lib.load_json(opts.config) if opts.config else None
        cfg = convert.convert_checkpoint(opts.input, opts.output, override, False if opts.no_torch else None)
    except (convert.CheckpointError, OSError) as e:
        message = " ".join(str(e).split())  # guarantee a single line
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    print(f"{prog}: {opts.input} ({cfg['precond']} / {cfg['model_type']}, {cfg['img_resolution']}px, "
          f"label_dim {cfg['label_dim']}) -> {opts.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
