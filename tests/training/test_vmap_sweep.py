"""The in-process vmapped sweep: each variant is exactly a plain run of its config."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import TINY_SWEEP_CONFIG, subprocess_env, tiny_config

from charrnn_jax.errors import UserError
from charrnn_jax.inference import loading
from charrnn_jax.store import checkpointing, metric_logging
from charrnn_jax.store.workdir import Workdir
from charrnn_jax.training import loop, steps, sweep_runs, variant_groups
from launch import report, sweep

pytestmark = pytest.mark.slow  # Subprocess runs and trainings: not in make test-fast.

VARIANTS = [
    {"seed": 0, "train.learning_rate": 3e-3},
    {"seed": 1, "train.learning_rate": 1e-2, "train.grad_clip_norm": 0.5},
]
COMMON = {"train.log_every": 1, "train.grad_clip_norm": 1.0, "model.dropout": 0.1}


def _series(workdir, key):
    records = metric_logging.read_jsonl(Workdir(workdir).metrics_file)
    return np.array([np.nan if r[key] is None else r[key] for r in records])


def test_each_variant_matches_a_plain_run_also_across_a_resume(tmp_path, ema_decay=0.9):
    """With averaged weights, so the EMA's vmapped path is checked with the rest (plain
    vmapped runs are compared in tests/inference and tests/models too)."""
    devices = jax.devices()[:2]
    common = {**COMMON, "train.ema_decay": ema_decay}
    configs = [tiny_config(**{**common, **v}) for v in VARIANTS]
    workdirs = [tmp_path / f"vmapped{i}" for i in range(len(configs))]
    # Interrupted after 3 of 6 steps, then resumed from the variants' checkpoints.
    first = loop.train_vmapped(
        [tiny_config(**{**common, **v, "train.num_steps": 3}) for v in VARIANTS],
        workdirs,
        devices=devices,
    )
    assert [s["final_step"] for s in first] == [3, 3]
    vmapped = loop.train_vmapped(configs, workdirs, devices=devices)
    assert all(s["resumed_from"] == 3 and not s["failed"] for s in vmapped)
    for i, config in enumerate(configs):
        plain = loop.train_and_evaluate(config, tmp_path / f"plain{i}", devices=devices)
        keys = ("train_loss", "val_loss", "grad_norm", "learning_rate")
        for key in keys + (("val_loss_raw",) if ema_decay else ()):
            ours, ref = _series(workdirs[i], key), _series(tmp_path / f"plain{i}", key)
            assert ours.shape == ref.shape == (6,)
            np.testing.assert_allclose(ours, ref, rtol=1e-5, err_msg=f"variant {i} {key}")
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
            jax.device_get(steps.eval_params(vmapped[i]["state"])),
            jax.device_get(steps.eval_params(plain["state"])),
        )
    # Different seeds and learning rates really give different runs.
    assert not np.allclose(_series(workdirs[0], "train_loss"), _series(workdirs[1], "train_loss"))
    # A variant's workdir is an ordinary run: its checkpoint loads for sampling.
    _, _, params, step = loading.load_for_inference(workdirs[1])
    assert step == 6
    served = jax.device_get(steps.eval_params(vmapped[1]["state"]))  # The average, with EMA.
    np.testing.assert_allclose(jax.tree.leaves(params)[0], jax.tree.leaves(served)[0])


def test_a_diverging_variant_fails_alone(tmp_path):
    configs = [
        tiny_config(**{"train.learning_rate": 1e38}),
        tiny_config(**{"train.learning_rate": 3e-3}),
    ]
    summaries = loop.train_vmapped(
        configs, [tmp_path / "bad", tmp_path / "good"], devices=jax.devices()[:1]
    )
    assert "non-finite" in summaries[0]["failed"] and summaries[1]["failed"] is None
    assert summaries[1]["final_step"] == 6 and np.isfinite(summaries[1]["val_loss"])
    assert checkpointing.Checkpointer(tmp_path / "good").latest_step() == 6
    assert checkpointing.Checkpointer(tmp_path / "bad").latest_step() is None


def test_groups_and_what_may_vary():
    runs = [
        (sweep_runs.run_name(o), o)
        for o in [
            {"train.learning_rate": lr, "model.hidden_size": h, "seed": s}
            for lr in (1e-3, 3e-3)
            for h in (16, 32)
            for s in (0, 1)
        ]
    ]
    groups = sweep_runs.vmap_groups(runs, 3)
    assert [len(g) for g in groups] == [3, 1, 3, 1]
    assert all(len({o["model.hidden_size"] for _, o in g}) == 1 for g in groups)
    assert sorted(name for g in groups for name, _ in g) == sorted(name for name, _ in runs)
    with pytest.raises(UserError, match="model.hidden_size"):
        variant_groups.check_vmappable([tiny_config(), tiny_config(**{"model.hidden_size": 16})])
    with pytest.raises(UserError, match="grad_clip_norm > 0 in all variants or none"):
        variant_groups.check_vmappable(
            [tiny_config(), tiny_config(**{"train.grad_clip_norm": 1.0})]
        )
    with pytest.raises(UserError, match="sweep.vmap must be >= 1"):
        sweep_runs.vmap_groups(runs, 0)


SWEEP_CONFIG = (
    TINY_SWEEP_CONFIG
    + """
def lr_by_width():
    return config_lib.sweep_product(
        {"model.hidden_size": [16, 64], "train.learning_rate": [0.001, 0.01], "seed": [0, 1]}
    )
"""
)


def test_vmap_launcher_runs_the_sweep_through_main_and_reports(tmp_path):
    """Two stacked GRUs and the cosine schedule, as the published configs: a vmapped
    init of two GRUs 64 wide once hung on XLA:CPU (so the timeout; 16 to 32 wide did
    not), and optax's cosine once raised on the traced learning rates."""
    config_file = tmp_path / "sweep_config.py"
    config_file.write_text(SWEEP_CONFIG)
    root = tmp_path / "sweep"
    cmd = sweep.vmap_command(
        f"{config_file}:tiny", str(root), "lr_by_width", 4, python=sys.executable
    )
    assert cmd[-2:] == ["--config.sweep.vmap=4", "--config.sweep.name=lr_by_width"]
    cmd += ["--config.model.num_layers=2", "--config.train.schedule=cosine"]
    cmd += ["--config.train.warmup_steps=1"]
    result = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    statuses = json.loads(Workdir(root).sweep_summary_file.read_text())
    names = [name for name, _ in sweep_runs.expand(config_file, "lr_by_width")]
    assert sorted(statuses) == sorted(names)
    assert all(s["status"] == "done" and s["final_step"] == 4 for s in statuses.values())
    assert "vmapped variants" in result.stderr  # Two programs of 4, not 8 processes.
    rows = report.collect(root)
    assert len(rows) == 8 and all(row["best_val_loss"] is not None for row in rows)
    assert all(row["status"] == "done" for row in rows)
    config = json.loads((root / names[-1] / "config.json").read_text())
    assert config["model"]["hidden_size"] == 64 and config["seed"] == 1
    assert config["model"]["num_layers"] == 2 and config["train"]["schedule"] == "cosine"
