"""Sweeps: a config file's sweep() as named runs, and vmapped groups of those runs.

A sweep function beside get_config() returns override dicts ({'train.learning_rate':
3e-3, 'seed': 1}); each becomes a run in `<root>/<name>`, the name spelled from its
overrides so that reruns find it again. The launchers in launch/ start the runs as
processes; `run_vmapped` trains them here, several per program (loop.train_vmapped).
"""

from __future__ import annotations

import json
import pathlib

import ml_collections
from absl import logging

from charrnn_jax import config_lib
from charrnn_jax.errors import UserError, is_user_error
from charrnn_jax.store.workdir import Workdir, write_atomic
from charrnn_jax.training import loop, steps


def run_name(overrides: dict) -> str:
    """Short, stable and unique within a sweep: the last key part unless that is ambiguous."""
    lasts = [key.split(".")[-1] for key in overrides]
    parts = []
    for key, last in zip(overrides, lasts, strict=True):
        label = last if lasts.count(last) == 1 else key
        parts.append(f"{label}={overrides[key]}")
    return ",".join(parts).replace("/", "_").replace(" ", "") or "default"


def _config_module(config_arg):
    """The config file of `path[:preset]` as a module."""
    path = pathlib.Path(str(config_arg).split(":", 1)[0])
    if not path.is_file():
        raise UserError(f"Config file {path} does not exist.")
    return config_lib.load_config_module(path)


def _sweep_runs(module, sweep_name: str) -> list[tuple[str, dict]]:
    runs = [(run_name(overrides), overrides) for overrides in getattr(module, sweep_name)()]
    names = [name for name, _ in runs]
    if len(set(names)) != len(names):
        raise UserError(f"The sweep repeats a run: {sorted(names)}")
    return runs


def expand(config_arg, sweep_name: str) -> list[tuple[str, dict]]:
    """[(name, overrides)] from the sweep function of the config file `path[:preset]`."""
    module = _config_module(config_arg)
    if not hasattr(module, sweep_name):
        raise UserError(f"{module.__file__} defines no {sweep_name}() sweep function.")
    return _sweep_runs(module, sweep_name)


def vmap_runs(config_arg, config: ml_collections.ConfigDict) -> list[tuple[str, dict]]:
    """What `--config.sweep.vmap=K` trains: the file's sweep function (config.sweep.name),
    or, for a file without one, K seeds from config.seed on."""
    module = _config_module(config_arg)
    if hasattr(module, config.sweep.name):
        return _sweep_runs(module, config.sweep.name)
    return [
        (f"seed={config.seed + i}", {"seed": config.seed + i}) for i in range(config.sweep.vmap)
    ]


def vmap_groups(runs, size: int) -> list[list[tuple[str, dict]]]:
    """Runs that differ only in steps.VMAPPABLE_KEYS, in groups of at most `size`.

    Sweep order is kept: groups appear in the order of their first run.
    """
    if size < 1:
        raise UserError(f"sweep.vmap must be >= 1 variants per program, got {size}.")
    by_shape: dict[str, list] = {}
    for name, overrides in runs:
        fixed = {k: v for k, v in overrides.items() if k not in steps.VMAPPABLE_KEYS}
        by_shape.setdefault(json.dumps(fixed, sort_keys=True, default=str), []).append(
            (name, overrides)
        )
    return [
        group[start : start + size]
        for group in by_shape.values()
        for start in range(0, len(group), size)
    ]


def run_vmapped(
    config: ml_collections.ConfigDict, runs, root, *, size: int, devices=None
) -> dict[str, dict]:
    """Trains every run, `size` variants per vmapped program; returns {name: status}.

    A group that fails (bad override, unreadable data) is recorded and the next group
    goes on; a preempted group stops the sweep (rerun to resume, like any run).
    """
    root = Workdir(root)
    root.path.mkdir(parents=True, exist_ok=True)
    statuses: dict[str, dict] = {}
    for group in vmap_groups(runs, size):
        names = [name for name, _ in group]
        logging.info("Vmapped group of %d: %s", len(group), ", ".join(names))
        try:
            configs = [config_lib.with_overrides(config, overrides) for _, overrides in group]
            summaries = loop.train_vmapped(
                configs, [root.run(name) for name in names], devices=devices
            )
        except Exception as e:
            if not is_user_error(e):
                raise
            for name, overrides in group:
                statuses[name] = {"status": "failed", "overrides": overrides, "error": str(e)}
            logging.error("Group %s failed: %s", names, e)
            continue
        for (name, overrides), summary in zip(group, summaries, strict=True):
            statuses[name] = {
                "status": "failed"
                if summary["failed"]
                else ("preempted" if summary["preempted"] else "done"),
                "overrides": overrides,
                "final_step": summary["final_step"],
                "train_loss": summary["train_loss"],
                "val_loss": summary["val_loss"],
                "error": summary["failed"],
            }
        if any(summary["preempted"] for summary in summaries):
            break
    write_atomic(root.sweep_summary_file, json.dumps(statuses, indent=2, default=str) + "\n")
    return statuses
