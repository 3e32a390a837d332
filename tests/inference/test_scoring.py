"""Full-split evaluation, stream-mode training, the evaluate CLI and the zipped corpora."""

import functools
import hashlib
import json
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO, subprocess_env, tiny_config

from charrnn_jax import models
from charrnn_jax.data import corpora, windows
from charrnn_jax.data.corpora import DataError
from charrnn_jax.inference import loading, scoring
from charrnn_jax.runtime import parallel
from charrnn_jax.store import metric_logging
from charrnn_jax.training import loop


def test_stream_eval_batch_scores_every_byte_but_the_first_once():
    tokens = np.random.default_rng(0).integers(0, 256, 1001).astype(np.uint8)
    batch = windows.stream_eval_batch(tokens, streams=4, chunk=16)
    assert batch["inputs"].shape == (4, 256) and batch["inputs"].shape[1] % 16 == 0
    scored = batch["weights"].reshape(-1) == 1
    assert scored.sum() == 1000
    np.testing.assert_array_equal(batch["targets"].reshape(-1)[scored], tokens[1:])
    np.testing.assert_array_equal(batch["inputs"].reshape(-1)[scored], tokens[:-1])


@pytest.mark.parametrize("bytes_per_call, calls", [(0, 1), (1 << 20, 1), (128, 8), (1, 16)])
def test_eval_segments_are_the_batch_cut_along_time(bytes_per_call, calls):
    tokens = np.random.default_rng(0).integers(0, 256, 1001).astype(np.uint8)
    segments = windows.stream_eval_segments(
        tokens, streams=4, chunk=16, bytes_per_call=bytes_per_call
    )
    assert len(segments) == calls
    assert len({s["inputs"].shape for s in segments}) == 1  # One program for every call.
    if bytes_per_call >= 4 * 16:
        assert segments[0]["inputs"].size <= bytes_per_call
    joined = {k: np.concatenate([s[k] for s in segments], axis=1) for k in segments[0]}
    whole = windows.stream_eval_batch(tokens, streams=4, chunk=16)
    for key, value in whole.items():  # The same streams, padded the same way.
        np.testing.assert_array_equal(joined[key], value)


@pytest.mark.parametrize("cell", ["gru", "lstm"])  # A single and a tuple carry.
def test_segments_scored_in_turn_with_the_carry_equal_one_call(shakespeare_path, cell):
    model = models.CharRNN(
        models.ModelConfig(embed_dim=16, hidden_size=32, num_layers=2, cell=cell)
    )
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    tokens = np.fromfile(shakespeare_path, np.uint8)[:2049]
    kw = {"apply_fn": model.apply, "chunk": 16}
    step = jax.jit(functools.partial(scoring.eval_step, **kw))
    segment = jax.jit(functools.partial(scoring.eval_segment, **kw))
    zero = jax.jit(functools.partial(scoring.zero_carry, **kw))
    whole = step(params, windows.stream_eval_batch(tokens, streams=4, chunk=16))
    segments = windows.stream_eval_segments(tokens, streams=4, chunk=16, bytes_per_call=256)
    assert len(segments) == 8
    carry, total, ends = zero(params, segments[0]), {"loss_sum": 0.0, "weight": 0.0}, []
    for piece in segments:
        sums, carry = segment(params, piece, carry)
        total = {k: total[k] + float(sums[k]) for k in total}
        ends.append(float(sums["loss_sum"]))
    assert total["weight"] == float(whole["weight"]) == 2048
    assert total["loss_sum"] == pytest.approx(float(whole["loss_sum"]), rel=1e-6)
    cold = float(step(params, segments[1])["loss_sum"])  # Without the carry: another number.
    assert abs(cold - ends[1]) > 1e-3


def _reference_loss(model, params, tokens, streams, chunk):
    """Each stream run whole in one call (no chunks): the carry is trivially kept."""
    batch = windows.stream_eval_batch(tokens, streams=streams, chunk=chunk)
    logits, _ = model.apply({"params": params}, jnp.asarray(batch["inputs"]))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(batch["targets"]))
    return float(jnp.sum(ce * batch["weights"]) / batch["weights"].sum())


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("streams, chunk", [(1, 7), (4, 16), (8, 5)])
@pytest.mark.slow
def test_chunked_scan_with_the_carry_kept_equals_one_pass(shakespeare_path, cell, streams, chunk):
    model = models.CharRNN(
        models.ModelConfig(embed_dim=16, hidden_size=32, num_layers=2, cell=cell)
    )
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    tokens = np.fromfile(shakespeare_path, np.uint8)[:3001]
    got = scoring.score_bytes(params, model, tokens, streams=streams, chunk=chunk)
    assert got["bytes"] == 3000
    want = _reference_loss(model, params, tokens, streams, chunk)
    assert got["loss"] == pytest.approx(want, rel=2e-5)
    assert got["bpb"] == pytest.approx(got["loss"] / np.log(2))


def test_full_eval_is_sharded_like_training(shakespeare_path):
    model = models.CharRNN(models.ModelConfig(embed_dim=16, hidden_size=32))
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    tokens = np.fromfile(shakespeare_path, np.uint8)[:2001]
    one = scoring.score_bytes(params, model, tokens, streams=8, chunk=10)
    mesh = parallel.make_mesh(jax.devices()[:4])
    four = scoring.score_bytes(params, model, tokens, streams=8, chunk=10, mesh=mesh)
    assert four["loss"] == pytest.approx(one["loss"], rel=1e-6)


def test_scoring_in_device_calls_with_the_carry_passed_on_is_scoring_at_once(shakespeare_path):
    """evaluate scores a long split in calls of at most eval.bytes_per_call bytes (as the
    trainer's val pass does), reporting progress after each: the same loss as one call,
    on every device layout."""
    model = models.CharRNN(models.ModelConfig(embed_dim=16, hidden_size=32))
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    tokens = np.fromfile(shakespeare_path, np.uint8)[:4001]
    whole = scoring.score_bytes(params, model, tokens, streams=8, chunk=10)
    calls = []
    mesh = parallel.make_mesh(jax.devices()[:2])
    parts = scoring.score_bytes(
        params, model, tokens, streams=8, chunk=10, mesh=mesh, bytes_per_call=800,
        progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    assert [d for d, _ in calls] == list(range(1, len(calls) + 1)) and len(calls) == 5
    assert parts["bytes"] == whole["bytes"] == 4000
    assert parts["loss"] == pytest.approx(whole["loss"], rel=1e-6)


def test_stream_windows_walk_contiguously_and_reset_per_epoch():
    n, batch, seq = 10_000, 4, 50
    stream_len, per_epoch = windows.stream_layout(n, global_batch=batch, seq_len=seq)
    assert per_epoch == (n - 1 - seq) // (batch * seq) and stream_len == per_epoch * seq

    def at(step):
        return windows.stream_window_starts(n, seed=3, step=step, global_batch=batch, seq_len=seq)

    first, reset = at(0)
    assert reset.all()
    for k in range(1, per_epoch):
        starts, reset = at(k)
        np.testing.assert_array_equal(starts, first + k * seq)  # Each row reads on.
        assert not reset.any()
    offsets = {int(at(e * per_epoch)[0][0]) for e in range(6)}
    assert len(offsets) > 1 and all(0 <= o < seq for o in offsets)  # New cut points.
    assert all(at(s)[0].max() + seq + 1 <= n for s in range(3 * per_epoch))


@pytest.mark.slow
def test_stream_mode_carries_the_state_between_steps(tmp_path):
    """The carry after a step is the model's state at the end of each row's window."""
    config = tiny_config(**{"data.mode": "stream", "train.num_steps": 2})
    summary = loop.train_and_evaluate(config, tmp_path, devices=jax.devices()[:2])
    carry = summary["state"].carry
    assert carry is not None and float(jnp.abs(carry[0]).max()) > 0
    windowed = loop.train_and_evaluate(
        tiny_config(**{"train.num_steps": 2}), tmp_path / "w", devices=jax.devices()[:2]
    )
    assert windowed["state"].carry is None


@pytest.mark.slow
def test_vmapped_sweep_in_stream_mode_matches_plain_runs(tmp_path):
    run = {"data.mode": "stream", "train.log_every": 1, "eval.bytes_per_call": 8192}
    configs = [tiny_config(**run, seed=s) for s in (0, 1)]  # Val in carried segments too.
    devices = jax.devices()[:2]
    loop.train_vmapped(configs, [tmp_path / "v0", tmp_path / "v1"], devices=devices)
    for i, config in enumerate(configs):
        loop.train_and_evaluate(config, tmp_path / f"p{i}", devices=devices)
        for key in ("train_loss", "val_loss"):
            got = [r[key] for r in metric_logging.read_jsonl(tmp_path / f"v{i}" / "metrics.jsonl")]
            want = [r[key] for r in metric_logging.read_jsonl(tmp_path / f"p{i}" / "metrics.jsonl")]
            np.testing.assert_allclose(
                [x for x in got if x is not None], [x for x in want if x is not None], rtol=1e-5
            )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("evaluate")
    config = tiny_config(**{"data.test_fraction": 0.05, "train.num_steps": 4})
    loop.train_and_evaluate(config, workdir, devices=jax.devices()[:2])
    return workdir


def _evaluate(*args):
    return subprocess.run(
        [sys.executable, "-m", "charrnn_jax.evaluate", *args],
        env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=1"),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_evaluate_cli_reproduces_the_logged_val_loss_and_scores_files(trained, tmp_path):
    logged = metric_logging.read_jsonl(trained / "metrics.jsonl")[-1]["val_loss"]
    result = _evaluate(f"--workdir={trained}", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    scored = json.loads(result.stdout)
    assert scored["loss"] == pytest.approx(logged, rel=1e-5)
    text = (REPO / "README.md").read_bytes()[:5000]
    (tmp_path / "doc.txt").write_bytes(text)
    test = json.loads(_evaluate(f"--workdir={trained}", "--split=test", "--json").stdout)
    doc = json.loads(
        _evaluate(f"--workdir={trained}", f"--file={tmp_path / 'doc.txt'}", "--json").stdout
    )
    assert doc["bytes"] == len(text) - 1 and test["bytes"] > 0
    assert set(scored) >= {"bytes", "loss", "bpb"}


@pytest.mark.slow
def test_a_run_without_a_test_split_says_so(tmp_path):
    loop.train_and_evaluate(tiny_config(**{"train.num_steps": 2}), tmp_path)
    result = _evaluate(f"--workdir={tmp_path}", "--split=test")
    assert result.returncode == 1 and "error:" in result.stderr and "Traceback" not in result.stderr


def test_splits_carve_test_off_the_end_and_leave_the_two_way_split_alone():
    tokens = np.arange(1000) % 256
    parts = corpora.splits(tokens, 0.05, 0.05)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [900, 50, 50]
    np.testing.assert_array_equal(np.concatenate(list(parts.values())), tokens)
    train_part, val = (corpora.splits(tokens, 0.1, 0.0)[k] for k in ("train", "val"))
    assert len(train_part) == 900 and len(val) == 100
    with pytest.raises(DataError, match="test_fraction"):
        corpora.splits(tokens, 0.5, 0.5)


@pytest.mark.parametrize("name", ["enwik8", "text8"])
def test_zipped_corpora_are_checked_and_extracted_offline(tmp_path, monkeypatch, name):
    corpus = (b"<page>Anarchism " * 700)[:10_000]
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, corpus)
    real = corpora.REGISTRY[name]
    digest = hashlib.new("sha256" if real.sha256 else "sha1", archive.read_bytes()).hexdigest()
    kind = "sha256" if real.sha256 else "sha1"
    entry = corpora.RegisteredDataset(url=archive.as_uri(), member=name, **{kind: digest})
    monkeypatch.setitem(corpora.REGISTRY, name, entry)
    monkeypatch.setattr(corpora, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv(corpora.DATA_DIR_ENV, raising=False)
    path = corpora.resolve_path(name, "")
    assert path.read_bytes() == corpus and not list((tmp_path / "cache").glob(".*"))
    parts = corpora.splits(corpora.load_bytes(path), 0.05, 0.05)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [9000, 500, 500]

    bad = corpora.RegisteredDataset(url=archive.as_uri(), member=name, **{kind: "0" * 40})
    monkeypatch.setitem(corpora.REGISTRY, name, bad)
    path.unlink()
    with pytest.raises(DataError, match=f"has {kind}"):
        corpora.resolve_path(name, "")
    assert not list((tmp_path / "cache").iterdir())  # Nothing half-installed.


def test_windows_metric_reproduces_the_trainers_windowed_val(tmp_path):
    config = tiny_config(**{"eval.mode": "windows", "train.num_steps": 3})
    loop.train_and_evaluate(config, tmp_path, devices=jax.devices()[:1])
    logged = metric_logging.read_jsonl(tmp_path / "metrics.jsonl")[-1]["val_loss"]
    _, model, params, _ = loading.load_for_inference(tmp_path)
    val = corpora.splits(corpora.load_bytes(corpora.resolve_path("tinyshakespeare", "")), 0.1, 0.0)[
        "val"
    ]
    got = scoring.score_windows(params, model, val, batch=8, seq_len=32, batches=2)
    assert got["loss"] == pytest.approx(logged, rel=1e-5) and got["bytes"] == 2 * 8 * 32
