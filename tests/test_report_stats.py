"""launch.report over seeds: runs that differ only in their seed form one group (mean,
std, n), and margins carry Welch's one-sided p-value."""

import pytest

from launch import report


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
