"""Everything a run needs before its first step, built in one place: `setup(config) -> Setup`.

    s = setup(config)                       # mesh, teacher, networks, fresh state, compiled step
    state = s.state
    for _ in range(n):
        state, metrics = s.compiled(state, s.teacher_params)

The training loop, the benchmark, the experiments and the tests all start here. Each part can be
supplied instead of built (a teacher with random weights for benchmarks, custom networks in tests).
"""

import time
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from di_jax.configs.base import validate
from di_jax.nets.families import Networks, build_networks
from di_jax.teachers import Teacher, build_teacher
from di_jax.train import flat_update, sharding
from di_jax.train.conditions import ConditionSource, make_source
from di_jax.train.state import TrainState, create_state
from di_jax.train.step import make_train_step

PyTree = Any


class Setup(NamedTuple):
    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    teacher: Teacher
    nets: Networks
    teacher_params: PyTree          # teacher.params on the mesh (the step's 2nd argument)
    state: TrainState               # fresh state from config.seed on the mesh
    step: Callable                  # the jitted step(state, teacher_params) -> (state, metrics); it runs
                                    # config.steps_per_call train steps per call (di_jax.train.step)
    compiled: Optional[Callable]    # the same step compiled ahead of time (None with compile=False)
    compile_seconds: float
    conditions: Optional[ConditionSource] = None   # the step's input conditioning (text), None: labels drawn


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The run's data x fsdp mesh over config.num_devices devices (0: all)."""
    fsdp = config.mesh.fsdp if "mesh" in config else 1
    return sharding.make_mesh(config.get("num_devices", 0) or None, fsdp)


def fresh_state(config: ml_collections.ConfigDict, nets: Networks, teacher_params: PyTree,
                mesh: Any) -> TrainState:
    """A fresh state from config.seed (generator and fake initialised by `nets`), not yet placed; its
    optimiser vectors have the layout of `mesh`'s fsdp axis (a Mesh or an AbstractMesh)."""
    k_state, k_gen, k_fake = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    gen, fake = nets.init_generator(k_gen, teacher_params), nets.init_fake(k_fake, teacher_params)
    rules, min_size = sharding.mesh_rules(config)
    gen_up, fake_up = flat_update.make_updates(config, sharding.param_specs(gen, mesh, rules, min_size),
                                               sharding.param_specs(fake, mesh, rules, min_size), mesh)
    return create_state(k_state, gen, fake, gen_up.init, fake_up.init)


def place_state(config: ml_collections.ConfigDict, state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """Puts a host state on the mesh with the run's shardings (`flat_update.state_specs`)."""
    specs = flat_update.state_specs(state, mesh, *sharding.mesh_rules(config))
    return jax.device_put(jax.device_get(state), sharding.named(specs, mesh))


def init_state(config: ml_collections.ConfigDict, nets: Networks, teacher_params: PyTree,
               mesh: Optional[jax.sharding.Mesh] = None) -> TrainState:
    """Fresh state from config.seed, placed on the mesh (replicated, or FSDP-sharded with config.mesh.fsdp > 1)."""
    mesh = mesh or sharding.make_mesh()
    return place_state(config, fresh_state(config, nets, teacher_params, mesh), mesh)


def place_teacher(config: ml_collections.ConfigDict, params: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
    """The teacher's parameters on the mesh: replicated, or FSDP-sharded like the networks; floating
    leaves stored in config.teacher.dtype."""
    host = jax.device_get(params)
    dtype = config.teacher.get("dtype", "float32")
    if dtype != "float32":
        cast = lambda x: x.astype(jnp.dtype(dtype)) if np.issubdtype(np.asarray(x).dtype, np.floating) else x
        host = jax.tree.map(cast, host)
    return sharding.shard_params(host, mesh, *sharding.mesh_rules(config))


def compile_step(step: Callable, state: TrainState, teacher_params: PyTree,
                 *condition: PyTree) -> Tuple[Callable, float]:
    """Ahead-of-time compilation: returns (compiled step, seconds spent lowering + compiling).
    `condition`: the step's conditioning input (arrays or their specs) when its networks take one."""
    t0 = time.perf_counter()
    compiled = step.lower(state, teacher_params, *condition).compile()
    return compiled, time.perf_counter() - t0


def setup(config: ml_collections.ConfigDict, teacher: Optional[Teacher] = None,
          mesh: Optional[jax.sharding.Mesh] = None, nets: Optional[Networks] = None,
          compile: bool = True) -> Setup:
    """Validates the config and builds mesh, teacher, networks, fresh state and the (compiled) step.

    Args:
      config: the run's config.
      teacher: the teacher; default `teachers.build_teacher(config)` (loads checkpoints).
      mesh: the device mesh; default over `config.num_devices` devices (0: all).
      nets: the networks; default `nets.families.build_networks(config.networks, teacher)`.
      compile: compile the step ahead of time (`Setup.compiled`, `Setup.compile_seconds`).
    """
    mesh = mesh or make_mesh(config)
    validate(config, mesh.size)
    teacher = teacher if teacher is not None else build_teacher(config)
    nets = nets if nets is not None else build_networks(config.networks, teacher)
    teacher_params = place_teacher(config, teacher.params, mesh)
    state = init_state(config, nets, teacher.params, mesh)   # networks copied from the teacher stay float32
    per_call = config.get("steps_per_call", 1)
    step = make_train_step(config, nets, mesh, per_call)
    conditions = make_source(config, nets, mesh)
    cond = () if conditions is None else (conditions.spec(per_call),)
    compiled, seconds = compile_step(step, state, teacher_params, *cond) if compile else (None, 0.0)
    return Setup(config, mesh, teacher, nets, teacher_params, state, step, compiled, seconds, conditions)
