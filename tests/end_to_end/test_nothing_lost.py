"""Nothing lost: verified checkpoints, config faults kept apart from corruption, no
non-finite saves, one trainer per workdir, exact metrics across interruptions, and one
`error:` line for every failure."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, main_command, subprocess_env, tiny_config

from charrnn_jax import config_lib, models
from charrnn_jax.errors import NonFiniteLossError, UserError
from charrnn_jax.store import checkpointing, metric_logging
from charrnn_jax.store.workdir import Workdir
from charrnn_jax.training import loop, optim, steps, variant_groups

# Checkpoints (every 5) and rows (every 7) rarely coincide, so interruptions land
# between rows with a partly filled metric window.
EXACT_RUN = {
    "model.hidden_size": 64,
    "train.batch_size": 16,
    "data.seq_len": 64,
    "train.num_steps": 60,
    "train.log_every": 7,
    "train.eval_every": 14,
    "train.checkpoint_every": 5,
}
COMPARED = [k for k in metric_logging.FIELDS if k not in ("wall_time", "tokens_per_sec")]


def _env():
    return subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")


def _rows(workdir) -> list[dict]:
    records = metric_logging.read_jsonl(Workdir(workdir).metrics_file)
    return [{k: r[k] for k in COMPARED} for r in records]


def _run_main(workdir, *extra, **overrides):
    return subprocess.run(
        main_command(workdir, *extra, **overrides),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _start_main(workdir, **overrides) -> subprocess.Popen:
    """The trainer CLI in the background (for signals, or a second trainer beside it)."""
    return subprocess.Popen(
        main_command(workdir, **overrides),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _one_error_line(result) -> str:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted EXACT_RUN, shared by every exactness test."""
    workdir = tmp_path_factory.mktemp("reference")
    result = _run_main(workdir, **EXACT_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1][-3000:])
        if predicate():
            return
        time.sleep(0.01)
    raise TimeoutError


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_metrics_are_exact_after_an_interruption_between_rows(tmp_path, reference_run, sig):
    proc = _start_main(tmp_path, **EXACT_RUN)
    ckpt_dir = Workdir(tmp_path).checkpoint_dir
    # Once step 10 is committed, the run is between rows (7, 14) with a partial window.
    _wait_for(lambda: (ckpt_dir / "10").is_dir(), proc)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert checkpointing.Checkpointer(tmp_path, read_only=True).latest_step() < 60
    rerun = _run_main(tmp_path, **EXACT_RUN)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resumed from checkpoint step" in rerun.stderr
    assert _rows(tmp_path) == _rows(reference_run)  # Every row, every value but timings.


def _tiny(tmp_path, allow=(), **overrides):
    return loop.train_and_evaluate(
        tiny_config(**overrides),
        tmp_path,
        devices=jax.devices()[:2],
        allow_config_change=frozenset(allow),
    )


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A tiny run with checkpoints at steps 3 and 6, copied by tests that damage it."""
    workdir = tmp_path_factory.mktemp("saved")
    _tiny(workdir)
    return workdir


def _abstract_items(config):
    config = config_lib.resolve(config)
    group = variant_groups.Single(
        [config], jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    )
    model = models.CharRNN(config.model)
    tx, _ = optim.make_optimizer(config.train)
    state = jax.eval_shape(
        lambda: steps.create_train_state(
            jax.random.key(0), model=model, tx=tx, seq_len=config.data.seq_len
        )
    )
    return {
        item: checkpointing.abstract_like(
            getattr(state, item), jax.tree.map(lambda _: group.repl, getattr(state, item))
        )
        for item in checkpointing.ITEMS
        if getattr(state, item) is not None  # The carry exists in stream mode only.
    }


@pytest.mark.parametrize("item", ["params", "opt_state"])
def test_a_flipped_bit_anywhere_is_detected(tmp_path, saved_run, item):
    abstract = _abstract_items(tiny_config())
    source = pathlib.Path(saved_run) / "checkpoints" / "6" / item
    # Every file of the item (array data, b-tree nodes, metadata), at several offsets.
    files = sorted(p for p in source.rglob("*") if p.is_file())
    assert files
    rng = np.random.default_rng(0)
    trials = 0
    for path in files:
        size = path.stat().st_size
        for offset in sorted({int(x) for x in rng.integers(0, size, 3)} | {size // 2}):
            copy = tmp_path / f"t{trials}"
            shutil.copytree(saved_run, copy)
            target = copy / "checkpoints" / "6" / item / path.relative_to(source)
            data = bytearray(target.read_bytes())
            data[offset] ^= 1 << int(rng.integers(0, 8))
            target.write_bytes(bytes(data))
            step, _ = checkpointing.Checkpointer(copy).restore(abstract)
            assert step == 3, f"bit flip at {path.name}:{offset} went unnoticed"
            assert (copy / "checkpoints_unreadable" / "6").is_dir()
            trials += 1
    assert trials >= 4


def test_checksums_match_what_restores(saved_run):
    abstract = _abstract_items(tiny_config())
    step, items = checkpointing.Checkpointer(saved_run, read_only=True).restore(abstract)
    assert step == 6 and set(items) == set(checkpointing.ITEMS) - {"carry", "ema"}


@pytest.mark.parametrize(
    "override, message",
    [
        ({"model.cell": "lstm"}, "params has .* arrays in the checkpoint"),
        ({"model.num_layers": 2}, "only in the model: .*rnn_1"),
        ({"train.grad_clip_norm": 1.0}, "opt_state has"),
        ({"model.hidden_size": 48}, r"head/kernel has shape \(32, 256\) in the checkpoint"),
    ],
)
@pytest.mark.slow
def test_a_config_that_does_not_match_moves_nothing(tmp_path, saved_run, override, message):
    shutil.copytree(saved_run, tmp_path / "run")
    (key,) = override
    with pytest.raises(UserError, match=f"another config \\({key}: "):  # The run's identity.
        _tiny(tmp_path / "run", **{**override, "train.num_steps": 8})
    with pytest.raises(UserError, match=message):  # Allowed, the checkpoint still refuses.
        _tiny(tmp_path / "run", allow=[key], **{**override, "train.num_steps": 8})
    assert not (tmp_path / "run" / "checkpoints_unreadable").exists()
    summary = _tiny(tmp_path / "run", **{"train.num_steps": 8})  # The right command resumes.
    assert summary["resumed_from"] == 6 and summary["final_step"] == 8


def test_unreadable_files_are_an_error_not_corruption(tmp_path, saved_run):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    shutil.copytree(saved_run, tmp_path / "run")
    for path in (tmp_path / "run" / "checkpoints").rglob("*"):
        if path.is_file():
            path.chmod(0)
    with pytest.raises(UserError, match="Cannot read checkpoint"):
        _tiny(tmp_path / "run", **{"train.num_steps": 8})
    assert not (tmp_path / "run" / "checkpoints_unreadable").exists()


@pytest.mark.slow
def test_never_starts_from_zero_over_quarantined_checkpoints(tmp_path, saved_run):
    shutil.copytree(saved_run, tmp_path / "run")
    for step in ("3", "6"):
        for path in (tmp_path / "run" / "checkpoints" / step / "params").rglob("*"):
            if path.is_file():
                path.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="Every checkpoint .* is corrupt.*--restart"):
        _tiny(tmp_path / "run")
    with pytest.raises(UserError, match="none could be restored.*--restart"):
        _tiny(tmp_path / "run")  # Everything is quarantined now: still no silent restart.
    rows_before = _rows(tmp_path / "run")
    summary = loop.train_and_evaluate(
        tiny_config(), tmp_path / "run", devices=jax.devices()[:2], restart=True
    )
    assert summary["final_step"] == 6 and summary["resumed_from"] is None
    (kept,) = (tmp_path / "run").glob("replaced-*")
    assert (kept / "checkpoints_unreadable" / "6").is_dir()
    assert _rows(kept) == rows_before  # The old rows are kept beside the new run.


def test_an_infinite_learning_rate_saves_nothing(tmp_path):
    overrides = {"train.learning_rate": float("inf"), "train.checkpoint_every": 1}
    with pytest.raises(NonFiniteLossError, match="non-finite at step 1 "):
        _tiny(tmp_path, **overrides)
    assert checkpointing.Checkpointer(tmp_path, read_only=True).all_steps() == []


def test_a_failed_start_leaves_no_workdir_behind(tmp_path, monkeypatch):
    def broken_compile(*args, **kwargs):
        raise UserError("compile failed")

    monkeypatch.setattr(variant_groups.Single, "compile", broken_compile)
    with pytest.raises(UserError, match="compile failed"):
        _tiny(tmp_path / "new")
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_second_trainer_fails_at_once_and_the_first_goes_on(tmp_path):
    overrides = {**EXACT_RUN, "train.num_steps": 200, "train.log_every": 1}
    first = _start_main(tmp_path, **overrides)
    metrics = Workdir(tmp_path).metrics_file
    _wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 2, first)
    started = time.monotonic()
    second = _run_main(tmp_path, **overrides)
    line = _one_error_line(second)
    assert f"in use by another trainer (pid {first.pid}" in line
    assert time.monotonic() - started < 60
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert [r["step"] for r in _rows(tmp_path)] == list(range(1, 201))


def test_a_killed_trainers_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from charrnn_jax.store.workdir import Workdir, WorkdirLock; "
            "w = Workdir(sys.argv[1]); w.prepare(); lock = WorkdirLock(w).acquire(); "
            "print('locked', flush=True); time.sleep(600)",
            str(tmp_path),
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=f"pid {holder.pid}"):
        _tiny(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert _tiny(tmp_path)["final_step"] == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config=/no/such/config.py", "--workdir=W"], "cannot read the config file"),
        ([f"--config={REPO}/experiments/shakespeare.py:nope", "--workdir=W"], "Unknown preset"),
        (
            [
                f"--config={REPO}/experiments/shakespeare.py:tiny",
                "--workdir=W",
                "--config.data.path=D",
            ],
            "is a directory",
        ),
    ],
)
@pytest.mark.slow
def test_bad_input_is_one_error_line_and_leaves_nothing(tmp_path, args, message):
    args = [a.replace("=W", f"={tmp_path / 'run'}").replace("=D", f"={tmp_path}") for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "charrnn_jax.main", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert message in _one_error_line(result)
    assert not (tmp_path / "run").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (skipped where this process cannot mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_is_one_error_line_and_resumes_exactly(small_disk, reference_run):
    filler = small_disk / "filler"
    workdir = small_disk / "run"
    result = None
    for free_kib in (1400, 1000, 700, 500):  # Enough to start, too little to finish.
        shutil.rmtree(workdir, ignore_errors=True)
        filler.unlink(missing_ok=True)
        filler.write_bytes(b"\0" * (3 * 1024 - free_kib) * 1024)
        result = _run_main(workdir, **EXACT_RUN)
        if result.returncode != 0 and Workdir(workdir).checkpoint_dir.is_dir():
            break
    line = _one_error_line(result)
    assert "no space left on device" in line.lower() or "No space left" in line
    filler.unlink()
    rerun = _run_main(workdir, **EXACT_RUN)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _rows(workdir) == _rows(reference_run)


def test_a_cut_short_last_row_is_skipped(tmp_path):
    path = pathlib.Path(tmp_path) / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "wall')
    assert metric_logging.read_jsonl(path) == [{"step": 1}]
