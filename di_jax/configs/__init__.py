"""The configs shipped with di_jax, usable from any install (no repository needed).

`di-jax distill --config NAME[:ARG]` takes a name of this package (`digits_sim`, `toy_ring:sim`,
`toy_grid:di`, `toy_mixture:dmd`) or a path to a config file of your own (whose `get_config` may start from
`di_jax.configs.base.base_config()`).
"""

import os

DIR = os.path.dirname(os.path.abspath(__file__))
_NOT_CONFIGS = ("__init__.py", "base.py", "paper.py")       # the schema and the recipes' skeleton
NAMES = tuple(sorted(f[:-3] for f in os.listdir(DIR) if f.endswith(".py") and f not in _NOT_CONFIGS))
DEFAULT = "digits_sim"


def resolve(spec: str) -> str:
    """A packaged config's name (optionally ':ARG', optionally ending in '.py') -> its file path; paths pass through.

    Args:
      spec: e.g. 'toy_ring:sim', 'digits_sim', 'configs/toy_ring.py:sim' or '/abs/my_config.py'.
    """
    path, sep, arg = spec.partition(":")
    name = os.path.basename(path)[:-3] if path.endswith(".py") else path
    if os.path.exists(path) or name not in NAMES:
        return spec
    return os.path.join(DIR, name + ".py") + sep + arg
