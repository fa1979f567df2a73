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
import ml_collections

from di_jax.configs.base import validate
from di_jax.nets.families import Networks, build_networks
from di_jax.teachers import Teacher, build_teacher
from di_jax.train import sharding
from di_jax.train.state import TrainState, create_state, make_optimizer
from di_jax.train.step import make_train_step

PyTree = Any


class Setup(NamedTuple):
    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    teacher: Teacher
    nets: Networks
    teacher_params: PyTree          # teacher.params, replicated on the mesh (the step's 2nd argument)
    state: TrainState               # fresh state from config.seed, replicated on the mesh
    step: Callable                  # the jitted step(state, teacher_params) -> (state, metrics); it runs
                                    # config.steps_per_call train steps per call (di_jax.train.step)
    compiled: Optional[Callable]    # the same step compiled ahead of time (None with compile=False)
    compile_seconds: float


def init_state(config: ml_collections.ConfigDict, nets: Networks, teacher_params: PyTree,
               mesh: Optional[jax.sharding.Mesh] = None) -> TrainState:
    """Fresh state from config.seed (generator and fake initialised by `nets`), replicated on the mesh."""
    mesh = mesh or sharding.make_mesh()
    k_state, k_gen, k_fake = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    state = create_state(k_state, nets.init_generator(k_gen, teacher_params),
                         nets.init_fake(k_fake, teacher_params),
                         make_optimizer(config.gen_optim), make_optimizer(config.fake_optim))
    return sharding.replicate(state, mesh)


def compile_step(step: Callable, state: TrainState, teacher_params: PyTree) -> Tuple[Callable, float]:
    """Ahead-of-time compilation: returns (compiled step, seconds spent lowering + compiling)."""
    t0 = time.perf_counter()
    compiled = step.lower(state, teacher_params).compile()
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
    mesh = mesh or sharding.make_mesh(config.get("num_devices", 0) or None)
    validate(config, mesh.size)
    teacher = teacher if teacher is not None else build_teacher(config)
    nets = nets if nets is not None else build_networks(config.networks, teacher)
    teacher_params = sharding.replicate(teacher.params, mesh)
    state = init_state(config, nets, teacher_params, mesh)
    step = make_train_step(config, nets, mesh, config.get("steps_per_call", 1))
    compiled, seconds = compile_step(step, state, teacher_params) if compile else (None, 0.0)
    return Setup(config, mesh, teacher, nets, teacher_params, state, step, compiled, seconds)
