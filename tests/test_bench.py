"""`di-jax bench` on the tiny config (JAX + PyTorch eager, few steps): table and JSON fields, bad inputs,
the optional PyTorch plug-in. No timing assertions. Also: the remat option leaves the step's numbers unchanged."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from di_jax import bench
from di_jax.bench import torch_cell
from di_jax.configs import toy_ring
from di_jax.train.setup import setup

HEADER_FIELDS = ["compile s", "median ms", "img/s", "pipelined img/s", "peak MiB", "GFLOP/step", "TFLOP/s", "MFU",
                 "torch eager img/s", "JAX/eager", "torch.compile img/s", "JAX/compile"]


def test_bench_tiny_table_and_json(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    rc = bench.main(["di-jax bench", "--config", "tiny", "--method", "di", "--batch", "2", "--steps", "2",
                     "--warmup", "1", "--torch", "eager", "--no-isolate", "--peak-tflops", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("| config"))
    for field in HEADER_FIELDS:
        assert f"| {field} |" in header
    row = next(line for line in text.splitlines() if line.startswith("| tiny"))
    assert row.count("|") == header.count("|") and "error" not in row
    assert text.startswith("device: cpu") or text.startswith("device: ")
    result = json.loads(out.read_text())
    assert result["steps"] == 2 and result["peak_tflops"] == {"fp32": 1, "bf16": 1} and result["device"]
    (r,) = result["rows"]
    assert (r["config"], r["method"], r["batch"], r["precision"], r["remat"]) == ("tiny", "di", 2, "fp32", "none")
    j, t = r["jax"], r["torch-eager"]
    for key in ("compile_s", "median_ms", "images_per_s", "pipelined_images_per_s", "flops_per_step",
                "flops_per_s", "mfu", "peak_mem_mib", "peak_mem_kind", "xla_mem_mib"):
        assert key in j, key
    assert j["flops_per_step"] > 0 and j["images_per_s"] > 0 and 0 < j["mfu"] and j["finite_loss"]
    assert t["images_per_s"] > 0 and t["flops_per_step"] > 0 and t["finite_loss"]
    assert j["params"] == t["params"]                 # same network on both sides
    assert r["ratio_eager"] == pytest.approx(j["images_per_s"] / t["images_per_s"], rel=1e-2)
    # XLA's and torch's FLOP counts of one step agree to within the generator-recompute difference
    assert 0.5 < j["flops_per_step"] / t["flops_per_step"] < 1.5


@pytest.mark.parametrize("argv, message", [
    (["--config", "nope"], "unknown"),
    (["--method", "nope"], "unknown"),
    (["--batch", "0"], "positive"),
    (["--precision", "fp16"], "unknown"),
    (["--peak-tflops", "fp16=3"], "peaks must be"),
    (["--peak-tflops", "-1"], "peaks must be"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["di-jax bench"] + argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_batch_not_divisible_by_devices(capsys):
    assert jax.device_count() == 8    # conftest's simulated devices
    rc = bench.main(["di-jax bench", "--config", "tiny", "--batch", "3", "--devices", "8", "--torch", "none"])
    assert rc == 2
    assert "not divisible by the number of devices (8)" in capsys.readouterr().err


def test_network_config_errors_and_names():
    with pytest.raises(bench.BenchError, match="unknown network config"):
        bench.network_config("cifar11")
    assert bench.network_config("cifar10-ddpmpp")["model_channels"] == 128
    assert bench.network_config("imagenet64-adm")["model_type"] == "DhariwalUNet"


def test_markdown_reports_cell_errors():
    result = dict(device="cpu: x", jax_version="0", torch_version="0", peak_tflops=None, steps=20, warmup=3,
                  rows=[dict(config="tiny", method="sim", batch=2, precision="bf16", remat="all",
                             jax=dict(error="boom"), **{"torch-compile": dict(error="InductorError: no cc")})])
    text = bench.markdown(result)
    assert "error: boom" in text and "error: InductorError: no cc" in text and "not run" in text
    header, row = [l for l in text.splitlines() if l.startswith("| config")][0], text.splitlines()[-1]
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]
    assert len(cells(row)) == len(cells(header))        # an error cell must not shift the later columns
    assert dict(zip(cells(header), cells(row)))["torch eager img/s"] == "not run"


def test_import_needs_neither_torch_nor_jax():
    code = "import sys, di_jax.bench; assert 'torch' not in sys.modules and 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_m_entry_point():
    p = subprocess.run([sys.executable, "-m", "di_jax.bench", "--help"], capture_output=True, text=True, check=True)
    assert p.stdout.startswith("usage: di-jax bench") and "--torch" in p.stdout and "sid" in p.stdout


def test_torch_cells_without_torch(monkeypatch):
    """Without the torch extra a PyTorch cell is a one-line error naming the fix, in its table cell."""
    monkeypatch.setattr(torch_cell, "torch_version", lambda: None)
    assert torch_cell.unsupported("di") == torch_cell.UNAVAILABLE
    monkeypatch.setitem(sys.modules, "torch", None)          # `import torch` raises ImportError
    with pytest.raises(RuntimeError, match=r"PyTorch reference unavailable: install di_jax\[torch\]"):
        bench.run_torch("tiny", "di", 2, "fp32")
    result = dict(device="cpu: x", jax_version="0", peak_tflops=None, steps=2, warmup=1,
                  rows=[dict(config="tiny", method="di", batch=2, precision="fp32", remat="none",
                             jax=dict(error="skipped"), **{"torch-eager": dict(error=torch_cell.UNAVAILABLE)})])
    row = bench.markdown(result).splitlines()[-1]
    assert "| error: PyTorch reference unavailable: install di_jax[torch]" in row and "\n" not in row


def test_torch_cells_of_unported_methods():
    assert torch_cell.unsupported("sid").startswith("the PyTorch reference implements di, sim only")


@pytest.mark.parametrize("remat", ["generator", "all"])
def test_remat_does_not_change_the_step(remat):
    config = toy_ring.get_config("sim")
    config.batch_size, config.networks.hidden, config.num_devices = 32, 16, 1

    def run(mode):
        config.remat = mode
        s = setup(config, compile=False)
        state = s.state
        for _ in range(2):
            state, _ = s.step(state, s.teacher_params)
        return jax.device_get(state)

    a, b = run("none"), run(remat)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_bad_remat_is_a_config_error():
    config = toy_ring.get_config("sim")
    config.remat = "sometimes"
    with pytest.raises(ValueError, match="config.remat"):
        setup(config, compile=False)


def test_trace_writes_a_profile_per_cell(tmp_path, capsys):
    rc = bench.main(["di-jax bench", "--config", "tiny", "--method", "sim", "--batch", "2", "--steps", "1",
                     "--warmup", "0", "--torch", "none", "--no-isolate", "--trace", str(tmp_path / "traces"),
                     "--json", str(tmp_path / "b.json")])
    assert rc == 0
    (row,) = json.loads((tmp_path / "b.json").read_text())["rows"]
    cell_dir = row["jax"]["trace"]
    assert cell_dir.startswith(str(tmp_path / "traces")) and "tiny_sim_b2_fp32" in cell_dir
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(cell_dir, "plugins", "profile")) for f in fs]
    assert any(f.endswith(".xplane.pb") and os.path.getsize(f) > 0 for f in files), files
