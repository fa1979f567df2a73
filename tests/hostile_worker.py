"""A worker process for the hostile-input tests: runs reader calls one by one and measures each.

    worker = Worker(preload=("di_jax.convert",), headroom_gib=4, start_timeout=180)
    refused(worker, "di_jax.convert:read_checkpoint", path, r"regex")   # one-line CheckpointError
    cli_refused(worker, path, tmp_path, r"regex")                        # `di-jax convert` exits 2

The worker is a long-lived interpreter that imports `preload` first, then runs every call under an
address-space limit (`headroom_gib` above its size once loaded), so a regression fails a test
instead of exhausting the machine. It reports each call's outcome, wall and CPU time and peak memory
(VmHWM, reset before each call, above the resident size before the call; tracemalloc where the
peak cannot be reset). A call that does not return within `call_timeout` seconds is a hang.
"""

import json
import os
import re
import select
import subprocess
import sys

SECONDS, MEMORY_MIB = 5.0, 256
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = r"""
import contextlib, importlib, io, json, resource, sys, time, tracemalloc

opts = json.loads(sys.argv[1])
for module in opts["preload"]:  # everything a call may use is loaded before the baseline
    try:
        importlib.import_module(module)
    except ImportError:
        pass
from di_jax.convert import CheckpointError


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def capped(text):
    return text if opts["text_cap"] is None else text[:opts["text_cap"]]


size = status("VmSize")
if size:  # a safety net: a regression raises MemoryError here rather than swapping the machine out
    limit = size + (opts["headroom_gib"] << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    module, name = req["call"].split(":")
    fn = getattr(importlib.import_module(module), name)
    out, err = io.StringIO(), io.StringIO()
    hwm = reset_peak()
    if not hwm:
        tracemalloc.start()
    rss0, t0, c0 = status("VmRSS"), time.perf_counter(), time.process_time()
    rep = {}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result = fn(*req["args"], **req["kwargs"])
        rep.update(outcome="returned", result=result if isinstance(result, (int, str)) else type(result).__name__)
        if opts["close_results"] and hasattr(result, "close"):
            result.close()
    except BaseException as e:  # noqa: B036  (reported, not handled)
        message = str(e)
        rep.update(outcome="raised", type=type(e).__name__, checkpoint_error=isinstance(e, CheckpointError),
                   message=capped(message), message_length=len(message))
    rep["seconds"], rep["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - c0
    if hwm:
        rep["peak_mib"] = (status("VmHWM") - rss0) / 2**20
    else:
        rep["peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    rep["stderr"] = capped(err.getvalue())
    print(json.dumps(rep), flush=True)
"""


class Worker:
    """A long-lived interpreter that runs one reader call per request and reports time and peak memory.

    Args:
      preload: modules imported before the memory baseline (those missing are skipped).
      headroom_gib: address space allowed above the loaded worker's size.
      start_timeout: seconds the worker may take to start (imports included).
      close_results: call `close()` on a returned object that has one (inside the measured time).
      text_cap: report at most this many characters of a message and of stderr (None: all); a
        message's full length is reported as `message_length`.
      call_timeout: seconds one call may take before it counts as a hang.
    """

    def __init__(self, preload: tuple, headroom_gib: int, start_timeout: float, close_results: bool = False,
                 text_cap: int | None = None, call_timeout: float = 60):
        self.opts = {"preload": list(preload), "headroom_gib": headroom_gib, "close_results": close_results,
                     "text_cap": text_cap}
        self.start_timeout, self.call_timeout = start_timeout, call_timeout
        self.proc = None

    def start(self):
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
        self.proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, json.dumps(self.opts)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT, text=True)
        assert self._reply(self.start_timeout).get("ready")

    def _reply(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.stop()
            raise AssertionError(f"the call did not return within {timeout} s (a hang)")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            raise AssertionError(f"the worker died (exit code {code})")
        return json.loads(line)

    def call(self, call, *args, **kwargs):
        """`module:function(*args, **kwargs)` in the worker; its report (outcome, seconds, peak_mib, ...)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        args = [os.fspath(a) if isinstance(a, os.PathLike) else a for a in args]
        self.proc.stdin.write(json.dumps({"call": call, "args": args, "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._reply(self.call_timeout)

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def bounded(rep):
    """The call took under SECONDS of the worker's CPU time (its own work, whatever else loads the machine;
    a call that never returns is caught by `call_timeout` in wall time) and MEMORY_MIB of peak memory."""
    assert rep["cpu_seconds"] < SECONDS and rep["peak_mib"] < MEMORY_MIB, rep


def refused(worker, call, path, match=None, max_length=None, **kwargs) -> dict:
    """`call(path, **kwargs)` raises a one-line CheckpointError (of at most `max_length` characters),
    in bounded time and memory; returns the worker's report."""
    rep = worker.call(call, path, **kwargs)
    assert rep["outcome"] == "raised" and rep["checkpoint_error"], (call, rep)
    message = rep["message"]
    assert message.strip() and "\n" not in message and "\r" not in message, (call, message)
    assert "Traceback" not in message, (call, message)
    if max_length is not None:
        assert rep["message_length"] <= max_length, (call, rep["message_length"])  # untrusted text is capped
    bounded(rep)
    if match:
        assert re.search(match, message), (call, message)
    return rep


def cli_refused(worker, path, tmp_path, match=None, no_torch=False) -> str:
    """`di-jax convert path tmp_path/converted` prints one error line, returns 2 and writes nothing."""
    out = tmp_path / "converted"
    argv = ["di-jax convert", os.fspath(path), os.fspath(out)] + (["--no-torch"] if no_torch else [])
    rep = worker.call("di_jax.convert.cli:main", argv)
    assert rep["outcome"] == "returned" and rep["result"] == 2, rep
    err = rep["stderr"]
    assert err.startswith("di-jax convert: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (out / "config.json").exists()
    bounded(rep)
    if match:
        assert re.search(match, err), err
    return err
