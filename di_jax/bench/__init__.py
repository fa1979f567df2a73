"""`di-jax bench`: throughput of the full compiled distillation train step, next to a PyTorch reference.

    di-jax bench --config cifar10-ddpmpp --method di,sim --batch 8 --precision fp32,bf16 \\
        --torch eager,compile --peak-tflops 989 --json experiments/results/bench_gpu.json

For every (config, method, batch, precision, remat) row it builds the library's real train step with
`di_jax.train.setup.setup` (fake-score DSM phase + generator phase + EMA, one jit, donated state) for
a named EDM network with random weights, compiles it ahead of time and reports: compile seconds, the
median of >= 20 individually timed steps after warm-up (each waited for with block_until_ready),
images/s, the images/s of the same number of steps dispatched back to back with one wait at the end
("pipelined"), peak memory, FLOPs per step from XLA's cost analysis, achieved FLOP/s and MFU against
`--peak-tflops`. The PyTorch reference step (`di_jax.bench.torch_reference`: eager, and with
torch.compile; needs the `torch` extra) runs on the same device in the same invocation and the ratio
JAX/PyTorch (images/s) is printed per row.

Memory: on a GPU the device's `peak_bytes_in_use` (JAX) and `torch.cuda.max_memory_allocated`
(PyTorch); on a CPU neither exists, so the host's resident-set growth during the row is reported
instead (labelled `host RSS+`). With `--isolate` (the default for more than one row) every
(row, framework) cell runs in its own subprocess, so peaks never leak from one cell to the next.

Modules, one concern each:
  networks         the named network configs, sigma_init, random weights, BenchError
  measure          host RSS sampling, XLA FLOPs and memory, the device's name
  jax_cell         one JAX cell: `run_jax`
  torch_cell       one PyTorch cell: `run_torch` (the optional plug-in below)
  table            the markdown table
  cli              arguments, subprocess isolation, `main`
  torch_reference  PyTorch port of the EDM networks and the official-style DI / SIM steps (optional)

Importing this package imports neither JAX nor torch; the cells import them when they run.
"""

from di_jax.bench.cli import build_parser, main, run
from di_jax.bench.jax_cell import PRECISIONS, run_jax
from di_jax.bench.networks import NETWORKS, BenchError, network_config, random_params, sigma_init
from di_jax.bench.table import markdown
from di_jax.bench.torch_cell import TORCH_MODES, run_torch

__all__ = ["BenchError", "NETWORKS", "PRECISIONS", "TORCH_MODES", "build_parser", "main", "markdown",
           "network_config", "random_params", "run", "run_jax", "run_torch", "sigma_init"]
