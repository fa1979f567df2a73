"""Entry point of a distillation run.

    python -m di_jax.main --config configs/digits_sim.py --workdir runs/digits \
        --config.method=di --config.gen_optim.lr=1e-4
    di-jax distill ...   (the same)

Rerunning the same command resumes from the latest checkpoint in the workdir.
"""

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(_REPO, "configs", "digits_sim.py")

_CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Training configuration file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/digits", "Directory for checkpoints, logs and pictures.")


class _QuietLibraries(logging.Filter):
    """Drops orbax's per-save INFO chatter; keeps its warnings and everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def _run(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("di_jax").setLevel(logging.INFO)
    absl_logging.get_absl_handler().addFilter(_QuietLibraries())
    from di_jax.train import loop

    loop.train(_CONFIG.value, _WORKDIR.value)


def main(argv=None) -> int:
    app.run(_run, argv=list(sys.argv if argv is None else argv))
    return 0


if __name__ == "__main__":
    main()
