"""Checks a resolved config before anything is loaded or compiled.

Unknown keys and wrong types are already caught by the locked ConfigDict; this catches
values of the right type that make no sense.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import ml_collections

from charrnn_jax import models
from charrnn_jax.errors import UserError

DATA_MODES = ("random", "epoch", "lines", "labelled")
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "keras_adam")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate(config: ml_collections.ConfigDict) -> None:
    d, m, t, s = config.data, config.model, config.train, config.sample
    _require(d.seq_len > 0, f"data.seq_len must be positive, got {d.seq_len}.")
    _require(0 < d.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {d.val_fraction}.")
    _require(d.mode in DATA_MODES, f"data.mode must be one of {DATA_MODES}, got {d.mode!r}.")
    num_classes = m.get("num_classes", 0)
    _require(
        num_classes >= 0 and num_classes != 1,
        f"model.num_classes must be 0 (language model) or >= 2, got {num_classes}.",
    )
    _require(
        (num_classes > 0) == (d.mode == "labelled"),
        "Classifiers (model.num_classes > 0) need data.mode='labelled' and vice versa.",
    )
    _require(bool(d.name or d.path), "Set data.name (a registered dataset) or data.path.")
    _require(
        m.cell in models.CELL_TYPES,
        f"model.cell must be one of {tuple(models.CELL_TYPES)}, got {m.cell!r}.",
    )
    _require(
        m.dtype in models.DTYPES,
        f"model.dtype must be one of {tuple(models.DTYPES)}, got {m.dtype!r}.",
    )
    gru_impl = m.get("gru_impl", "fused")
    _require(
        gru_impl in models.GRU_IMPLS,
        f"model.gru_impl must be one of {models.GRU_IMPLS}, got {gru_impl!r}.",
    )
    for key in ("embed_dim", "hidden_size", "num_layers"):
        _require(m[key] > 0, f"model.{key} must be positive, got {m[key]}.")
    _require(0 <= m.dropout < 1, f"model.dropout must be in [0, 1), got {m.dropout}.")
    for key in (
        "batch_size",
        "num_steps",
        "log_every",
        "eval_every",
        "eval_batches",
        "checkpoint_every",
        "max_to_keep",
    ):
        _require(t[key] > 0, f"train.{key} must be positive, got {t[key]}.")
    _require(
        t.optimizer in OPTIMIZERS,
        f"train.optimizer must be one of {OPTIMIZERS}, got {t.optimizer!r}.",
    )
    _require(t.learning_rate > 0, f"train.learning_rate must be positive, got {t.learning_rate}.")
    _require(
        t.schedule in SCHEDULES, f"train.schedule must be one of {SCHEDULES}, got {t.schedule!r}."
    )
    _require(
        0 <= t.warmup_steps < t.num_steps or t.warmup_steps == 0,
        f"train.warmup_steps must be in [0, num_steps), got {t.warmup_steps}.",
    )
    _require(
        t.grad_clip_norm >= 0,
        f"train.grad_clip_norm must be >= 0 (0 = off), got {t.grad_clip_norm}.",
    )
    if "sweep" in config:
        _require(
            config.sweep.vmap >= 0,
            f"sweep.vmap must be >= 0 (0 = off), got {config.sweep.vmap}.",
        )
    _require(s.length >= 0, f"sample.length must be >= 0 (0 = no samples), got {s.length}.")
    _require(s.temperature >= 0, f"sample.temperature must be >= 0, got {s.temperature}.")


def flatten(config: ml_collections.ConfigDict) -> dict:
    """{'train.learning_rate': 0.003, ...}: every leaf under its dotted key."""
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            out[key] = value
    return out


def with_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """A copy with dotted-key overrides applied; unknown keys and wrong types raise UserError."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.lock()
    for key, value in overrides.items():
        *parents, field = key.split(".")
        node = config
        try:
            for parent in parents:
                node = node[parent]
            node[field] = value
        except (KeyError, AttributeError, TypeError) as e:
            raise UserError(f"Bad sweep override {key}={value!r}: {e}".splitlines()[0]) from None
    return config


def save(config: ml_collections.ConfigDict, path: pathlib.Path) -> None:
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def load(path: pathlib.Path) -> ml_collections.ConfigDict:
    """Reads a config written by `save` (the workdir's config.json), locked."""
    if not path.is_file():
        raise UserError(f"No config.json in {path.parent}: is it a charrnn_jax workdir?")
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    config.lock()
    return config


def load_config_file(path: pathlib.Path, preset: str | None = None) -> ml_collections.ConfigDict:
    """get_config(preset) of a config file, as `--config=path:preset` would load it.

    Lets one experiment file build on another (e.g. dinos.py on shakespeare.py).
    """
    return load_config_module(path).get_config(preset)


def load_config_module(path: pathlib.Path):
    """A config file as a module (get_config, and sweep functions beside it)."""
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep_product(axes: dict[str, list]) -> list[dict]:
    """Every combination: {'train.learning_rate': [1e-3, 3e-3], 'seed': [0, 1]} -> 4 dicts."""
    runs = [{}]
    for key, values in axes.items():
        runs = [{**run, key: value} for run in runs for value in values]
    return runs


def sweep_zip(axes: dict[str, list]) -> list[dict]:
    """Values taken together: {'a': [1, 2], 'b': [3, 4]} -> [{'a': 1, 'b': 3}, {'a': 2, 'b': 4}]."""
    lengths = {len(v) for v in axes.values()}
    if len(lengths) > 1:
        raise ValueError(f"sweep_zip needs equally long value lists, got {sorted(lengths)}.")
    return [dict(zip(axes, values, strict=True)) for values in zip(*axes.values(), strict=True)]
