"""The device check's --smoke: every part runs at toy sizes on this CPU, so the command
prepared for a lent GPU cannot rot before one comes (benchmarks/device_check.py)."""

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

pytestmark = pytest.mark.slow  # A few subprocesses with jax; not in make test-fast.


def test_the_smoke_run_covers_every_part(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_check", "--smoke", f"--out={tmp_path}"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [
        json.loads(line) for line in (tmp_path / "device_check.jsonl").read_text().splitlines()
    ]
    parts = {r["part"] for r in records}
    assert {"machine", "correctness", "loop_body", "training", "sampling", "published"} <= parts
    bodies = [r for r in records if r["part"] == "loop_body"]
    assert len(bodies) >= 2 and all(b["ops_per_step"] > 0 for b in bodies)  # Forward, backward.
    checks = [r for r in records if r["part"] == "correctness"]
    assert len(checks) == 6 and all(c["ok"] for c in checks), checks
    trained = {r["impl"]: r for r in records if r["part"] == "training" and "impl" in r}
    # The unrolled bf16 step and the loop in command buffers (an XLA flag in its own
    # worker: GPU flags parse on the CPU too) run here, so the device run cannot fail on them.
    for impl in ("ours_f32", "ours_bf16_unroll8", "ours_f32_loop_graphs", "mingru_parallel"):
        assert trained[impl]["tokens_per_sec"] > 0, trained[impl]
    for impl in ("ours_f32_loop_graphs", "flax_reference", "mingru_parallel"):
        assert trained[impl]["vs_baseline"] > 0, trained[impl]  # Same round, its baseline.
    # What 'auto' should pick follows from those ratios (bf16 unroll 8 has no ours_bf16 here).
    choices = {r["key"]: r for r in records if r["part"] == "auto_choice"}
    assert set(choices) == {"gru_impl", "stack", "scan", "command buffers"}, choices
    wave_ratio = trained["ours_f32_wavefront"]["vs_baseline"]
    assert choices["stack"]["pick"] == ("wavefront" if wave_ratio > 1 else "layers")
    flax_ratio = trained["flax_reference"]["vs_baseline"]
    assert choices["gru_impl"]["pick"] == ("flax" if flax_ratio > 1 else "fused")
    scan_ratio = trained["mingru_parallel"]["vs_baseline"]
    assert choices["scan"]["pick"] == ("parallel" if scan_ratio > 1 else "sequential")
    has_torch = importlib.util.find_spec("torch") is not None
    skipped = [r for r in records if r.get("skipped") == "torch is not installed"]
    assert bool(skipped) != has_torch  # A missing peer is named, never silently dropped.
    published = {r["config"]: r for r in records if r["part"] == "published"}
    assert list(published) == ["nanogpt", "gru_headline", "mogrifier_headline"], published
    for run in published.values():  # Each trained to its end, timed and scored.
        assert run["steps"] == 8 and run["returncode"] == 0, run
        assert run["seconds_per_step"] > 0 and run["projected_run_s"] > 0, run
        assert 0 < run["val_loss"] < 6 and run["val_step"] == 8, run
    assert 0 < published["nanogpt"]["val_loss_nanogpt"] < 6, published["nanogpt"]
    table = (tmp_path / "device_check.md").read_text()
    assert "## Training tokens/s" in table and "## Sampling chars/s" in table
    assert "## What auto should pick on this device" in table
    assert "## The published configs trained on this device" in table
    # What comes back from a device call: at most 8 files, the runs' rows among them (the
    # command's own log.txt is one more).
    returned = sorted(p.name for p in tmp_path.iterdir())
    assert len(returned) <= 7 and all(p.is_file() for p in tmp_path.iterdir()), returned
    rows = (tmp_path / "nanogpt_metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["step"] == 8, rows[-1]


def test_auto_choices_follow_the_within_round_ratios():
    from benchmarks import device_check

    def row(impl, ratio, size="tutorial", batch=256):
        return {"impl": impl, "size": size, "batch": batch, "vs_baseline": ratio}

    rows = [
        row("flax_reference", 0.7),
        row("mingru_parallel", 1.6),
        row("lru_parallel", 0.9),  # Geometric mean with minGRU's 1.6: 1.2, parallel.
        row("ours_f32_unroll4", 1.1),
        row("ours_f32_unroll16", 1.05),
        row("ours_bf16_unroll8", 0.95),  # Slower: unroll 1 stays.
        row("ours_f32_loop_graphs", 1.3),
        row("ours_f32_no_graphs", 0.8),
        row("flax_reference", 9.0, batch=64),  # Another batch: not what decides.
        row("ours_f32_wavefront", 1.4, size="headline"),  # The stacked size decides it:
        row("ours_bf16_wavefront", 0.9, size="headline"),  # geometric mean 1.12.
        row("ours_f32_wavefront", 0.1, size="headline", batch=64),
    ]
    picks = {c["key"]: c["pick"] for c in device_check.auto_choices(rows, "tutorial", 256)}
    assert picks == {
        "gru_impl": "fused",
        "stack": "wavefront",
        "scan": "parallel",
        "unroll (f32)": 4,
        "unroll (bf16)": 1,
        "command buffers": device_check.XLA_FLAG_VARIANTS["_loop_graphs"],
    }
    # Rows that were not measured give no choice rather than a guess.
    assert device_check.auto_choices([row("flax_reference", 1.2)], "tutorial", 256) == [
        {"key": "gru_impl", "pick": "flax", "evidence": "flax nn.scan(GRUCell) / fused = 1.20"}
    ]
