"""`evaluate --metric=nanogpt`: nanoGPT's estimate_loss() in our harness, checked against
a plain numpy transcription of it over the same seeded windows."""

import jax
import numpy as np
import pytest

from charrnn_jax import models
from charrnn_jax.data import corpora
from charrnn_jax.inference import scoring


@pytest.fixture(scope="module")
def model_and_tokens():
    model = models.CharRNN(models.ModelConfig(embed_dim=8, hidden_size=16, num_layers=2))
    params = model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
    tokens = corpora.load_bytes(corpora.resolve_path("tinyshakespeare", ""))[:20_000]
    return model, params, tokens


def _estimate_loss_in_numpy(model, params, tokens, starts, block):
    """nanoGPT's train.py: for each batch, X = data[i:i+block], Y = data[i+1:i+1+block];
    the loss is the mean cross-entropy over every position; the estimate is the mean of
    the batches' losses."""
    losses = []
    for row in starts:
        x = np.stack([tokens[i : i + block] for i in row]).astype(np.int32)
        y = np.stack([tokens[i + 1 : i + 1 + block] for i in row]).astype(np.int64)
        logits, _ = model.apply({"params": params}, x)
        logits = np.asarray(logits, np.float64)
        log_probs = (
            logits
            - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logits.max(-1, keepdims=True)
        )
        losses.append(-np.take_along_axis(log_probs, y[..., None], -1).mean())
    return float(np.mean(losses))


def test_it_equals_a_numpy_transcription_of_estimate_loss(model_and_tokens):
    model, params, tokens = model_and_tokens
    kwargs = {"seed": 3, "iters": 3, "batch": 4, "block": 32}
    result = scoring.score_nanogpt(params, model, tokens, **kwargs)
    starts = scoring.nanogpt_window_starts(len(tokens), **kwargs)
    assert starts.shape == (3, 4) and starts.min() >= 0 and starts.max() < len(tokens) - 32
    assert result["bytes"] == 3 * 4 * 32 and result["windows"] == 12
    expected = _estimate_loss_in_numpy(model, params, tokens, starts, 32)
    assert result["loss"] == pytest.approx(expected, rel=1e-5)


def test_the_draw_is_seeded(model_and_tokens):
    model, params, tokens = model_and_tokens
    draw = {"iters": 2, "batch": 4, "block": 16}
    a = scoring.nanogpt_window_starts(len(tokens), seed=0, **draw)
    assert (a == scoring.nanogpt_window_starts(len(tokens), seed=0, **draw)).all()
    assert (a != scoring.nanogpt_window_starts(len(tokens), seed=1, **draw)).any()
    with pytest.raises(ValueError, match="no window"):
        scoring.nanogpt_window_starts(16, seed=0, **draw)


def test_a_transformer_is_scored_on_windows_of_its_own_block_size(model_and_tokens):
    """nanoGPT's get_batch draws windows of the model's block_size: for a Transformer with
    a block shorter than 256 that is its block, not a window it cannot read in one call
    (which raised). The recurrent cells keep 256."""
    _, _, tokens = model_and_tokens
    config = models.ModelConfig(hidden_size=16, num_layers=1, cell="transformer")
    config = config.with_options(
        config.options.__class__(num_heads=2, block_size=32, eval_stride=16)
    )
    model = models.CharRNN(config)
    params = model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
    result = scoring.score_nanogpt(params, model, tokens, iters=2, batch=3)
    assert result["block"] == 32 and result["bytes"] == 2 * 3 * 32
    starts = scoring.nanogpt_window_starts(len(tokens), seed=0, iters=2, batch=3, block=32)
    expected = _estimate_loss_in_numpy(model, params, tokens, starts, 32)
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    recurrent, params, _ = model_and_tokens
    assert scoring.score_nanogpt(params, recurrent, tokens, iters=1, batch=1)["block"] == 256
