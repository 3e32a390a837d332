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
    assert {"machine", "correctness", "loop_body", "training", "sampling", "headline"} <= parts
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
    assert set(choices) == {"gru_impl", "scan", "command buffers"}, choices
    flax_ratio = trained["flax_reference"]["vs_baseline"]
    assert choices["gru_impl"]["pick"] == ("flax" if flax_ratio > 1 else "fused")
    scan_ratio = trained["mingru_parallel"]["vs_baseline"]
    assert choices["scan"]["pick"] == ("parallel" if scan_ratio > 1 else "sequential")
    has_torch = importlib.util.find_spec("torch") is not None
    skipped = [r for r in records if r.get("skipped") == "torch is not installed"]
    assert bool(skipped) != has_torch  # A missing peer is named, never silently dropped.
    headline = next(r for r in records if r["part"] == "headline")
    assert headline["steps"] == 8 and 0 < headline["val_loss"] < 6, headline
    table = (tmp_path / "device_check.md").read_text()
    assert "## Training tokens/s" in table and "## Sampling chars/s" in table
    assert "## What auto should pick on this device" in table
