"""Toy: MLP generator from 2-D noise onto a 5x5 grid of 25 Gaussians (exact teacher).

    python -m di_jax.main --config configs/toy_grid.py:sim --workdir runs/grid_sim
"""

from configs.toy_ring import SIGMA_GEN  # noqa: F401  (same per-method noise levels)
from configs import toy_ring


def get_config(method: str = "sim"):
    c = toy_ring.get_config(method)
    c.teacher.update(kind="grid", num_modes=25, std=0.05)
    c.teacher.spacing = 1.0
    c.num_steps = 5000
    return c
