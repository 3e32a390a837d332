"""The Keras tutorial baseline: weight conversion, parity of the math, the compare command."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # CI installs keras but not TensorFlow.

import jax
import numpy as np
import pytest
from conftest import tiny_config

pytest.importorskip("keras")

from charrnn_jax import config_lib, models  # noqa: E402
from charrnn_jax.baselines import keras_tutorial  # noqa: E402
from charrnn_jax.baselines import parity as compare  # noqa: E402
from charrnn_jax.training import loop, steps

pytestmark = pytest.mark.slow  # Subprocess runs and trainings: not in make test-fast.

# Measured on this CPU (float32, JAX backend): 2.6e-7 at step 0, 4.6e-4 after 20 steps
# at lr 3e-3. Adam turns float noise in near-zero gradients into +-lr steps, so the
# curves drift apart slowly even with identical math.
STEP0_RTOL = 1e-5
RTOL_20_STEPS = 1e-3

PARITY = {
    "model.embed_dim": 8,
    "model.hidden_size": 16,
    "train.num_steps": 20,
    "train.log_every": 1,
    "train.eval_every": 10,
    "train.checkpoint_every": 20,
}


def _flax_params(num_layers=1, seed=0):
    model = models.CharRNN(models.ModelConfig(embed_dim=8, hidden_size=16, num_layers=num_layers))
    return jax.device_get(model.init(jax.random.key(seed), np.zeros((1, 4), np.int32))["params"])


@pytest.mark.parametrize("num_layers", [1, 2])
def test_flax_to_keras_to_flax_is_the_identity(num_layers):
    params = _flax_params(num_layers)
    back = keras_tutorial.keras_to_flax(keras_tutorial.flax_to_keras(params))
    flat_a = jax.tree_util.tree_leaves_with_path(params)
    flat_b = jax.tree_util.tree_leaves_with_path(back)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (_, a), (_, b) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(a, b)


def test_converted_weights_give_the_same_logits():
    params = _flax_params(num_layers=2)
    keras_model = keras_tutorial.build_model(embed_dim=8, hidden_size=16, num_layers=2)
    keras_tutorial.set_weights(keras_model, keras_tutorial.flax_to_keras(params))
    tokens = np.random.default_rng(0).integers(0, 256, (3, 11)).astype(np.int32)
    ours, _ = models.CharRNN(models.ModelConfig(embed_dim=8, hidden_size=16, num_layers=2)).apply(
        {"params": params}, tokens
    )
    np.testing.assert_allclose(np.asarray(keras_model(tokens)), ours, atol=1e-5)
    # Keras's own random biases fold into Flax's exactly: Keras -> Flax -> same logits.
    weights = keras_tutorial.get_weights(keras_model)
    weights["gru_0"][2] = np.random.default_rng(1).normal(size=(2, 48)).astype(np.float32)
    keras_tutorial.set_weights(keras_model, weights)
    folded = keras_tutorial.keras_to_flax(weights)
    ours, _ = models.CharRNN(models.ModelConfig(embed_dim=8, hidden_size=16, num_layers=2)).apply(
        {"params": folded}, tokens
    )
    np.testing.assert_allclose(np.asarray(keras_model(tokens)), ours, atol=1e-5)


def _parity_curves(tmp_path, initial_weights_fn=None):
    config = compare.prepare_config(tiny_config(**PARITY), steps=None, parity=True)
    typed = config_lib.resolve(config)
    params = steps.initial_params(typed)
    loop.train_and_evaluate(config, tmp_path / "ours", devices=jax.devices()[:1])
    weights = keras_tutorial.flax_to_keras(jax.device_get(params))
    if initial_weights_fn:
        weights = initial_weights_fn(weights)
    keras_tutorial.train(typed, tmp_path / "keras", initial_weights=weights)
    curves = compare.load_curves({"charrnn_jax": tmp_path / "ours", "keras": tmp_path / "keras"})
    ours = np.array([r["train_loss"] for r in curves["charrnn_jax"]])
    theirs = np.array([r["train_loss"] for r in curves["keras"]])
    assert len(ours) == len(theirs) == 20
    return np.abs(ours - theirs) / theirs


def test_parity_losses_agree_on_identical_batches(tmp_path):
    rel = _parity_curves(tmp_path)
    assert rel[0] < STEP0_RTOL, rel
    assert rel.max() < RTOL_20_STEPS, rel


def test_parity_catches_a_wrong_conversion(tmp_path):
    def swap_r_and_z(weights):
        kernel, recurrent, bias = weights["gru_0"]
        h = recurrent.shape[0]
        order = np.r_[h : 2 * h, 0:h, 2 * h : 3 * h]
        weights["gru_0"] = [kernel[:, order], recurrent[:, order], bias[:, order]]
        return weights

    rel = _parity_curves(tmp_path, swap_r_and_z)
    assert rel[0] > STEP0_RTOL or rel.max() > RTOL_20_STEPS, rel


def test_compare_command_writes_plot_csv_and_summary(tmp_path):
    config = tiny_config(**{**PARITY, "train.num_steps": 8, "train.eval_every": 4})
    result = compare.compare(config, tmp_path, parity=False)
    png = (tmp_path / "loss_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    rows = (tmp_path / "curves.csv").read_text().splitlines()
    assert rows[0] == "system,step,wall_time,train_loss,val_loss,tokens_per_sec"
    assert (
        sum(r.startswith("keras,") for r in rows)
        == sum(r.startswith("charrnn_jax,") for r in rows)
        == 8
    )
    summary = (tmp_path / "summary.md").read_text()
    assert "Speed ratio" in summary and "Keras backend: jax" in summary
    assert result["params_keras"] - result["params_ours"] == 2 * 16


def test_compare_picks_a_cadence_that_draws_a_curve():
    config = compare.prepare_config(tiny_config(), steps=60, parity=False)
    assert (config.train.log_every, config.train.eval_every) == (5, 20)  # 12 rows, 3 vals.
    assert config.eval.mode == "windows"  # The metric both sides can compute.
    config = compare.prepare_config(tiny_config(), steps=60, parity=False, log_every=2)
    assert (config.train.log_every, config.train.eval_every) == (2, 20)
