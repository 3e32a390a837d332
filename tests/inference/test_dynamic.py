"""Dynamic evaluation (inference/dynamic.py): causal, the static metric at a zero rate,
adaptation that helps on repeated text, and nothing written to the run."""

import jax
import numpy as np
import pytest

from charrnn_jax import models
from charrnn_jax.data import corpora
from charrnn_jax.inference import dynamic, scoring


@pytest.fixture(scope="module")
def setup():
    model = models.CharRNN(models.ModelConfig(embed_dim=8, hidden_size=32, num_layers=1))
    params = model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
    tokens = corpora.load_bytes(corpora.resolve_path("tinyshakespeare", ""))[:2_001]
    return model, params, tokens


def test_a_zero_rate_is_the_static_metric(setup):
    model, params, tokens = setup
    adapted = dynamic.score_dynamic(params, model, tokens, segment=50, lr=0.0, decay=0.0)
    static = scoring.score_bytes(params, model, tokens, streams=1, chunk=50)
    assert adapted["bytes"] == static["bytes"] == 2000
    assert adapted["loss"] == pytest.approx(static["loss"], rel=1e-6)
    assert len(adapted["segment_loss_sums"]) == 40 and sum(adapted["segment_bytes"]) == 2000


def test_no_byte_is_trained_on_before_it_is_scored(setup):
    """Two texts that differ only from segment 10 on give the same sums up to segment 9
    (segment 10 itself is scored before any update sees its bytes)."""
    model, params, tokens = setup
    changed = tokens.copy()
    changed[10 * 50 + 1 :] = changed[10 * 50 + 1 :][::-1]
    kwargs = {"segment": 50, "lr": 0.5, "decay": 0.01}
    a = dynamic.score_dynamic(params, model, tokens, **kwargs)["segment_loss_sums"]
    b = dynamic.score_dynamic(params, model, changed, **kwargs)["segment_loss_sums"]
    np.testing.assert_array_equal(a[:10], b[:10])
    assert a[10:] != b[10:]


def test_adapting_helps_on_text_seen_before(setup):
    """A passage repeated: its second reading scores better after adaptation."""
    model, params, tokens = setup
    twice = np.concatenate([tokens[:1000], tokens[:1001]])
    static = dynamic.score_dynamic(params, model, twice, segment=50, lr=0.0, decay=0.0)
    adapted = dynamic.score_dynamic(params, model, twice, segment=50, lr=0.3, decay=0.0)
    second = slice(20, 40)
    assert sum(adapted["segment_loss_sums"][second]) < sum(static["segment_loss_sums"][second])
