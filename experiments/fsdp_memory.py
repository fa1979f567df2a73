"""Per-device memory and compile time of the train step: replicated vs FSDP, and gradient accumulation.

    python experiments/fsdp_memory.py                                      # CIFAR-10 DDPM++, fsdp 1,2,4,8
    python experiments/fsdp_memory.py --network imagenet64-adm --fsdp 1,8
    python experiments/fsdp_memory.py --fsdp 1 --grad-accum 1,4 --batch 32  # micro-batches

Ahead-of-time only: the step is lowered from abstract arrays (shapes, dtypes and shardings; no weights
are made) on 8 simulated CPU devices and compiled; XLA's `compiled.memory_analysis()` gives the bytes
of one device's program: arguments (state + teacher), temporaries (activations, gathered weights,
gradients) and outputs (aliased with the donated state). Prints a markdown table and writes
`experiments/results/<name>.md` / `.json`.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from di_jax.bench.jax_cell import bench_config  # noqa: E402
from di_jax.bench.networks import NETWORKS, network_config, param_shapes  # noqa: E402
from di_jax.nets import build_network  # noqa: E402
from di_jax.nets.families import build_networks  # noqa: E402
from di_jax.teachers.edm import edm_teacher  # noqa: E402
from di_jax.train import flat_update, sharding  # noqa: E402
from di_jax.train.setup import fresh_state  # noqa: E402
from di_jax.train.step import make_train_step  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MIB = 2.0 ** 20


def with_shardings(tree, specs, mesh):
    place = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.NamedSharding(mesh, s))
    return jax.tree.map(place, tree, specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))


def measure(name, method, batch, fsdp, accum, teacher_dtype):
    net_cfg = network_config(name)
    config = bench_config(name, method, batch, "fp32", "none", 8)
    config.mesh.fsdp, config.grad_accum, config.teacher.dtype = fsdp, accum, teacher_dtype
    mesh = sharding.make_mesh(8, fsdp=fsdp)
    module = build_network(net_cfg)
    params = param_shapes(module, net_cfg)
    teacher = edm_teacher(module, params)
    nets = build_networks(config.networks, teacher)
    rules, min_size = sharding.mesh_rules(config)
    state = jax.eval_shape(lambda p: fresh_state(config, nets, p, mesh), params)
    state = with_shardings(state, flat_update.state_specs(state, mesh, rules, min_size), mesh)
    t_dtype = jax.numpy.dtype(teacher_dtype)
    t_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, t_dtype), params)
    t_params = with_shardings(t_params, sharding.param_specs(params, mesh, rules, min_size), mesh)
    step = make_train_step(config, nets, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, t_params).compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    row = dict(network=name, method=method, batch=batch, data=8 // fsdp, fsdp=fsdp, grad_accum=accum,
               teacher_dtype=teacher_dtype, params=n_params, compile_s=round(seconds, 1),
               argument_mib=round(m.argument_size_in_bytes / MIB, 1), temp_mib=round(m.temp_size_in_bytes / MIB, 1),
               output_mib=round(m.output_size_in_bytes / MIB, 1), alias_mib=round(m.alias_size_in_bytes / MIB, 1))
    row["argument_plus_temp_mib"] = round(row["argument_mib"] + row["temp_mib"], 1)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", default="cifar10-ddpmpp", choices=sorted(NETWORKS))
    p.add_argument("--method", default="di")
    p.add_argument("--batch", type=int, default=8, help="global batch (8 devices)")
    p.add_argument("--fsdp", default="1,2,4,8", help="fsdp axis sizes (data = 8 / fsdp)")
    p.add_argument("--grad-accum", default="1", help="micro-batches per step")
    p.add_argument("--teacher-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--name", default="", help="results file name (default fsdp_memory_<network>)")
    args = p.parse_args()
    rows = []
    header = ("| network | method | batch | data × fsdp | grad_accum | teacher | compile s | arguments MiB | "
              "temporaries MiB | arguments + temporaries MiB | vs first row |")
    print(header + "\n|" + "---|" * 11, flush=True)
    lines = []
    for fsdp in [int(v) for v in args.fsdp.split(",")]:
        for accum in [int(v) for v in args.grad_accum.split(",")]:
            r = measure(args.network, args.method, args.batch, fsdp, accum, args.teacher_dtype)
            rows.append(r)
            ratio = r["argument_plus_temp_mib"] / rows[0]["argument_plus_temp_mib"]
            line = (f"| {r['network']} ({r['params'] / 1e6:.1f}M) | {r['method']} | {r['batch']} | {r['data']} × "
                    f"{r['fsdp']} | {accum} | {r['teacher_dtype']} | {r['compile_s']} | {r['argument_mib']} | "
                    f"{r['temp_mib']} | {r['argument_plus_temp_mib']} | {ratio:.3f} |")
            lines.append(line)
            print(line, flush=True)
    name = args.name or f"fsdp_memory_{args.network}"
    os.makedirs(RESULTS, exist_ok=True)
    command = "python experiments/fsdp_memory.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v and k != "name")
    with open(os.path.join(RESULTS, name + ".md"), "w") as f:
        f.write(f"# Per-device memory of the compiled train step (XLA memory analysis, 8 CPU devices)\n\n"
                f"Command: `{command}` (jax {jax.__version__}, ahead-of-time from abstract arrays).\n\n"
                + header + "\n|" + "---|" * 11 + "\n" + "\n".join(lines) + "\n")
    with open(os.path.join(RESULTS, name + ".json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
