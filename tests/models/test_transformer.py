"""nanoGPT's Transformer (models/transformer.py): causal, nanoGPT's parameter count, the
carried context equal to a full recompute (so sampling is nanoGPT's generate), the
full-split metric equal to a naive sliding-window loop, and a run through the trainer."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_sigkill_resume_is_exact, load_experiment, tiny_config

from charrnn_jax import config_lib, evaluate, models
from charrnn_jax.data import corpora
from charrnn_jax.errors import UserError
from charrnn_jax.inference import loading, sampler, scoring
from charrnn_jax.models.transformer import TransformerOptions
from charrnn_jax.store import metric_logging
from charrnn_jax.training import loop, steps

OPTIONS = TransformerOptions(num_heads=2, block_size=16, eval_stride=8)


def _model(dropout=0.0, options=OPTIONS):
    return models.CharRNN(
        models.ModelConfig(
            embed_dim=8, hidden_size=16, num_layers=2, cell="transformer", dropout=dropout
        ).with_options(options)
    )


@pytest.fixture(scope="module")
def model_and_params():
    model = _model()
    tokens = jnp.zeros((1, 16), jnp.int32)
    return model, model.init(jax.random.key(0), tokens)["params"]


def test_flat_weight_gradients_equal_nn_denses_own(model_and_params, monkeypatch):
    """precision.flat_dot_general (the weight gradient as one GEMM over all positions,
    what the Transformer runs for XLA:CPU's sake) is nn.Dense's function: the same loss
    and, to float32 rounding, the same gradients, with dropout on."""
    from charrnn_jax.models import precision, transformer

    model, params = _model(dropout=0.2), model_and_params[1]
    tokens = jax.random.randint(jax.random.key(4), (3, 16), 0, 256)

    def loss(params):
        logits, _ = model.apply(
            {"params": params}, tokens, train=True, rngs={"dropout": jax.random.key(5)}
        )
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    assert transformer.DOT_GENERAL is precision.flat_dot_general
    flat_loss, flat = jax.value_and_grad(loss)(params)
    monkeypatch.setattr(transformer, "DOT_GENERAL", precision.dense_dot_general)
    dense_loss, dense = jax.value_and_grad(loss)(params)
    np.testing.assert_allclose(flat_loss, dense_loss, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(flat), jax.tree.leaves(dense), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_the_mlps_gelu_is_the_exact_gelu():
    """transformer.GELU writes the exact GELU with erf (PyTorch's formula, nanoGPT's
    nn.GELU()) where jax.nn.gelu uses erfc: the same function to float32 rounding (of
    1 + erf, so |x| times float32's epsilon in the far negative tail)."""
    from charrnn_jax.models import transformer

    x = jnp.linspace(-12.0, 12.0, 20001)
    want = jax.nn.gelu(x, approximate=False)
    np.testing.assert_allclose(transformer.GELU(x), want, rtol=1e-5, atol=12 * 1.2e-7)
    assert not np.allclose(transformer.GELU(x), jax.nn.gelu(x, approximate=True), atol=1e-4)


def _compiled_text(jitted, *args) -> str:
    return jitted.lower(*args).compile().as_text()


def test_the_transformers_f32_programs_compile_without_ynnpack_on_cpu(model_and_params):
    """The Transformer's programs take its XLA options (transformer.compiler_options:
    Eigen's GEMMs on CPU in float32, XLA's YNNPACK fusions in bfloat16, where they are
    the fast bf16 GEMMs); the recurrent models keep XLA's defaults."""
    from charrnn_jax.runtime import parallel

    model, params = model_and_params
    tokens = jnp.zeros((2, 16), jnp.int32)
    batch = {"inputs": tokens, "targets": tokens}
    gru = _model().__class__(models.ModelConfig(embed_dim=8, hidden_size=64, num_layers=1))
    gru_params = gru.init(jax.random.key(0), tokens)["params"]

    def logits(model):
        return lambda p, t: model.apply({"params": p}, t)[0]

    assert "__ynn_fusion" not in _compiled_text(
        parallel.model_jit(model, logits(model)), params, tokens
    )
    scorer = scoring._window_scorer(model, 16)
    assert "__ynn_fusion" not in _compiled_text(scorer, params, batch)
    assert "__ynn_fusion" in _compiled_text(
        jax.jit(logits(model)), params, tokens
    )  # XLA's default.
    bf16 = model.__class__(dataclasses.replace(model.config, dtype="bfloat16"))
    assert bf16.config.compiler_options("cpu") == {} and model.config.compiler_options("gpu") == {}
    assert "__ynn_fusion" in _compiled_text(parallel.model_jit(bf16, logits(bf16)), params, tokens)
    assert gru.config.compiler_options("cpu") == {}
    assert "__ynn_fusion" in _compiled_text(
        parallel.model_jit(gru, logits(gru)), gru_params, tokens
    )


def test_changing_a_byte_never_changes_the_logits_before_it(model_and_params):
    model, params = model_and_params
    tokens = jax.random.randint(jax.random.key(1), (3, 16), 0, 256)
    logits, _ = model.apply({"params": params}, tokens)
    for t in (0, 7, 15):
        changed = tokens.at[:, t].set((tokens[:, t] + 1) % 256)
        other, _ = model.apply({"params": params}, changed)
        np.testing.assert_array_equal(other[:, :t], logits[:, :t])
        assert np.abs(other[:, t:] - logits[:, t:]).max() > 0


def test_the_parameter_count_is_nanogpts():
    """nanoGPT prints 10.65M for train_shakespeare_char.py: its get_num_params leaves out
    the position embeddings and its vocabulary is 65; ours is 256."""
    model = models.CharRNN(config_lib.resolve(load_experiment("shakespeare_nanogpt")).model)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 256), jnp.int32)))
    count = steps.count_params(shapes["params"])
    n = 384
    assert count == 6 * (12 * n * n + 2 * n) + n + 256 * n + 256 * n
    assert round((count - 256 * n - (256 - 65) * n) / 1e6, 2) == 10.65


def test_one_byte_at_a_time_with_the_carry_equals_a_full_recompute(model_and_params):
    """Within the block every call sees all bytes so far; past it, the last 16."""
    model, params = model_and_params
    tokens = jax.random.randint(jax.random.key(2), (2, 40), 0, 256)
    carry, stepped = None, []
    for t in range(40):
        out, carry = model.apply({"params": params}, tokens[:, t : t + 1], carry)
        stepped.append(out[:, 0])
    for t in range(40):
        start = max(0, t + 1 - 16)
        full, _ = model.apply({"params": params}, tokens[:, start : t + 1])
        np.testing.assert_allclose(stepped[t], full[:, -1], atol=1e-5)


def test_greedy_sampling_equals_a_recompute_loop(model_and_params):
    model, params = model_and_params
    prompts = [b"ROMEO:", b"To be, or not"]
    new, _ = sampler.sample(
        params, model, prompts, length=24, temperature=0.0, rng=jax.random.key(0)
    )
    for row, prompt in enumerate(prompts):
        text = list(prompt)
        for _ in range(24):
            window = jnp.asarray([text[-16:]], jnp.int32)
            logits, _ = model.apply({"params": params}, window)
            text.append(int(jnp.argmax(logits[0, -1])))
        assert bytes(text[len(prompt) :]) == bytes(np.asarray(new[row]).tolist())


def test_the_full_split_metric_is_a_strided_sliding_window(model_and_params):
    """Every byte scored once: the first window whole, then each window's last 8 bytes
    with the 8 before them as context (block 16, stride 8), per stream."""
    model, params = model_and_params
    tokens = corpora.load_bytes(corpora.resolve_path("tinyshakespeare", ""))[:1_000]
    result = scoring.score_bytes(params, model, tokens, streams=1, chunk=8)
    assert result["bytes"] == len(tokens) - 1
    losses, scored = [], 0
    n = len(tokens) - 1  # Predictions: tokens[1:] from what precedes them.
    for end in range(8, n + 8, 8):
        end = min(end, n)
        start = max(0, end - 16)
        x = jnp.asarray(tokens[start:end][None], jnp.int32)
        logits, _ = model.apply({"params": params}, x)
        new = end - max(scored, start)
        targets = tokens[end - new + 1 : end + 1]
        lp = jax.nn.log_softmax(logits[0, -new:])
        losses += list(-np.take_along_axis(np.asarray(lp), targets[:, None], 1)[:, 0])
        scored = end
    assert len(losses) == n
    assert result["loss"] == pytest.approx(float(np.mean(losses)), rel=1e-5)


def test_trains_through_the_real_trainer_and_scores_both_ways(tmp_path):
    config = tiny_config(
        **{
            "model.cell": "transformer",
            "model.hidden_size": 32,
            "model.transformer.num_heads": 2,
            "model.transformer.block_size": 32,
            "model.transformer.eval_stride": 16,
            "model.dropout": 0.1,
            "train.learning_rate": 3e-3,
            "train.num_steps": 30,
            "train.log_every": 10,
            "train.eval_every": 30,
            "train.checkpoint_every": 30,
        }
    )
    loop.train_and_evaluate(config, tmp_path, devices=jax.devices()[:2])
    rows = metric_logging.read_jsonl(tmp_path / "metrics.jsonl")
    losses = [r["train_loss"] for r in rows]
    assert losses[-1] < losses[0] - 1.0, losses
    assert np.isfinite(rows[-1]["val_loss"]) and rows[-1]["val_loss"] < 4.5, rows[-1]
    # `evaluate --stride`: the same params, windows stepped by another stride; the run's
    # own stride reproduces the logged val, and every byte is scored once at any stride.
    run_config, _, params, _ = loading.load_for_inference(tmp_path, None)
    val = corpora.load_splits(run_config.data)["val"]
    streams = run_config.eval_streams or run_config.train.batch_size
    scored = {}
    for stride in (16, 4, 32):
        strided, strided_model = evaluate._with_stride(run_config, stride)
        assert strided.eval_chunk == stride
        scored[stride] = scoring.score_bytes(
            params, strided_model, val, streams=streams, chunk=strided.eval_chunk
        )
        assert scored[stride]["bytes"] == scored[16]["bytes"]
    assert scored[16]["loss"] == pytest.approx(rows[-1]["val_loss"], rel=1e-5)
    assert len({round(r["loss"], 6) for r in scored.values()}) == 3  # The stride matters.
    strided, _ = evaluate._with_stride(run_config, 4)  # `--json` records it, for the report.
    assert evaluate.full_record(strided, scored[4], streams)["stride"] == 4
    assert "stride" not in evaluate.full_record(config_lib.resolve(tiny_config()), {}, 4)
    with pytest.raises(UserError, match="exceeds the model's block_size=32"):
        evaluate._with_stride(run_config, 33)
    with pytest.raises(UserError, match="'gru' carries its state over the whole split"):
        evaluate._with_stride(config_lib.resolve(tiny_config()), 8)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.transformer.num_heads": 3}, "must divide by model.transformer.num_heads=3"),
        ({"data.seq_len": 64}, "must be <= model.transformer.block_size=32"),
        ({"model.transformer.eval_stride": 12}, "must divide by model.transformer.eval_stride"),
        ({"data.mode": "stream"}, "carries no state between training steps"),
    ],
)
def test_configs_it_cannot_run_are_one_line(overrides, message):
    base = {
        "model.cell": "transformer",
        "model.transformer.num_heads": 2,
        "model.transformer.block_size": 32,
        "model.transformer.eval_stride": 16,
    }
    with pytest.raises(UserError, match=message):
        config_lib.resolve(tiny_config(**{**base, **overrides}))


KILLED_RUN = {
    "model.cell": "transformer",
    "model.hidden_size": 32,
    "model.transformer.num_heads": 2,
    "model.transformer.block_size": 32,
    "model.transformer.eval_stride": 16,
    "model.dropout": 0.1,
    "train.num_steps": 40,
    "train.log_every": 7,
    "train.eval_every": 14,
    "train.checkpoint_every": 5,
}


@pytest.mark.slow
def test_a_sigkill_resumes_to_the_uninterrupted_runs_rows_and_params(tmp_path):
    assert_sigkill_resume_is_exact(tmp_path, **KILLED_RUN)
