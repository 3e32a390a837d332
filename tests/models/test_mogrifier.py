"""The Mogrifier GRU (models/mogrifier.py): the paper's equations, the GRU at zero rounds,
carries and padding, DropConnect, the hand-written backward against autodiff, and a short
training run through the real trainer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from charrnn_jax import config_lib, models
from charrnn_jax.errors import UserError
from charrnn_jax.models import mogrifier
from charrnn_jax.store import metric_logging
from charrnn_jax.training import loop

TOKENS = jax.random.randint(jax.random.key(1), (3, 13), 0, 256)


def _model(options=None, **kwargs):
    base = {"embed_dim": 8, "hidden_size": 16, "num_layers": 2, "cell": "mogrifier_gru"}
    return models.CharRNN(models.ModelConfig(**{**base, **kwargs}).with_options(options))


def _reference_layer(params, xs, h, rounds, valid=None):
    """Eq. 1-2 of Melis et al. 2020 and nn.GRUCell's update, one time step at a time."""
    cell = params["scan"]["cell"]
    mog = params.get("mogrifier", {})

    def kernel(name):
        p = mog[name]
        return p["kernel"] if "kernel" in p else p["left"] @ p["right"]

    def dense(src, name):
        return src @ cell[name]["kernel"] + cell[name].get("bias", 0)

    outputs = []
    for t, x in enumerate(xs):
        x_mod, h_mod = x, h
        for i in range(1, rounds + 1):
            if i % 2:  # Odd rounds gate x with the state.
                x_mod = 2 * jax.nn.sigmoid(h_mod @ kernel(f"q{i}")) * x_mod
            else:  # Even rounds gate the state with x.
                h_mod = 2 * jax.nn.sigmoid(x_mod @ kernel(f"r{i}")) * h_mod
        r = jax.nn.sigmoid(dense(x_mod, "ir") + dense(h_mod, "hr"))
        z = jax.nn.sigmoid(dense(x_mod, "iz") + dense(h_mod, "hz"))
        n = jnp.tanh(dense(x_mod, "in") + r * dense(h_mod, "hn"))
        new = (1 - z) * n + z * h
        h = new if valid is None else jnp.where(valid[t][:, None], new, h)
        outputs.append(h)
    return jnp.stack(outputs), h


def _layer_case(rounds, rank, seed=0):
    layer = mogrifier.MogrifierGRULayer(16, jnp.float32, rounds=rounds, rank=rank)
    xs = jax.random.normal(jax.random.key(seed + 2), (9, 3, 8))
    h0 = 0.5 * jax.random.normal(jax.random.key(seed + 3), (3, 16))
    params = layer.init(jax.random.key(seed), h0, xs)["params"]
    return layer, params, h0, xs


@pytest.mark.parametrize("rounds,rank", [(5, 0), (4, 3), (1, 0)])
def test_layer_is_a_transcription_of_the_paper(rounds, rank):
    layer, params, h0, xs = _layer_case(rounds, rank)
    valid = jnp.arange(9)[:, None] < jnp.array([9, 5, 2])[None, :]  # Rows padded after 5, 2.
    expected_hs, expected_last = _reference_layer(params, xs, h0, rounds, valid)
    last, hs = layer.apply({"params": params}, h0, xs, valid)
    np.testing.assert_allclose(hs, expected_hs, atol=2e-5)
    np.testing.assert_allclose(last, expected_last, atol=2e-5)
    names = sorted(params.get("mogrifier", {}))
    odd, even = range(1, rounds + 1, 2), range(2, rounds + 1, 2)
    assert names == sorted([f"q{i}" for i in odd] + [f"r{i}" for i in even])


def test_low_rank_factorises_each_rounds_matrix():
    layer = mogrifier.MogrifierGRULayer(16, jnp.float32, rounds=2, rank=3)
    params = layer.init(jax.random.key(0), jnp.zeros((3, 16)), jnp.zeros((4, 3, 8)))["params"]
    shapes = jax.tree.map(jnp.shape, params["mogrifier"])
    assert shapes == {
        "q1": {"left": (16, 3), "right": (3, 8)},
        "r2": {"left": (8, 3), "right": (3, 16)},
    }


def test_zero_rounds_is_the_gru_with_the_same_params():
    gru = models.CharRNN(
        models.ModelConfig(embed_dim=8, hidden_size=16, num_layers=2, gru_impl="flax")
    )
    params = gru.init(jax.random.key(0), TOKENS)["params"]
    lengths = jnp.array([13, 5, 1])
    expected, expected_carry = gru.apply({"params": params}, TOKENS, lengths=lengths)
    plain = _model(options=mogrifier.MogrifierOptions(rounds=0))
    logits, carry = plain.apply({"params": params}, TOKENS, lengths=lengths)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    for a, b in zip(carry, expected_carry, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_carry_round_trip_and_padding():
    model = _model()
    params = model.init(jax.random.key(0), TOKENS)["params"]
    whole, whole_carry = model.apply({"params": params}, TOKENS)
    first, carry = model.apply({"params": params}, TOKENS[:, :6])
    second, carry = model.apply({"params": params}, TOKENS[:, 6:], carry)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=1e-5)
    for a, b in zip(carry, whole_carry, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # A padded row ends with the carry of its own length; one byte at a time (the
    # sampler's path) gives the same carry as the whole prefix.
    _, padded = model.apply({"params": params}, TOKENS, lengths=jnp.array([13, 4, 13]))
    stepped = model.initialize_carry(1)
    for t in range(4):
        _, stepped = model.apply({"params": params}, TOKENS[1:2, t : t + 1], stepped)
    for a, b in zip(padded, stepped, strict=True):
        np.testing.assert_allclose(a[1], b[0], atol=1e-6)


def test_drop_connect_acts_only_in_training_and_follows_the_key():
    model = _model(recurrent_dropout=0.5)
    params = model.init(jax.random.key(0), TOKENS)["params"]

    def run(rng, train=True):
        rngs = {"dropout": jax.random.key(rng)}
        return model.apply({"params": params}, TOKENS, train=train, rngs=rngs)[0]

    reference = _model().apply({"params": params}, TOKENS)[0]
    np.testing.assert_allclose(run(0, train=False), reference, atol=1e-6)
    assert np.abs(run(1) - reference).max() > 1e-3
    np.testing.assert_array_equal(run(1), run(1))
    assert np.abs(run(1) - run(2)).max() > 1e-3
    grads = jax.grad(
        lambda p: model.apply(
            {"params": p}, TOKENS, train=True, rngs={"dropout": jax.random.key(1)}
        )[0].mean()
    )(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def _recurrence_case(rounds, rank, seed=0, width=8, hidden=16, steps=9):
    """Random weights (factorised at `rank`), a nonzero carry, rows padded after 5 and 2
    steps, and cotangents for hs and the last carry."""
    keys = iter(jax.random.split(jax.random.key(seed), 32))

    def normal(*shape, scale=0.4):
        return scale * jax.random.normal(next(keys), shape)

    factors = []
    for i in range(1, rounds + 1):
        rows, cols = (hidden, width) if i % 2 else (width, hidden)
        factors.append((normal(rows, rank), normal(rank, cols)) if rank else (normal(rows, cols),))
    args = (
        factors,
        normal(width, 3 * hidden),
        normal(3 * hidden, scale=0.1),
        normal(hidden, 3 * hidden),
        normal(hidden, scale=0.1),
        normal(3, hidden, scale=0.5),
        normal(steps, 3, width, scale=1.0),
    )
    valid = jnp.arange(steps)[:, None] < jnp.array([steps, 5, 2])[None, :]
    cotangents = (normal(steps, 3, hidden, scale=1.0), normal(3, hidden, scale=1.0))
    return args, valid, cotangents


def _loss_and_grads(recurrence, args, valid, cotangents, dtype=jnp.float32, unroll=1):
    def loss(args):
        hs, last = recurrence(*args, valid, dtype, unroll)
        return jnp.sum(hs * cotangents[0]) + jnp.sum(last * cotangents[1])

    return jax.value_and_grad(loss)(args)


@pytest.mark.parametrize(
    "rounds,rank,padded,unroll",
    [(5, 0, True, 1), (4, 3, True, 2), (1, 0, False, 1), (0, 0, True, 1)],
)
def test_hand_written_backward_equals_autodiff(rounds, rank, padded, unroll):
    """The custom VJP (every weight's gradient as one GEMM after the loop) against
    autodiff of the plain scan: loss and the gradients of all weights, the inputs and
    the carry, padded rows included."""
    args, valid, cotangents = _recurrence_case(rounds, rank)
    valid = valid if padded else None
    expected_loss, expected = _loss_and_grads(
        mogrifier._autodiff_recurrence, args, valid, cotangents, unroll=unroll
    )
    loss, grads = _loss_and_grads(
        mogrifier.mogrifier_gru_recurrence, args, valid, cotangents, unroll=unroll
    )
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    assert jax.tree.structure(grads) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    if padded:  # A padded step's input gets no gradient.
        assert np.abs(grads[6][5:, 1]).max() == 0 and np.abs(grads[6][2:, 2]).max() == 0


def test_hand_written_backward_in_bf16_is_autodiff_within_bf16_rounding():
    args, valid, cotangents = _recurrence_case(5, 0, seed=1)
    _, exact = _loss_and_grads(mogrifier._autodiff_recurrence, args, valid, cotangents)
    _, expected = _loss_and_grads(
        mogrifier._autodiff_recurrence, args, valid, cotangents, jnp.bfloat16
    )
    _, grads = _loss_and_grads(
        mogrifier.mogrifier_gru_recurrence, args, valid, cotangents, jnp.bfloat16
    )
    for got, want, f32 in zip(*map(jax.tree.leaves, (grads, expected, exact)), strict=True):
        assert got.dtype == jnp.float32
        scale = np.abs(f32).max()
        # Both bf16 versions are as far from each other as each is from float32.
        assert np.abs(got - want).max() <= 0.03 * scale
        assert np.abs(got - f32).max() <= 0.03 * scale


def test_model_gradients_with_every_regulariser_equal_autodiffs(monkeypatch):
    """Through CharRNN with DropConnect, variational, input and output dropout and ragged
    lengths: the same masks (same key), the same loss and parameter gradients whether the
    layer's scan is differentiated by hand or by autodiff."""
    model = _model(
        mogrifier.MogrifierOptions(rounds=5, rank=3),
        recurrent_dropout=0.25,
        dropout=0.2,
        variational_dropout=True,
        input_dropout=0.1,
    )
    params = model.init(jax.random.key(0), TOKENS)["params"]
    lengths = jnp.array([13, 6, 2])

    def loss(params):
        logits, _ = model.apply(
            {"params": params},
            TOKENS,
            lengths=lengths,
            train=True,
            rngs={"dropout": jax.random.key(3)},
        )
        return jnp.mean(jax.nn.log_softmax(logits)[..., 7])

    loss_hand, grads_hand = jax.value_and_grad(loss)(params)
    monkeypatch.setattr(mogrifier, "mogrifier_gru_recurrence", mogrifier._autodiff_recurrence)
    loss_auto, grads_auto = jax.value_and_grad(loss)(params)
    np.testing.assert_allclose(loss_hand, loss_auto, rtol=1e-6)
    flat_hand = jax.tree_util.tree_leaves_with_path(grads_hand)
    for (path, got), want in zip(flat_hand, jax.tree.leaves(grads_auto), strict=True):
        scale = np.abs(want).max()
        assert scale > 0, path  # Every parameter gets a gradient.
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=str(path))


def test_config_accepts_drop_connect_and_rejects_negative_rounds():
    config_lib.resolve(
        tiny_config(**{"model.cell": "mogrifier_gru", "model.recurrent_dropout": 0.25})
    )
    with pytest.raises(UserError, match=r"^model.mogrifier_gru.rounds must be >= 0, got -1.$"):
        config_lib.resolve(
            tiny_config(**{"model.cell": "mogrifier_gru", "model.mogrifier_gru.rounds": -1})
        )


def test_trains_through_the_real_trainer(tmp_path):
    """Tiny Shakespeare, the real step with DropConnect and variational dropout: the loss
    falls from log(256) and evaluation runs with the carry kept."""
    config = tiny_config(
        **{
            "model.cell": "mogrifier_gru",
            "model.num_layers": 2,
            "model.mogrifier_gru.rank": 8,
            "model.recurrent_dropout": 0.25,
            "model.dropout": 0.1,
            "model.variational_dropout": True,
            "train.learning_rate": 1e-2,
            "train.num_steps": 30,
            "train.log_every": 10,
            "train.eval_every": 30,
            "train.checkpoint_every": 30,
        }
    )
    loop.train_and_evaluate(config, tmp_path, devices=jax.devices()[:2])
    rows = metric_logging.read_jsonl(tmp_path / "metrics.jsonl")
    losses = [r["train_loss"] for r in rows]
    assert losses[-1] < losses[0] - 1.0 and losses[0] < 5.6, losses
    assert np.isfinite(rows[-1]["val_loss"]) and rows[-1]["val_loss"] < 4.5, rows[-1]
