"""models/stochastic.py: the unrolled threefry draws jax.random's bits and masks exactly, and
the models with its Dropout give what they gave with flax's nn.Dropout (so no run's masks
changed)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charrnn_jax import models
from charrnn_jax.models import stochastic

SHAPES = [(7,), (3, 5), (2, 3, 4, 5), (64, 1, 1), (1,)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 12345])
def test_bits_equal_jax_random_bits(shape, seed):
    key = jax.random.fold_in(jax.random.key(seed), 7)
    ours = jax.jit(stochastic.threefry_bits, static_argnums=1)(key, shape)
    np.testing.assert_array_equal(ours, jax.random.bits(key, shape))


@pytest.mark.parametrize("p", [0.8, 0.5, 0.9, 1e-3])
def test_bernoulli_equals_jax_random_bernoulli(p):
    key = jax.random.key(3)
    shape = (16, 6, 32, 32)
    ours = stochastic.bernoulli(key, p, shape)
    theirs = jax.random.bernoulli(key, p, shape)
    np.testing.assert_array_equal(ours, theirs)
    assert abs(float(ours.mean()) - p) < 0.01  # And it is a Bernoulli(p) draw.


def test_bernoulli_under_vmap_of_keys():
    """The vmapped sweep draws one mask per member from a batch of keys."""
    keys = jax.random.split(jax.random.key(5), 3)
    ours = jax.vmap(lambda k: stochastic.bernoulli(k, 0.7, (4, 9)))(keys)
    theirs = jax.vmap(lambda k: jax.random.bernoulli(k, 0.7, (4, 9)))(keys)
    np.testing.assert_array_equal(ours, theirs)
    assert not np.array_equal(ours[0], ours[1])


def test_other_key_kinds_and_64_bit_mode_fall_back_to_jax_random():
    key = jax.random.key(2, impl="rbg")
    np.testing.assert_array_equal(
        stochastic.bernoulli(key, 0.6, (5, 5)), jax.random.bernoulli(key, 0.6, (5, 5))
    )
    with jax.enable_x64(True):  # bernoulli then draws float64 uniforms from 64 bits.
        key = jax.random.key(2)
        np.testing.assert_array_equal(
            stochastic.bernoulli(key, 0.6, (50,)), jax.random.bernoulli(key, 0.6, (50,))
        )


class _Twice(nn.Module):
    """Two auto-named dropouts, one sharing its mask over axis -2 (variational)."""

    dropout: type
    rate: float

    @nn.compact
    def __call__(self, x, deterministic=False):
        x = self.dropout(self.rate)(x, deterministic)
        return self.dropout(self.rate, broadcast_dims=(-2,))(x, deterministic)


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 1.0])
def test_dropout_module_equals_flax(rate):
    x = jax.random.normal(jax.random.key(0), (3, 11, 8)) + 2.0
    rngs = {"dropout": jax.random.key(9)}
    ours = _Twice(stochastic.Dropout, rate).apply({}, x, rngs=rngs)
    theirs = _Twice(nn.Dropout, rate).apply({}, x, rngs=rngs)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(_Twice(stochastic.Dropout, rate).apply({}, x, True), x)


def _loss_and_grads(config):
    model = models.CharRNN(config)
    tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, 256)
    params = model.init(jax.random.key(0), tokens)["params"]

    def loss(params):
        logits, _ = model.apply(
            {"params": params}, tokens, train=True, rngs={"dropout": jax.random.key(4)}
        )
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize(
    "config",
    [
        models.ModelConfig(
            hidden_size=32, num_layers=2, cell="transformer", dropout=0.2
        ).with_options(
            models.ModelConfig(cell="transformer").options.__class__(
                num_heads=2, block_size=16, eval_stride=8
            )
        ),
        models.ModelConfig(
            embed_dim=8, hidden_size=16, num_layers=2, dropout=0.3, recurrent_dropout=0.2
        ),
        models.ModelConfig(
            embed_dim=8,
            hidden_size=16,
            num_layers=2,
            cell="mogrifier_gru",
            dropout=0.3,
            input_dropout=0.1,
            recurrent_dropout=0.2,
            variational_dropout=True,
        ),
    ],
    ids=["transformer", "gru_dropconnect", "mogrifier_variational"],
)
def test_models_train_as_with_flax_dropout(config, monkeypatch):
    ours = _loss_and_grads(config)
    monkeypatch.setattr(stochastic, "Dropout", nn.Dropout)
    theirs = _loss_and_grads(config)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        *[g for _, g in (ours, theirs)],
    )
