"""Test setup: 4 fake CPU devices, the shared corpora, and small configs.

XLA_FLAGS must be set before jax is imported anywhere, so it happens here at import.
"""

import os
import pathlib
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for every test process and the trainers they start:
# the same small programs compile in dozens of them (a warm cache cuts a tiny trainer
# subprocess from 13 s to 9 s). Keys are content hashes, so entries never go stale.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(pathlib.Path(tempfile.gettempdir()) / f"charrnn_jax_test_cache_{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

REPO = pathlib.Path(__file__).resolve().parents[1]
_DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
if "CHARRNN_DATA_DIR" not in os.environ and _DEFAULT_DATA_DIR.is_dir():
    os.environ["CHARRNN_DATA_DIR"] = str(_DEFAULT_DATA_DIR)

import pytest  # noqa: E402

DATA_DIR = pathlib.Path(os.environ.get("CHARRNN_DATA_DIR", _DEFAULT_DATA_DIR))


def load_experiment(name: str, preset: str | None = None):
    """get_config(preset) of experiments/<name>.py, as config_flags would load it."""
    from charrnn_jax import config_lib

    return config_lib.load_config_file(REPO / "experiments" / f"{name}.py", preset)


def tiny_config(**overrides):
    """A seconds-fast variant of experiments/shakespeare.py:tiny; keys like 'train.num_steps'."""
    from charrnn_jax import config_lib

    config = load_experiment("shakespeare", "tiny")
    small = {
        "model.embed_dim": 16,
        "model.hidden_size": 32,
        "data.seq_len": 32,
        "train.batch_size": 8,
        "train.num_steps": 6,
        "train.log_every": 2,
        "train.eval_every": 3,
        "train.eval_batches": 2,
        "train.checkpoint_every": 3,
        "sample.length": 0,
    }
    small.update(overrides)
    return config_lib.with_overrides(config, small)


def tiny_overrides(**overrides) -> list[str]:
    """The same tiny settings as command-line flags for subprocess runs."""
    from charrnn_jax import config_lib

    config = tiny_config(**overrides)
    keys = [
        "model.embed_dim",
        "model.hidden_size",
        "data.seq_len",
        "train.batch_size",
        "train.num_steps",
        "train.log_every",
        "train.eval_every",
        "train.eval_batches",
        "train.checkpoint_every",
        "sample.length",
        *overrides,
    ]
    flags = []
    values = config_lib.flatten(config)
    for key in dict.fromkeys(keys):
        flags.append(f"--config.{key}={values[key]}")
    return flags


# A config file for sweep tests: seconds-fast runs; append a sweep function to it.
TINY_SWEEP_CONFIG = f"""
import pathlib
from charrnn_jax import config_lib

def get_config(arg=None):
    config = config_lib.load_config_file(
        pathlib.Path({str(REPO / "experiments" / "shakespeare.py")!r}), "tiny"
    )
    config.model.embed_dim, config.model.hidden_size = 8, 16
    config.data.seq_len, config.train.batch_size = 16, 4
    config.train.num_steps, config.train.log_every, config.train.eval_every = 4, 2, 2
    config.train.eval_batches, config.train.checkpoint_every, config.sample.length = 1, 4, 0
    return config
"""


@pytest.fixture
def shakespeare_path() -> pathlib.Path:
    path = DATA_DIR / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.fail(
            f"Set CHARRNN_DATA_DIR to a folder with tinyshakespeare.txt (tried {DATA_DIR})."
        )
    return path


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(REPO), "CHARRNN_DATA_DIR": str(DATA_DIR)}, **extra)
    return env


def main_command(workdir, *extra, **overrides) -> list[str]:
    """`python -m charrnn_jax.main` on the tiny settings, as a subprocess argv."""

    from charrnn_jax.runtime import cli

    config = f"{REPO / 'experiments' / 'shakespeare.py'}:tiny"
    return cli.trainer_command(config, workdir, None, *tiny_overrides(**overrides), *extra)


def assert_sigkill_resume_is_exact(tmp_path, **overrides):
    """Trains `overrides` whole and again SIGKILLed once checkpoint 10 exists, then resumed:
    the resumed run's rows (but timings) and params equal the uninterrupted run's."""
    import signal
    import subprocess
    import time

    import jax
    import numpy as np

    from charrnn_jax.inference import loading
    from charrnn_jax.store import metric_logging

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    env = subprocess_env()
    done = subprocess.run(
        main_command(whole, **overrides), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    proc = subprocess.Popen(
        main_command(killed, **overrides),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "10").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    again = subprocess.run(
        main_command(killed, **overrides), env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "Resumed from checkpoint step" in again.stderr

    def rows(workdir):
        keep = [k for k in metric_logging.FIELDS if k not in ("wall_time", "tokens_per_sec")]
        return [
            {k: r[k] for k in keep} for r in metric_logging.read_jsonl(workdir / "metrics.jsonl")
        ]

    assert rows(killed) == rows(whole)
    for a, b in zip(
        jax.tree.leaves(loading.load_for_inference(killed)[2]),
        jax.tree.leaves(loading.load_for_inference(whole)[2]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
