"""What researchers expect of a run: the best checkpoint, early stopping, fine-tuning,
compile messages and the classifier's progress line."""

import jax
import numpy as np
import pytest
from conftest import tiny_config

from charrnn_jax.errors import UserError
from charrnn_jax.inference import loading
from charrnn_jax.store import checkpointing, metric_logging
from charrnn_jax.training import loop


def _run(workdir, **overrides):
    return loop.train_and_evaluate(tiny_config(**overrides), workdir, devices=jax.devices()[:2])


def _leaves(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


@pytest.mark.slow
def test_best_checkpoint_is_kept_and_served_with_step_best(tmp_path):
    # A learning rate that first helps, then (too high) hurts: val rises after a while.
    _run(tmp_path, **{"train.num_steps": 12, "train.eval_every": 2, "train.max_to_keep": 1})
    rows = [r for r in metric_logging.read_jsonl(tmp_path / "metrics.jsonl") if r["val_loss"]]
    best = min(rows, key=lambda r: r["val_loss"])
    _, _, params, step = loading.load_for_inference(tmp_path, "best")
    assert step == best["step"]
    assert checkpointing.Checkpointer(tmp_path, read_only=True).all_steps() == [12]
    if best["step"] != 12:  # Then the latest params differ from the best ones.
        _, _, latest, _ = loading.load_for_inference(tmp_path)
        assert any((a != b).any() for a, b in zip(_leaves(params), _leaves(latest), strict=True))
    assert checkpointing.parse_step("best") == "best" and checkpointing.parse_step("7") == 7
    with pytest.raises(UserError, match="--step must be"):
        checkpointing.parse_step("newest")


@pytest.mark.slow
def test_early_stopping_stops_and_a_rerun_trains_no_further(tmp_path):
    overrides = {
        "train.num_steps": 200,
        "train.eval_every": 2,
        "train.learning_rate": 0.3,  # Diverges: val stops improving within a few evals.
        "train.grad_clip_norm": 1.0,
        "train.early_stop_patience": 2,
    }
    summary = _run(tmp_path, **overrides)
    assert summary["early_stopped"] and summary["final_step"] < 200
    rows = metric_logging.read_jsonl(tmp_path / "metrics.jsonl")
    vals = [(r["step"], r["val_loss"]) for r in rows if r["val_loss"] is not None]
    best_step = min(vals, key=lambda v: v[1])[0]
    assert summary["final_step"] == best_step + 2 * 2  # Two evals without improvement.
    again = _run(tmp_path, **overrides)
    assert again["early_stopped"] and again["final_step"] == summary["final_step"]
    assert metric_logging.read_jsonl(tmp_path / "metrics.jsonl") == rows


@pytest.mark.slow
def test_init_from_starts_from_another_runs_params_with_a_fresh_optimizer(tmp_path):
    source = _run(tmp_path / "source", **{"train.num_steps": 6})
    fine = loop.train_and_evaluate(
        tiny_config(**{"train.num_steps": 1, "train.init_from": str(tmp_path / "source:3")}),
        tmp_path / "fine",
        devices=jax.devices()[:2],
    )
    _, _, at_3, _ = loading.load_for_inference(tmp_path / "source", 3)
    # One step of Adam from step 3's params: close to them, far from a fresh init.
    pairs = zip(_leaves(fine["state"].params), _leaves(at_3), strict=True)
    moved = [np.abs(a - b).max() for a, b in pairs]
    assert max(moved) < 0.05
    assert int(jax.device_get(fine["state"].opt_state[0][0].count)) == 1  # Fresh Adam.
    assert source["final_step"] == 6
    with pytest.raises(UserError, match=r"head/kernel has shape \(32, 256\)"):
        loop.train_and_evaluate(
            tiny_config(**{"model.hidden_size": 48, "train.init_from": str(tmp_path / "source")}),
            tmp_path / "wrong",
        )


def test_compiling_is_announced_and_timed(tmp_path, caplog):
    caplog.set_level("INFO")
    _run(tmp_path, **{"train.num_steps": 2})
    messages = [r.getMessage() for r in caplog.records]
    assert "Compiling the train step..." in messages
    assert any(m.startswith("Compiled the train step in ") for m in messages)


def test_classifier_progress_shows_accuracy_not_bits():
    rates = {"steps_per_sec": 1.0, "tokens_per_sec": 10.0, "eta_sec": 0.0}
    record = {"train_loss": 0.5, "train_bpb": 0.72, "train_accuracy": 0.8}
    record.update(val_loss=0.6, val_bpb=0.87, val_accuracy=0.75)
    line = metric_logging.progress_line(5, 10, record, rates)
    assert "acc 0.800" in line and "val_acc 0.750" in line and "bpb" not in line
    lm = metric_logging.progress_line(5, 10, {"train_loss": 0.5, "train_bpb": 0.72}, rates)
    assert "bpb 0.7200" in lm and "acc" not in lm
