"""The wavefront schedule of stacked fused GRU layers (models/wavefront.py) computes the
layer-by-layer function: loss, gradients and carries, with ragged lengths, left padding,
dropout masks (per step and variational), DropConnect, input dropout and carried state;
it shares params and checkpoints with it, lowers for accelerators (tests/test_export.py)
and resumes exactly after SIGKILL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_sigkill_resume_is_exact

from charrnn_jax import models
from charrnn_jax.models import backend_choices, registry

HIDDEN = 32


def _models(**keys):
    keys = {"embed_dim": 16, "hidden_size": HIDDEN, **keys}
    return tuple(
        models.CharRNN(models.ModelConfig(**keys, stack=stack)) for stack in ("layers", "wavefront")
    )


def _loss_and_grads(model, params, tokens, carry, train, **kw):
    def loss(params):
        logits, new = model.apply(
            {"params": params},
            tokens,
            carry,
            train=train,
            rngs={"dropout": jax.random.key(5)},
            **kw,
        )
        return (logits**2).mean() + sum((c**3).sum() for c in new), new

    (value, new), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, new, grads


CASES = {
    "2 layers": dict(num_layers=2),
    "3 layers, ragged lengths": dict(num_layers=3, lengths=[70, 3, 1, 40]),
    "left padding (valid)": dict(num_layers=2, left_pad=[0, 10, 69, 30]),
    "dropout between layers": dict(num_layers=3, train=True, dropout=0.3),
    "all four regularisers, ragged": dict(
        num_layers=2,
        train=True,
        dropout=0.3,
        variational_dropout=True,
        input_dropout=0.1,
        recurrent_dropout=0.25,
        lengths=[70, 3, 1, 40],
    ),
    "unfolded embedding (short batch)": dict(num_layers=2, time=20),
    "4 layers, unrolled": dict(num_layers=4, unroll=3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_wavefront_computes_the_layer_by_layer_function(case):
    keys = dict(CASES[case])
    time_, train = keys.pop("time", 70), keys.pop("train", False)
    lengths, left_pad = keys.pop("lengths", None), keys.pop("left_pad", None)
    layers, wave = _models(**keys)
    batch = 4
    tokens = jax.random.randint(jax.random.key(1), (batch, time_), 0, 256)
    params = layers.init(jax.random.key(0), tokens)["params"]
    # The same params, at the same paths, serve both schedules.
    assert jax.tree.structure(wave.init(jax.random.key(0), tokens)["params"]) == (
        jax.tree.structure(params)
    )
    # A carried state, as stream mode and sampling pass in.
    carry = tuple(
        0.5 * jax.random.normal(jax.random.key(10 + i), (batch, HIDDEN))
        for i in range(keys["num_layers"])
    )
    kw = {}
    if lengths is not None:
        kw["lengths"] = jnp.array(lengths)
    if left_pad is not None:
        kw["valid"] = jnp.arange(time_)[None, :] >= jnp.array(left_pad)[:, None]
    want, want_carry, want_grads = _loss_and_grads(layers, params, tokens, carry, train, **kw)
    got, got_carry, got_grads = _loss_and_grads(wave, params, tokens, carry, train, **kw)
    # The loss to f32 rounding: 3.3e-6 apart on a Zen 4, where the stacked GEMMs sum in
    # another order than the layer-by-layer ones (2e-6 held on Zen 3 and the Xeon).
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(got_carry, want_carry, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.abs(b).max()))


def test_the_wavefront_in_bfloat16_is_within_bfloat16s_rounding():
    layers, wave = _models(num_layers=2, dtype="bfloat16")
    tokens = jax.random.randint(jax.random.key(1), (4, 70), 0, 256)
    params = layers.init(jax.random.key(0), tokens)["params"]
    carry = layers.initialize_carry(4)
    want, _, want_grads = _loss_and_grads(layers, params, tokens, carry, False)
    got, _, got_grads = _loss_and_grads(wave, params, tokens, carry, False)
    np.testing.assert_allclose(got, want, rtol=1e-3)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-2 * float(np.abs(b).max()))


def test_the_wavefront_applies_to_the_fused_gru_only_and_auto_is_this_backends_entry():
    fused = models.ModelConfig(num_layers=2, stack="wavefront")
    assert registry.CELLS["gru"].stack(fused.layer_spec()) is not None
    flax_gru = models.ModelConfig(num_layers=2, stack="wavefront", gru_impl="flax")
    assert registry.CELLS["gru"].stack(flax_gru.layer_spec()) is None  # Layer by layer.
    lstm = models.ModelConfig(cell="lstm", num_layers=2, stack="wavefront")
    assert registry.CELLS["lstm"].stack(lstm.layer_spec()) is None
    for backend, family in (("cpu", "cpu"), ("cuda", "gpu"), ("tpu", "tpu")):
        assert backend_choices.stack("auto", backend) == backend_choices.STACK[family]
        assert backend_choices.stack("wavefront", backend) == "wavefront"


def test_one_byte_at_a_time_carries_the_state_the_whole_window_ends_with():
    """Sampling (T = 1) runs layer by layer (a wave of one step would do L times the
    work); its carry after each byte agrees with the wavefront over the whole window."""
    _, wave = _models(num_layers=2)
    tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, 256)
    params = wave.init(jax.random.key(0), tokens)["params"]
    _, whole = wave.apply({"params": params}, tokens)
    carry, step = wave.initialize_carry(2), jax.jit(wave.apply)
    for t in range(tokens.shape[1]):
        _, carry = step({"params": params}, tokens[:, t : t + 1], carry)
    for a, b in zip(carry, whole, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


KILLED_RUN = {
    "model.num_layers": 2,
    "model.stack": "wavefront",
    "model.dropout": 0.2,
    "model.recurrent_dropout": 0.2,
    "train.num_steps": 30,
    "train.log_every": 7,
    "train.eval_every": 14,
    "train.checkpoint_every": 5,
}


@pytest.mark.slow
def test_a_sigkilled_wavefront_run_resumes_to_the_uninterrupted_runs_rows_and_params(tmp_path):
    assert_sigkill_resume_is_exact(tmp_path, **KILLED_RUN)
