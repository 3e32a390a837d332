"""The experiment configs: each loads, builds and trains a few steps on its real data."""

import jax
import numpy as np
import pytest
from conftest import REPO, load_experiment

from charrnn_jax import config_lib, models
from charrnn_jax.data import corpora, examples
from charrnn_jax.inference import sampler, text_metrics
from charrnn_jax.inference.classifier import predict
from charrnn_jax.store import metric_logging
from charrnn_jax.training import loop


def _few_steps(config, **overrides):
    config.train.num_steps = 4
    config.train.log_every = 2
    config.train.eval_every = 4
    config.train.checkpoint_every = 4
    config.train.eval_batches = 2
    config.train.warmup_steps = min(config.train.warmup_steps, 2)
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


@pytest.mark.parametrize(
    "name, preset",
    [
        ("shakespeare", "tiny"),
        ("shakespeare_lstm", "tiny"),
        ("shakespeare_headline", None),  # The Mogrifier GRU, DropConnect included.
        ("dinos", None),
        ("sentiment", None),
    ],
)
@pytest.mark.slow
def test_each_config_trains_a_few_steps_on_its_data(tmp_path, name, preset):
    config = _few_steps(
        load_experiment(name, preset),
        **{"model.hidden_size": 32, "model.embed_dim": 16, "train.batch_size": 8},
    )
    if name.startswith("shakespeare"):
        config.data.seq_len = 32
    summary = loop.train_and_evaluate(config, tmp_path, devices=jax.devices()[:2])
    assert summary["final_step"] == 4 and np.isfinite(summary["val_loss"])
    if name == "sentiment":
        assert 0.0 <= summary["val_accuracy"] <= 1.0


def test_lines_examples_never_bleed_into_each_other():
    pipeline = examples.LinePipeline([b"Aardonyx", b"Zuul"], [b"Rex"], 12, 0, 4)
    batch = pipeline.train_batch(0)
    for inputs, targets, weights in zip(
        batch["inputs"], batch["targets"], batch["weights"], strict=True
    ):
        n = int(weights.sum())
        name = bytes(targets[: n - 1].astype(np.uint8))
        assert name in (b"Aardonyx", b"Zuul")
        assert inputs[0] == ord("\n") and targets[n - 1] == ord("\n")
        assert not weights[n:].any() and not inputs[n:].any()
    (evals,) = pipeline.eval_batches()
    assert evals["weights"].sum() == len(b"Rex") + 1  # Padding rows weigh nothing.


def test_lines_mode_rejects_a_seq_len_shorter_than_a_line(tmp_path):
    config = load_experiment("dinos")
    config.data.seq_len = 10
    with pytest.raises(corpora.DataError, match="needs data.seq_len >= 27"):
        loop.train_and_evaluate(config, tmp_path)


@pytest.mark.slow
def test_dinos_sampler_keeps_the_prefix_and_stops_at_the_newline(tmp_path):
    config = _few_steps(
        load_experiment("dinos"), **{"train.num_steps": 150, "train.eval_every": 150}
    )
    summary = loop.train_and_evaluate(config, tmp_path, devices=jax.devices()[:1])
    tokens, lengths = sampler.sample(
        jax.device_get(summary["state"].params),
        summary["model"],
        [b"\nRam"] * 8,
        length=30,
        temperature=0.5,
        rng=jax.random.key(0),
        stop_byte=ord("\n"),
    )
    assert (lengths < 30).all()
    for row, n in zip(tokens, lengths, strict=True):
        assert row[n - 1] == ord("\n") and ord("\n") not in row[: n - 1]


def test_name_stats():
    stats = text_metrics.name_stats(["Rex", "Tyrannosaurus", "x1", "Zuul"], ["Zuul", "Rex"])
    assert stats == {"count": 4, "novel": 0.5, "well_formed": 0.75}


@pytest.mark.slow
def test_classifier_learns_a_separable_task(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "film", "was", "a", "plot", "and", "acting", "it", "really", "so"]
    lines = []
    for i in range(400):
        label = i % 2
        filler = " ".join(rng.choice(words, 4))
        lines.append(f"{filler} {'good' if label else 'bad'} {filler}\t{label}")
    data = tmp_path / "synthetic.tsv"
    data.write_text("\n".join(lines) + "\n")
    config = load_experiment("sentiment")
    config.data.path = str(data)
    config.data.seq_len = 64
    config.model.hidden_size = 64
    config.train.num_steps = 300
    config.train.learning_rate = 5e-3
    config.train.eval_every = 300
    config.train.checkpoint_every = 300
    summary = loop.train_and_evaluate(config, tmp_path / "run", devices=jax.devices()[:1])
    assert summary["val_accuracy"] >= 0.95, summary
    records = metric_logging.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["val_accuracy"] == pytest.approx(summary["val_accuracy"])

    # Padding never changes the prediction: the head reads the state at the true length.
    params, model = jax.device_get(summary["state"].params), summary["model"]
    texts = [b"so the plot acting good so the plot acting", b"it was a film bad it was a film"]
    short = predict(params, model, texts, max_len=48)  # Both texts fit; only padding grows.
    long = predict(params, model, texts, max_len=64)
    np.testing.assert_allclose(short, long, atol=1e-6)
    assert short[0, 1] > 0.5 > short[1, 1]


def test_labelled_reader_handles_tsv_and_aclimdb_folders(tmp_path):
    (tmp_path / "pos").mkdir()
    (tmp_path / "neg").mkdir()
    (tmp_path / "pos" / "1.txt").write_text("great")
    (tmp_path / "neg" / "1.txt").write_text("awful")
    texts, labels = examples.read_labelled(tmp_path)
    assert texts == [b"awful", b"great"] and labels.tolist() == [0, 1]
    bad = tmp_path / "bad.tsv"
    bad.write_text("no label here\n")
    with pytest.raises(corpora.DataError, match="bad.tsv:1"):
        examples.read_labelled(bad)


def _reference_windowed_greedy(model, params, prompt: bytes, length: int, window: int):
    apply = jax.jit(model.apply)
    text = list(prompt)
    for _ in range(length):
        context = np.array([text[-window:]], np.int32)
        logits, _ = apply({"params": params}, context)
        text.append(int(np.argmax(logits[0, -1])))
    return text[len(prompt) :]


def test_windowed_greedy_matches_a_reference_loop_and_is_deterministic():
    model = models.CharRNN(models.ModelConfig(embed_dim=8, hidden_size=16))
    params = jax.tree.map(
        lambda p: 3 * p, model.init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    )
    prompts = [b"To be, or not to be", b"ab"]
    kwargs = dict(length=12, temperature=0.0, rng=jax.random.key(0), window=6)
    a, _ = sampler.sample(params, model, prompts, **kwargs)
    b, _ = sampler.sample(params, model, prompts, **kwargs)
    np.testing.assert_array_equal(a, b)
    for row, prompt in enumerate(prompts):
        assert a[row].tolist() == _reference_windowed_greedy(model, params, prompt, 12, 6)
    # A window longer than everything seen equals ordinary (full-history) greedy sampling.
    full, _ = sampler.sample(
        params, model, prompts, length=12, temperature=0.0, rng=jax.random.key(0)
    )
    wide, _ = sampler.sample(params, model, prompts, **{**kwargs, "window": 64})
    np.testing.assert_array_equal(full, wide)


@pytest.mark.parametrize("name", ["enwik8", "text8"])
@pytest.mark.slow
def test_benchmark_configs_train_on_a_stand_in_file(tmp_path, shakespeare_path, name):
    """enwik8/text8 cannot be downloaded here: their configs run on tiny Shakespeare."""
    config = load_experiment("hutter", name)
    assert (config.data.name, config.data.mode) == (name, "stream")
    assert config.data.val_fraction == config.data.test_fraction == 0.05
    small = {"model.hidden_size": 32, "model.embed_dim": 16, "model.num_layers": 1}
    small.update({"train.batch_size": 8, "data.seq_len": 32, "train.warmup_steps": 0})
    config = _few_steps(config, **small, **{"data.path": str(shakespeare_path)})
    summary = loop.train_and_evaluate(config, tmp_path, devices=jax.devices()[:2])
    assert summary["final_step"] == 4 and np.isfinite(summary["val_loss"])


def test_every_experiment_starts_from_the_base_config_and_loads_no_other():
    for path in sorted((REPO / "experiments").glob("*.py")):
        text = path.read_text()
        assert "config_lib.base_config()" in text, path.name
        assert "load_config_file" not in text, path.name
        name, preset = path.stem, ("tiny" if '"tiny"' in text else None)
        config_lib.resolve(load_experiment(name, preset))  # Every value valid.
