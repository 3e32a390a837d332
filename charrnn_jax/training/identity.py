"""A run's identity: the config and the data it started with, checked on every resume.

The workdir is the run's identity only if the command that resumes it means the same
run. At the first start the workdir records `config.json` and `data.json` (each corpus
file's size and sha256); a resume compares the new config and the files with them
before anything loads or compiles. A changed key that alters the run's meaning (model,
data, optimizer, seed, dtype, batch) is one `error:` line naming each key with both
values, and nothing in the workdir is touched. Keys in RESUMABLE_KEYS may change (the
run's length and its cadences, and how the same model is computed); any other change
must be asked for by name (`--allow_config_change=key,...`). Every start appends its
config and what changed to `config_history.jsonl`, so a mixed run says so afterwards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
import time

import jax
from absl import logging

from charrnn_jax import config_lib
from charrnn_jax.data import corpora
from charrnn_jax.errors import UserError
from charrnn_jax.runtime import machine
from charrnn_jax.store import checkpointing, metric_logging
from charrnn_jax.store.workdir import Workdir, append_line, write_atomic

# May change on resume: how long the run goes on and how often it logs, evaluates, saves
# and samples, none of which changes a step's batch, update or metric. (train.num_steps
# also moves a cosine schedule's end: the change is recorded, and logged as a warning.)
RESUMABLE_KEYS = frozenset(
    {
        "train.num_steps",
        "train.log_every",
        "train.eval_every",
        "train.checkpoint_every",
        "train.max_to_keep",
        "train.early_stop_patience",
        "train.init_from",  # Read only at step 0.
        "eval.bytes_per_call",  # Only the order in which the val sums are added.
        "eval.nanogpt_estimate",  # One more field in the val rows.
        "eval.dynamic.learning_rate",  # Read only by `evaluate --dynamic`.
        "eval.dynamic.decay",
        "eval.dynamic.segment",
        "sample.prompt",
        "sample.prompt_corpus",
        "sample.length",
        "sample.temperature",
        "wandb.enable",
        "wandb.project",
        "wandb.mode",
        "sweep.vmap",
        "sweep.name",
        "profile.steps",  # A trace of some steps: the same steps, observed.
    }
) | frozenset(
    # How the same function is computed (models/backend_choices.py; each pair tested
    # equal, same params): rounding may differ, as it does when a run resumes on another
    # backend, which 'auto' already allows.
    {"model.gru_impl", "model.stack", "model.scan", "model.unroll"}
)
# The file names, for messages (store/workdir.py owns them).
DATA_FILE = Workdir(".").data_file.name
HISTORY_FILE = Workdir(".").history_file.name
META_KEY = "identity"  # A checkpoint's meta: {'config': ..., 'data': ...} of its run.


def record_of(config) -> dict:
    """What every checkpoint keeps of its run's identity: the config and the corpus
    record (each file's size and sha256), as config.json and data.json hold them."""
    return {"config": config.to_dict(), "data": data_fingerprint(config)}


def _sha256(path: pathlib.Path) -> str:
    """The file's sha256, hashed once per version of the file (a start checks the corpus
    against config.json's record, the checkpoint's and its own: one read, not three)."""
    stat = path.stat()
    return _sha256_of(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # The cache key: a rewritten file is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(config) -> dict:
    """{path: {'bytes', 'sha256'}} of the corpus the config reads (a folder: its file list)."""
    path = corpora.resolve_path(config.data.name, config.data.path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        files = [path] if path.is_file() else []
    return {str(f): {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in files}


def changed_keys(recorded, config) -> dict[str, tuple]:
    """{dotted key: (recorded value, new value)} for every key whose value differs."""
    old, new = config_lib.flatten(recorded), config_lib.flatten(config)
    keys = sorted(set(old) | set(new))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def check_resume(config, workdir, *, allowed: frozenset = frozenset()) -> dict | None:
    """Compares a resume's config and data with what the workdir recorded.

    Returns None for a fresh workdir, else the accepted changes {key: (old, new)}.
    Raises a UserError naming every change that would mix two runs.
    """
    workdir = Workdir(workdir)
    saved = _identity_in_checkpoint(workdir)
    recorded = _recorded_config(workdir, saved)
    if recorded is None:
        return None
    if not workdir.has_checkpoints() and not metric_logging.read_jsonl(workdir.metrics_file):
        # A start that failed before its first step (a batching error, the first compile,
        # out of memory) left only the record of a run that never ran.
        logging.warning(
            "%s holds no step yet (no checkpoint, no metrics row): it starts anew with this "
            "config.",
            workdir.path,
        )
        return None
    changes = changed_keys(recorded, config)
    corpus = _corpus_verdict(workdir, config, allowed, saved)
    if corpus[0] == "moved":  # The same bytes under another name or path.
        allowed = allowed | CORPUS_LOCATION_KEYS
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE_KEYS | allowed}
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise UserError(
            f"{workdir.path} holds a run with another config ({listed}). Resuming would mix "
            f"two runs: use a new workdir, --restart, or --allow_config_change="
            f"{','.join(refused)} to change it deliberately (recorded in {HISTORY_FILE})."
        )
    data_change = _accept_corpus(workdir, config, allowed, corpus)
    if data_change:
        changes["data"] = data_change
    _rebuild_records(workdir, saved)
    if "train.num_steps" in changes and config.train.schedule == "cosine":
        logging.warning(
            "train.num_steps changed %s -> %s under a cosine schedule: the learning rate "
            "follows the new schedule from here on (recorded in %s).",
            *changes["train.num_steps"],
            HISTORY_FILE,
        )
    return changes


# Where the corpus is found: may change when the bytes found there are the recorded ones.
CORPUS_LOCATION_KEYS = frozenset({"data.path", "data.name"})


def _identity_in_checkpoint(workdir: Workdir) -> dict | None:
    """The identity record in the newest checkpoint's meta (None: no checkpoint, or one
    written before checkpoints kept it)."""
    found = checkpointing.newest_meta(workdir, META_KEY)
    return None if found is None else {**found[1], "step": found[0]}


def _recorded_config(workdir: Workdir, saved: dict | None):
    """The config the run recorded: config.json, or, when it is missing or damaged, the
    record in its newest checkpoint (None for a fresh workdir)."""
    if saved is None:
        return config_lib.load(workdir.config_file) if workdir.config_file.exists() else None
    try:
        return config_lib.load(workdir.config_file)
    except UserError:
        pass
    logging.warning(
        "%s is %s: the resume is checked against the config recorded in checkpoint step %d, "
        "and the file is rebuilt from it.",
        workdir.config_file,
        "damaged" if workdir.config_file.exists() else "missing",
        saved["step"],
    )
    return config_lib.complete(saved["config"])


def _rebuild_records(workdir: Workdir, saved: dict | None) -> None:
    """After a resume was accepted: config.json and data.json rebuilt from the checkpoint
    where they were missing or damaged (record_start then writes the new start's)."""
    if saved is None:
        return
    if _recorded_or_none(workdir) is None and saved.get("data") is not None:
        write_atomic(workdir.data_file, json.dumps(saved["data"], indent=2))
    try:
        config_lib.load(workdir.config_file)
    except UserError:
        write_atomic(workdir.config_file, config_lib.to_json(config_lib.complete(saved["config"])))


def _corpus_verdict(workdir: Workdir, config, allowed, saved) -> tuple:
    """(verdict, recorded, now) for the corpus, computed once per resume: 'same', 'moved',
    'changed', 'damaged' (data.json unreadable, no checkpoint record, not allowed) or
    'none' (older workdirs recorded none). A missing or damaged data.json is replaced by
    the record in the newest checkpoint (`saved`)."""
    recorded = _recorded_or_none(workdir)
    if recorded is None and saved is not None and saved.get("data") is not None:
        logging.warning(
            "%s is missing or damaged: the corpus is checked against the record in "
            "checkpoint step %d, and the file is rebuilt from it.",
            workdir.data_file,
            saved["step"],
        )
        recorded = saved["data"]
    if recorded is None:
        damaged = workdir.data_file.exists() and "data" not in allowed
        return ("damaged" if damaged else "none"), None, None
    now = data_fingerprint(config)
    return _compare_corpus(recorded, now), recorded, now


def _accept_corpus(workdir: Workdir, config, allowed, corpus: tuple) -> tuple | None:
    """Refuses a changed corpus (unless 'data' is allowed); returns (old, new) paths when
    the record must be updated: the same bytes moved, or an allowed change."""
    verdict, recorded, now = corpus
    if verdict == "damaged":
        _recorded_data(workdir)  # Raises its one line.
    if verdict in ("same", "none", "damaged"):
        return None
    if verdict == "changed" and "data" in allowed:
        logging.warning(
            "The corpus changed (--allow_config_change=data): recording the new one, so "
            "later resumes need not allow it again."
        )
    elif verdict == "moved":
        logging.warning(
            "The corpus moved (%s -> %s, the same bytes); the record is updated.",
            ", ".join(recorded),
            ", ".join(now),
        )
    else:
        raise UserError(
            f"{_describe_change(workdir, recorded, now, config)} Resuming would move the "
            f"splits under the run: restore the data, use a new workdir, or "
            f"--allow_config_change=data."
        )
    return sorted(recorded), sorted(now)


def _recorded_or_none(workdir: Workdir) -> dict | None:
    """The record, or None when it is missing or unreadable (an allowed data change)."""
    try:
        return _recorded_data(workdir)
    except UserError:
        return None


def _recorded_data(workdir: Workdir) -> dict | None:
    recorded_file = workdir.data_file
    if not recorded_file.exists():
        return None
    try:
        return json.loads(recorded_file.read_text())
    except ValueError:
        raise UserError(f"{recorded_file} is not valid JSON; restore it or delete it.") from None


def _compare_corpus(recorded: dict, now: dict) -> str:
    """'same', 'moved' (the same files' bytes under other paths), or 'changed'."""
    if recorded == now:
        return "same"
    if now and sorted(map(json.dumps, recorded.values())) == sorted(map(json.dumps, now.values())):
        return "moved"
    return "changed"


def _describe_change(workdir: Workdir, recorded: dict, now: dict, config) -> str:
    """One sentence: the corpus is missing, or its files differ (and how)."""
    describe = ", ".join(f"{path} ({info['bytes']:,} bytes)" for path, info in recorded.items())
    if not now:
        where = corpora.resolve_path(config.data.name, config.data.path)
        return (
            f"The corpus {workdir.path} was trained on ({describe}) is missing: {where} does "
            f"not exist."
        )
    sizes = sorted(i["bytes"] for i in recorded.values()) != sorted(
        i["bytes"] for i in now.values()
    )
    how = "in size" if sizes else "in content (sha256), not in size"
    return (
        f"The corpus changed since {workdir.path} started (it recorded {describe}; the files "
        f"now differ {how})."
    )


def check_corpus_for_scoring(config, workdir, *, allow_changed: bool) -> str | None:
    """For `evaluate`: refuses to score a split of a corpus other than the one the run
    trained on (the splits would hold other bytes, and a test split could overlap what
    it trained on), unless allowed; returns a note to print when it was allowed."""
    workdir = Workdir(workdir)
    recorded = _recorded_data(workdir)
    if recorded is None:
        return None
    now = data_fingerprint(config)
    if _compare_corpus(recorded, now) != "changed":
        return None
    change = _describe_change(workdir, recorded, now, config)
    if not allow_changed:
        raise UserError(
            f"{change} Its splits would not be the run's: pass --allow_changed_data to score "
            f"them anyway."
        )
    return f"note: {change} Scored anyway (--allow_changed_data)."


def record_start(config, workdir, *, step: int, changes: dict | None) -> None:
    """Writes config.json (and data.json at the first start); appends to the history."""
    workdir = Workdir(workdir)
    if changes is None or "data" in changes or not (workdir.data_file).exists():
        write_atomic(workdir.data_file, json.dumps(data_fingerprint(config), indent=2))
    write_atomic(workdir.config_file, config_lib.to_json(config))
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "step": step,
        # What ran this start: a resume on other hardware or JAX is visible afterwards.
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "jax": jax.__version__,
        "machine": machine.describe(jax.devices()),  # Whose wall-clock the rows measure.
        "changes": {k: list(v) for k, v in (changes or {}).items()},
        "config": config.to_dict(),
    }
    # Rewritten whole (buckets cannot append), on a fresh line after a cut one.
    append_line(workdir.history_file, json.dumps(entry))
