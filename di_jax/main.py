"""Entry point of a distillation run: flags -> `train.loop.train_and_evaluate`.

    di-jax distill --config digits_sim --workdir runs/digits --config.method=di --config.gen_optim.lr=1e-4
    python -m di_jax.main ...   (the same)

`--config` takes a config shipped in `di_jax/configs` by name (`digits_sim`, the default;
`toy_ring:sim`; `configs/toy_grid.py:di` also resolves there) or the path of your own config file.
Rerunning the same command resumes from the latest checkpoint in the workdir.
"""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")      # TensorFlow (imported by clu's writers): errors only

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from di_jax import configs

_CONFIG = config_flags.DEFINE_config_file("config", configs.resolve(configs.DEFAULT),
                                          f"Training configuration: a name of {configs.NAMES} "
                                          "(with ':ARG') or a config file path.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/digits", "Directory for checkpoints, logs and pictures.")


class _QuietLibraries(logging.Filter):
    """Drops orbax's per-save INFO chatter; keeps its warnings and everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return "orbax" not in record.pathname and "xla_bridge" not in record.pathname


def _run(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("di_jax").setLevel(logging.INFO)
    absl_logging.get_absl_handler().addFilter(_QuietLibraries())
    import jax

    from di_jax.train import loop

    # Persistent XLA cache: a resumed or repeated run skips recompiling its train step.
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.environ.get(
            "DI_JAX_XLA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "di_jax", "xla")))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)

    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def _resolve_config_names(argv: list) -> list:
    """Rewrites `--config NAME` / `--config=NAME` of a packaged config into its file path."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + configs.resolve(arg[len("--config="):])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = configs.resolve(out[i + 1])
    return out


def main(argv=None) -> int:
    app.run(_run, argv=_resolve_config_names(sys.argv if argv is None else argv))
    return 0


if __name__ == "__main__":
    main()
