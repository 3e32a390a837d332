"""Two real processes (2 CPU devices each, gloo collectives) match one process of 4 devices."""

import socket
import subprocess

import numpy as np
import pytest
from conftest import main_command, subprocess_env

from charrnn_jax.store import checkpointing, metric_logging

RUN = {
    "train.num_steps": 6,
    "train.log_every": 1,
    "train.eval_every": 3,
    "train.checkpoint_every": 3,
    "sample.length": 16,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(workdir, mode, *extra):
    return main_command(workdir, *extra, **RUN, **{"data.mode": mode})


def _devices(n):
    return subprocess_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["random", "stream"])
def test_two_processes_match_one_process_of_four_devices(tmp_path, mode):
    """In stream mode the carry is sharded like the batch: each process holds its rows."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    one = subprocess.run(
        _cmd(single, mode), env=_devices(4), capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stderr[-3000:]

    port = _free_port()
    procs = [
        subprocess.Popen(
            _cmd(
                multi,
                mode,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            env=_devices(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "Process 1/2; 2 local devices, 4 global" in outputs[1][1]
    # Only process 0 logs progress and samples.
    assert "step 6/6" in outputs[0][1] and "step 6/6" not in outputs[1][1]
    assert "Sample at step 6" in outputs[0][1] and "Sample at step" not in outputs[1][1]

    def curve(workdir, key):
        return np.array(
            [
                r[key]
                for r in metric_logging.read_jsonl(workdir / "metrics.jsonl")
                if r[key] is not None
            ]
        )

    for key in ("train_loss", "val_loss", "grad_norm"):
        np.testing.assert_allclose(curve(multi, key), curve(single, key), rtol=0, atol=1e-5)
    assert len(curve(multi, "train_loss")) == 6 and len(curve(multi, "val_loss")) == 2
    # Both processes saved (Orbax commits a step only when every process finished it).
    assert checkpointing.Checkpointer(multi, read_only=True).all_steps() == [3, 6]
