"""The Keras tutorial trained its own way (baselines/keras_fit, the fit_tutorial command)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # CI installs keras but not TensorFlow.

import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import DATA_DIR, REPO

pytest.importorskip("keras")

from charrnn_jax import models  # noqa: E402
from charrnn_jax.baselines import keras_fit, keras_tutorial  # noqa: E402
from charrnn_jax.data import corpora
from charrnn_jax.inference import scoring
from charrnn_jax.store import metric_logging

TINY = keras_fit.TutorialRecipe(embed_dim=8, hidden_size=16, seq_length=20, batch_size=4, epochs=2)


def test_windows_are_the_tutorials_split_input_target():
    tokens = np.arange(47, dtype=np.uint8)
    inputs, targets = keras_fit.tutorial_windows(tokens, seq_length=10)
    assert inputs.shape == targets.shape == (4, 10)  # 47 // 11 windows; the tail is dropped.
    np.testing.assert_array_equal(inputs[1], np.arange(11, 21))
    np.testing.assert_array_equal(targets[1], np.arange(12, 22))


def test_each_epoch_is_a_fresh_permutation_with_the_remainder_dropped():
    a, b = (keras_fit.epoch_batches(10, 3, seed=0, epoch=e) for e in (0, 1))
    assert a.shape == b.shape == (3, 3)
    for ids in (a, b):
        assert len(set(ids.ravel())) == 9 and set(ids.ravel()) <= set(range(10))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, keras_fit.epoch_batches(10, 3, seed=0, epoch=0))


def _tiny_data():
    tokens = corpora.load_bytes(DATA_DIR / "tinyshakespeare.txt")[:12_000]
    parts = corpora.splits(tokens, 0.1, 0.0)
    return parts["train"], parts["val"]


def _scorer(val):
    model = models.CharRNN(
        models.ModelConfig(embed_dim=TINY.embed_dim, hidden_size=TINY.hidden_size)
    )
    return lambda params: scoring.score_bytes(params, model, val, streams=4, chunk=16)


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """One two-epoch fit of the tiny recipe, shared by the tests that read it:
    (train, val, fit's result, its metrics folder)."""
    train, val = _tiny_data()
    out = tmp_path_factory.mktemp("two_epochs")
    return train, val, keras_fit.fit(train, _scorer(val), out, recipe=TINY, seed=1), out


@pytest.mark.slow
def test_fit_logs_the_full_split_val_of_the_keras_weights_every_epoch(two_epochs):
    train, val, result, out = two_epochs
    score = _scorer(val)
    rows = metric_logging.read_jsonl(out / "metrics.jsonl")
    steps_per_epoch = (len(train) // 21) // 4
    assert [r["step"] for r in rows] == [steps_per_epoch, 2 * steps_per_epoch]
    assert rows[1]["val_loss"] < rows[0]["val_loss"] < np.log(256)
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert rows[0]["wall_time"] < rows[1]["wall_time"]
    # The logged val is our metric of the converted final weights, not Keras's own loss.
    final = keras_tutorial.keras_to_flax(keras_tutorial.get_weights(result["model"]))
    assert rows[-1]["val_loss"] == pytest.approx(score(final)["loss"], rel=1e-6)
    assert rows[-1]["val_bpb"] == pytest.approx(rows[-1]["val_loss"] / np.log(2))
    # The best epoch (here the last: val fell) is kept with its converted weights.
    best = result["best"]
    assert (best["epoch"], best["step"]) == (2, rows[1]["step"])
    assert best["val_loss"] == rows[1]["val_loss"]
    for kept, now in zip(jax.tree.leaves(best["params"]), jax.tree.leaves(final), strict=True):
        np.testing.assert_array_equal(kept, now)


@pytest.mark.slow
def test_the_best_epoch_is_scored_by_every_estimator_of_the_table(two_epochs):
    """best_scores (fit_tutorial's best_scores.json): nanoGPT's estimator and dynamic
    evaluation on the best epoch's weights equal the scoring functions `evaluate` calls,
    and adapting helps."""
    from conftest import tiny_config

    from charrnn_jax import config_lib
    from charrnn_jax.inference import dynamic

    _, val, result, _ = two_epochs
    model = models.CharRNN(
        models.ModelConfig(embed_dim=TINY.embed_dim, hidden_size=TINY.hidden_size)
    )
    overrides = {"eval.dynamic.learning_rate": 0.3, "eval.dynamic.segment": 32}
    config = config_lib.resolve(tiny_config(**overrides))
    scores = keras_fit.best_scores(config, model, result["best"], val)
    params = result["best"]["params"]
    assert scores["full"]["loss"] == result["best"]["val_loss"]
    nanogpt = scoring.score_nanogpt(params, model, val, seed=0)
    assert scores["nanogpt"]["loss"] == pytest.approx(nanogpt["loss"], rel=1e-6)
    assert scores["dynamic"]["segment"] == 32 and scores["dynamic"]["learning_rate"] == 0.3
    static = dynamic.score_dynamic(params, model, val, segment=32, lr=0.0, decay=0.0)
    assert scores["static_one_stream"]["loss"] == pytest.approx(static["loss"], rel=1e-6)
    assert scores["dynamic"]["bytes"] == scores["static_one_stream"]["bytes"] == len(val) - 1
    # An undertrained model gains from adapting to the text it has already scored.
    assert scores["dynamic"]["loss"] < scores["static_one_stream"]["loss"]


@pytest.mark.slow
def test_the_budget_stops_fit_mid_epoch_with_a_last_row(tmp_path):
    train, val = _tiny_data()
    result = keras_fit.fit(train, _scorer(val), tmp_path, recipe=TINY, seed=1, budget_s=1e-6)
    rows = metric_logging.read_jsonl(tmp_path / "metrics.jsonl")
    assert result["steps"] == 1
    assert [r["step"] for r in rows] == [1] and rows[0]["val_loss"] is not None


def test_the_command_refuses_an_out_dir_that_holds_a_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "charrnn_jax.fit_tutorial",
            f"--config={REPO / 'experiments' / 'shakespeare_headline_gru.py'}",
            f"--out={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "already holds a run" in proc.stderr
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_the_keras_side_never_sees_test_bytes(tmp_path):
    """fit_tutorial takes its bytes from the one split path: with data.test_fraction > 0
    (experiments/hutter.py's 90/5/5), the file's tail is in neither of its splits."""
    from conftest import tiny_config

    corpus = tmp_path / "corpus.txt"
    body, tail = b"abcdefgh" * 2000, b"Z" * 2000  # The last 1/9 of the file: the test split.
    corpus.write_bytes(body + tail)
    config = tiny_config(
        **{"data.path": str(corpus), "data.val_fraction": 0.1, "data.test_fraction": 1 / 9}
    )
    train, val = keras_fit.tutorial_splits(config)
    assert len(train) + len(val) == len(body)
    assert b"Z" not in train.tobytes() + val.tobytes()
