"""What `pip install` ships: every package folder, the experiments as
charrnn_jax.experiments (so `--config=shakespeare` works from any directory), and no
top-level `launch` package."""

import subprocess
import sys
import tomllib

import pytest
from conftest import REPO, subprocess_env

from charrnn_jax.runtime import cli


def test_the_package_list_names_every_package_folder():
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "charrnn_jax").rglob("__init__.py")
    }
    assert listed == folders | {"charrnn_jax.experiments"}


def test_a_shipped_experiment_is_found_by_name_with_its_preset():
    shipped = cli.shipped_experiments()
    assert {"shakespeare", "shakespeare_nanogpt", "shakespeare_headline"} <= set(shipped)
    assert cli.named_config("shakespeare:tiny") == f"{shipped['shakespeare']}:tiny"
    assert cli.named_config("experiments/shakespeare.py:tiny") == "experiments/shakespeare.py:tiny"
    with pytest.raises(SystemExit, match="no shipped experiment of that name"):
        cli.named_config("shakespeer")


@pytest.mark.slow
def test_the_wheel_runs_a_named_config_from_another_directory(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        timeout=600,
        cwd=tmp_path,
    )
    wheel = next(wheels.glob("charrnn_jax-*.whl"))
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=600
    )
    assert (target / "charrnn_jax" / "experiments" / "shakespeare.py").is_file()
    assert not (target / "launch").exists()
    elsewhere.mkdir()
    env = subprocess_env(PYTHONPATH=str(target))  # The wheel's code, not the clone's.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "charrnn_jax.main",
            "--config=shakespeare:tiny",
            f"--workdir={tmp_path / 'run'}",
            "--config.train.num_steps=4",
            "--config.train.log_every=2",
            "--config.sample.length=0",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    where = subprocess.run(
        [sys.executable, "-c", "import charrnn_jax; print(charrnn_jax.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip().startswith(str(target))


@pytest.mark.parametrize("cuda, extra", [(None, "jax[cuda13]"), ("cuda12", "jax[cuda12]")])
def test_setup_gpu_installs_jaxs_cuda_build_into_the_projects_venv(cuda, extra):
    """As far as a CPU can test it: the command `make setup-gpu` would run, after setup."""
    env = subprocess_env(**({"JAX_CUDA": cuda} if cuda else {}))
    for inherited in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS"):  # Under `make test` too.
        env.pop(inherited, None)
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "setup-gpu"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().splitlines()[-1] == f'.venv/bin/pip install -q -U "{extra}"'
