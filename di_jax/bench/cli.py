"""`di-jax bench`: the command line. Parses the grid of cells, runs each (in a subprocess with
`--isolate`), adds ratios and MFU, prints the markdown table and writes the JSON file.

An isolated cell is `python -m di_jax.bench --_cell JSON`; it prints one `@@CELL {...}` line.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
from typing import Optional

import di_jax
from di_jax.bench.jax_cell import PRECISIONS, run_jax
from di_jax.bench.measure import device_name
from di_jax.bench.networks import AOT_ONLY, NETWORKS, BenchError
from di_jax.bench.table import markdown
from di_jax.bench.torch_cell import TORCH_MODES, run_torch, torch_version, unsupported

DESCRIPTION = "`di-jax bench`: throughput of the full compiled distillation train step, next to a PyTorch reference."


# ----------------------------------------------------------------------------------------------
# cells, in this process or in a subprocess

def run_cell(cell: dict) -> dict:
    """Runs one cell dict (kind 'jax', 'torch-eager' or 'torch-compile') here; returns its numbers."""
    kind = cell["kind"]
    common = dict(name=cell["config"], method=cell["method"], batch=cell["batch"], precision=cell["precision"],
                  steps=cell["steps"], warmup=cell["warmup"], seed=cell["seed"])
    if kind == "jax":
        return run_jax(remat=cell["remat"], devices=cell["devices"], pipelined_steps=cell.get("pipelined_steps"),
                       trace=cell.get("trace"), **common)
    return run_torch(mode=kind.split("-", 1)[1], device=cell.get("torch_device"), **common)


def _error(e: BaseException) -> dict:
    return dict(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])


def _subprocess_env() -> dict:
    """The environment of an isolated cell: the directory holding this `di_jax` first on its path."""
    root = str(pathlib.Path(di_jax.__file__).resolve().parents[1])
    path = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path))


def cell(spec: dict, isolate: bool, timeout: Optional[float]) -> dict:
    """Runs one cell; any failure becomes {'error': message} so the table still prints."""
    if not isolate:
        try:
            return run_cell(spec)
        except BenchError:
            raise
        except Exception as e:  # noqa: BLE001 - reported in the table (e.g. torch.compile without a compiler)
            return _error(e)
    cmd = [sys.executable, "-m", "di_jax.bench", "--_cell", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_subprocess_env())
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("@@CELL "):
            return json.loads(line[len("@@CELL "):])
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return dict(error=f"exit {p.returncode}: {tail}"[:200])


# ----------------------------------------------------------------------------------------------
# arguments

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
        raise argparse.ArgumentTypeError(f"peaks must be positive, keys in {tuple(PRECISIONS)}; got {text!r}")
    return peaks


def build_parser(prog: str = "di-jax bench") -> argparse.ArgumentParser:
    """The `di-jax bench` argument parser (choices from the method registry and REMAT_MODES)."""
    from di_jax import methods
    from di_jax.configs.base import REMAT_MODES

    method_names = tuple(methods.METHODS)
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=_csv(tuple(NETWORKS)), default=["cifar10-ddpmpp"],
                   help=f"network config(s), comma-separated: {', '.join(NETWORKS)}")
    p.add_argument("--method", type=_csv(method_names), default=["di"],
                   help=f"{', '.join(method_names)} (comma-separated; the PyTorch reference has di, sim)")
    p.add_argument("--batch", type=_positive_ints, default=[8], help="global batch size(s), comma-separated")
    p.add_argument("--precision", type=_csv(tuple(PRECISIONS)), default=["fp32"],
                   help=f"{', '.join(PRECISIONS)} (comma-separated)")
    p.add_argument("--remat", type=_csv(REMAT_MODES), default=["none"],
                   help=f"{', '.join(REMAT_MODES)} (JAX only)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per cell (>= 1; 20 for reported numbers)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    p.add_argument("--pipelined-steps", type=int, default=None,
                   help="steps dispatched back to back for the 'pipelined' column (default: --steps)")
    p.add_argument("--devices", type=int, default=1, help="JAX devices in the data-parallel mesh (0: all)")
    p.add_argument("--torch", type=_csv(TORCH_MODES + ("none",)), default=["eager", "compile"],
                   help="PyTorch reference columns: eager, compile, or none (needs di_jax[torch])")
    p.add_argument("--torch-device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--peak-tflops", type=_peaks, default=None,
                   help="device peak TFLOP/s for MFU: one number, or per precision 'bf16=989,fp32=495' "
                        "(H100 SXM dense: bf16 989, TF32 495, plain fp32 67)")
    p.add_argument("--json", default=None, help="write all numbers to this JSON file")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="one subprocess per cell (default: on when more than one cell)")
    p.add_argument("--cell-timeout", type=float, default=1800, help="seconds per isolated cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trace", default=None, metavar="DIR",
                   help="also profile 3 steps of each JAX cell into DIR/<cell>/ (tensorboard --logdir DIR)")
    p.add_argument("--aot", action="store_true",
                   help="compile only (no weights, nothing runs): per-device memory and GFLOPs of each step "
                        "(di_jax.bench.aot); the only mode for " + ", ".join(AOT_ONLY))
    p.add_argument("--fit-gb", type=lambda t: [float(x) for x in t.split(",") if x], default=None,
                   help="with --aot: the largest batch whose per-device memory fits each of these GiB (e.g. 16,80)")
    p.add_argument("--fsdp", type=int, default=1, help="with --aot: size of the mesh's fsdp axis")
    p.add_argument("--grad-accum", type=int, default=1, help="with --aot: micro-batches per step")
    p.add_argument("--_cell", default=None, help=argparse.SUPPRESS)
    return p


# ----------------------------------------------------------------------------------------------
# the grid

def _load_avg():
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def run(args, command: Optional[str] = None) -> dict:
    """Runs every cell of the parsed arguments; returns the result dict (what --json writes)."""
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
    result = dict(device=device_name(), jax_version=jax.__version__, peak_tflops=args.peak_tflops,
                  load_avg_start=_load_avg(), steps=args.steps, warmup=args.warmup, devices=devices,
                  isolated=isolate, command=command, rows=[])
    if torch_version() is not None:
        result["torch_version"] = torch_version()
    torch_done = {}
    for c, m, b, p, r in combos:
        base = dict(config=c, method=m, batch=b, precision=p, steps=args.steps, warmup=args.warmup,
                    seed=args.seed, devices=devices, remat=r, torch_device=args.torch_device,
                    pipelined_steps=args.pipelined_steps, trace=args.trace and os.path.abspath(args.trace))
        row = dict(config=c, method=m, batch=b, precision=p, remat=r)
        print(f"[bench] {c} {m} batch {b} {p} remat={r}: jax ...", file=sys.stderr, flush=True)
        row["jax"] = cell(dict(base, kind="jax"), isolate, args.cell_timeout)
        for mode in torch_modes:
            key = (c, m, b, p, mode)       # remat is JAX-only: reuse the PyTorch cell
            if key not in torch_done:
                why_not = unsupported(m)
                if why_not:
                    torch_done[key] = dict(error=why_not)
                else:
                    print(f"[bench] {c} {m} batch {b} {p}: torch-{mode} ...", file=sys.stderr, flush=True)
                    torch_done[key] = cell(dict(base, kind=f"torch-{mode}"), isolate, args.cell_timeout)
            row[f"torch-{mode}"] = torch_done[key]
            t, j = torch_done[key], row["jax"]
            if "error" not in t and "error" not in j:
                row[f"ratio_{mode}"] = round(j["images_per_s"] / t["images_per_s"], 3)
        peak = (args.peak_tflops or {}).get(p)
        if peak and "error" not in row["jax"] and row["jax"]["flops_per_s"]:
            row["jax"]["mfu"] = row["jax"]["flops_per_s"] / (peak * 1e12)
        result["rows"].append(row)
        if args.json:                      # partial results survive an interrupted long run
            write_json(args.json, dict(result, partial=True))
    result["load_avg_end"] = _load_avg()
    return result


def write_json(path, result: dict) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path


def main(argv=None) -> int:
    """`di-jax bench`. argv[0] is the program name (default: sys.argv). Returns the exit status."""
    argv = list(sys.argv if argv is None else argv)
    parser = build_parser(argv[0] if argv else "di-jax bench")
    args = parser.parse_args(argv[1:])
    if args._cell is not None:
        print("@@CELL " + json.dumps(run_cell(json.loads(args._cell))), flush=True)
        return 0
    if args.isolate is False:
        # JAX and PyTorch share the device in one process: do not let XLA grab 75% of a GPU up front.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        if args.aot:
            from di_jax.bench.aot import aot_markdown, run_aot
            result = dict(run_aot(args), command=" ".join([parser.prog] + argv[1:]))
        else:
            aot_only = [c for c in args.config if c in AOT_ONLY]
            if aot_only:
                raise BenchError(f"{', '.join(aot_only)} can only be sized ahead of time: add --aot")
            result = run(args, command=" ".join([parser.prog] + argv[1:]))
    except BenchError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(aot_markdown(result) if args.aot else markdown(result))
    if args.json:
        print(f"\nwrote {write_json(args.json, result)}")
    return 0
