"""`python -m di_jax.bench ...` = `di-jax bench ...` (isolated cells run this way)."""

import sys

from di_jax.bench.cli import main

sys.exit(main(["di-jax bench"] + sys.argv[1:]))
