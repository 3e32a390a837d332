"""The training loop: learning, device-count invariance, metrics files and config errors."""

import json
import math

import jax
import numpy as np
import pytest
from conftest import tiny_config

from charrnn_jax.data.corpora import DataError
from charrnn_jax.errors import UserError
from charrnn_jax.store import metric_logging
from charrnn_jax.training import loop


@pytest.mark.slow
def test_tiny_model_overfits_2kb_of_text(tmp_path, shakespeare_path):
    text = tmp_path / "small.txt"
    text.write_bytes(shakespeare_path.read_bytes()[:2200])
    config = tiny_config(
        **{
            "data.path": str(text),
            "data.seq_len": 64,
            "model.embed_dim": 32,
            "model.hidden_size": 256,
            "train.batch_size": 16,
            "train.num_steps": 400,
            "train.learning_rate": 5e-3,
            "train.log_every": 50,
            "train.eval_every": 400,
            "train.checkpoint_every": 400,
        }
    )
    summary = loop.train_and_evaluate(config, tmp_path / "run", devices=jax.devices()[:1])
    assert summary["train_loss"] < 0.3, summary


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.slow
def test_one_and_four_devices_give_the_same_losses(tmp_path, cell):
    assert jax.device_count() >= 4, "conftest sets 4 fake CPU devices"
    losses = {}
    for n in (1, 4):
        config = tiny_config(**{"train.num_steps": 3, "train.log_every": 1, "model.cell": cell})
        workdir = tmp_path / f"dev{n}"
        loop.train_and_evaluate(config, workdir, devices=jax.devices()[:n])
        records = metric_logging.read_jsonl(workdir / "metrics.jsonl")
        losses[n] = [r["train_loss"] for r in records]
    assert len(losses[1]) == 3
    np.testing.assert_allclose(losses[4], losses[1], rtol=0, atol=1e-5)


def test_run_writes_metrics_config_and_tensorboard(tmp_path):
    summary = loop.train_and_evaluate(tiny_config(), tmp_path, devices=jax.devices()[:2])
    records = metric_logging.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 3, 4, 6]
    for r in records:
        assert set(r) == set(metric_logging.FIELDS)
        assert math.isclose(r["train_bpb"], r["train_loss"] / math.log(2))
    assert records[1]["val_loss"] is not None and records[0]["val_loss"] is None
    assert records[-1]["val_loss"] == pytest.approx(summary["val_loss"])
    assert json.loads((tmp_path / "config.json").read_text())["model"]["hidden_size"] == 32
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert summary["final_step"] == 6 and summary["resumed_from"] is None


@pytest.mark.slow
def test_learning_lowers_the_loss(tmp_path):
    config = tiny_config(
        **{
            "train.num_steps": 60,
            "train.log_every": 10,
            "train.eval_every": 60,
            "train.checkpoint_every": 60,
        }
    )
    loop.train_and_evaluate(config, tmp_path, devices=jax.devices()[:1])
    records = metric_logging.read_jsonl(tmp_path / "metrics.jsonl")
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 1.0


@pytest.mark.slow
def test_same_seed_same_curve_other_seed_other_curve(tmp_path):
    def curve(name, seed):
        config = tiny_config(**{"train.log_every": 1})
        config.seed = seed
        loop.train_and_evaluate(config, tmp_path / name, devices=jax.devices()[:1])
        return [
            r["train_loss"] for r in metric_logging.read_jsonl(tmp_path / name / "metrics.jsonl")
        ]

    assert curve("a", 0) == curve("b", 0)
    assert curve("c", 1) != curve("a", 0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.seq_len": 0}, "seq_len must be positive"),
        ({"data.val_fraction": 1.5}, r"val_fraction must be in \(0, 1\)"),
        ({"data.val_fraction": 0.0}, r"val_fraction must be in \(0, 1\)"),
        ({"data.mode": "sideways"}, "data.mode must be one of"),
        ({"model.cell": "rnn"}, "model.cell must be one of"),
        ({"model.dtype": "float16"}, "model.dtype must be one of"),
        ({"model.hidden_size": -1}, "hidden_size must be positive"),
        ({"model.dropout": 1.0}, "dropout must be in"),
        ({"train.learning_rate": 0.0}, "learning_rate must be positive"),
        ({"train.batch_size": 6}, "does not divide over 4 devices"),
        ({"eval.streams": 6}, "eval.streams=6 does not divide over 4 devices"),
        ({"eval.bytes_per_call": -1}, "eval.bytes_per_call must be >= 0"),
        ({"sample.temperature": -1.0}, "temperature must be >= 0"),
    ],
)
def test_bad_values_are_clear_errors(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        loop.train_and_evaluate(tiny_config(**overrides), tmp_path, devices=jax.devices()[:4])


def test_data_errors(tmp_path):
    short = tmp_path / "short.txt"
    short.write_bytes(b"x" * 60)
    with pytest.raises(DataError, match="needs at least 34"):
        loop.train_and_evaluate(tiny_config(**{"data.path": str(short)}), tmp_path / "w")
    with pytest.raises(DataError, match="not found"):
        loop.train_and_evaluate(tiny_config(**{"data.path": str(tmp_path / "x")}), tmp_path / "w")


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="not writable"):
        loop.train_and_evaluate(tiny_config(), blocker / "run")
