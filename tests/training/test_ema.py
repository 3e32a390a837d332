"""Averaged weights (train.ema_decay): the average's arithmetic, its warm-up, and that val,
the best checkpoint, evaluate and sample all use it while the raw val stays visible."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from charrnn_jax.errors import UserError
from charrnn_jax.inference import loading
from charrnn_jax.store import checkpointing, metric_logging
from charrnn_jax.training import loop, steps


def test_the_average_of_a_constant_is_the_constant_exactly():
    params = {"w": jnp.array([[0.1, -3.7], [1e-8, 12345.678]]), "b": jnp.array([0.3])}
    ema = params
    for n in range(50):
        ema = steps.update_ema(ema, params, steps.ema_decay_at(0.999, n))
    jax.tree.map(np.testing.assert_array_equal, ema, params)


def test_warm_up_then_the_configured_decay():
    decays = [float(steps.ema_decay_at(0.99, n)) for n in (0, 1, 10, 2000, 10_000)]
    np.testing.assert_allclose(decays[:3], [1 / 10, 2 / 11, 11 / 20], rtol=1e-6)
    assert decays[3] == decays[4] == pytest.approx(0.99)


def test_the_average_follows_its_formula_over_a_sequence():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(30, 4)).astype(np.float32)
    ema, expected = jnp.asarray(values[0]), values[0].astype(np.float64)
    for n, value in enumerate(values[1:]):
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        ema = steps.update_ema(ema, jnp.asarray(value), steps.ema_decay_at(0.9, n))
    np.testing.assert_allclose(ema, expected, rtol=1e-5)


def test_a_run_logs_both_vals_and_serves_the_average(tmp_path):
    config = tiny_config(**{"train.ema_decay": 0.9, "train.num_steps": 6})
    summary = loop.train_and_evaluate(config, tmp_path, devices=jax.devices()[:1])
    state = summary["state"]
    rows = [r for r in metric_logging.read_jsonl(tmp_path / "metrics.jsonl") if r["val_loss"]]
    assert rows and all(r["val_loss_raw"] is not None for r in rows)
    assert all(r["val_loss"] != r["val_loss_raw"] for r in rows)  # Two different models.
    # The latest checkpoint serves the average; it differs from the raw params.
    _, _, served, step = loading.load_for_inference(tmp_path)
    assert step == 6
    jax.tree.map(np.testing.assert_array_equal, served, jax.device_get(state.ema))
    assert not np.array_equal(jax.tree.leaves(served)[0], jax.tree.leaves(state.params)[0])
    # The best checkpoint holds the average at its step, with that step's val.
    best_val, best_step = min((r["val_loss"], r["step"]) for r in rows)
    ckpt = checkpointing.Checkpointer(tmp_path, read_only=True, best=True)
    try:
        assert ckpt.all_steps() == [best_step]
        assert ckpt.read_meta(best_step)["val_loss"] == pytest.approx(best_val)
    finally:
        ckpt.close()


def test_the_average_leaves_the_raw_training_untouched(tmp_path):
    """A run with EMA trains exactly the run without it: the same train rows and raw val,
    so an EMA run's gain is read off one curve (val_loss against val_loss_raw)."""
    runs = {}
    for decay in (0.0, 0.9):
        config = tiny_config(**{"train.ema_decay": decay, "train.num_steps": 6})
        workdir = tmp_path / f"ema_{decay}"
        loop.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
        runs[decay] = metric_logging.read_jsonl(workdir / "metrics.jsonl")
    plain, averaged = runs[0.0], runs[0.9]
    assert [r["train_loss"] for r in averaged] == [r["train_loss"] for r in plain]
    assert [r["grad_norm"] for r in averaged] == [r["grad_norm"] for r in plain]
    assert [r["val_loss_raw"] for r in averaged] == [r["val_loss"] for r in plain]


def test_a_decay_outside_zero_to_one_is_an_error(tmp_path):
    with pytest.raises(UserError, match="train.ema_decay must be in"):
        loop.train_and_evaluate(tiny_config(**{"train.ema_decay": 1.0}), tmp_path)
