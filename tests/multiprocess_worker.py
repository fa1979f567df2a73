"""One process of a (multi-process) training run for tests/test_multiprocess.py.

    python tests/multiprocess_worker.py '{"process_id": 0, "num_processes": 2, "devices": 4, "port": 12355,
                                          "workdir": "...", "num_steps": 8, "out": "final.npz"}'

Runs `train_and_evaluate` on the digits EDM config with the teacher `teacher` (a tiny SongUNet in the
tests), `devices` CPU devices in this process and a data x fsdp mesh (`fsdp`, default 1);
with num_processes > 1 it joins the others through `jax.distributed` (gloo CPU collectives, coordinator
on 127.0.0.1:port). Writes `<workdir>/progress_<process_id>` (the last finished step) after every step
and, on process 0, the final state's leaves to `out` (npz, keyed by tree path).
"""

import json
import os
import sys

opts = json.loads(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={opts['devices']}"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from di_jax.configs import digits_sim  # noqa: E402


def config():
    c = digits_sim.get_config("sim")
    c.batch_size = 16
    c.num_steps = opts["num_steps"]
    c.ckpt_every = opts.get("ckpt_every", 4)
    c.log_every = 2
    c.eval.kind = "none"
    c.num_samples = 16
    c.fake_steps = 1
    c.teacher.path = opts["teacher"]
    c.mesh.fsdp = opts.get("fsdp", 1)
    c.mesh.min_shard_size = 256
    if opts["num_processes"] > 1:
        c.distributed = True
        c.cluster.update(coordinator=f"127.0.0.1:{opts['port']}", num_processes=opts["num_processes"],
                         process_id=opts["process_id"])
    return c


def main():
    cfg = config()
    from di_jax.train import distributed

    distributed.initialize(cfg)             # first JAX call of the process (what train_and_evaluate does too)
    import jax

    if opts.get("cache"):                   # the runs of one test share compiled steps
        jax.config.update("jax_compilation_cache_dir", opts["cache"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

    from di_jax.train import loop

    progress = os.path.join(opts["workdir"], f"progress_{opts['process_id']}")

    def on_step(step, state):
        with open(progress + ".tmp", "w") as f:
            f.write(str(step))
        os.replace(progress + ".tmp", progress)

    os.makedirs(opts["workdir"], exist_ok=True)
    state = loop.train_and_evaluate(cfg, opts["workdir"], on_step=on_step)
    host = distributed.host_copy(state)
    if jax.process_index() == 0 and opts.get("out"):
        flat = jax.tree_util.tree_flatten_with_path(host)[0]
        np.savez(opts["out"], **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
    print(f"process {jax.process_index()}/{jax.process_count()} on {jax.device_count()} devices: "
          f"step {int(host.step)}", flush=True)


if __name__ == "__main__":
    main()
