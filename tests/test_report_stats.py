"""launch.report over seeds: runs that differ only in their seed form one group (mean,
std, n), margins carry Welch's one-sided p-value, and each run's saved `evaluate --json`
outputs are averaged per estimator."""

import json
import pathlib
import shutil

import pytest

from charrnn_jax.errors import UserError
from launch import report

REPO = pathlib.Path(__file__).resolve().parents[1]


def _row(name, seed, val, **config):
    group = report._group_key({"seed": seed, "train.log_every": seed, **config})
    return {"name": name, "seed": seed, "best_val_loss": val, "group": group}


def test_runs_that_differ_only_in_seed_form_one_group():
    rows = [
        _row("gru_s0", 0, 1.41, **{"model.cell": "gru"}),
        _row("gru_s1", 1, 1.42, **{"model.cell": "gru"}),
        _row("gru_s2", 2, 1.40, **{"model.cell": "gru"}),
        _row("mog_s0", 0, 1.385, **{"model.cell": "mogrifier_gru"}),
        _row("mog_s1", 1, 1.387, **{"model.cell": "mogrifier_gru"}),
    ]
    groups = report.seed_groups(rows)
    assert [(g["name"], g["n"], g["seeds"]) for g in groups] == [
        ("mog", 2, [0, 1]),
        ("gru", 3, [0, 1, 2]),
    ]
    assert groups[1]["mean"] == pytest.approx(1.41) and groups[1]["std"] == pytest.approx(0.01)
    text = report.seed_table(groups, reference=1.4697)
    assert "| gru | 3 | 0,1,2 | 1.4100 | 0.0100 | +0.0240 |" in text


def test_welch_p_is_small_for_a_clear_gap_and_a_half_for_none():
    # By hand: t = 0.024 / sqrt(4e-6/3 + 1e-6/3) = 18.6 on 2.94 Welch-Satterthwaite df.
    worse, better = [1.410, 1.412, 1.408], [1.386, 1.387, 1.385]
    assert report.welch_p(worse, better) == pytest.approx(1.91e-4, rel=0.01)
    assert report.welch_p(better, worse) > 0.99
    assert report.welch_p([1.0, 2.0], [1.0, 2.0]) == pytest.approx(0.5)
    assert report.welch_p([1.0], [1.0, 2.0]) is None


def test_below_reference_p():
    # t = -0.0087 / (0.001 / sqrt 3) = -15.1 on 2 df.
    assert report.below_reference_p([1.460, 1.462, 1.461], 1.4697) == pytest.approx(
        2.19e-3, rel=0.01
    )
    assert report.below_reference_p([1.470, 1.475, 1.472], 1.4697) > 0.5  # Above it.


def _published_seeds(tmp_path):
    """A copy of the Mogrifier headline's committed seeds (metrics, configs and the
    `evaluate --json` outputs, saved under different file names per seed)."""
    root = tmp_path / "seeds"
    shutil.copytree(REPO / "docs/headline/mogrifier_seeds", root)
    return root


def test_report_averages_each_estimator_over_seeds_by_what_the_files_measured(tmp_path):
    root = _published_seeds(tmp_path)
    loss = lambda seed, name: json.loads((root / seed / "evaluate" / name).read_text())["loss"]  # noqa: E731
    [group] = report.seed_groups(report.collect(root))
    assert group["seeds"] == [0, 1, 2]
    over = group["estimates"]
    nanogpt = over["val, nanoGPT's estimator (12800 windows, seed 0)"]
    assert nanogpt["seeds"] == [1, 2]
    assert nanogpt["values"] == [loss("seed1", "nanogpt.json"), loss("seed2", "nanogpt.json")]
    # Seed 1 saved it as dyn_lr0.1_decay0.001.json, seed 2 as dynamic.json: one estimator.
    dynamic = over["val, dynamic (lr 0.1, decay 0.001, segment 128, 1 stream)"]
    assert dynamic["values"] == [
        loss("seed1", "dyn_lr0.1_decay0.001.json"),
        loss("seed2", "dynamic.json"),
    ]
    assert over["val, static, 1 stream"]["seeds"] == [1, 2]  # lr 0: the decay cannot act.
    assert over["val, dynamic (lr 0.1, decay 0, segment 128, 1 stream)"]["seeds"] == [1]
    text = report.report(root, reference=1.4697)
    mean = (nanogpt["values"][0] + nanogpt["values"][1]) / 2
    assert (
        f"| seed | val, nanoGPT's estimator (12800 windows, seed 0) | 2 | 1,2 | {mean:.4f} |"
        in text
    )
    assert "by estimator" in (root / "report.md").read_text()


def test_two_files_that_score_one_estimator_differently_are_an_error(tmp_path):
    root = _published_seeds(tmp_path)
    scored = json.loads((root / "seed2/evaluate/nanogpt.json").read_text())
    scored["loss"] += 0.01
    (root / "seed2/evaluate/nanogpt_again.json").write_text(json.dumps(scored))
    with pytest.raises(UserError, match="score the same estimator"):
        report.collect(root)


def test_a_windowed_models_full_metric_is_named_by_its_stride():
    record = {"metric": "full", "streams": 64, "chunk": 128, "source": "the val split of x"}
    assert report.estimator_name(record) == "val, full (64 streams)"
    assert report.estimator_name({**record, "stride": 32}) == "val, full (64 streams, stride 32)"
