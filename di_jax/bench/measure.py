"""Measurement helpers of `di-jax bench`: host RSS sampling, XLA cost and memory analyses, device name."""

import os
import threading
from typing import Optional


def rss_bytes() -> int:
    """This process's resident set size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class RssPeak:
    """Samples this process's resident set every 5 ms inside `with`; `.growth` is that peak above the
    value when the object was created (so parameters, optimiser state and activations count, while
    the compiler's transient memory before the timed steps does not)."""

    def __init__(self):
        self.base = rss_bytes()      # the baseline: before the cell builds anything

    def __enter__(self):             # sampling covers only the `with` body (the timed steps)
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.growth = self.peak - self.base


def mib(n: Optional[float]) -> Optional[float]:
    """Bytes -> MiB rounded to 0.1 (None stays None)."""
    return None if n is None else round(n / 2 ** 20, 1)


def cost_flops(compiled) -> Optional[float]:
    """FLOPs of a compiled JAX computation by XLA's cost analysis, or None where unavailable."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def xla_memory_bytes(compiled) -> Optional[int]:
    """Arguments + outputs + temporaries - aliased (donated) bytes of a compiled computation, or None."""
    try:
        ma = compiled.memory_analysis()
        return (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
                - ma.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None


def device_name() -> str:
    """'platform: kind xN' of JAX's devices (on a CPU: the model name and the logical CPU count)."""
    import jax
    d = jax.devices()[0]
    name = d.device_kind
    if d.platform == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        name += f" ({os.cpu_count()} logical CPUs)"
    return f"{d.platform}: {name} x{jax.device_count()}"
