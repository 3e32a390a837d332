"""Metric rows, the writer over JSONL and TensorBoard, and the progress line."""

import math

import pytest

from charrnn_jax.store import metric_logging


def test_progress_reports_rates_and_eta_with_an_injected_clock():
    now = [100.0]
    progress = metric_logging.Progress(
        start_step=0, num_steps=100, tokens_per_step=50, clock=lambda: now[0]
    )
    now[0] += 2.0
    progress.pause()
    now[0] += 30.0  # Eval time is excluded.
    progress.resume()
    rates = progress.update(10)
    assert rates["steps_per_sec"] == pytest.approx(5.0)
    assert rates["tokens_per_sec"] == pytest.approx(250.0)
    assert rates["eta_sec"] == pytest.approx(18.0)
    line = metric_logging.progress_line(10, 100, {"train_loss": 1.0, "train_bpb": 1.44}, rates)
    assert "step 10/100" in line and "250 tok/s" in line and "ETA 0m18s" in line


def test_writer_drops_rows_past_the_restored_step_and_keeps_wall_time(tmp_path):
    writer = metric_logging.MetricWriter(tmp_path, resume_step=0)
    for step in (2, 4, 6):
        writer.write_scalars(step, {"train_loss": 1.0 / step, "wall_time": float(step)})
    writer.close()
    resumed = metric_logging.MetricWriter(tmp_path, resume_step=4)
    assert resumed.wall_time_offset == 4.0
    resumed.write_scalars(5, {"train_loss": 0.2, "wall_time": 5.0})
    resumed.close()
    rows = metric_logging.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 5]
    assert set(rows[0]) == set(metric_logging.FIELDS)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert math.isclose(metric_logging.bits_per_byte(math.log(2)), 1.0)


def test_wandb_offline_gets_every_row_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import jax
    from conftest import tiny_config

    from charrnn_jax.training import loop

    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = {"wandb.enable": True, "wandb.mode": "offline", "train.num_steps": 4}
    loop.train_and_evaluate(tiny_config(**overrides), tmp_path, devices=jax.devices()[:1])
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    (log,) = runs[0].glob("*.wandb")  # The offline run's record log, synced later.
    records = log.read_bytes()
    assert b"train_loss" in records and b"val_loss" in records and b"grad_norm" in records
    overrides["train.num_steps"] = 6
    loop.train_and_evaluate(tiny_config(**overrides), tmp_path, devices=jax.devices()[:1])
    ids = {p.name.rsplit("-", 1)[-1] for p in (tmp_path / "wandb").glob("offline-run-*")}
    assert len(ids) == 1  # The resumed run logs to the same W&B run id.


def test_a_failing_side_stream_is_a_warning_and_the_row_is_kept(tmp_path, caplog):
    writer = metric_logging.MetricWriter(tmp_path, resume_step=0)

    class Broken:
        def write(self, record):
            raise OSError(28, "No space left on device")

        def write_text(self, tag, text, step):
            raise RuntimeError("wandb is down")

        def close(self):
            pass

    writer._tb = Broken()
    row = writer.write_scalars(2, {"train_loss": 1.5})
    writer.write_texts(2, {"sample": "ROMEO:"})
    writer.close()
    assert row["train_loss"] == 1.5
    assert metric_logging.read_jsonl(tmp_path / "metrics.jsonl")[0]["train_loss"] == 1.5
    assert "Broken could not write the row at step 2 (OSError" in caplog.text
    assert "could not write the sample at step 2 (RuntimeError: wandb is down)" in caplog.text
