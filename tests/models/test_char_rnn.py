"""CharRNN: shapes, carries, parameter counts and the loss at init."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_experiment, tiny_config

from charrnn_jax import config_lib, models
from charrnn_jax.models import losses, registry
from charrnn_jax.training import steps

# Every registered stacked cell gets the generic tests below the moment it is registered
# (the residual cells get theirs in test_linear_cells.py, the Transformer in
# test_transformer.py).
STACKED_CELLS = [
    name
    for name, cell in registry.CELLS.items()
    if not cell.residual_block and cell.whole_model is None
]


def _init(model, batch=2, time=12, seed=0):
    tokens = jax.random.randint(jax.random.key(seed + 1), (batch, time), 0, 256)
    params = model.init(jax.random.key(seed), tokens)["params"]
    return params, tokens


@pytest.mark.parametrize("cell", STACKED_CELLS)
def test_shapes(cell):
    model = models.CharRNN(models.ModelConfig(embed_dim=8, hidden_size=16, num_layers=2, cell=cell))
    params, tokens = _init(model, batch=3, time=7)
    logits, carry = model.apply({"params": params}, tokens)
    assert logits.shape == (3, 7, 256) and logits.dtype == jnp.float32
    assert len(carry) == 2
    for layer in carry:
        for leaf in jax.tree.leaves(layer):
            assert leaf.shape == (3, 16)


@pytest.mark.parametrize("cell", STACKED_CELLS)
def test_carry_round_trip(cell):
    """Two halves with the carry passed along equal one pass over the whole sequence."""
    model = models.CharRNN(models.ModelConfig(embed_dim=8, hidden_size=16, num_layers=2, cell=cell))
    params, tokens = _init(model, time=20)
    whole, whole_carry = model.apply({"params": params}, tokens)
    first, carry = model.apply({"params": params}, tokens[:, :9])
    second, carry = model.apply({"params": params}, tokens[:, 9:], carry)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=1e-5)
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(whole_carry), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("cell", STACKED_CELLS)
def test_lengths_give_each_row_its_own_carry(cell):
    model = models.CharRNN(models.ModelConfig(embed_dim=8, hidden_size=16, num_layers=2, cell=cell))
    params, tokens = _init(model, batch=3, time=10)
    lengths = jnp.array([10, 4, 1])
    _, carry = model.apply({"params": params}, tokens, lengths=lengths)
    for row, n in enumerate(lengths.tolist()):
        _, alone = model.apply({"params": params}, tokens[row : row + 1, :n])
        for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(alone), strict=True):
            np.testing.assert_allclose(a[row], b[0], atol=1e-6)


def test_tutorial_param_count_against_keras():
    """Keras's tutorial model has 4,021,569 params at vocab 65.

    Keras GRU (reset_after=True) has two biases per gate (input and recurrent):
    3*1024*(256+1024) + 2*3*1024 = 3,938,304, plus Embedding 65*256 and Dense 1024*65+65.
    At vocab 256 Keras would have 65,536 + 3,938,304 + 262,400 = 4,266,240. Flax's GRUCell
    has no recurrent bias on r and z (only on n), i.e. 2*1024 fewer: 4,264,192. Those two
    biases only ever appear summed with the input biases, so nothing is lost.
    """
    model = models.CharRNN(config_lib.resolve(load_experiment("shakespeare")).model)
    params = jax.eval_shape(lambda: _init(model)[0])
    count = steps.count_params(params)
    keras_count_at_vocab = lambda v: v * 256 + 3 * 1024 * (256 + 1024) + 2 * 3 * 1024 + 1024 * v + v  # noqa: E731
    assert keras_count_at_vocab(65) == 4_021_569
    assert count == 4_264_192 == keras_count_at_vocab(256) - 2 * 1024


def test_loss_at_init_is_about_ln_256():
    model = models.CharRNN(models.ModelConfig(embed_dim=32, hidden_size=64))
    params, tokens = _init(model, batch=8, time=50)
    logits, _ = model.apply({"params": params}, tokens)
    loss = float(losses.cross_entropy(logits, tokens))
    assert abs(loss - math.log(256)) < 0.05


def test_bfloat16_compute_keeps_float32_params_and_is_close():
    f32 = models.CharRNN(models.ModelConfig(embed_dim=16, hidden_size=32))
    bf16 = models.CharRNN(models.ModelConfig(embed_dim=16, hidden_size=32, dtype="bfloat16"))
    params, tokens = _init(f32, time=16)
    assert all(
        p.dtype == jnp.float32 for p in jax.tree.leaves(bf16.init(jax.random.key(0), tokens))
    )
    a, _ = f32.apply({"params": params}, tokens)
    b, carry = bf16.apply({"params": params}, tokens)
    assert b.dtype == jnp.float32 and carry[0].dtype == jnp.float32
    np.testing.assert_allclose(a, b, atol=0.05)


def test_mixed_matmul_gradients_match_autodiff():
    x = jax.random.normal(jax.random.key(0), (3, 5, 16))
    w = jax.random.normal(jax.random.key(1), (16, 8))

    def loss(matmul, x, w):
        return jnp.sum(jnp.sin(matmul(x, w)))

    ref = jax.grad(functools.partial(loss, jnp.dot), argnums=(0, 1))(x, w)
    ours = jax.grad(functools.partial(loss, models.mixed_matmul), argnums=(0, 1))(x, w)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    low = jax.grad(functools.partial(loss, models.mixed_matmul), argnums=(0, 1))(
        x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    )
    assert [g.dtype for g in low] == [jnp.bfloat16, jnp.bfloat16]
    for a, b in zip(low, ref, strict=True):
        np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=0.1, atol=0.1)


def test_time_major_logits_are_the_transpose():
    model = models.CharRNN(models.ModelConfig(embed_dim=8, hidden_size=16))
    params, tokens = _init(model, batch=3, time=7)
    batch_major, _ = model.apply({"params": params}, tokens)
    time_major, _ = model.apply({"params": params}, tokens, time_major_logits=True)
    np.testing.assert_array_equal(time_major, batch_major.transpose(1, 0, 2))


def test_dropout_is_active_only_in_training():
    model = models.CharRNN(
        models.ModelConfig(embed_dim=8, hidden_size=16, num_layers=2, dropout=0.5)
    )
    params, tokens = _init(model)
    eval_a, _ = model.apply({"params": params}, tokens)
    eval_b, _ = model.apply({"params": params}, tokens)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_out, _ = model.apply(
        {"params": params}, tokens, train=True, rngs={"dropout": jax.random.key(3)}
    )
    assert not np.allclose(train_out, eval_a)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_fused_gru_matches_nn_gru_cell_forward_and_gradients(num_layers, use_lengths):
    """The fast path (hoisted projection, folded embedding, hand-written backward) computes
    the same function and gradients as nn.scan over nn.GRUCell, with the same params."""
    reference = models.CharRNN(
        models.ModelConfig(embed_dim=16, hidden_size=32, num_layers=num_layers, gru_impl="flax")
    )
    fused = models.CharRNN(models.ModelConfig(embed_dim=16, hidden_size=32, num_layers=num_layers))
    tokens = jax.random.randint(jax.random.key(1), (4, 70), 0, 256)  # 280 > 256: folded.
    params = reference.init(jax.random.key(0), tokens)["params"]
    assert jax.tree.map(jnp.shape, fused.init(jax.random.key(0), tokens)["params"]) == (
        jax.tree.map(jnp.shape, params)
    )
    lengths = jnp.array([70, 3, 1, 40]) if use_lengths else None

    def loss(params, model):
        logits, carry = model.apply({"params": params}, tokens, lengths=lengths)
        return (logits**2).mean() + (carry[-1] ** 3).sum()

    # 2e-6: on AVX-512 CPUs (Zen 5) XLA's vectorised reductions of the two graphs round in
    # another order, 1.2e-6 apart at 2 layers; 1e-6 held on AVX2 only.
    np.testing.assert_allclose(loss(params, fused), loss(params, reference), rtol=2e-6)
    for a, b in zip(
        jax.tree.leaves(jax.grad(loss)(params, fused)),
        jax.tree.leaves(jax.grad(loss)(params, reference)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.abs(b).max()))


def test_auto_is_each_backends_entry_and_keeps_dropconnect_on_the_fused_gru():
    from charrnn_jax.models import backend_choices as choices

    for backend, family in (("cpu", "cpu"), ("cuda", "gpu"), ("rocm", "gpu"), ("tpu", "tpu")):
        assert choices.gru_impl("auto", backend) == choices.GRU_IMPL[family]
        assert choices.scan_mode("auto", backend) == choices.SCAN[family]
        assert choices.gru_impl("auto", backend, recurrent_dropout=0.3) == "fused"
        assert choices.gru_impl("flax", backend) == "flax"  # An explicit choice stands.
        assert choices.scan_mode("parallel", backend) == "parallel"
    assert choices.GRU_IMPL["cpu"] == "fused" and choices.SCAN["cpu"] == "sequential"


def test_the_default_config_builds_this_backends_choice():
    """The config's 'auto' (the default) resolves to this backend's concrete choice, and
    runs the same program as that choice named: equal logits, bit for bit."""
    config = tiny_config(**{"model.hidden_size": 32, "model.embed_dim": 16})
    auto = config_lib.resolve(config).model
    assert auto.gru_impl == "auto" and auto.scan == "auto"
    assert auto.layer_spec().gru_impl == "fused" and not auto.parallel_scan  # This is a CPU.
    built = models.CharRNN(auto)
    named = models.CharRNN(dataclasses.replace(auto, gru_impl="fused", scan="sequential"))
    params, tokens = _init(built, batch=4, time=70)
    np.testing.assert_array_equal(
        built.apply({"params": params}, tokens)[0], named.apply({"params": params}, tokens)[0]
    )


@pytest.mark.parametrize("cell, gru_impl", [("gru", "fused"), ("lstm", "flax")])
def test_unrolling_the_time_loop_computes_the_same_function(cell, gru_impl):
    """model.unroll changes only how many steps one loop iteration holds (70 steps in
    eights leave a remainder), never the loss or the gradients."""
    kw = {"embed_dim": 16, "hidden_size": 32, "num_layers": 2, "cell": cell}
    plain = models.CharRNN(models.ModelConfig(**kw, gru_impl=gru_impl))
    unrolled = models.CharRNN(models.ModelConfig(**kw, gru_impl=gru_impl, unroll=8))
    tokens = jax.random.randint(jax.random.key(1), (4, 70), 0, 256)
    params = plain.init(jax.random.key(0), tokens)["params"]
    lengths = jnp.array([70, 3, 1, 40])

    @functools.partial(jax.jit, static_argnums=1)
    def loss_and_grad(params, model):
        def loss(params):
            logits, carry = model.apply({"params": params}, tokens, lengths=lengths)
            return (logits**2).mean() + sum((c**3).sum() for c in jax.tree.leaves(carry[-1]))

        return jax.value_and_grad(loss)(params)

    (got, got_grads), (want, want_grads) = (loss_and_grad(params, m) for m in (unrolled, plain))
    np.testing.assert_allclose(got, want, rtol=2e-6)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.abs(b).max()))


def test_fused_gru_single_step_matches_the_sequence_path():
    model = models.CharRNN(models.ModelConfig(embed_dim=8, hidden_size=16))
    params, tokens = _init(model, batch=2, time=300)  # Folded embedding path.
    _, whole = model.apply({"params": params}, tokens)
    carry = model.initialize_carry(2)
    step = jax.jit(model.apply)
    for t in range(tokens.shape[1]):
        _, carry = step({"params": params}, tokens[:, t : t + 1], carry)
    np.testing.assert_allclose(carry[0], whole[0], atol=1e-5)
