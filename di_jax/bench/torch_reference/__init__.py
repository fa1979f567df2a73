"""PyTorch reference of the EDM networks and the official-style DI / SIM train steps (for benchmarks).

An optional plug-in of `di-jax bench`: its modules `networks` and `steps` need PyTorch (the `torch`
extra, `pip install 'di_jax[torch]'`); this file does not import it. Nothing here imports
`di_jax.bench`, which imports this package only to run its PyTorch cells.
"""

METHODS = ("di", "sim")          # the methods `steps.TorchDistillStep` implements
PRECISIONS = ("fp32", "bf16")
