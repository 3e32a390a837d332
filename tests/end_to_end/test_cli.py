"""The command lines as a user runs them: train, then sample; bad input gives one line."""

import json
import re
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env, tiny_overrides

from charrnn_jax.data import corpora
from charrnn_jax.runtime import distributed, host_memory
from charrnn_jax.store import metric_logging

pytestmark = pytest.mark.slow  # Subprocess runs and trainings: not in make test-fast.

CONFIG = f"--config={REPO / 'experiments' / 'shakespeare.py'}:tiny"


def _run(module, *args, cwd=None, **env):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=subprocess_env(**env),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli_run")
    result = _run(
        "charrnn_jax.main",
        CONFIG,
        f"--workdir={workdir}",
        "--cpu_devices=2",
        *tiny_overrides(**{"sample.length": 30}),
        GLIBC_TUNABLES="",  # As a user's shell has it: main restarts itself with huge pages.
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_main_trains_logs_progress_and_writes_metrics(trained):
    workdir, result = trained
    assert "step 6/6 | loss" in result.stderr and "tok/s | ETA" in result.stderr
    assert "Sample at step 6:\nROMEO:" in result.stderr
    # The closing summary: the best val, where things are, what to run next.
    assert "Done: step 6/6; best val " in result.stderr
    assert f"{workdir}/checkpoints_best (best)" in result.stderr
    assert f"Next: python -m charrnn_jax.sample --workdir={workdir} --step=best" in result.stderr
    assert "(2 devices, process 0 of 1)" in result.stderr  # --cpu_devices=2 (env asks for 4).
    assert f"Training {workdir}: steps 0 to 6," in result.stderr  # The start line.
    assert "Restarting with GLIBC_TUNABLES" not in result.stderr  # Said only when asked.
    records = metric_logging.read_jsonl(workdir / "metrics.jsonl")
    assert records[-1]["step"] == 6 and records[-1]["val_loss"] > 0
    assert (workdir / "config.json").is_file()


def test_the_huge_page_restart_happens_once_and_is_said_only_when_asked(trained):
    workdir, _ = trained
    result = _run(
        "charrnn_jax.evaluate", f"--workdir={workdir}", "--verbosity=1", GLIBC_TUNABLES=""
    )
    assert result.returncode == 0, result.stderr[-3000:]
    restarts = result.stderr.count(f"Restarting with GLIBC_TUNABLES={host_memory.TUNABLE}")
    assert restarts == (host_memory.environment_with_huge_pages({}) is not None)  # Once.


def test_logs_are_plain_lines_and_verbosity_minus_one_keeps_a_sweep_quiet(trained):
    workdir, result = trained
    start = next(ln for ln in result.stderr.splitlines() if "Training " in ln)
    assert re.fullmatch(r"\d\d:\d\d:\d\d Training .*", start)  # No absl prefix.
    quiet = _run("charrnn_jax.evaluate", f"--workdir={workdir}", "--verbosity=-1")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr[-2000:]
    assert "nats/byte" in quiet.stdout


def test_sample_cli_prints_each_prompt_continued(trained):
    workdir, _ = trained
    args = ["--prompt=ROMEO: ", "--prompt=式部", "--length=20", "--num_samples=2", "--seed=3"]
    result = _run("charrnn_jax.sample", f"--workdir={workdir}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    chunks = result.stdout.split("----- sample ")[1:]
    assert len(chunks) == 4
    assert chunks[0].split("\n", 1)[1].startswith("ROMEO: ")
    assert chunks[2].split("\n", 1)[1].startswith("式部")
    again = _run("charrnn_jax.sample", f"--workdir={workdir}", *args)
    assert again.stdout == result.stdout


def test_sample_cli_takes_a_prompt_that_is_not_utf8(trained):
    """Bytes that are not UTF-8 on the command line are a prompt like any other."""
    workdir, _ = trained
    result = subprocess.run(
        [
            sys.executable.encode(),
            b"-m",
            b"charrnn_jax.sample",
            f"--workdir={workdir}".encode(),
            b"--prompt=KING \xff:",
            b"--length=10",
            b"--temperature=0",
        ],
        capture_output=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert b"Traceback" not in result.stderr


def test_sample_cli_prompt_file_and_stop(trained, tmp_path):
    workdir, _ = trained
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(b"KING:")
    result = _run(
        "charrnn_jax.sample",
        f"--workdir={workdir}",
        f"--prompt_file={prompt}",
        "--length=200",
        "--stop=newline",
        "--temperature=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("KING:") and result.stdout.count("\n") <= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--length=0"], "length must be positive"),
        (["--temperature=-1"], "temperature must be >= 0"),
        (["--top_k=999"], "top_k must be in"),
        (["--stop=ab"], "--stop must be"),
        (["--step=12345"], "No checkpoint for step 12345"),
        (["--length=3000000000"], "--length=3,000,000,000 for 1 sample(s)"),
    ],
)
def test_sample_cli_errors_are_one_line(trained, args, message):
    workdir, _ = trained
    result = _run("charrnn_jax.sample", f"--workdir={workdir}", *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in result.stderr and "Traceback" not in result.stderr


def test_evaluate_without_a_test_split_says_which_key_makes_one(trained):
    workdir, _ = trained
    result = _run("charrnn_jax.evaluate", f"--workdir={workdir}", "--split=test")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: This run has no test split (data.test_fraction is 0). A test split is cut "
        "from the file's end when a run is trained with --config.data.test_fraction=F (e.g. "
        "0.05); adding it later would move the val split under the trained run."
    )


def test_sample_cli_missing_workdir(tmp_path):
    result = _run("charrnn_jax.sample", f"--workdir={tmp_path / 'none'}")
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_unknown_config_key_is_a_clear_error(tmp_path):
    result = _run("charrnn_jax.main", CONFIG, f"--workdir={tmp_path}", "--config.train.foo=1")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "unknown config key 'train.foo'" in result.stderr


def test_wrong_type_override_is_a_clear_error(tmp_path):
    result = _run(
        "charrnn_jax.main", CONFIG, f"--workdir={tmp_path}", "--config.train.num_steps=lots"
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--config.train.num_steps=lots" in result.stderr


def test_user_errors_exit_1_with_one_line(tmp_path):
    result = _run(
        "charrnn_jax.main",
        CONFIG,
        f"--workdir={tmp_path}",
        "--config.data.path=/nonexistent/file.txt",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: Data file not found: /nonexistent/file.txt"
    )


def test_distributed_autodetection():
    detect = distributed.should_initialize_distributed
    assert not detect("auto", {})
    assert detect("auto", {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8"})
    assert not detect("auto", {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"})
    assert detect("auto", {"TPU_WORKER_HOSTNAMES": "a,b"})
    assert detect("on", {}) and not detect("off", {"TPU_WORKER_HOSTNAMES": "a,b"})


MISSPELT = """
from charrnn_jax import config_lib


def get_config(arg=None):
    config = config_lib.base_config()
    config.data.name = "tinyshakespeare"
    config.model.hidden_sise = 128
    config.lock()
    return config
"""
RETURNS_A_DICT = "def get_config(arg=None):\n    return {'seed': 0}\n"


@pytest.mark.parametrize(
    "source, line",
    [
        (
            MISSPELT,
            "error: unknown config key 'model.hidden_sise' set in {file}; did you mean "
            "'model.hidden_size'?",
        ),
        (
            RETURNS_A_DICT,
            "error: get_config in {file} returned a dict; it must return an "
            "ml_collections.ConfigDict (config_lib.base_config() with your changes).",
        ),
    ],
    ids=["misspelt_key", "returns_a_dict"],
)
def test_a_bad_config_file_is_one_line_and_writes_nothing(tmp_path, source, line):
    config_file = tmp_path / "mine.py"
    config_file.write_text(source)
    workdir = tmp_path / "run"
    result = _run("charrnn_jax.main", f"--config={config_file}", f"--workdir={workdir}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == line.format(file=config_file)
    assert not workdir.exists()


def test_an_empty_workdir_is_one_line(tmp_path):
    result = _run("charrnn_jax.main", CONFIG, "--workdir=", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--workdir must be a non-empty path" in result.stderr
    assert list(tmp_path.iterdir()) == []


def _digests(workdir):
    import hashlib

    return {
        str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(workdir.rglob("*"))
        if p.is_file() and "tensorboard" not in p.parts
    }


def test_evaluate_dynamic_and_nanogpt_estimates_write_nothing(trained):
    workdir, _ = trained
    before = _digests(workdir)
    dyn = _run(
        "charrnn_jax.evaluate",
        f"--workdir={workdir}",
        "--dynamic",
        "--json",
        "--dynamic_lr=0.01",
        "--dynamic_decay=0.001",
    )
    assert dyn.returncode == 0, dyn.stderr[-3000:]
    result = json.loads(dyn.stdout)
    assert result["metric"] == "dynamic" and result["bytes"] == sum(result["segment_bytes"])
    assert len(result["segment_loss_sums"]) == len(result["segment_bytes"]) > 1
    nano = _run("charrnn_jax.evaluate", f"--workdir={workdir}", "--metric=nanogpt", "--json")
    assert nano.returncode == 0, nano.stderr[-3000:]
    assert json.loads(nano.stdout)["windows"] == 200 * 64
    assert _digests(workdir) == before  # Checkpoints, config and rows untouched.


def test_ctrl_c_before_the_loop_is_one_line_exit_130_and_no_workdir(tmp_path):
    """SIGINT once config.json exists: the run is opening or compiling, before the loop's
    own handler (which saves and exits cleanly) is installed."""
    import signal
    import time

    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charrnn_jax.main",
            CONFIG,
            f"--workdir={workdir}",
            *tiny_overrides(**{"model.hidden_size": 256, "train.num_steps": 50}),
        ],
        env=subprocess_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (workdir / "config.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # The loop's handler won the race: it saved and exited.
        pytest.skip("SIGINT arrived after the loop started")
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted (Ctrl-C)")
    assert not workdir.exists()


def test_sample_raw_writes_the_bytes_unchanged(trained):
    workdir, _ = trained
    args = ["--prompt=式部", "--length=40", "--seed=1", "--temperature=1.5"]
    raw = subprocess.run(
        [sys.executable, "-m", "charrnn_jax.sample", f"--workdir={workdir}", "--raw", *args],
        capture_output=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert raw.returncode == 0, raw.stderr[-2000:]
    assert raw.stdout.startswith("式部".encode()) and len(raw.stdout) == len("式部".encode()) + 40
    text = subprocess.run(  # Bytes, so no newline translation hides a \r.
        [sys.executable, "-m", "charrnn_jax.sample", f"--workdir={workdir}", *args],
        capture_output=True,
        timeout=300,
        env=subprocess_env(),
    )
    shown = corpora.decode(corpora.complete_utf8(raw.stdout))  # What the text mode prints.
    assert text.stdout.decode() == shown + ("" if shown.endswith("\n") else "\n")


def test_launch_score_saves_each_estimator_where_the_report_reads_it(trained, tmp_path):
    """launch.score: evaluate's --json per estimator in <run>/evaluate/, kept on a rerun,
    and named by launch.report from the files' own fields."""
    import shutil

    from charrnn_jax.store.workdir import Workdir
    from launch import report

    workdir = tmp_path / "run"
    shutil.copytree(trained[0], workdir)
    done = _run("launch.score", f"--workdir={workdir}", "--estimators=full,static", cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = metric_logging.read_jsonl(workdir / "metrics.jsonl")
    best = min(r["val_loss"] for r in rows if r["val_loss"] is not None)
    full = json.loads((workdir / "evaluate" / "full.json").read_text())
    static = json.loads((workdir / "evaluate" / "static.json").read_text())
    assert full["metric"] == "full" and full["loss"] == pytest.approx(best, rel=1e-5)
    assert static["metric"] == "dynamic" and static["learning_rate"] == 0
    assert set(report.estimates(Workdir(workdir))) == {
        f"val, full ({full['streams']} streams)",
        "val, static, 1 stream",
    }
    kept = (workdir / "evaluate" / "full.json").stat().st_mtime_ns
    again = _run("launch.score", f"--workdir={workdir}", "--estimators=full", cwd=REPO)
    assert again.returncode == 0 and (workdir / "evaluate/full.json").stat().st_mtime_ns == kept
    bad = _run("launch.score", f"--workdir={workdir}", "--estimators=full,bogus", cwd=REPO)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --estimators takes some of")


@pytest.mark.parametrize(
    "config, nanogpt_dir, line",
    [
        ("shakespeare_nanogpt.py", "/nonexistent", "error: No nanoGPT model.py at /nonexistent/"),
        ("shakespeare.py:tiny", ".", "error: nanoGPT's train.py cannot mirror model.cell='gru'"),
    ],
)
def test_compare_nanogpt_bad_input_is_one_line_and_writes_nothing(
    tmp_path, config, nanogpt_dir, line
):
    if nanogpt_dir == ".":  # A model.py that is there, so the config's check is what fails.
        (tmp_path / "model.py").write_text("")
        nanogpt_dir = str(tmp_path)
    out = tmp_path / "out"
    result = _run(
        "charrnn_jax.compare_nanogpt",
        f"--config={REPO / 'experiments' / config}",
        f"--nanogpt_dir={nanogpt_dir}",
        f"--out={out}",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(line), result.stderr[-2000:]
    assert not out.exists()
