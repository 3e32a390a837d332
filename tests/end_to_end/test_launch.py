"""Sweeps: expansion, stable run names, the local launcher with a failing run, the SLURM
and TPU VM outputs, and the report."""

import json
import shlex
import subprocess
import sys

import pytest
from conftest import REPO, TINY_SWEEP_CONFIG, main_command, subprocess_env, tiny_overrides

from charrnn_jax import config_lib
from launch import curves, report, sweep

SWEEP_CONFIG = (
    TINY_SWEEP_CONFIG
    + """
def sweep():
    runs = config_lib.sweep_product({"train.learning_rate": [0.001, 0.01], "seed": [0, 1]})
    runs[3]["data.seq_len"] = 0  # This run fails on purpose.
    return runs
"""
)


def test_product_and_zip():
    assert config_lib.sweep_product({"a": [1, 2], "b": [3, 4]}) == [
        {"a": 1, "b": 3},
        {"a": 1, "b": 4},
        {"a": 2, "b": 3},
        {"a": 2, "b": 4},
    ]
    assert config_lib.sweep_zip({"a": [1, 2], "b": [3, 4]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    with pytest.raises(ValueError, match="equally long"):
        config_lib.sweep_zip({"a": [1], "b": [3, 4]})


def test_shakespeare_sweep_names_are_unique_and_stable():
    config = str(REPO / "experiments" / "shakespeare.py") + ":tiny"
    runs = sweep.expand(config, "sweep")
    assert len(runs) == 8 and runs == sweep.expand(config, "sweep")
    names = [name for name, _ in runs]
    assert len(set(names)) == 8
    assert names[0] == "learning_rate=0.001,hidden_size=256,seed=0"
    assert sweep.run_name({"model.seed": 1, "train.seed": 2}) == "model.seed=1,train.seed=2"


@pytest.mark.slow
def test_local_launcher_runs_records_a_failure_skips_finished_and_reports(tmp_path):
    config_file = tmp_path / "sweep_config.py"
    config_file.write_text(SWEEP_CONFIG)
    runs = sweep.expand(str(config_file), "sweep")
    root = tmp_path / "sweep"
    results = sweep.run_local(
        str(config_file), root, runs, parallel=2, gpus_per_run=0, dry_run=False
    )
    statuses = {name: s["status"] for name, s in results.items()}
    assert sorted(statuses.values()) == ["done", "done", "done", "failed"]
    failed = [n for n, s in statuses.items() if s == "failed"][0]
    assert "seq_len must be positive" in (root / failed / "launch.log").read_text()
    summary = json.loads((root / "sweep_summary.json").read_text())
    assert summary[failed]["returncode"] == 1

    again = sweep.run_local(str(config_file), root, runs, parallel=2, gpus_per_run=0, dry_run=False)
    assert sum(bool(s.get("skipped")) for s in again.values()) == 3

    text = report.report(root)
    first_table = text.split("\n\n")[0]
    rows = [line for line in first_table.splitlines()[2:] if line.startswith("|")]
    assert len(rows) == 4 and sum("| done | 4 |" in row for row in rows) == 3
    assert f"| {failed} | failed | 0 |" in first_table  # Failed before a row: still listed.
    assert f"- {failed} failed: data.seq_len must be positive" in text
    best = [float(row.split("|")[4]) for row in rows if "| done |" in row]
    assert best == sorted(best)
    # The two seeds of learning rate 0.001 as one group (the other group lost a seed).
    seed_rows = [line for line in text.split("Over seeds")[1].splitlines() if "| 2 |" in line]
    assert len(seed_rows) == 1 and "| 0,1 |" in seed_rows[0]

    # Rerun with other overrides: not "done" from the old status; the trainer runs again
    # (here it resumes each finished run to its new length).
    longer = [(name, {**overrides, "train.num_steps": 6}) for name, overrides in runs]
    third = sweep.run_local(
        str(config_file), root, longer, parallel=2, gpus_per_run=0, dry_run=False
    )
    assert not any(s.get("skipped") for s in third.values())
    assert sorted(s["status"] for s in third.values()) == ["done", "done", "done", "failed"]
    assert (root / "report.md").is_file()
    assert (root / "val_loss.png").read_bytes().startswith(b"\x89PNG")

    # The curves of one finished run, against wall-clock and bytes seen.
    done = next(root / n for n, s in statuses.items() if s == "done")
    c = curves.read_run(done, "run")
    config = config_lib.load(done / "config.json")
    per_step = config.train.batch_size * config.data.seq_len
    assert c.mbytes == [r * per_step / 1e6 for r in (2, 4, 6)]
    assert c.hours == sorted(c.hours) and None not in c.train
    assert c.machine and c.machine.startswith("cpu: ")  # Named by the run's history.
    fig, note = curves.plot([c], [(1.4697, "nanoGPT")], tmp_path / "c.png", ymax=6.0)
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")
    assert len(fig.axes) == 2 and not note  # One machine: the wall-clock panel is drawn.


def test_slurm_script_and_tpu_vm_commands_are_well_formed():
    runs = [
        ("lr=0.1,seed=0", {"train.learning_rate": 0.1, "seed": 0}),
        ("lr=0.2,seed=0", {"train.learning_rate": 0.2, "seed": 0}),
    ]
    script = sweep.slurm_script(
        "experiments/shakespeare.py:tiny",
        "/shared/sweep",
        runs,
        nodes=2,
        repo_dir="/home/me/charrnn_jax",
    )
    assert script.startswith("#!/bin/bash\n")
    assert "#SBATCH --array=0-1" in script and "#SBATCH --nodes=2" in script
    assert "'lr=0.1,seed=0|--config.train.learning_rate=0.1 --config.seed=0'" in script
    assert (
        "srun python -m charrnn_jax.main --config=experiments/shakespeare.py:tiny "
        '--workdir=/shared/sweep/"$NAME" $OVERRIDES'
    ) in script

    commands = sweep.tpu_vm_commands(
        "experiments/shakespeare.py",
        "gs://bucket/sweep",
        runs,
        tpu_name="pod",
        zone="us-central2-b",
        repo_dir="~/c",
    )
    assert len(commands) == 2
    words = shlex.split(commands[1])
    assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
    assert "--worker=all" in words
    inner = words[-1].removeprefix("--command=")
    assert inner.startswith("cd ~/c && python -m charrnn_jax.main")
    assert "--workdir=gs://bucket/sweep/lr=0.2,seed=0" in inner
    assert "--config.train.learning_rate=0.2" in inner


def _launch(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "launch.sweep", *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_shared_config_overrides_reach_every_run_but_not_its_name(tmp_path):
    config = str(REPO / "experiments" / "shakespeare.py") + ":tiny"
    result = _launch(
        tmp_path,
        f"--config={config}",
        f"--workdir_root={tmp_path / 'root'}",
        "--dry_run",
        "--config.train.num_steps=7",
        "--config.train.learning_rate=0.5",  # The sweep's own learning rates win.
    )
    assert result.returncode == 0, result.stderr[-2000:]
    commands = [line for line in result.stdout.splitlines() if "charrnn_jax.main" in line]
    assert len(commands) == 8
    for line in commands:
        args = shlex.split(line)
        assert "--config.train.num_steps=7" in args
        rates = [a for a in args if a.startswith("--config.train.learning_rate=")]
        assert rates[-1] != "--config.train.learning_rate=0.5"  # Last one wins in absl.
        assert "num_steps" not in next(a for a in args if a.startswith("--workdir="))


def test_slurm_with_a_bucket_root_writes_nothing_under_gs(tmp_path):
    config = str(REPO / "experiments" / "shakespeare.py") + ":tiny"
    result = _launch(
        tmp_path,
        f"--config={config}",
        "--workdir_root=gs://bucket/sweep",
        "--launcher=slurm",
        "--dry_run",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    script = (tmp_path / "sweep.sbatch").read_text()
    assert "#SBATCH --output=slurm_logs/slurm-%A_%a.out" in script
    assert "--workdir=gs://bucket/sweep/" in script
    assert not (tmp_path / "gs:").exists()


def test_report_on_a_missing_root_is_one_error_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "launch.report", f"--workdir_root={tmp_path / 'none'}"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def _reproduce(tmp_path, name, *trainer_flags):
    config = f"--config={REPO / 'experiments' / 'shakespeare.py'}:tiny"
    command = [sys.executable, "-m", "launch.reproduce", "--until=3"]
    command += [f"--reference={tmp_path / 'ref' / 'metrics.jsonl'}", f"--workdir={tmp_path / name}"]
    command += ["--", config, *tiny_overrides(), *trainer_flags]
    return subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), cwd=REPO)


@pytest.mark.slow
def test_reproduce_reruns_the_start_of_a_curve_and_reports_how_close(tmp_path):
    subprocess.run(main_command(tmp_path / "ref"), check=True, env=subprocess_env(), cwd=REPO)
    same = _reproduce(tmp_path, "same")
    assert same.returncode == 0, same.stderr
    lines = same.stdout.splitlines()
    assert lines[0].startswith("train_loss: ") and lines[0].endswith("bit-identical")
    assert lines[1].startswith("val_loss: ") and lines[1].endswith("shared rows, bit-identical")
    other = _reproduce(tmp_path, "other", "--config.seed=1")  # A different curve.
    assert other.returncode == 0, other.stderr
    assert "max |diff|" in other.stdout.splitlines()[0]
    missing = _reproduce(tmp_path / "nowhere", "x")
    assert missing.returncode == 1 and missing.stderr.strip().splitlines()[-1].startswith("error:")
