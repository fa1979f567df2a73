"""Entry point of a distillation run: flags -> `train.loop.train_and_evaluate`.

    di-jax distill --config digits_sim --workdir runs/digits --config.method=di --config.gen_optim.lr=1e-4
    python -m di_jax.main ...   (the same)

`--config` takes a config shipped in `di_jax/configs` by name (`digits_sim`, the default;
`toy_ring:sim`; `configs/toy_grid.py:di` also resolves there) or the path of your own config file.
Rerunning the same command resumes from the latest checkpoint in the workdir.

A bad flag, override, config or teacher is reported as one line `di-jax distill: error: ...` on
stderr with exit code 2 (130 for Ctrl-C outside the training loop, whose Ctrl-C checkpoints and
exits 0), before anything is compiled and before the workdir is created; `--verbose` (or
DI_JAX_VERBOSE=1) prints the full traceback first.
"""

import logging
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")      # TensorFlow (imported by clu's writers): errors only

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from di_jax import configs
from di_jax.command import error_line

_CONFIG = config_flags.DEFINE_config_file("config", configs.resolve(configs.DEFAULT),
                                          f"Training configuration: a name of {configs.NAMES} "
                                          "(with ':ARG') or a config file path.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/digits", "Directory for checkpoints, logs and pictures.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "On an error, print the full traceback before the one-line "
                             "message (also: environment variable DI_JAX_VERBOSE=1).")
VERBOSE_ENV = "DI_JAX_VERBOSE"


class CommandLineError(Exception):
    """A bad flag, override or argument (reported as one line, exit code 2)."""


def _parse_flags(argv: list) -> list:
    """absl's flag parsing, with every failure (flag syntax, an override of a missing or wrongly
    typed field, a config file that does not load) raised instead of printed as a usage block."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        text = str(e)
        if "Traceback (most recent call last)" in text:     # a config file that raised: keep its exception
            head, _, trace = text.partition("Traceback (most recent call last)")
            last = [line.strip() for line in trace.splitlines() if line.strip()][-1:]
            text = head.strip().rstrip(":").rstrip() + (": " + last[0] if last else "")
        raise CommandLineError(text) from e
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a field the config lacks
        inner = e.args[0] if e.args and isinstance(e.args[0], KeyError) else e
        text = inner.args[0] if inner.args and isinstance(inner.args[0], str) else ""
        field = text.split("\n", 1)[0].strip("'\" ")
        hint = " ".join(text.split("\n", 1)[1].split()) if "\n" in text else ""
        culprit = next((a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")
                        and field and field in a.split("=", 1)[0].split(".")), "a --config.* override")
        raise CommandLineError(f"{culprit}: the config has no field {field!r}{' (' + hint + ')' if hint else ''}; "
                               "overrides can only change fields that the config defines") from e


class _QuietLibraries(logging.Filter):
    """Drops orbax's per-save INFO chatter; keeps its warnings and everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return "orbax" not in record.pathname and "xla_bridge" not in record.pathname


def _run(argv) -> None:
    if len(argv) > 1:
        raise CommandLineError(f"unexpected arguments: {' '.join(argv[1:])[:200]}")
    config = _CONFIG.value
    from di_jax.configs.base import validate

    validate(config, None)  # before the trainer is imported; setup() validates again for the real mesh
    logging.getLogger("di_jax").setLevel(logging.INFO)
    absl_logging.get_absl_handler().addFilter(_QuietLibraries())
    import jax

    from di_jax.train import loop

    # Persistent XLA cache: a resumed or repeated run skips recompiling its train step.
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.environ.get(
            "DI_JAX_XLA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "di_jax", "xla")))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)

    loop.train_and_evaluate(config, _WORKDIR.value)


def _resolve_config_names(argv: list) -> list:
    """Rewrites `--config NAME` / `--config=NAME` of a packaged config into its file path."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + configs.resolve(arg[len("--config="):])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = configs.resolve(out[i + 1])
    return out


def _error_line(e: BaseException) -> str:
    """One line for an exception: the message alone for usage, config and file errors (`command.error_line`)."""
    return error_line(e, (CommandLineError, ValueError, OSError))


def _verbose(argv: list) -> bool:
    if os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    if flags.FLAGS.is_parsed():
        return bool(_VERBOSE.value)
    return any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for a in argv)


def main(argv=None) -> int:
    argv = _resolve_config_names(list(sys.argv if argv is None else argv))
    prog = argv[0] if argv and argv[0].startswith("di-jax") else "di-jax distill"
    try:
        app.run(_run, argv=argv, flags_parser=_parse_flags)
    except SystemExit as e:  # app.run ends with sys.exit; --help too
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except  # every failure: one line
        if _verbose(argv):
            traceback.print_exc()
        print(f"{prog}: error: {_error_line(e)}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
