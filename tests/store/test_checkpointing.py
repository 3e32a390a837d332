"""Checkpoints: exact resume after SIGKILL, SIGTERM, corruption, shape mismatch, NaNs."""

import os
import pathlib
import shutil
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import main_command, subprocess_env, tiny_config

from charrnn_jax.errors import NonFiniteLossError, UserError
from charrnn_jax.inference import loading
from charrnn_jax.store import checkpointing, metric_logging
from charrnn_jax.training import cadence, loop, steps

# Slow enough per step that a kill lands between saves; still seconds per run.
RESUME_RUN = {
    "model.hidden_size": 64,
    "train.batch_size": 16,
    "data.seq_len": 64,
    "train.num_steps": 150,
    "train.log_every": 1,
    "train.eval_every": 50,
    "train.checkpoint_every": 40,
}


def _main_cmd(workdir, **overrides):
    return main_command(workdir, **overrides)


def _env():
    return subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")


def _wait_for_step(workdir: pathlib.Path, proc, step: int, timeout=120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        records = (
            metric_logging.read_jsonl(workdir / "metrics.jsonl")
            if (workdir / "metrics.jsonl").exists()
            else []
        )
        if records and records[-1]["step"] >= step:
            return records[-1]["step"]
        time.sleep(0.01)
    raise TimeoutError(f"step {step} not reached")


def _final_params(workdir):
    _, _, params, step = loading.load_for_inference(workdir)
    return step, jax.tree.map(np.asarray, params)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, cell, ema_decay",
    [
        ("random", "gru", 0.0),
        ("stream", "gru", 0.0),
        ("stream", "rglru", 0.0),
        ("random", "gru", 0.95),
    ],
)
def test_sigkill_then_rerun_gives_bitwise_identical_params(tmp_path, mode, cell, ema_decay):
    """Stream mode too (the carried state is checkpointed with the params), a linear
    recurrence's block carry in stream mode, and averaged weights (the EMA is checkpointed;
    the params compared are the ones served, i.e. the average)."""
    run = {**RESUME_RUN, "data.mode": mode, "model.cell": cell, "train.ema_decay": ema_decay}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(
        _main_cmd(straight, **run), env=_env(), check=True, capture_output=True, timeout=300
    )

    proc = subprocess.Popen(
        _main_cmd(killed, **run),
        env=_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Kill mid-way between the saves at 40 and 80, once the one at 40 is on disk.
    reached = _wait_for_step(killed, proc, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reached < 150, "the run finished before it could be killed"
    steps = checkpointing.Checkpointer(killed, read_only=True).all_steps()
    assert steps and max(steps) < 150

    rerun = subprocess.run(
        _main_cmd(killed, **run), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resumed from checkpoint step {max(steps)}" in rerun.stderr

    step_a, params_a = _final_params(straight)
    step_b, params_b = _final_params(killed)
    assert step_a == step_b == 150
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(a, b)  # Bitwise: exact equality, no tolerance.
    keys = ("step", "train_loss", "val_loss", "val_loss_raw", "grad_norm")

    def curve(w):
        return [{k: r[k] for k in keys} for r in metric_logging.read_jsonl(w / "metrics.jsonl")]  # noqa: E731

    assert curve(killed) == curve(straight)


def _sigterm_after(workdir, step: int, overrides) -> int:
    """Starts a run, sends SIGTERM once `step` is logged; returns the step it stopped at."""
    proc = subprocess.Popen(
        _main_cmd(workdir, **overrides),
        env=_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _wait_for_step(workdir, proc, step)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "Preempted at step" in out
    return int(out.split("Preempted at step ")[1].split(";")[0])


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path):
    overrides = {**RESUME_RUN, "train.checkpoint_every": 1000}
    stopped_at = _sigterm_after(tmp_path, 20, overrides)
    assert 20 <= stopped_at < 150
    assert checkpointing.Checkpointer(tmp_path, read_only=True).all_steps() == [stopped_at]
    rerun = subprocess.run(
        _main_cmd(tmp_path, **overrides), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0 and f"Resumed from checkpoint step {stopped_at}" in rerun.stderr


# A val pass of ~870 short device calls (two streams, one chunk each): seconds long, so
# a SIGTERM sent when it starts lands in it.
SLOW_EVAL_RUN = {
    **RESUME_RUN,
    "train.num_steps": 20,
    "train.log_every": 5,
    "train.eval_every": 10,
    "train.checkpoint_every": 5,
    "eval.streams": 2,
    "eval.bytes_per_call": 64,
}


def _sigterm_on(workdir, text: str, log: pathlib.Path):
    """Runs the trainer, sends SIGTERM once `text` is logged; returns (stdout, the log)."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            _main_cmd(workdir, **SLOW_EVAL_RUN), env=_env(), stdout=subprocess.PIPE, stderr=stderr
        )
        deadline = time.monotonic() + 120
        while text not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return out.decode(), log.read_text()


@pytest.mark.slow
def test_sigterm_during_an_evaluation_stops_it_and_the_resume_completes_it(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    subprocess.run(
        _main_cmd(straight, **SLOW_EVAL_RUN), env=_env(), check=True, capture_output=True
    )
    out, log = _sigterm_on(stopped, "Evaluating step 10 ", tmp_path / "first.log")
    assert "Preempted at step 10" in out
    assert "Preemption signal during the evaluation: saved step 10" in log
    ckpt = checkpointing.Checkpointer(stopped, read_only=True)
    assert ckpt.latest_step() == 10 and "pending" in ckpt.read_meta(10)
    rows = metric_logging.read_jsonl(stopped / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5]  # Step 10's row waits for its val loss.
    # Stopped again while the rerun completes that evaluation: still pending, nothing lost.
    out, log = _sigterm_on(stopped, "Completing the evaluation of step 10", tmp_path / "second.log")
    assert "Preemption signal during the evaluation: saved step 10" in log
    assert [r["step"] for r in metric_logging.read_jsonl(stopped / "metrics.jsonl")] == [5]

    rerun = subprocess.run(
        _main_cmd(stopped, **SLOW_EVAL_RUN), env=_env(), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Completing the evaluation of step 10" in rerun.stderr
    keys = ("step", "train_loss", "val_loss", "grad_norm", "learning_rate")

    def curve(w):
        return [{k: r[k] for k in keys} for r in metric_logging.read_jsonl(w / "metrics.jsonl")]

    assert curve(stopped) == curve(straight)  # Exactly the uninterrupted run's rows.
    best = [checkpointing.Checkpointer(w, read_only=True, best=True) for w in (straight, stopped)]
    assert best[0].latest_step() == best[1].latest_step()
    step_a, params_a = _final_params(straight)
    step_b, params_b = _final_params(stopped)
    assert step_a == step_b == 20
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigterm_during_saves_leaves_readable_checkpoints(tmp_path):
    overrides = {**RESUME_RUN, "train.checkpoint_every": 1}  # A save is always in flight.
    stopped_at = _sigterm_after(tmp_path, 10, overrides)
    step, _ = _final_params(tmp_path)
    assert step == stopped_at


def _run(tmp_path, allow=(), **overrides):
    return loop.train_and_evaluate(
        tiny_config(**overrides),
        tmp_path,
        devices=jax.devices()[:2],
        allow_config_change=frozenset(allow),
    )


@pytest.mark.slow
def test_raising_num_steps_on_resume_trains_longer(tmp_path):
    assert _run(tmp_path)["final_step"] == 6
    summary = _run(tmp_path, **{"train.num_steps": 9})
    assert summary["resumed_from"] == 6 and summary["final_step"] == 9
    steps = [r["step"] for r in metric_logging.read_jsonl(tmp_path / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 9


def test_checkpoint_from_another_shape_names_both_shapes(tmp_path):
    _run(tmp_path)
    # The run's identity refuses first, naming the key; allowed, the checkpoint still does.
    with pytest.raises(UserError, match=r"model.hidden_size: 32 -> 48"):
        _run(tmp_path, **{"model.hidden_size": 48})
    with pytest.raises(
        UserError,
        match=r"params/head/kernel has shape \(32, 256\) in the checkpoint but \(48, 256\)",
    ):
        _run(tmp_path, allow=["model.hidden_size"], **{"model.hidden_size": 48})


@pytest.mark.slow
def test_corrupted_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    _run(tmp_path)  # Saves at 3 and 6.
    latest = tmp_path / "checkpoints" / "6"
    data_files = [p for p in (latest / "params").rglob("*") if p.is_file()]
    assert data_files
    for path in data_files:  # Truncate/overwrite every file of the params item.
        path.write_bytes(b"\x00garbage")
    summary = _run(tmp_path, **{"train.num_steps": 8})
    assert summary["resumed_from"] == 3 and summary["final_step"] == 8
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "checkpoints_unreadable" / "6").is_dir()  # Kept, not deleted.


@pytest.mark.slow
def test_deleted_files_in_latest_checkpoint_fall_back(tmp_path):
    _run(tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "6" / "opt_state")
    assert _run(tmp_path, **{"train.num_steps": 7})["resumed_from"] == 3


def test_checkpoint_dir_that_is_not_readable_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoints").write_text("not a directory")
    with pytest.raises(UserError, match="not a directory"):
        _run(tmp_path)


def test_non_finite_loss_stops_with_the_step_and_never_saves_it(tmp_path, monkeypatch):
    """A step that diverges (NaN loss and params from update 5 on) is never saved."""
    honest_step = steps.train_step

    def diverging_step(state, batch, rng, *, schedule):
        new_state, metrics = honest_step(state, batch, rng, schedule=schedule)
        bad = state.step >= 4
        poison = lambda x: jnp.where(bad, jnp.nan, x)  # noqa: E731
        metrics = {**metrics, "loss": poison(metrics["loss"])}
        return new_state.replace(params=jax.tree.map(poison, new_state.params)), metrics

    monkeypatch.setattr(steps, "train_step", diverging_step)
    overrides = {
        "train.num_steps": 12,
        "train.checkpoint_every": 1,
        "train.log_every": 6,
        "train.eval_every": 12,
    }
    with pytest.raises(NonFiniteLossError, match="non-finite at step 5 ") as err:
        _run(tmp_path, **overrides)
    assert checkpointing.Checkpointer(tmp_path, read_only=True).all_steps() == [2, 3, 4]
    assert "Last good checkpoint: step 4" in str(err.value)


def test_sample_cli_style_restore_of_a_chosen_step(tmp_path):
    _run(tmp_path)
    config, model, params, step = loading.load_for_inference(tmp_path, step=3)
    assert step == 3 and config.model.hidden_size == 32
    assert params["rnn_0"]["scan"]["cell"]["hn"]["kernel"].shape == (32, 32)
    with pytest.raises(UserError, match="No checkpoint for step 4"):
        loading.load_for_inference(tmp_path, step=4)
    with pytest.raises(UserError, match="does not exist"):
        loading.load_for_inference(tmp_path / "missing")


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_stop_flag_is_set_by_sigterm():
    flag = cadence.StopFlag().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert flag.event.is_set()
    finally:
        flag.uninstall()


class _Marker:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def block_until_ready(self):
        self.log.append(self.name)


def test_the_host_runs_at_most_two_steps_ahead_of_the_device():
    """So a SIGTERM waits for two steps, not for every step up to the next row."""
    waited = []
    in_flight = cadence.InFlight(limit=2)
    for step in range(5):
        in_flight.add(_Marker(waited, step))
        assert waited == list(range(max(0, step - 1)))  # Waits on the step 2 behind.

    slow = jax.jit(lambda x: jnp.tanh(x @ x) @ x)
    x, markers = jnp.ones((400, 400)) * 1e-3, []
    in_flight = cadence.InFlight(limit=2)
    for _ in range(8):
        x = slow(x)
        markers.append(x[0, 0] + 0)
        in_flight.add(markers[-1])
        assert sum(not m.is_ready() for m in markers) <= 2
