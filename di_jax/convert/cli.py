"""`di-jax convert IN OUT [--config JSON] [--sha256 HEX]`: EDM .pkl / .pt / .safetensors -> orbax params + config.json.

Every failure (bad input, bad arguments, a library error, running out of memory, Ctrl-C) prints one
line `di-jax convert: error: ...` on stderr and returns 2 (130 for Ctrl-C); `--verbose` adds the
full traceback before that line.
"""

import argparse
import hashlib
import re
import sys
import traceback

_USAGE = ("di-jax convert IN OUT [--config JSON_OR_FILE] [--sha256 HEX] [--allow-nonfinite] [--no-torch] "
          "[--verbose]")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HASH_CHUNK = 1 << 20  # bytes hashed at a time


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage block and exit; we want one line
        raise _UsageError(f"{message} (usage: {_USAGE})")


def _sha256_arg(text: str) -> str:
    if not _HEX64.fullmatch(text):
        raise argparse.ArgumentTypeError("--sha256 takes 64 hexadecimal digits")
    return text.lower()


def _parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, usage=_USAGE, description=__doc__.splitlines()[0])
    p.add_argument("input", help="EDM .pkl snapshot, torch.save .pt/.pth state_dict or .safetensors file")
    p.add_argument("output", help="new directory for the orbax params and config.json")
    p.add_argument("--config", help="JSON object (or a file holding one, at most 1 MiB) overriding the "
                                    "recorded/inferred network config, e.g. '{\"precond\": \"VPPrecond\"}'")
    p.add_argument("--sha256", type=_sha256_arg, metavar="HEX",
                   help="refuse the input unless its SHA-256 digest is HEX (checked before it is read)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="accept NaN, infinite and absurdly large (|x| > 1e19) weights (refused by default)")
    p.add_argument("--no-torch", action="store_true", help="read .pt files without torch even if installed")
    p.add_argument("--verbose", action="store_true", help="print the full traceback of an error")
    return p


def check_sha256(path: str, expected: str) -> None:
    """Stream the file through SHA-256 (1 MiB at a time) and raise a one-line error on a mismatch."""
    from di_jax.convert import CheckpointError  # pylint: disable=import-outside-toplevel
    from di_jax.convert.files import open_regular  # pylint: disable=import-outside-toplevel

    digest = hashlib.sha256()
    with open_regular(path, None, "input") as f:  # regular files only: never blocks on a FIFO
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    got = digest.hexdigest()
    if got != expected.lower():
        raise CheckpointError(f"{path}: SHA-256 mismatch: expected {expected.lower()}, the file has {got}")


def error_line(e: BaseException) -> str:
    """One line describing an exception; str() only of string/number arguments (never untrusted objects)."""
    from di_jax.convert import CheckpointError  # pylint: disable=import-outside-toplevel

    plain = not e.args or all(isinstance(a, (str, int, float)) for a in e.args)
    text = " ".join(str(e).split())[:1000] if plain else ""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, CheckpointError):
        return text or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename + ': ' if isinstance(e.filename, str) else ''}{e.strerror}"
    if isinstance(e, MemoryError):
        return "out of memory (MemoryError)"
    if isinstance(e, RecursionError):
        return "input nested too deeply (RecursionError)"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    prog, args = (argv[0] if argv else "di-jax convert"), argv[1:]
    verbose = "--verbose" in args
    try:
        opts = _parser(prog).parse_args(args)
    except _UsageError as e:
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    try:
        from di_jax import convert  # pylint: disable=import-outside-toplevel
        from di_jax.convert import config as config_lib  # pylint: disable=import-outside-toplevel

        override = config_lib.load_json(opts.config) if opts.config is not None else None
        if opts.sha256:
            check_sha256(opts.input, opts.sha256)
        cfg = convert.convert_checkpoint(opts.input, opts.output, override, False if opts.no_torch else None,
                                         allow_nonfinite=opts.allow_nonfinite)
    except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except  # every failure: one line
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {' '.join(error_line(e).split())}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 2
    print(f"{prog}: {opts.input} ({cfg['precond']} / {cfg['model_type']}, {cfg['img_resolution']}px, "
          f"label_dim {cfg['label_dim']}) -> {opts.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
