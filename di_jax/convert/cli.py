"""`di-jax convert IN OUT [--config JSON] [--sha256 HEX]`: EDM .pkl / .pt / .safetensors -> orbax params + config.json.

IN may also be a diffusers folder (a PixArt-α pipeline with transformer/ and optional vae/, scheduler/, or
one model folder): each model becomes OUT/<part>/{params/, config.json} (`di_jax.convert.diffusers_convert`).

Every failure (bad input, bad arguments, a library error, running out of memory, Ctrl-C) prints one
line `di-jax convert: error: ...` on stderr and returns 2 (130 for Ctrl-C); `--verbose` adds the
full traceback before that line.
"""

import argparse
import hashlib
import re
import sys

from di_jax.command import OneLineParser, run_command

_USAGE = ("di-jax convert IN OUT [--config JSON_OR_FILE] [--sha256 HEX] [--allow-nonfinite] [--no-torch] "
          "[--verbose]")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HASH_CHUNK = 1 << 20  # bytes hashed at a time


def _sha256_arg(text: str) -> str:
    if not _HEX64.fullmatch(text):
        raise argparse.ArgumentTypeError("--sha256 takes 64 hexadecimal digits")
    return text.lower()


def _parser(prog: str) -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, usage=_USAGE, description=__doc__.splitlines()[0])
    p.add_argument("input", help="EDM .pkl snapshot, torch.save .pt/.pth state_dict or .safetensors file, or a "
                                 "diffusers pipeline / model folder")
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


def _convert_diffusers(prog: str, opts) -> str:
    """A diffusers pipeline / model folder -> orbax params + config.json per model (`diffusers_convert`)."""
    from di_jax.convert import CheckpointError  # pylint: disable=import-outside-toplevel
    from di_jax.convert.diffusers_convert import convert_diffusers, describe_module  # pylint: disable=C0415

    for flag, given in (("--config", opts.config is not None), ("--sha256", bool(opts.sha256)),
                        ("--no-torch", opts.no_torch)):
        if given:
            raise CheckpointError(f"{flag} applies to EDM checkpoint files, not to the diffusers folder {opts.input}")
    parts = convert_diffusers(opts.input, opts.output, allow_nonfinite=opts.allow_nonfinite)
    what = "; ".join(f"{part + '/ ' if part else ''}{describe_module(m)}" for part, m in parts.items())
    return f"{prog}: {opts.input} (diffusers: {what}) -> {opts.output}"


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    prog = argv[0] if argv else "di-jax convert"

    def body(opts) -> str:
        from di_jax import convert  # pylint: disable=import-outside-toplevel
        from di_jax.convert import config as config_lib  # pylint: disable=import-outside-toplevel
        from di_jax.convert.diffusers_folder import diffusers_kind  # pylint: disable=import-outside-toplevel

        if diffusers_kind(opts.input):
            return _convert_diffusers(prog, opts)
        override = config_lib.load_json(opts.config) if opts.config is not None else None
        if opts.sha256:
            check_sha256(opts.input, opts.sha256)
        cfg = convert.convert_checkpoint(opts.input, opts.output, override, False if opts.no_torch else None,
                                         allow_nonfinite=opts.allow_nonfinite)
        return (f"{prog}: {opts.input} ({cfg['precond']} / {cfg['model_type']}, {cfg['img_resolution']}px, "
                f"label_dim {cfg['label_dim']}) -> {opts.output}")

    def library_errors() -> tuple:
        from di_jax.convert.errors import CheckpointError  # pylint: disable=import-outside-toplevel
        return (CheckpointError,)

    return run_command(prog, _parser(prog), argv[1:], body, messages=library_errors)


if __name__ == "__main__":
    sys.exit(main())
