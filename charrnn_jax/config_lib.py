"""The config: its typed schema (RunConfig), the door that makes it, and its files.

A command loads an experiment file (a locked ml_collections ConfigDict, overridable as
`--config.a.b=value`) and calls `resolve` once: the ConfigDict becomes a frozen
RunConfig with every value checked, before anything is loaded or compiled. Below the
commands only the RunConfig exists. The ConfigDict's keys and defaults (base_config)
are derived from the dataclasses, so each key is declared and documented once. Also
here: config.json's text and its reading (`load`, `complete`, MOVED_KEYS), and the
sweep helpers experiment files use.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import pathlib

import ml_collections

from charrnn_jax import models
from charrnn_jax.data import corpora, pipeline
from charrnn_jax.errors import UserError
from charrnn_jax.models import registry

DATA_MODES = tuple(pipeline.MODES)
EVAL_MODES = ("full", "windows")
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "keras_adam")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _validate(config: RunConfig) -> None:
    """Every value checked once, here, before any data loads or anything compiles."""
    _validate_data(config)
    _validate_model(config.model, config.data)
    _validate_train(config.train)
    _validate_rest(config)


def _one_of(value, choices, key: str) -> None:
    _require(value in choices, f"{key} must be one of {tuple(choices)}, got {value!r}.")


def _validate_data(config) -> None:
    d = config.data
    _require(d.seq_len > 0, f"data.seq_len must be positive, got {d.seq_len}.")
    _require(0 < d.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {d.val_fraction}.")
    _one_of(d.mode, DATA_MODES, "data.mode")
    test_fraction = d.test_fraction
    _require(
        0 <= test_fraction < 1 - d.val_fraction,
        f"data.test_fraction must be in [0, 1 - val_fraction), got {test_fraction}.",
    )
    cutters = tuple(name for name, mode in pipeline.MODES.items() if mode.cuts_test_split)
    _require(
        not test_fraction or pipeline.MODES[d.mode].cuts_test_split,
        f"data.test_fraction={test_fraction} needs a data.mode that cuts a test split "
        f"{cutters}; data.mode={d.mode!r} splits its examples into train and val only.",
    )
    _one_of(config.eval.mode, EVAL_MODES, "eval.mode")
    _require(config.eval.streams >= 0, f"eval.streams must be >= 0, got {config.eval.streams}.")
    dyn = config.eval.dynamic
    _require(
        dyn.learning_rate >= 0, f"eval.dynamic.learning_rate must be >= 0, got {dyn.learning_rate}."
    )
    _require(0 <= dyn.decay <= 1, f"eval.dynamic.decay must be in [0, 1], got {dyn.decay}.")
    _require(dyn.segment >= 0, f"eval.dynamic.segment must be >= 0, got {dyn.segment}.")
    _require(
        config.eval.bytes_per_call >= 0,
        f"eval.bytes_per_call must be >= 0, got {config.eval.bytes_per_call}.",
    )
    _require(bool(d.name or d.path), "Set data.name (a registered dataset) or data.path.")


def _validate_model(m, d) -> None:
    num_classes = m.num_classes
    _require(
        num_classes >= 0 and num_classes != 1,
        f"model.num_classes must be 0 (language model) or >= 2, got {num_classes}.",
    )
    _require(
        (num_classes > 0) == pipeline.MODES[d.mode].labelled,
        "Classifiers (model.num_classes > 0) need data.mode='labelled' and vice versa.",
    )
    _one_of(m.cell, models.CELL_TYPES, "model.cell")
    _one_of(m.dtype, models.DTYPES, "model.dtype")
    _one_of(m.gru_impl, models.GRU_IMPLS, "model.gru_impl")
    _one_of(m.stack, models.STACKS, "model.stack")
    _one_of(m.scan, models.SCAN_MODES, "model.scan")
    _require(m.mlp_ratio > 0, f"model.mlp_ratio must be positive, got {m.mlp_ratio}.")
    for key in ("embed_dim", "hidden_size", "num_layers", "unroll"):
        value = getattr(m, key)
        _require(value > 0, f"model.{key} must be positive, got {value}.")
    for key in ("dropout", "input_dropout", "recurrent_dropout"):
        rate = getattr(m, key)
        _require(0 <= rate < 1, f"model.{key} must be in [0, 1), got {rate}.")
    try:
        m.options  # noqa: B018 - the chosen cell's options check themselves.
    except ValueError as e:  # Its options class's __post_init__, naming the field.
        raise UserError(f"model.{e}") from None
    cell = registry.CELLS[m.cell]
    if cell.whole_model is not None:
        _require(
            not pipeline.MODES[d.mode].carries_state,
            f"model.cell={m.cell!r} carries no state between training steps: use a "
            f"data.mode other than {d.mode!r}.",
        )
    problem = cell.check(m, d)
    _require(problem is None, problem or "")
    takers = [name for name, c in registry.CELLS.items() if c.drop_connect("fused")]
    _require(
        not m.recurrent_dropout or registry.CELLS[m.cell].drop_connect(m.gru_impl),
        "model.recurrent_dropout (DropConnect on the recurrent kernel) needs "
        f"model.cell={takers[0]!r} with model.gru_impl 'fused' or 'auto', or model.cell in "
        f"{tuple(takers[1:])}; got cell={m.cell!r}, gru_impl={m.gru_impl!r}.",
    )


def _validate_train(t) -> None:
    for key in (
        "batch_size",
        "num_steps",
        "log_every",
        "eval_every",
        "eval_batches",
        "checkpoint_every",
        "max_to_keep",
    ):
        value = getattr(t, key)
        _require(value > 0, f"train.{key} must be positive, got {value}.")
    _require(
        t.weight_decay >= 0,
        f"train.weight_decay must be >= 0, got {t.weight_decay}.",
    )
    _require(
        t.early_stop_patience >= 0,
        f"train.early_stop_patience must be >= 0 (0 = off), got {t.early_stop_patience}.",
    )
    _require(0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {t.ema_decay}.")
    _one_of(t.optimizer, OPTIMIZERS, "train.optimizer")
    _require(t.learning_rate > 0, f"train.learning_rate must be positive, got {t.learning_rate}.")
    _require(0 < t.adam_b2 < 1, f"train.adam_b2 must be in (0, 1), got {t.adam_b2}.")
    _require(
        0 <= t.end_learning_rate <= t.learning_rate,
        f"train.end_learning_rate must be in [0, learning_rate], got {t.end_learning_rate}.",
    )
    _one_of(t.schedule, SCHEDULES, "train.schedule")
    _require(
        0 <= t.warmup_steps < t.num_steps or t.warmup_steps == 0,
        f"train.warmup_steps must be in [0, num_steps), got {t.warmup_steps}.",
    )
    _require(
        t.grad_clip_norm >= 0,
        f"train.grad_clip_norm must be >= 0 (0 = off), got {t.grad_clip_norm}.",
    )


def _validate_rest(config) -> None:
    s = config.sample
    _one_of(config.wandb.mode, ("online", "offline", "disabled"), "wandb.mode")
    _require(config.sweep.vmap >= 0, f"sweep.vmap must be >= 0 (0 = off), got {config.sweep.vmap}.")
    _require(s.length >= 0, f"sample.length must be >= 0 (0 = no samples), got {s.length}.")
    _require(s.temperature >= 0, f"sample.temperature must be >= 0, got {s.temperature}.")
    spec = config.profile.steps
    start, sep, count = spec.partition(":")
    _require(
        not spec or (sep == ":" and start.isdigit() and count.isdigit() and int(count) >= 1),
        f"profile.steps must be '' or 'START:COUNT' (e.g. '100:5'), got {spec!r}.",
    )


def _key(default, doc: str):
    """A config key: its default and its one comment (base_config and the docs read both)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def _block(cls, doc: str):
    return dataclasses.field(default_factory=cls, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The config's `train` block, typed: the optimizer's keys and the loop's."""

    batch_size: int = _key(64, "Global batch, split over all devices.")
    num_steps: int = _key(3440, "Total steps; may be raised when resuming.")
    optimizer: str = _key("adam", "'adam' (optax) or 'keras_adam' (Keras's eps placement).")
    learning_rate: float = _key(1e-3, "Adam's peak learning rate (Keras default).")
    schedule: str = _key("constant", "'constant', or 'cosine' decay after warmup.")
    warmup_steps: int = _key(0, "Linear warmup steps.")
    grad_clip_norm: float = _key(0.0, "Clip by global norm; 0 turns clipping off.")
    adam_eps: float = _key(1e-7, "Keras's Adam epsilon (optax's default is 1e-8).")
    adam_b2: float = _key(0.999, "Adam's second-moment decay (nanoGPT's Shakespeare: 0.99).")
    end_learning_rate: float = _key(0.0, "Where the cosine ends (nanoGPT's min_lr: 1e-4).")
    weight_decay: float = _key(0.0, "Decoupled (AdamW) decay of the weight matrices.")
    ema_decay: float = _key(
        0.0,
        "> 0: also keep an exponential moving average of the params (Polyak averaging, with "
        "a warm-up); val, the best checkpoint, samples, evaluate and sample use the average.",
    )
    log_every: int = _key(50, "Steps between progress lines / JSONL records.")
    eval_every: int = _key(500, "Steps between val evaluations (and samples).")
    eval_batches: int = _key(16, "Val batches per evaluation in eval.mode='windows'.")
    checkpoint_every: int = _key(500, "Steps between checkpoints (also saved at the end).")
    max_to_keep: int = _key(3, "Checkpoints kept on disk (plus the best, checkpoints_best/).")
    early_stop_patience: int = _key(0, "Stop after this many evals without a better val.")
    init_from: str = _key("", "Fine-tune: start from WORKDIR[:STEP|best]'s params.")


@dataclasses.dataclass(frozen=True)
class DynamicEvalConfig:
    """`evaluate --dynamic` (inference/dynamic.py, Krause et al. 2018): SGD on each
    scored segment, decaying towards the trained weights."""

    learning_rate: float = _key(
        0.1, "SGD step on a segment's mean loss (chosen on val: docs/results.md)."
    )
    decay: float = _key(1e-3, "Pull towards the trained weights per segment.")
    segment: int = _key(0, "Bytes per segment (0: the model's eval chunk, data.seq_len).")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The config's `eval` block: how val is scored while training and by `evaluate`."""

    mode: str = _key(
        "full",
        "Byte data: 'full' scores every val byte once, carry kept; 'windows' is the old "
        "cheap metric (eval_batches fixed windows from a zero carry).",
    )
    streams: int = _key(0, "Full eval: contiguous streams scored in parallel (0 = batch_size).")
    bytes_per_call: int = _key(
        1 << 18,
        "Full eval: val bytes per device call at most (0 = one call). A SIGTERM is "
        "honoured between calls, so this bounds how long a preemption waits.",
    )
    nanogpt_estimate: bool = _key(
        False,
        "Also log nanoGPT's estimate_loss() of val beside val_loss (val_loss_nanogpt; byte "
        "data, single process): 200 x 64 random windows of 256 bytes, a seeded draw.",
    )
    dynamic: DynamicEvalConfig = _block(DynamicEvalConfig, "Dynamic evaluation's settings.")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """The config's `sample` block: the samples logged while training."""

    prompt: str = _key("", "Prompt of the samples logged while training ('' = a newline).")
    prompt_corpus: str = _key(
        "",
        "The data.name the prompt was written for ('' = any corpus): a run on another "
        "corpus or on a file of its own (data.path) logs samples from a newline instead.",
    )
    length: int = _key(200, "Bytes per logged sample; 0 turns samples off.")
    temperature: float = _key(0.8, "Sampling temperature for logged samples.")


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    enable: bool = _key(False, "Also log rows to Weights & Biases (`pip install .[wandb]`).")
    project: str = _key("charrnn_jax", "The W&B project; the run is named after the workdir.")
    mode: str = _key("online", "'online', 'offline' (sync later with `wandb sync`), 'disabled'.")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    vmap: int = _key(0, "K > 0: train sweep() K variants per vmapped program (README).")
    name: str = _key("sweep", "The sweep function in this file (none: K seeds).")


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    steps: str = _key(
        "", "'START:COUNT': a jax.profiler trace of those steps into <workdir>/profile/."
    )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run reads, typed and frozen: made once by `resolve` at a command's
    door and handed whole below it (Flax lm1b's TransformerConfig, MaxText's frozen
    config). Its defaults are the schema: base_config() is derived from them."""

    seed: int = _key(0, "Seeds init, the batch order and dropout.")
    data: corpora.DataConfig = _block(corpora.DataConfig, "The corpus and its windows.")
    model: models.ModelConfig = _block(models.ModelConfig, "The network.")
    train: TrainConfig = _block(TrainConfig, "The optimizer and the training loop.")
    eval: EvalConfig = _block(EvalConfig, "Scoring val.")
    sample: SampleConfig = _block(SampleConfig, "Samples logged while training.")
    wandb: WandbConfig = _block(WandbConfig, "Weights & Biases logging.")
    sweep: SweepConfig = _block(SweepConfig, "Vmapped sweeps.")
    profile: ProfileConfig = _block(ProfileConfig, "A profiler trace.")

    def to_dict(self) -> dict:
        """The nested dict config.json holds (ConfigDict.to_dict()'s shape)."""
        return as_dict(self)

    @property
    def eval_streams(self) -> int:
        """Streams of the full-split metric, or 0 where it does not apply (windowed
        eval, or examples rather than a byte stream)."""
        if self.eval.mode != "full" or not pipeline.MODES[self.data.mode].byte_stream:
            return 0
        return self.eval.streams or self.train.batch_size

    @property
    def carry_rows(self) -> int:
        """Rows of the carry kept across training steps (stream mode), else 0."""
        return self.train.batch_size if pipeline.MODES[self.data.mode].carries_state else 0

    @property
    def logged_prompt(self) -> str:
        """The prompt of the samples logged while training: sample.prompt, unless it was
        written for another corpus than the one this run reads (sample.prompt_corpus)."""
        corpus = self.sample.prompt_corpus
        if corpus and (self.data.path or self.data.name != corpus):
            return ""
        return self.sample.prompt

    @property
    def eval_chunk(self) -> int:
        """Bytes per carried call of the full-split metric (ModelConfig.eval_chunk)."""
        return self.model.eval_chunk(self.data.seq_len)


def as_dict(typed) -> dict:
    """A typed config block as the nested dict its ConfigDict holds (the model block
    writes its own: one block per cell's options)."""
    if isinstance(typed, models.ModelConfig):
        return typed.to_dict()
    return {
        f.name: as_dict(v) if dataclasses.is_dataclass(v := getattr(typed, f.name)) else v
        for f in dataclasses.fields(typed)
    }


def resolve(config: ml_collections.ConfigDict) -> RunConfig:
    """The typed config of a command's ConfigDict, every value checked: THE door.

    Unknown keys and wrong types were refused by the locked ConfigDict; this refuses
    values of the right type that make no sense (one UserError each), before any data
    loads or anything compiles. Nothing below the commands sees the ConfigDict.
    """
    run = _typed(RunConfig, config)
    _validate(run)
    return run


def _typed(cls, block):
    default = cls()
    values = {}
    for f in dataclasses.fields(cls):
        sub = getattr(default, f.name)
        if isinstance(sub, models.ModelConfig):
            values[f.name] = models.ModelConfig.from_block(block[f.name])
        elif dataclasses.is_dataclass(sub):
            values[f.name] = _typed(type(sub), block[f.name])
        else:
            values[f.name] = block[f.name]
    return cls(**values)


def base_config() -> ml_collections.ConfigDict:
    """Every key a run reads, with its default: derived from RunConfig's defaults, the
    schema (each key documented once, beside its default). experiments/*.py start here."""
    return ml_collections.ConfigDict(RunConfig().to_dict())


def schema() -> list[tuple[str, object, str]]:
    """[(dotted key, default, doc)] of every key: the documented configuration."""
    return list(_schema(RunConfig(), ""))


def _schema(typed, prefix: str):
    for f in dataclasses.fields(typed):
        value = getattr(typed, f.name)
        if f.name == "cell_options":
            for name, block in value:
                options = registry.CELLS[name].options
                for k, v in block:
                    yield f"{prefix}{name}.{k}", v, f"`{name}` only: " + _field_doc(options, k)
        elif dataclasses.is_dataclass(value):
            yield from _schema(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, f.metadata.get("doc", "")


def _field_doc(cls, name: str) -> str:
    """The `name: ...` entry (with its continuation lines) of a class's docstring: where a
    cell's options class documents each field once."""
    lines = (cls.__doc__ or "").splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"{name}:"):
            indent = len(line) - len(line.lstrip())
            more = []
            for follow in lines[i + 1 :]:
                if not follow.strip() or len(follow) - len(follow.lstrip()) <= indent:
                    break
                more.append(follow.strip())
            return " ".join([line.strip()[len(name) + 1 :].strip(), *more])
    return ""


def check_declared(config: ml_collections.ConfigDict, source: str = "the config") -> None:
    """Refuses a key that base_config() does not declare (a misspelt `c.model.hidden_sise`
    in an experiment file, set before the file locked its config): one UserError naming
    the key, where it came from, and the closest declared key."""
    declared = flatten(base_config())
    unknown = sorted(set(flatten(config)) - set(declared))
    if not unknown:
        return
    closest = difflib.get_close_matches(unknown[0], list(declared), n=1, cutoff=0.6)
    hint = f"did you mean {closest[0]!r}?" if closest else "see config_lib.base_config()."
    more = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:4])})" if unknown[1:] else ""
    raise UserError(f"unknown config key {unknown[0]!r} set in {source}{more}; {hint}")


def flatten(config) -> dict:
    """{'train.learning_rate': 0.003, ...}: every leaf under its dotted key (of a
    RunConfig, a ConfigDict or their nested dict)."""
    tree = config if isinstance(config, dict) else config.to_dict()
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
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


def to_json(config: RunConfig | ml_collections.ConfigDict | dict) -> str:
    """config.json's text (store.workdir.write_atomic writes it)."""
    tree = config if isinstance(config, dict) else config.to_dict()
    return json.dumps(tree, indent=2, sort_keys=True) + "\n"


def load(path: pathlib.Path) -> ml_collections.ConfigDict:
    """Reads a config written by `save` (the workdir's config.json), locked and complete.

    A config.json written before a key existed gets that key's default (`complete`), so
    the library never needs a fallback of its own. An unreadable file is one UserError.
    """
    if not path.is_file():
        raise UserError(f"No config.json in {path.parent}: is it a charrnn_jax workdir?")
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); restore it or use --restart.") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} does not hold a config (a JSON object).")
    return complete(saved)


# Keys that moved, old dotted name -> new: a config.json written before the move keeps
# its meaning (the Mogrifier's options moved into its own block, models/registry.py).
MOVED_KEYS = {
    "model.mogrifier_rounds": "model.mogrifier_gru.rounds",
    "model.mogrifier_rank": "model.mogrifier_gru.rank",
}


def complete(saved: dict) -> ml_collections.ConfigDict:
    """base_config() with a saved config's values on top: moved keys take their new
    names; keys added since it was written take their defaults; keys the code no longer
    has are dropped. Locked."""
    config = base_config()
    _overlay(config, _moved(saved))
    config.lock()
    return config


def _moved(saved: dict) -> dict:
    """A copy of a saved config with MOVED_KEYS renamed (the new name wins if both exist)."""
    saved = json.loads(json.dumps(saved))
    for old, new in MOVED_KEYS.items():
        *old_parents, old_field = old.split(".")
        node = saved
        for parent in old_parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if not isinstance(node, dict) or old_field not in node:
            continue
        value = node.pop(old_field)
        *new_parents, new_field = new.split(".")
        target = saved
        for parent in new_parents:
            target = target.setdefault(parent, {})
        target.setdefault(new_field, value)
    return saved


def _overlay(config: ml_collections.ConfigDict, saved: dict) -> None:
    for key, value in saved.items():
        if key not in config:
            continue
        if isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, dict):
            _overlay(config[key], value)
        else:
            config[key] = value


def load_config_file(path: pathlib.Path, preset: str | None = None) -> ml_collections.ConfigDict:
    """get_config(preset) of a config file, as `--config=path:preset` would load it
    (for tests and benchmarks; an experiment file starts from base_config() alone, so that
    each reads top to bottom, as tests/test_experiments.py checks)."""
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
