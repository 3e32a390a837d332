"""The pieces of the nanoGPT parity check that need neither PyTorch nor nanoGPT's code
(baselines/nanogpt.py): our Transformer on the converted state_dict equals a numpy
transcription of nanoGPT's GPT.forward, our schedule equals train.py's get_lr at every
step, and a config train.py cannot mirror is one error naming each key. The parity run
itself (`python -m charrnn_jax.compare_nanogpt`) needs both; its output is committed in
docs/nanogpt_parity/."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_experiment, tiny_config
from scipy.special import erf

from charrnn_jax import config_lib, models
from charrnn_jax.baselines import nanogpt
from charrnn_jax.errors import UserError
from charrnn_jax.models.transformer import TransformerOptions
from charrnn_jax.training import optim

LAYERS, HEADS, WIDTH, BLOCK = 2, 2, 32, 16


def _layer_norm(x, weight):
    """model.py's LayerNorm: F.layer_norm(x, ..., weight, None, 1e-5)."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * weight


def _attention(x, sd, i):
    """model.py's CausalSelfAttention.forward (bias=False, no dropout)."""
    batch, time, width = x.shape
    head = width // HEADS
    q, k, v = np.split(x @ sd[f"transformer.h.{i}.attn.c_attn.weight"].T, 3, axis=-1)
    q, k, v = (a.reshape(batch, time, HEADS, head).transpose(0, 2, 1, 3) for a in (q, k, v))
    att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head)
    att = np.where(np.tril(np.ones((time, time), bool)), att, -np.inf)
    att = np.exp(att - att.max(-1, keepdims=True))
    att = att / att.sum(-1, keepdims=True)
    y = (att @ v).transpose(0, 2, 1, 3).reshape(batch, time, width)
    return y @ sd[f"transformer.h.{i}.attn.c_proj.weight"].T


def _mlp(x, sd, i):
    """model.py's MLP.forward: c_fc, exact GELU (nn.GELU()), c_proj."""
    h = x @ sd[f"transformer.h.{i}.mlp.c_fc.weight"].T
    h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
    return h @ sd[f"transformer.h.{i}.mlp.c_proj.weight"].T


def _numpy_gpt(sd, tokens):
    """model.py's GPT.forward with targets (logits at every position), in float64."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    x = sd["transformer.wte.weight"][tokens] + sd["transformer.wpe.weight"][: tokens.shape[1]]
    for i in range(LAYERS):
        x = x + _attention(_layer_norm(x, sd[f"transformer.h.{i}.ln_1.weight"]), sd, i)
        x = x + _mlp(_layer_norm(x, sd[f"transformer.h.{i}.ln_2.weight"]), sd, i)
    x = _layer_norm(x, sd["transformer.ln_f.weight"])
    return x @ sd["lm_head.weight"].T


def test_our_transformer_is_nanogpts_forward_on_the_converted_weights():
    model = models.CharRNN(
        models.ModelConfig(cell="transformer", hidden_size=WIDTH, num_layers=LAYERS).with_options(
            TransformerOptions(num_heads=HEADS, block_size=BLOCK, eval_stride=8)
        )
    )
    tokens = jax.random.randint(jax.random.key(1), (3, BLOCK), 0, 256)
    params = model.init(jax.random.key(0), tokens)["params"]
    # Trained weights are not init's: scale the norms so that each one matters.
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: p * 1.5 if "scale" in jax.tree_util.keystr(path) else p, params
    )
    sd = nanogpt.torch_state_dict(jax.device_get(params), LAYERS)
    assert sd["lm_head.weight"] is sd["transformer.wte.weight"]  # Tied, as in model.py.
    logits, _ = model.apply({"params": params}, tokens)
    expected = _numpy_gpt(sd, np.asarray(tokens))
    # At init the residual stream's variance is about 8e-4, so LayerNorm's epsilon (flax's
    # default 1e-6 against model.py's 1e-5) moved these logits by up to 6e-3.
    np.testing.assert_allclose(np.asarray(logits), expected, atol=2e-6, rtol=1e-5)


def test_our_schedule_is_train_pys_get_lr_at_every_step():
    typed = config_lib.resolve(load_experiment("shakespeare_nanogpt"))
    _, schedule = optim.make_optimizer(typed.train)
    steps = np.arange(typed.train.num_steps + 1)
    ours = np.asarray(jax.vmap(schedule)(jnp.asarray(steps)))
    theirs = np.array([nanogpt.nanogpt_lr(typed.train, int(s)) for s in steps])
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-9)
    assert theirs[0] == 0 and theirs[100] == 1e-3 and theirs[-1] == pytest.approx(1e-4)


def test_a_config_train_py_cannot_mirror_is_one_error_naming_each_key():
    with pytest.raises(UserError) as raised:
        nanogpt.step_parity(tiny_config(), "/nonexistent", steps=1)
    message = str(raised.value)
    for key in ("model.cell='gru'", "train.schedule=", "train.weight_decay=0"):
        assert key in message, message
    with pytest.raises(UserError, match="No nanoGPT model.py at /nonexistent/model.py"):
        nanogpt.import_model_py("/nonexistent")
