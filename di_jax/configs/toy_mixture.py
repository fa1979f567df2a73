"""Toy: MLP generator from 2-D noise onto 6 Gaussians of unequal weights (0.30 ... 0.08) and widths (0.03 ... 0.30).

    di-jax distill --config toy_mixture:sim --workdir runs/mixture_sim
Same methods, networks and per-method noise levels as `toy_ring`. The modes differ 10x in width and
3.75x in weight; centres lie >= 2.06 apart (the widest mode's nearest neighbour 8 of its std away): a
generator must put the right mass in
each (recall within 25 %, `di_jax.eval.mixture`) and keep each mode's own width (precision is measured
in each mode's std), which the equal-weight ring and grid do not test.
"""

from di_jax.configs import toy_ring

MEANS = ((0.0, 0.0), (2.5, 0.0), (-2.5, 0.5), (0.5, 2.5), (-1.0, -2.5), (2.0, -2.0))
STDS = (0.30, 0.05, 0.15, 0.08, 0.10, 0.03)
WEIGHTS = (0.30, 0.20, 0.15, 0.15, 0.12, 0.08)


def get_config(method: str = "sim"):
    c = toy_ring.get_config(method)
    c.teacher.update(kind="mixture", num_modes=len(MEANS))
    c.teacher.means = [list(m) for m in MEANS]
    c.teacher.stds = list(STDS)
    c.teacher.weights = list(WEIGHTS)
    c.num_steps = 5000
    return c
