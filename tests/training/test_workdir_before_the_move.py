"""A workdir trained by the flat package (commit b59df8a, before the move into folders)
resumes, samples and evaluates with today's code: the checkpoint tree paths and the
on-disk format did not change.

tests/fixtures/workdir_before_move/ is that workdir after 4 steps of a tiny GRU;
workdir_before_move_row6.json is the row the old code wrote when resumed to step 6.
"""

import json
import shutil

import jax
import pytest
from conftest import REPO

from charrnn_jax import config_lib
from charrnn_jax.data import corpora
from charrnn_jax.inference import loading, sampler, scoring
from charrnn_jax.store import metric_logging
from charrnn_jax.training import loop

FIXTURE = REPO / "tests" / "fixtures" / "workdir_before_move"


@pytest.fixture
def old_workdir(tmp_path):
    workdir = tmp_path / "old"
    shutil.copytree(FIXTURE, workdir)
    return workdir


def test_an_old_workdir_resumes_to_the_rows_the_old_code_wrote(old_workdir):
    config = config_lib.with_overrides(
        config_lib.load(old_workdir / "config.json"), {"train.num_steps": 6}
    )
    summary = loop.train_and_evaluate(config, old_workdir)
    assert summary["resumed_from"] == 4
    rows = metric_logging.read_jsonl(old_workdir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 6]
    expected = json.loads((FIXTURE.parent / "workdir_before_move_row6.json").read_text())
    for key in ("train_loss", "val_loss", "grad_norm"):
        assert rows[-1][key] == pytest.approx(expected[key], rel=1e-5), key


def test_an_old_workdir_samples_and_scores(old_workdir):
    config, model, params, step = loading.load_for_inference(old_workdir, "best")
    assert step == 4
    tokens, _ = sampler.sample(
        params, model, [b"ROMEO:"], length=20, temperature=0.8, rng=jax.random.key(0)
    )
    assert tokens.shape == (1, 20)
    val = corpora.load_splits(config.data)["val"][:2001]
    result = scoring.score_bytes(params, model, val, streams=8, chunk=config.data.seq_len)
    assert result["bytes"] == 2000 and 5.0 < result["loss"] < 5.6  # Near ln 256 after 4 steps.
