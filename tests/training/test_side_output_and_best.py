"""A best checkpoint that cannot fall behind, and side output that cannot stop a run.

The kill between the two saves of one step is reproduced by its end state: the regular
checkpoint of step 6 committed, checkpoints_best/ still at step 3 (Orbax never lists an
uncommitted step, so a best save cut short leaves exactly the older best), the rows
saying step 6 is the best."""

import shutil

import jax
import numpy as np
from conftest import tiny_config

from charrnn_jax import config_lib
from charrnn_jax.inference import loading
from charrnn_jax.store import metric_logging
from charrnn_jax.training import loop, run_outputs

SETTINGS = {"train.eval_every": 3, "train.checkpoint_every": 3, "train.log_every": 3}


def _run(workdir, steps, **overrides):
    config = tiny_config(**SETTINGS, **{"train.num_steps": steps, **overrides})
    return loop.train_and_evaluate(config, workdir, devices=jax.devices()[:1])


def _leaves(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_a_best_save_cut_short_is_made_again_on_resume(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _run(whole, 6)
    _run(cut, 3)
    older_best = tmp_path / "best_at_3"
    shutil.copytree(cut / "checkpoints_best", older_best)
    _run(cut, 6)
    rows = metric_logging.read_jsonl(cut / "metrics.jsonl")
    assert min((r["val_loss"], r["step"]) for r in rows if r["val_loss"])[1] == 6
    shutil.rmtree(cut / "checkpoints_best")
    shutil.copytree(older_best, cut / "checkpoints_best")  # The state after the kill.
    assert loading.load_for_inference(cut, "best")[3] == 3

    summary = _run(cut, 6)  # The same command again: nothing to train, the best healed.
    assert summary["final_step"] == 6
    _, _, healed, step = loading.load_for_inference(cut, "best")
    _, _, reference, reference_step = loading.load_for_inference(whole, "best")
    assert step == reference_step == 6
    for a, b in zip(_leaves(healed), _leaves(reference), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_failing_logged_sample_is_a_warning_and_training_goes_on(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("the sampler broke")

    monkeypatch.setattr(run_outputs, "generate_text", broken)
    summary = _run(tmp_path, 6, **{"sample.length": 20})
    assert summary["final_step"] == 6
    assert [r["step"] for r in metric_logging.read_jsonl(tmp_path / "metrics.jsonl")] == [3, 6]
    assert "The logged sample at step 3 failed (RuntimeError: the sampler broke)" in caplog.text
    assert loading.load_for_inference(tmp_path)[3] == 6


def test_a_prompt_that_is_not_utf8_samples_its_bytes(tmp_path, caplog):
    """A shell argument of bytes that are not UTF-8 arrives as lone surrogates."""
    caplog.set_level("INFO")
    prompt = b"KING \xff\xfe:".decode("utf-8", "surrogateescape")
    summary = _run(tmp_path, 3, **{"sample.length": 10, "sample.prompt": prompt})
    assert summary["final_step"] == 3
    assert "Sample at step 3" in caplog.text and "failed" not in caplog.text


def test_a_logged_sample_cut_mid_character_ends_on_a_whole_one(monkeypatch):
    """A Japanese run's logged sample stops after `sample.length` bytes, often inside a
    three-byte character: the log shows the whole characters before it, not U+FFFD."""
    cut = "お嬢様".encode()[:-1]  # The last character loses its final byte.

    def fake_sample(params, model, prompts, **kwargs):
        return np.frombuffer(cut, np.uint8)[None, :], np.array([len(cut)])

    monkeypatch.setattr(run_outputs.sampler, "sample", fake_sample)
    config = config_lib.resolve(tiny_config(**{"sample.prompt": ""}))
    text = run_outputs.generate_text({}, None, config, rng=None)
    assert text == "お嬢" and "\ufffd" not in text
