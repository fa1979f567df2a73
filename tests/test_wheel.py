"""The package as a user installs it: a wheel in a fresh virtual environment, used from another directory.

The wheel is built from a copy of the sources (the repository stays clean) and installed with
`--no-deps` into a new venv whose dependencies come from this environment's site-packages (a .pth
path entry: the editable install of di_jax there is not activated, so `di_jax` can only come from the
wheel). From a directory outside the repository, `di-jax distill` runs 2 steps of the main job (with a
tiny stand-in teacher, so that compiling takes seconds) and `di-jax sample` draws from that run.
"""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import jax
import jax.numpy as jnp
import pytest

from di_jax.convert import save_safetensors
from di_jax.nets import build_network
from di_jax.teachers import digits as digits_teacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TEACHER = dict(digits_teacher.CONFIG, model_channels=8, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[])


def _run(cmd, cwd, env, timeout=600):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    command = " ".join(map(str, cmd))
    assert p.returncode == 0, f"{command} exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Builds the wheel from a copy of setup.cfg, pyproject.toml, README, LICENSE, NOTICE and di_jax/."""
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy(os.path.join(REPO, name), src / name)
    shutil.copytree(os.path.join(REPO, "di_jax"), src / "di_jax", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
         cwd=str(src), env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    (path,) = glob.glob(str(out / "di_jax-*.whl"))
    return path


def test_wheel_ships_configs_assets_licences_and_types(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("di_jax/configs/digits_sim.py", "di_jax/configs/cifar10_uncond_sim.py", "di_jax/py.typed",
                     "di_jax/assets/digits_teacher.safetensors", "di_jax/assets/digits_classifier.msgpack",
                     "di_jax/assets/digits_prompts/train/index.json", "di_jax/assets/digits_prompts/heldout/null.npz",
                     "di_jax/assets/digits_t2i_teacher/transformer/diffusion_pytorch_model.safetensors",
                     "di_jax/assets/digits_t2i_teacher/scheduler/scheduler_config.json"):
        assert required in names, required
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert any(n.endswith("NOTICE") for n in names)
    assert not any(n.startswith(("tests/", "experiments/")) for n in names)


def test_installed_wheel_distills_and_samples_outside_the_repository(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bin_dir = venv / "bin"
    (site,) = glob.glob(str(venv / "lib" / "python*" / "site-packages"))
    with open(os.path.join(site, "deps_from_parent.pth"), "w") as f:      # dependencies only
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    work = tmp_path / "elsewhere"
    work.mkdir()
    # the new venv's python runs this environment's pip (found through the .pth): it installs into the
    # new venv, with console scripts pointing at its interpreter; the editable di_jax here is ignored
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
          wheel], cwd=str(work), env=dict(env, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    where = _run([str(bin_dir / "python"), "-c", "import di_jax; print(di_jax.__file__)"], str(work), env).stdout
    assert where.strip().startswith(site), where            # the wheel's copy, not the repository

    net = build_network(TINY_TEACHER)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 8, 8)), jnp.ones((1,)),
                      class_labels=jnp.zeros((1, 10)))["params"]
    teacher = str(tmp_path / "tiny.safetensors")
    save_safetensors(teacher, params, TINY_TEACHER)
    _run([str(bin_dir / "di-jax"), "distill", "--workdir", "run", "--config.num_steps=2", "--config.batch_size=8",
          "--config.num_devices=1", "--config.eval.num=40", "--config.eval.heun_steps=2",
          f"--config.teacher.path={teacher}"], str(work), env)
    assert {"config.json", "metrics.json", "samples_end.png", "checkpoints"} <= set(os.listdir(work / "run"))
    _run([str(bin_dir / "di-jax"), "sample", "run", "--out", "samples", "--seeds", "0-3"], str(work), env)
    assert sorted(f for f in os.listdir(work / "samples") if f.endswith(".png") and f[0].isdigit()) == [
        f"{s:06d}.png" for s in range(4)]
