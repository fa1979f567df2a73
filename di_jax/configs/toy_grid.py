"""Toy: MLP generator from 2-D noise onto a 5x5 grid of 25 Gaussians (exact teacher).

    di-jax distill --config toy_grid:sim --workdir runs/grid_sim
Same methods and per-method noise levels as `toy_ring`.
"""

from di_jax.configs import toy_ring


def get_config(method: str = "sim"):
    c = toy_ring.get_config(method)
    c.teacher.update(kind="grid", num_modes=25, std=0.05)
    c.teacher.spacing = 1.0
    c.num_steps = 5000
    return c
