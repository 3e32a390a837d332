"""The metrics table (store/metric_logging.ROW_FIELDS): the on-device window, its
accumulation and the row's train fields derive from it; the metric added through it
(grad_norm_max) is a real maximum; a workdir made before the metric existed resumes with
it starting at zero and every other row as the old code wrote it; rows are strict JSON."""

import json
import math
import shutil

import numpy as np
import pytest
from conftest import REPO, tiny_config

from charrnn_jax import config_lib
from charrnn_jax.store import metric_logging
from charrnn_jax.training import loop, steps

FIXTURE = REPO / "tests" / "fixtures" / "workdir_before_metric_table"


def test_the_window_and_the_row_derive_from_the_table():
    window = steps.empty_window()
    expected = {m.window_key for m in metric_logging.TRAIN_METRICS} | {"steps", "bad_step"}
    assert set(window) == expected
    for m in metric_logging.TRAIN_METRICS:
        assert m.name in metric_logging.FIELDS and m.reduce in metric_logging.REDUCTIONS
    for grad_norm in (3.0, 5.0, 4.0):
        window = steps._accumulate(
            window, {"loss": 1.0, "grad_norm": grad_norm, "learning_rate": grad_norm / 10}
        )
        window["steps"] = window["steps"] + 1
    row = steps.window_record({k: np.asarray(v) for k, v in window.items()}, classifier=False)
    assert row["grad_norm"] == pytest.approx(4.0)
    assert row["grad_norm_max"] == 5.0
    assert row["learning_rate"] == pytest.approx(0.4)
    assert row["train_loss"] == 1.0 and "train_accuracy" not in row


def test_schema_documents_every_field():
    lines = metric_logging.schema().splitlines()
    assert [line.split()[0] for line in lines] == list(metric_logging.FIELDS)


def test_grad_norm_max_is_the_windows_largest_norm(tmp_path):
    """With a row every step the max is that step's norm; every 3 steps it bounds the
    mean from above and equals the largest of the per-step rows."""
    every_step, every_third = tmp_path / "a", tmp_path / "b"
    base = {"train.num_steps": 6, "train.eval_every": 6, "train.checkpoint_every": 6}
    loop.train_and_evaluate(tiny_config(**base, **{"train.log_every": 1}), every_step)
    loop.train_and_evaluate(tiny_config(**base, **{"train.log_every": 3}), every_third)
    ones = metric_logging.read_jsonl(every_step / "metrics.jsonl")
    threes = metric_logging.read_jsonl(every_third / "metrics.jsonl")
    for r in ones:
        assert r["grad_norm_max"] == pytest.approx(r["grad_norm"], rel=1e-6)
    for r in threes:
        window = [o["grad_norm"] for o in ones if r["step"] - 3 < o["step"] <= r["step"]]
        assert r["grad_norm_max"] == pytest.approx(max(window), rel=1e-6)
        assert r["grad_norm_max"] >= r["grad_norm"]


def test_a_workdir_made_before_the_metric_resumes_with_it_starting_at_zero(tmp_path):
    """The fixture: 4 steps of a tiny GRU by commit 2b028dc (before the table), checkpoints
    at 3 and 4. Killed after 3 (checkpoint 4 removed), it resumes mid-window to step 6 with
    the rows the old code wrote when resumed the same way; grad_norm_max starts at zero at
    the restore, so row 4 holds step 4's norm alone."""
    workdir = tmp_path / "old"
    shutil.copytree(FIXTURE, workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")
    config = config_lib.with_overrides(
        config_lib.load(workdir / "config.json"), {"train.num_steps": 6}
    )
    summary = loop.train_and_evaluate(config, workdir)
    assert summary["resumed_from"] == 3
    rows = metric_logging.read_jsonl(workdir / "metrics.jsonl")
    expected = json.loads((FIXTURE.parent / "workdir_before_metric_table_rows.json").read_text())
    assert [r["step"] for r in rows] == [r["step"] for r in expected] == [2, 4, 6]
    for row, old in zip(rows, expected, strict=True):
        for key in ("train_loss", "grad_norm", "learning_rate", "val_loss"):
            want = old[key] if old[key] is None else pytest.approx(old[key], rel=1e-5)
            assert row[key] == want, (row["step"], key)
    assert rows[1]["grad_norm_max"] > rows[1]["grad_norm"]  # Step 4 alone vs mean of 3-4.
    assert rows[2]["grad_norm_max"] >= rows[2]["grad_norm"]


def test_rows_are_strict_json(tmp_path):
    writer = metric_logging.JsonlWriter(tmp_path / "metrics.jsonl", resume_step=0)
    returned = writer.write({"step": 1, "val_loss": math.inf, "train_loss": math.nan})
    writer.close()
    line = (tmp_path / "metrics.jsonl").read_text().strip()

    def refuse(constant):
        raise ValueError(constant)

    row = json.loads(line, parse_constant=refuse)
    assert row["val_loss"] is None and row["train_loss"] is None
    assert returned["val_loss"] == math.inf  # The caller still sees what it wrote.


def test_old_rows_with_infinity_still_read(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "val_loss": Infinity}\n{"step": 4, "val_loss": NaN}\n')
    rows = metric_logging.read_jsonl(path)
    assert rows[0]["val_loss"] == math.inf and math.isnan(rows[1]["val_loss"])


def test_val_rows_can_carry_nanogpts_estimate_of_the_same_params(tmp_path):
    from charrnn_jax.data import corpora
    from charrnn_jax.inference import loading, scoring

    config = tiny_config(**{"eval.nanogpt_estimate": True, "train.eval_every": 6})
    loop.train_and_evaluate(config, tmp_path)
    rows = metric_logging.read_jsonl(tmp_path / "metrics.jsonl")
    val_rows = [r for r in rows if r["val_loss"] is not None]
    assert val_rows and all(r["val_loss_nanogpt"] is not None for r in val_rows)
    assert all(r["val_loss_nanogpt"] is None for r in rows if r["val_loss"] is None)
    _, model, params, step = loading.load_for_inference(tmp_path)
    assert step == val_rows[-1]["step"]
    val = corpora.load_splits(config.data)["val"]
    expected = scoring.score_nanogpt(params, model, val)["loss"]
    assert val_rows[-1]["val_loss_nanogpt"] == pytest.approx(expected, rel=1e-5)
