"""The Elman RNN (models/elman.py), the cell added through the registry alone: Elman
1990's equation step by step, both nonlinearities, the IRNN's identity init, and a short
run through the real trainer from its config block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from charrnn_jax.models import elman
from charrnn_jax.store import metric_logging
from charrnn_jax.training import loop


def _reference(params, xs, h, f, valid=None):
    """h_t = f(W_x x_t + W_h h_{t-1} + b), one step at a time (Elman 1990)."""
    outputs = []
    for t, x in enumerate(xs):
        new = f(x @ params["input_kernel"] + h @ params["recurrent_kernel"] + params["bias"])
        h = new if valid is None else jnp.where(valid[t][:, None], new, h)
        outputs.append(h)
    return jnp.stack(outputs), h


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_the_layer_is_elmans_equation(nonlinearity):
    xs = jax.random.normal(jax.random.key(0), (9, 3, 5))
    h0 = jax.random.normal(jax.random.key(1), (3, 7)) * 0.1
    valid = jnp.arange(9)[:, None] < jnp.array([9, 4, 1])[None, :]
    layer = elman.ElmanLayer(7, nonlinearity=nonlinearity)
    params = layer.init(jax.random.key(2), h0, xs)["params"]
    params = {**params, "bias": jnp.linspace(-0.5, 0.5, 7)}
    h_last, hs = layer.apply({"params": params}, h0, xs, valid)
    want_hs, want_last = _reference(params, xs, h0, elman.NONLINEARITIES[nonlinearity], valid)
    np.testing.assert_allclose(hs, want_hs, atol=1e-5)
    np.testing.assert_allclose(h_last, want_last, atol=1e-5)


def test_identity_init_is_the_irnns():
    layer = elman.ElmanLayer(6, nonlinearity="relu", recurrent_init="identity")
    params = layer.init(jax.random.key(0), jnp.zeros((2, 6)), jnp.zeros((3, 2, 4)))["params"]
    np.testing.assert_array_equal(params["recurrent_kernel"], np.eye(6))


def test_trains_from_its_config_block(tmp_path):
    """(tanh: a relu state is unbounded, and the full-split val carries it across the
    whole split.)"""
    config = tiny_config(
        **{
            "model.cell": "elman",
            "model.num_layers": 2,
            "model.elman.recurrent_init": "identity",
            "train.learning_rate": 1e-2,
            "train.num_steps": 30,
            "train.log_every": 10,
            "train.eval_every": 30,
            "train.checkpoint_every": 30,
        }
    )
    loop.train_and_evaluate(config, tmp_path, devices=jax.devices()[:1])
    rows = metric_logging.read_jsonl(tmp_path / "metrics.jsonl")
    losses = [r["train_loss"] for r in rows]
    assert losses[-1] < losses[0] - 1.0, losses
    assert np.isfinite(rows[-1]["val_loss"]) and rows[-1]["val_loss"] < 4.5, rows[-1]
