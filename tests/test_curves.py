"""launch.curves: every input form, runs without val rows, the wall-clock rule, styles
and legend placement, and one `error:` line for each bad input."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

from charrnn_jax.errors import UserError
from launch import curves

pytest.importorskip("matplotlib")


def _run_dir(path, *, val=True, machine="cpu: test CPU, 2 cores", config=True, steps=(10, 20)):
    path.mkdir(parents=True)
    rows = [
        {"step": s, "wall_time": 36.0 * s, "train_loss": 2.0 - s / 100,
         "val_loss": (1.9 - s / 100) if val else None}
        for s in steps
    ]  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if config:
        (path / "config.json").write_text(
            json.dumps({"train": {"batch_size": 4}, "data": {"seq_len": 25}})
        )
    if machine:
        (path / "config_history.jsonl").write_text(json.dumps({"machine": machine}) + "\n")
    return path


def test_a_workdir_a_committed_metrics_file_and_a_glob_are_all_runs(tmp_path):
    a = _run_dir(tmp_path / "lr=0.1,seed=0")  # A sweep's name, comma and all.
    b = _run_dir(tmp_path / "lr=0.2,seed=0")
    assert curves.expand([str(a), str(b)]) == [a, b]
    assert curves.expand([str(tmp_path / "lr=*")]) == [a, b]
    assert curves.expand([str(a / "metrics.jsonl")]) == [a / "metrics.jsonl"]
    run = curves.read_run(a / "metrics.jsonl", "a")
    assert run.mbytes == [10 * 100 / 1e6, 20 * 100 / 1e6]
    assert run.val == pytest.approx([1.8, 1.7])
    with pytest.raises(UserError, match="matches nothing"):
        curves.expand([str(tmp_path / "nope*")])
    with pytest.raises(UserError, match="No run at"):
        curves.expand([str(tmp_path / "missing")])


def test_a_run_without_val_rows_keeps_its_train_curve_and_numbered_axes(tmp_path):
    run = curves.read_run(_run_dir(tmp_path / "r", val=False), "no val")
    fig, _ = curves.plot([run], [], tmp_path / "c.png", ymax=3.0)
    (ax,) = [a for a in fig.axes if a.get_xlabel().startswith("training bytes")]
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("no val")]
    assert [ln.get_label() for ln in lines] == ["no val: train"]
    assert list(lines[0].get_ydata()) == pytest.approx([1.9, 1.8])
    assert all(isinstance(t, float) for t in ax.get_yticks())  # Numbers, not a category.


def test_references_differ_in_style_and_the_legend_is_outside_the_axes(tmp_path):
    run = curves.read_run(_run_dir(tmp_path / "r"), "run")
    refs = [(1.4697, "nanoGPT"), (1.40, "target")]
    fig, _ = curves.plot([run], refs, tmp_path / "c.svg", ymax=3.0)
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")  # A vector figure.
    ax = fig.axes[0]
    ref_lines = [ln for ln in ax.get_lines() if ln.get_label().startswith(("nanoGPT", "target"))]
    # Each its own grey and its own dash pattern (matplotlib keeps the pattern it draws).
    assert ref_lines[0].get_color() != ref_lines[1].get_color()
    assert ref_lines[0]._dash_pattern != ref_lines[1]._dash_pattern
    assert ax.get_legend() is None and len(fig.legends) == 1  # The figure's, not an axis's.
    legend_box = fig.legends[0].get_window_extent()
    for axis in fig.axes:
        assert not legend_box.overlaps(axis.get_window_extent())


def test_wall_clock_is_drawn_only_for_runs_on_one_named_machine(tmp_path):
    same = [curves.read_run(_run_dir(tmp_path / n), n) for n in ("a", "b")]
    fig, note = curves.plot(same, [], tmp_path / "same.png", ymax=3.0)
    assert [a.get_xlabel() for a in fig.axes][0] == "wall-clock (hours; cpu: test CPU, 2 cores)"
    assert not note
    other = curves.read_run(_run_dir(tmp_path / "c", machine="gpu: 1 x NVIDIA H200"), "c")
    fig, note = curves.plot([*same, other], [], tmp_path / "mixed.png", ymax=3.0)
    assert len(fig.axes) == 1 and "2 machines" in note
    unnamed = curves.read_run(_run_dir(tmp_path / "d", machine=None), "d")
    _, note = curves.plot([same[0], unnamed], [], tmp_path / "u.png", ymax=3.0)
    assert "no machine recorded for d" in note
    named = curves.read_run(tmp_path / "d", "d", machine="cpu: test CPU, 2 cores")
    fig, note = curves.plot([same[0], named], [], tmp_path / "n.png", ymax=3.0)
    assert len(fig.axes) == 2 and not note
    with pytest.raises(UserError, match="--wall_clock=on"):
        curves.plot([same[0], unnamed], [], tmp_path / "x.png", ymax=3.0, wall_clock="on")


def test_a_committed_metrics_file_reads_the_config_named_beside_it(tmp_path):
    run = _run_dir(tmp_path / "docs", config=False, machine=None)
    (run / "metrics.jsonl").rename(run / "gru_metrics.jsonl")
    (run / "gru_config.json").write_text(
        json.dumps({"train": {"batch_size": 8}, "data": {"seq_len": 50}})
    )
    assert curves.read_run(run / "gru_metrics.jsonl", "gru").mbytes == [0.004, 0.008]


def test_without_a_config_the_x_axis_is_the_step(tmp_path):
    run = curves.read_run(_run_dir(tmp_path / "r", config=False) / "metrics.jsonl", "r")
    fig, _ = curves.plot([run], [], tmp_path / "c.png", ymax=3.0)
    assert fig.axes[-1].get_xlabel() == "step"


@pytest.mark.parametrize(
    "args, line",
    [
        (["--workdirs=/nonexistent/run"], "error: No run at '/nonexistent/run'"),
        (["--reference=abc"], "error: --reference='abc' must be VALUE:LABEL"),
        (
            ["--out=/nonexistent/dir/c.png"],
            "error: --out's folder /nonexistent/dir does not exist.",
        ),
        (["--out=c.jpg"], "error: --out='c.jpg' must end in one of .png, .svg, .pdf."),
    ],
)
def test_each_bad_input_is_one_error_line(tmp_path, args, line):
    run = _run_dir(tmp_path / "r")
    base = {"--workdirs": str(run), "--out": str(tmp_path / "c.png")}
    base.update(dict(a.split("=", 1) for a in args))
    cmd = [sys.executable, "-m", "launch.curves", *[f"{k}={v}" for k, v in base.items()]]
    result = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env=subprocess_env(), timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [line] or result.stderr.strip().startswith(line)
    assert "Traceback" not in result.stderr
