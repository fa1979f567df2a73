"""`di-jax bench`: throughput of the full compiled distillation train step, next to a PyTorch reference.

    di-jax bench --config cifar10-ddpmpp --method di,sim --batch 8 --precision fp32,bf16 \\
        --torch eager,compile --peak-tflops 989 --json experiments/results/bench_gpu.json

For every (config, method, batch, precision, remat) row it builds the real train step of
`di_jax.train.step` (fake-score DSM phase + generator phase + EMA, one jit, donated state) for a named
EDM network with random weights, compiles it ahead of time and reports: compile seconds, the median of
>= 20 individually timed steps after warm-up (each waited for with block_until_ready), images/s, the
images/s of the same number of steps dispatched back to back with one wait at the end ("pipelined"),
peak memory, FLOPs per step from XLA's cost analysis, achieved FLOP/s and MFU against `--peak-tflops`.
The PyTorch reference step (experiments/reference_torch: eager, and with torch.compile) runs on the
same device in the same invocation and the ratio JAX/PyTorch (images/s) is printed per row.

Memory: on a GPU the device's `peak_bytes_in_use` (JAX) and `torch.cuda.max_memory_allocated`
(PyTorch); on a CPU neither exists, so the host's resident-set growth during the row is reported
instead (labelled `host RSS+`). With `--isolate` (the default for more than one row) every
(row, framework) cell runs in its own subprocess, so peaks never leak from one cell to the next.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("di", "sim")
PRECISIONS = ("fp32", "bf16")
TORCH_MODES = ("eager", "compile")
REMATS = ("none", "generator", "all")

# Smallest useful SongUNet (one level, attention in dec.8x8_in0, labels), for tests: XLA's CPU compile
# time of the full step grows with the number of blocks, not with their width.
_TINY = dict(precond="VPPrecond", model_type="SongUNet", img_resolution=8, img_channels=3, label_dim=10,
             augment_dim=0, model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[8],
             dropout=0.1, embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
             decoder_type="standard", resample_filter=[1, 1])

# name -> (network config source, sigma_init of the generator; DI Table 7)
_CONFIGS = {
    "cifar10-ddpmpp": ("cifar10-32x32-cond-vp", 2.5),       # official DDPM++ cond VP, 55.7M params
    "cifar10-ddpmpp-uncond": ("cifar10-32x32-uncond-vp", 2.5),
    "imagenet64-adm": ("imagenet-64x64-cond-adm", 5.0),     # official ADM, 296M params
    "tiny": (None, 2.5),
}


class BenchError(ValueError):
    """A bad command-line value: printed as one line, exit status 2."""


def network_config(name: str) -> dict:
    """The network config dict (for `di_jax.nets.build_network` and the torch port) of a bench name."""
    if name not in _CONFIGS:
        raise BenchError(f"unknown network config {name!r}; choose from {sorted(_CONFIGS)}")
    src, _ = _CONFIGS[name]
    if src is None:
        return dict(_TINY)
    from di_jax.nets.presets import edm_config_presets
    cfg = dict(edm_config_presets()[src])
    cfg.pop("use_fp16", None)
    return cfg


def sigma_init(name: str) -> float:
    return _CONFIGS[name][1]


def random_params(module, net_cfg: dict, seed: int = 0):
    """Random parameters of an EDM network built from `net_cfg` (throughput does not depend on them)."""
    import jax
    import numpy as np

    res, ch, label_dim = net_cfg["img_resolution"], net_cfg["img_channels"], net_cfg.get("label_dim", 0)
    x = np.zeros((1, ch, res, res), np.float32)
    labels = np.zeros((1, label_dim), np.float32) if label_dim else None
    init = jax.jit(lambda k: module.init(k, x, np.ones((1,), np.float32), class_labels=labels)["params"])
    return init(jax.random.PRNGKey(seed))


# ----------------------------------------------------------------------------------------------
# measurement helpers

def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class _RssPeak:
    """Samples this process's resident set every 5 ms inside `with`; `.growth` is that peak above the
    value when the object was created (so parameters, optimiser state and activations count, while
    the compiler's transient memory before the timed steps does not)."""

    def __init__(self):
        self.base = _rss_bytes()     # the baseline: before the cell builds anything

    def __enter__(self):             # sampling covers only the `with` body (the timed steps)
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.growth = self.peak - self.base


def _mib(n: Optional[float]) -> Optional[float]:
    return None if n is None else round(n / 2 ** 20, 1)


def _cost_flops(compiled) -> Optional[float]:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def _device_name() -> str:
    import jax
    d = jax.devices()[0]
    name = d.device_kind
    if d.platform == "cpu":
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        name += f" ({os.cpu_count()} logical CPUs)"
    return f"{d.platform}: {name} x{jax.device_count()}"


# ----------------------------------------------------------------------------------------------
# one JAX cell

def run_jax(name: str, method: str, batch: int, precision: str, remat: str = "none", steps: int = 20,
            warmup: int = 3, devices: int = 1, seed: int = 0, pipelined_steps: Optional[int] = None
            ) -> Dict[str, Any]:
    import jax
    import numpy as np

    from di_jax.nets import build_network
    from di_jax.train import networks, sharding, step as step_lib
    from di_jax.train.config import base_config
    from di_jax.train.state import param_count

    if devices > jax.device_count():
        raise BenchError(f"--devices {devices} exceeds the {jax.device_count()} visible devices")
    mesh = sharding.make_mesh(devices)
    if batch % mesh.size:
        raise BenchError(f"batch {batch} is not divisible by the number of devices ({mesh.size})")
    net_cfg = network_config(name)
    config = base_config()
    config.method = method
    config.batch_size = batch
    config.sigma_gen = dict(kind="edm") if method == "di" else dict(kind="sim")
    config.remat = remat
    config.networks.dtype = "bfloat16" if precision == "bf16" else "float32"
    module = build_network(dict(net_cfg, dtype=config.networks.dtype))
    res, ch, label_dim = net_cfg["img_resolution"], net_cfg["img_channels"], net_cfg.get("label_dim", 0)
    nets = networks.edm_networks(module, (ch, res, res), label_dim, sigma_init(name), dropout=True)

    rss = _RssPeak()
    teacher = random_params(module, net_cfg, seed)
    state = step_lib.init_state(config, nets, teacher, mesh)
    teacher = sharding.replicate(teacher, mesh)
    labels = None
    if label_dim:
        labels = sharding.host_to_global(np.random.default_rng(seed).integers(0, label_dim, batch), mesh)
    step_fn = step_lib.make_train_step(config, nets, mesh)
    compiled, compile_s = step_lib.compile_step(step_fn, state, teacher, labels)
    flops = _cost_flops(compiled)
    xla_mem = None
    try:
        ma = compiled.memory_analysis()
        xla_mem = ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes \
            - ma.alias_size_in_bytes
    except Exception:  # noqa: BLE001
        pass
    for _ in range(warmup):
        state, metrics = compiled(state, teacher, labels)
    jax.block_until_ready(state)
    with rss:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, teacher, labels)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t0)
        n_pipe = steps if pipelined_steps is None else pipelined_steps
        t0 = time.perf_counter()
        for _ in range(n_pipe):
            state, metrics = compiled(state, teacher, labels)
        jax.block_until_ready(state)
        pipelined = (time.perf_counter() - t0) / max(n_pipe, 1)
    finite = bool(np.isfinite(float(metrics["gen_loss"])))
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        peak, peak_kind = stats["peak_bytes_in_use"], "device peak"
    else:
        peak, peak_kind = rss.growth, "host RSS+"
    median = statistics.median(times)
    return dict(framework="jax", compile_s=round(compile_s, 2), median_ms=round(median * 1e3, 2),
                images_per_s=round(batch / median, 2), pipelined_images_per_s=round(batch / pipelined, 2),
                peak_mem_mib=_mib(peak), peak_mem_kind=peak_kind, xla_mem_mib=_mib(xla_mem),
                flops_per_step=flops, flops_per_s=None if flops is None else flops / median,
                params=param_count(state.gen_params), finite_loss=finite, steps=steps, warmup=warmup)


# ----------------------------------------------------------------------------------------------
# one PyTorch cell

def _import_reference():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        from experiments.reference_torch import steps as ref_steps
    except ImportError as e:  # torch missing, or di_jax installed without the repository
        raise RuntimeError(f"PyTorch reference unavailable: {e}") from e
    return ref_steps


def run_torch(name: str, method: str, batch: int, precision: str, mode: str = "eager", steps: int = 20,
              warmup: int = 3, device: Optional[str] = None, seed: int = 0) -> Dict[str, Any]:
    ref = _import_reference()
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss = _RssPeak()
    runner = ref.TorchDistillStep(network_config(name), method, batch, sigma_init=sigma_init(name),
                                  precision=precision, compile=mode == "compile", device=device, seed=seed)
    labels = runner.random_labels()
    flops = ref.count_step_flops(runner, labels) if mode == "eager" else None
    sync()
    t0 = time.perf_counter()
    runner.step(labels)           # first call: torch.compile compiles here
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
                images_per_s=round(batch / median, 2), peak_mem_mib=_mib(peak), peak_mem_kind=peak_kind,
                flops_per_step=flops, flops_per_s=None if flops is None else flops / median,
                params=runner.param_count(), finite_loss=bool(torch.isfinite(loss[0]).item()),
                device=device, torch_version=torch.__version__, steps=steps, warmup=warmup)


# ----------------------------------------------------------------------------------------------
# cells in subprocesses

def _run_cell(cell: dict) -> dict:
    kind = cell["kind"]
    common = dict(name=cell["config"], method=cell["method"], batch=cell["batch"], precision=cell["precision"],
                  steps=cell["steps"], warmup=cell["warmup"], seed=cell["seed"])
    if kind == "jax":
        return run_jax(remat=cell["remat"], devices=cell["devices"], pipelined_steps=cell.get("pipelined_steps"),
                       **common)
    return run_torch(mode=kind.split("-", 1)[1], device=cell.get("torch_device"), **common)


def _cell(cell: dict, isolate: bool, timeout: Optional[float]) -> dict:
    """Runs one cell; any failure becomes {'error': message} so the table still prints."""
    if not isolate:
        try:
            return _run_cell(cell)
        except BenchError:
            raise
        except Exception as e:  # noqa: BLE001 - reported in the table (e.g. torch.compile without a compiler)
            return dict(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])
    cmd = [sys.executable, "-m", "di_jax.bench", "--_cell", json.dumps(cell)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("@@CELL "):
            return json.loads(line[len("@@CELL "):])
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return dict(error=f"exit {p.returncode}: {tail}"[:200])


# ----------------------------------------------------------------------------------------------
# table

def _fmt(v, spec="{:.2f}"):
    if v is None:
        return "n/a"
    return spec.format(v) if isinstance(v, (int, float)) else str(v)


def markdown(result: dict) -> str:
    peaks = result["peak_tflops"] or {}
    peak_text = ", ".join(f"{k} {v:g}" for k, v in peaks.items()) or "n/a"
    lines = [f"device: {result['device']}; jax {result['jax_version']}, torch {result.get('torch_version', 'n/a')}; "
             f"{result['steps']} timed steps after {result['warmup']} warm-up; peak TFLOP/s {peak_text}; "
             f"host load average {_fmt(result.get('load_avg_start') and result['load_avg_start'][0])} (start) "
             f"{_fmt(result.get('load_avg_end') and result['load_avg_end'][0])} (end)",
             "",
             "| config | method | batch | prec | remat | compile s | median ms | img/s | pipelined img/s | peak MiB "
             "| XLA MiB | GFLOP/step | TFLOP/s | MFU | torch eager img/s | JAX/eager | torch.compile img/s "
             "| JAX/compile | torch eager peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        j = r["jax"]
        te, tc = r.get("torch-eager"), r.get("torch-compile")
        key = f"| {r['config']} | {r['method']} | {r['batch']} | {r['precision']} | {r['remat']} "
        if "error" in j:
            jcols = f"| error: {j['error']} " + "| " * 8       # compile s holds the error; 8 more columns
        else:
            mfu = None if j.get("mfu") is None else 100 * j["mfu"]
            jcols = (f"| {j['compile_s']:.1f} | {j['median_ms']:.1f} | {j['images_per_s']:.2f} "
                     f"| {j['pipelined_images_per_s']:.2f} | {_fmt(j['peak_mem_mib'], '{:.0f}')} ({j['peak_mem_kind']}) "
                     f"| {_fmt(j['xla_mem_mib'], '{:.0f}')} "
                     f"| {_fmt(None if j['flops_per_step'] is None else j['flops_per_step'] / 1e9, '{:.1f}')} "
                     f"| {_fmt(None if j['flops_per_s'] is None else j['flops_per_s'] / 1e12, '{:.3f}')} "
                     f"| {_fmt(mfu, '{:.1f}%')} ")

        def tcols(t, ratio_key):
            if t is None:
                return "| not run | n/a "
            if "error" in t:
                return f"| error: {t['error']} | n/a "
            return f"| {t['images_per_s']:.2f} | {_fmt(r.get(ratio_key), '{:.2f}x')} "
        mem = "n/a" if te is None or "error" in te else f"{_fmt(te['peak_mem_mib'], '{:.0f}')} ({te['peak_mem_kind']})"
        lines.append(key + jcols + tcols(te, "ratio_eager") + tcols(tc, "ratio_compile") + f"| {mem} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# command line

def _csv(choices=None, type_=str):
    def parse(text):
        items = [type_(t) for t in text.split(",") if t]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        if choices is not None:
            bad = [t for t in items if t not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(choices)}")
        return items
    return parse


def _positive_ints(text):
    items = _csv(type_=int)(text)
    if any(b <= 0 for b in items):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive; got {text}")
    return items


def _peaks(text):
    """'989' -> {'fp32': 989, 'bf16': 989}; 'bf16=989,fp32=495' -> that mapping."""
    try:
        if "=" not in text:
            value = float(text)
            peaks = {p: value for p in PRECISIONS}
        else:
            peaks = {k.strip(): float(v) for k, v in (item.split("=", 1) for item in text.split(",") if item)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'bf16=N,fp32=M'; got {text!r}") from None
    bad = [k for k in peaks if k not in PRECISIONS]
    if bad or not all(v > 0 for v in peaks.values()):
        raise argparse.ArgumentTypeError(f"peaks must be positive, keys in {PRECISIONS}; got {text!r}")
    return peaks


def build_parser(prog="di-jax bench"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=_csv(tuple(_CONFIGS)), default=["cifar10-ddpmpp"],
                   help=f"network config(s), comma-separated: {', '.join(_CONFIGS)}")
    p.add_argument("--method", type=_csv(METHODS), default=["di"], help="di, sim (comma-separated)")
    p.add_argument("--batch", type=_positive_ints, default=[8], help="global batch size(s), comma-separated")
    p.add_argument("--precision", type=_csv(PRECISIONS), default=["fp32"], help="fp32, bf16 (comma-separated)")
    p.add_argument("--remat", type=_csv(REMATS), default=["none"], help="none, generator, all (JAX only)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per cell (>= 1; 20 for reported numbers)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    p.add_argument("--pipelined-steps", type=int, default=None,
                   help="steps dispatched back to back for the 'pipelined' column (default: --steps)")
    p.add_argument("--devices", type=int, default=1, help="JAX devices in the data-parallel mesh (0: all)")
    p.add_argument("--torch", type=_csv(TORCH_MODES + ("none",)), default=["eager", "compile"],
                   help="PyTorch reference columns: eager, compile, or none")
    p.add_argument("--torch-device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--peak-tflops", type=_peaks, default=None,
                   help="device peak TFLOP/s for MFU: one number, or per precision 'bf16=989,fp32=495' "
                        "(H100 SXM dense: bf16 989, TF32 495, plain fp32 67)")
    p.add_argument("--json", default=None, help="write all numbers to this JSON file")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="one subprocess per cell (default: on when more than one cell)")
    p.add_argument("--cell-timeout", type=float, default=1800, help="seconds per isolated cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_cell", default=None, help=argparse.SUPPRESS)
    return p


def run(args) -> dict:
    import jax
    if args.steps < 1 or args.warmup < 0:
        raise BenchError(f"--steps must be >= 1 and --warmup >= 0; got {args.steps}, {args.warmup}")
    devices = args.devices or jax.device_count()
    if devices < 0 or devices > jax.device_count():
        raise BenchError(f"--devices must be in [0, {jax.device_count()}]; got {args.devices}")
    for b in args.batch:
        if b % devices:
            raise BenchError(f"batch {b} is not divisible by the number of devices ({devices})")
    torch_modes = [] if "none" in args.torch else args.torch
    combos = [(c, m, b, p, r) for c in args.config for m in args.method for b in args.batch
              for p in args.precision for r in args.remat]
    isolate = args.isolate if args.isolate is not None else len(combos) * (1 + len(torch_modes)) > 1
    result = dict(device=_device_name(), jax_version=jax.__version__, peak_tflops=args.peak_tflops,
                  load_avg_start=os.getloadavg() if hasattr(os, "getloadavg") else None,
                  steps=args.steps, warmup=args.warmup, devices=devices, isolated=isolate,
                  command=" ".join(["di-jax bench"] + sys.argv[1:]) if args._cell is None else None, rows=[])
    try:
        import torch
        result["torch_version"] = torch.__version__
    except ImportError:
        torch_modes = []
    torch_done = {}
    for c, m, b, p, r in combos:
        base = dict(config=c, method=m, batch=b, precision=p, steps=args.steps, warmup=args.warmup,
                    seed=args.seed, devices=devices, remat=r, torch_device=args.torch_device,
                    pipelined_steps=args.pipelined_steps)
        row = dict(config=c, method=m, batch=b, precision=p, remat=r)
        print(f"[bench] {c} {m} batch {b} {p} remat={r}: jax ...", file=sys.stderr, flush=True)
        row["jax"] = _cell(dict(base, kind="jax"), isolate, args.cell_timeout)
        for mode in torch_modes:
            key = (c, m, b, p, mode)       # remat is JAX-only: reuse the PyTorch cell
            if key not in torch_done:
                print(f"[bench] {c} {m} batch {b} {p}: torch-{mode} ...", file=sys.stderr, flush=True)
                torch_done[key] = _cell(dict(base, kind=f"torch-{mode}"), isolate, args.cell_timeout)
            row[f"torch-{mode}"] = torch_done[key]
            t, j = torch_done[key], row["jax"]
            if "error" not in t and "error" not in j:
                row[f"ratio_{mode}"] = round(j["images_per_s"] / t["images_per_s"], 3)
        peak = (args.peak_tflops or {}).get(p)
        if peak and "error" not in row["jax"] and row["jax"]["flops_per_s"]:
            row["jax"]["mfu"] = row["jax"]["flops_per_s"] / (peak * 1e12)
        result["rows"].append(row)
        if args.json:                      # partial results survive an interrupted long run
            _write_json(args.json, dict(result, partial=True))
    result["load_avg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return result


def _write_json(path, result) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    parser = build_parser(argv[0] if argv else "di-jax bench")
    args = parser.parse_args(argv[1:])
    if args._cell is not None:
        print("@@CELL " + json.dumps(_run_cell(json.loads(args._cell))), flush=True)
        return 0
    if args.isolate is False:
        # JAX and PyTorch share the device in one process: do not let XLA grab 75% of a GPU up front.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        result = run(args)
    except BenchError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(markdown(result))
    if args.json:
        print(f"\nwrote {_write_json(args.json, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
