"""One PyTorch cell of `di-jax bench`: the reference step (`di_jax.bench.torch_reference`), timed.

The reference is an optional plug-in: it needs the `torch` extra (`pip install 'di_jax[torch]'`).
Without it, a PyTorch cell fails with one line, `PyTorch reference unavailable: ...`, which the
table shows in that cell.
"""

import importlib.metadata
import importlib.util
import statistics
import time
from typing import Any, Dict, Optional

from di_jax.bench import measure
from di_jax.bench.networks import network_config, sigma_init
from di_jax.bench.torch_reference import METHODS as TORCH_METHODS

TORCH_MODES = ("eager", "compile")
UNAVAILABLE = "PyTorch reference unavailable: install di_jax[torch] (pip install 'di_jax[torch]')"


def torch_version() -> Optional[str]:
    """The installed torch's version, without importing it; None when torch is missing."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def unsupported(method: str) -> Optional[str]:
    """Why a PyTorch cell of `method` cannot run (torch missing, method not ported), or None."""
    if torch_version() is None:
        return UNAVAILABLE
    if method not in TORCH_METHODS:
        return f"the PyTorch reference implements {', '.join(TORCH_METHODS)} only, not {method!r}"
    return None


def _reference():
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"{UNAVAILABLE}: {e}") from e
    from di_jax.bench.torch_reference import steps
    return steps


def run_torch(name: str, method: str, batch: int, precision: str, mode: str = "eager", steps: int = 20,
              warmup: int = 3, device: Optional[str] = None, seed: int = 0) -> Dict[str, Any]:
    """Times the PyTorch reference step of one (network, method, batch, precision) cell.

    Args:
      name: a network name of `di_jax.bench.networks.NETWORKS`.
      method: 'di' or 'sim' (`torch_reference.METHODS`).
      batch: the batch size.
      precision: 'fp32' or 'bf16' (autocast).
      mode: 'eager', or 'compile' (each network's forward under torch.compile).
      steps: individually timed steps; their median is reported.
      warmup: untimed steps, the first of which compiles in 'compile' mode.
      device: a torch device; default cuda when available, else cpu.
      seed: the torch seed.

    Returns:
      The cell's numbers (first_step_s, median_ms, images_per_s, ..., finite_loss), as in the JSON output.
    """
    ref = _reference()
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss = measure.RssPeak()
    runner = ref.TorchDistillStep(network_config(name), method, batch, sigma_init=sigma_init(name),
                                  precision=precision, compile=mode == "compile", device=device, seed=seed)
    labels = runner.random_labels()
    flops = ref.count_step_flops(runner, labels) if mode == "eager" else None
    sync()
    t0 = time.perf_counter()
    loss = runner.step(labels)    # first call: torch.compile compiles here
    sync()
    first_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        loss = runner.step(labels)
    sync()
    with rss:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = runner.step(labels)
            sync()
            times.append(time.perf_counter() - t0)
    if cuda:
        peak, peak_kind = torch.cuda.max_memory_allocated(), "device peak"
    else:
        peak, peak_kind = rss.growth, "host RSS+"
    median = statistics.median(times)
    return dict(framework=f"torch-{mode}", first_step_s=round(first_s, 2), median_ms=round(median * 1e3, 2),
                images_per_s=round(batch / median, 2), peak_mem_mib=measure.mib(peak), peak_mem_kind=peak_kind,
                flops_per_step=flops, flops_per_s=None if flops is None else flops / median,
                params=runner.param_count(), finite_loss=bool(torch.isfinite(loss[0]).item()),
                device=device, torch_version=torch.__version__, steps=steps, warmup=warmup)
