"""The RNN regularisers: DropConnect on the recurrent kernel, variational and input dropout,
and decoupled weight decay; each acts only while training and only where it should."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from charrnn_jax import config_lib, models
from charrnn_jax.errors import UserError
from charrnn_jax.training import optim

TOKENS = jax.random.randint(jax.random.key(1), (4, 30), 0, 256)


def _apply(model, params, rng=0, train=True):
    logits, _ = model.apply(
        {"params": params}, TOKENS, train=train, rngs={"dropout": jax.random.key(rng)}
    )
    return logits


@pytest.mark.parametrize(
    "kwargs",
    [
        {"recurrent_dropout": 0.5},
        {"input_dropout": 0.3},
        {"dropout": 0.3, "variational_dropout": True},
        {"input_dropout": 0.3, "variational_dropout": True, "cell": "mingru"},
    ],
)
def test_dropouts_act_only_in_training_and_follow_the_key(kwargs):
    base = {"embed_dim": 16, "hidden_size": 32, "num_layers": 2}
    plain = models.CharRNN(models.ModelConfig(**base, cell=kwargs.get("cell", "gru")))
    model = models.CharRNN(models.ModelConfig(**{**base, **kwargs}))
    params = plain.init(jax.random.key(0), TOKENS)["params"]
    reference = _apply(plain, params, train=False)
    np.testing.assert_allclose(_apply(model, params, train=False), reference, atol=1e-6)
    dropped = _apply(model, params, rng=1)
    assert np.abs(dropped - reference).max() > 1e-3
    np.testing.assert_array_equal(dropped, _apply(model, params, rng=1))
    assert np.abs(dropped - _apply(model, params, rng=2)).max() > 1e-3


def test_variational_masks_are_shared_over_time():
    model = models.CharRNN(
        models.ModelConfig(
            embed_dim=16, hidden_size=32, input_dropout=0.5, variational_dropout=True
        )
    )
    params = model.init(jax.random.key(0), TOKENS)["params"]
    # The same byte at every step: with one mask per row, every step sees the same input.
    same = jnp.full((4, 30), 65)
    _, state = model.apply(
        {"params": params},
        same,
        train=True,
        rngs={"dropout": jax.random.key(3)},
        capture_intermediates=True,
    )
    dropped = state["intermediates"]["drop_in"]["__call__"][0]  # [time, batch, embed]
    np.testing.assert_array_equal(dropped, jnp.broadcast_to(dropped[:1], dropped.shape))
    assert (dropped == 0).any()


def test_recurrent_dropout_gradients_are_finite_and_masked():
    model = models.CharRNN(models.ModelConfig(embed_dim=16, hidden_size=32, recurrent_dropout=0.5))
    params = model.init(jax.random.key(0), TOKENS)["params"]
    grads = jax.grad(lambda p: _apply(model, p).mean())(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_recurrent_dropout_needs_the_fused_gru():
    config = tiny_config(**{"model.cell": "lstm", "model.recurrent_dropout": 0.2})
    with pytest.raises(UserError, match="recurrent_dropout .* needs model.cell='gru'"):
        config_lib.resolve(config)
    flax_gru = tiny_config(**{"model.gru_impl": "flax", "model.recurrent_dropout": 0.2})
    with pytest.raises(UserError, match="gru_impl='flax'"):
        config_lib.resolve(flax_gru)
    config_lib.resolve(tiny_config(**{"model.recurrent_dropout": 0.2}))  # 'auto': fused.


def test_weight_decay_shrinks_matrices_only():
    config = tiny_config(**{"train.weight_decay": 0.1, "train.learning_rate": 0.5})
    tx, _ = optim.make_optimizer(config.train)
    params = {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["kernel"], 1 - 0.5 * 0.1)
    np.testing.assert_allclose(new["bias"], 1.0)


def test_no_weight_decay_keeps_adams_state_tree():
    """Checkpoints written before weight decay existed still restore."""
    params = {"kernel": jnp.ones((3, 3))}
    tx, _ = optim.make_optimizer(tiny_config().train)
    reference = optax.chain(optax.adam(optax.constant_schedule(1e-3)))
    assert jax.tree.structure(tx.init(params)) == jax.tree.structure(reference.init(params))
