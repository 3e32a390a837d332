"""Metric records (JSONL + TensorBoard, behind one MetricWriter), the metrics table and
the progress line.

The JSONL file `<workdir>/metrics.jsonl` is the stable interface that the comparison and
sweep tools read: one JSON object per line, with exactly the keys of ROW_FIELDS below,
in that order (`python -c "from charrnn_jax.store import metric_logging as m;
print(m.schema())"` prints them with their meaning). A field without a value is null,
and so is a non-finite one (strict JSON has no Infinity or NaN).

ROW_FIELDS is the one place a metric is declared. A train metric names the per-step
value it reduces (`source`, a key of training/steps.train_step's metrics) and how the
window of steps between rows reduces it (`mean`, `max` or `last`); the on-device window,
its accumulation and the row's train fields are all derived from it (training/steps.py).
Adding a metric is one entry here (plus its per-step value, if new); a checkpoint made
before it existed restores with the new metric's window starting at zero.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable

from absl import logging
from tensorboardX import SummaryWriter

from charrnn_jax.errors import UserError
from charrnn_jax.store.workdir import Workdir, is_remote

REDUCTIONS = ("mean", "max", "last")


@dataclasses.dataclass(frozen=True)
class Field:
    """One key of a metrics row.

    Attributes:
      name: the row's key.
      kind: its JSON type ('int' or 'float').
      doc: what it means.
      source: train metrics only: the per-step value reduced over the window (also the
        name of its running reduction in the window, for the mean of `source` itself).
      reduce: train metrics only: 'mean', 'max' or 'last' over the steps since the last row.
      classifier_only: null unless the model is a classifier.
    """

    name: str
    kind: str
    doc: str
    source: str = ""
    reduce: str = ""
    classifier_only: bool = False

    @property
    def window_key(self) -> str:
        """Its running value in the on-device window: the source's name for its mean (the
        window's keys before this table existed), else name."""
        return self.source if self.reduce == "mean" else self.name


ROW_FIELDS = (
    Field("step", "int", "steps done when the row was written"),
    Field("wall_time", "float", "training seconds since the run first started (all resumes)"),
    Field(
        "train_loss",
        "float",
        "mean train cross-entropy (nats/byte) since the last row",
        source="loss",
        reduce="mean",
    ),
    Field("train_bpb", "float", "train_loss / ln 2 (bits per byte)"),
    Field("val_loss", "float", "val cross-entropy at this step (null when not evaluated)"),
    Field("val_bpb", "float", "val_loss / ln 2"),
    Field(
        "val_loss_raw",
        "float",
        "with train.ema_decay: val of the raw params (val_* is the average's)",
    ),
    Field("val_bpb_raw", "float", "val_loss_raw / ln 2"),
    Field(
        "val_loss_nanogpt",
        "float",
        "with eval.nanogpt_estimate: nanoGPT's estimate_loss() "
        "of the same params (200 x 64 random val windows of 256 bytes, seed 0)",
    ),
    Field("tokens_per_sec", "float", "training throughput since the last row"),
    Field(
        "grad_norm",
        "float",
        "mean global gradient norm since the last row",
        source="grad_norm",
        reduce="mean",
    ),
    Field(
        "grad_norm_max",
        "float",
        "largest global gradient norm since the last row",
        source="grad_norm",
        reduce="max",
    ),
    Field(
        "learning_rate",
        "float",
        "learning rate at this step",
        source="learning_rate",
        reduce="last",
    ),
    Field(
        "train_accuracy",
        "float",
        "mean train accuracy since the last row",
        source="accuracy",
        reduce="mean",
        classifier_only=True,
    ),
    Field("val_accuracy", "float", "val accuracy at this step", classifier_only=True),
)
FIELDS = tuple(f.name for f in ROW_FIELDS)
TRAIN_METRICS = tuple(f for f in ROW_FIELDS if f.reduce)


def schema() -> str:
    """The documented row schema, one line a field, from ROW_FIELDS."""
    lines = []
    for f in ROW_FIELDS:
        how = f" ({f.reduce} of the step's {f.source})" if f.reduce else ""
        only = " [classifiers only]" if f.classifier_only else ""
        lines.append(f"{f.name:15} {f.kind:6} {f.doc}{how}{only}")
    return "\n".join(lines)


def strict_json(value):
    """A row's value as strict JSON allows: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def bits_per_byte(nats: float | None) -> float | None:
    return None if nats is None else nats / math.log(2)


def read_jsonl(path) -> list[dict]:
    """The good records of a metrics file (an empty list if it does not exist).

    A line that is not a JSON object with a step (a cut last line after a kill or a full
    disk, a damaged line anywhere) is skipped with a warning naming the file and line;
    the trainer rewrites the rows past its checkpoint anyway (JsonlWriter).
    """
    return _read_rows(path)[0]


def _read_rows(path) -> tuple[list[dict], list[int]]:
    """(good records, numbers of the bad lines)."""
    if not path.is_file():
        return [], []
    records, bad = [], []
    for number, line in enumerate(
        path.read_bytes().decode("utf-8", "replace").splitlines(), start=1
    ):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            bad.append(number)
            logging.warning("%s:%d is not a metrics row; skipping it.", path, number)
    return records, bad


class JsonlWriter:
    """Appends records; on resume it first drops records past the restored step.

    Dropping them means a killed-and-resumed run's file reads like a run never
    interrupted, and `wall_time` continues from the last kept record.
    """

    def __init__(self, path, resume_step: int, restored_row: dict | None = None):
        self.path = path
        rows, bad = _read_rows(path)
        cut_last = (
            bad == [len(path.read_bytes().decode("utf-8", "replace").splitlines())]
            if bad
            else False
        )
        if bad and not cut_last:  # Damage beyond a cut last line: kept as found, beside.
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            aside.write_text(path.read_bytes().decode("utf-8", "replace"))
            logging.warning(
                "%s had damaged lines %s; the original is kept as %s.", path, bad, aside
            )
        kept = [r for r in rows if r["step"] <= resume_step]
        at_step = bool(restored_row) and restored_row.get("step") == resume_step
        if at_step and (not kept or kept[-1]["step"] != resume_step):  # Cut or lost.
            logging.warning("Rewrote the row at step %d from its checkpoint.", resume_step)
            kept.append(restored_row)
        self.wall_time_offset = kept[-1]["wall_time"] if kept else 0.0
        self._lines = [json.dumps(r) + "\n" for r in kept]
        self._rewrite()
        # Buckets (gs://) cannot append: there every write rewrites the (small) file.
        self._file = None if is_remote(path) else path.open("a")

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(self._lines))
        tmp.replace(self.path)

    def write(self, record: dict) -> dict:
        """Appends a row of FIELDS (strict JSON: a non-finite value is written as null, with
        a warning naming it); returns the row's values as given."""
        row = {k: record.get(k) for k in FIELDS}
        written = {k: strict_json(v) for k, v in row.items()}
        non_finite = [k for k in FIELDS if written[k] is None and row[k] is not None]
        if non_finite:
            logging.warning(
                "Step %s: %s non-finite (%s); written as null in %s.",
                row["step"],
                ", ".join(non_finite),
                ", ".join(repr(row[k]) for k in non_finite),
                self.path.name,
            )
        line = json.dumps(written, allow_nan=False) + "\n"
        self._lines.append(line)
        if self._file is None:
            self._rewrite()
        else:
            self._file.write(line)
            self._file.flush()
        return row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class TensorBoardWriter:
    """Scalars and text samples as TensorBoard event files (tensorboardX, no TensorFlow)."""

    def __init__(self, logdir):
        self._writer = SummaryWriter(str(logdir))

    def write(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and key != "wall_time" and value is not None:
                self._writer.add_scalar(key, value, record["step"])
        self._writer.flush()

    def write_text(self, tag: str, text: str, step: int) -> None:
        self._writer.add_text(tag, text, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbWriter:
    """Rows to Weights & Biases (optional: `pip install .[wandb]`, off by default).

    The run id is derived from the workdir, so a resumed run continues the same W&B run;
    W&B keeps what it was sent, so rows a resume rewrites appear there once more.
    mode='offline' writes under the workdir and syncs later (`wandb sync`).
    """

    def __init__(self, workdir: Workdir, *, project: str, mode: str, config: dict | None):
        try:
            import wandb  # Optional extra, loaded only when enabled.
        except ImportError:
            raise UserError("wandb.enable=True needs `pip install '.[wandb]'`.") from None
        run_id = hashlib.sha1(os.fspath(workdir.path).encode()).hexdigest()[:16]
        workdir.path.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=project,
            name=workdir.name,
            id=run_id,
            resume="allow",
            mode=mode,
            dir=os.fspath(workdir.path),
            config=config,
        )

    def write(self, record: dict) -> None:
        values = {k: v for k, v in record.items() if k != "step" and v is not None}
        self._run.log(values, step=record["step"])

    def write_text(self, tag: str, text: str, step: int) -> None:
        del tag, text, step  # Samples stay in the log and TensorBoard.

    def close(self) -> None:
        self._run.finish()


def _side_output(writer, what: str, step: int, write: Callable[[], None]) -> None:
    """Runs one write to a side stream (TensorBoard, W&B); a failure is one warning."""
    try:
        write()
    except Exception as e:  # noqa: BLE001 - side output never stops a run.
        first = next((ln for ln in str(e).splitlines() if ln.strip()), "")
        logging.warning(
            "%s could not write the %s at step %d (%s: %s); the run goes on.",
            type(writer).__name__,
            what,
            step,
            type(e).__name__,
            first[:200],
        )


class MetricWriter:
    """One writer over a run's JSONL, TensorBoard and (optionally) W&B, shaped like clu's
    MetricWriter. Our trainer and the Keras baseline both write through it.
    """

    def __init__(
        self,
        workdir,
        *,
        resume_step: int,
        tensorboard: bool = True,
        wandb_config=None,
        restored_row: dict | None = None,
    ):
        workdir = Workdir(workdir)
        self._jsonl = JsonlWriter(workdir.metrics_file, resume_step, restored_row)
        self._tb = TensorBoardWriter(workdir.tensorboard_dir) if tensorboard else None
        self._wandb = None
        if wandb_config is not None and wandb_config.get("enable"):
            self._wandb = WandbWriter(
                workdir,
                project=wandb_config["project"],
                mode=wandb_config["mode"],
                config=wandb_config.get("run_config"),
            )

    @property
    def wall_time_offset(self) -> float:
        """Training seconds already spent before a resume (the last kept row's wall_time)."""
        return self._jsonl.wall_time_offset

    def _streams(self):
        return [w for w in (self._tb, self._wandb) if w is not None]

    def write_scalars(self, step: int, record: dict) -> dict:
        """Writes one row to every stream; returns the JSONL row as written. The JSONL row
        is the record: a failure there ends the run; TensorBoard and W&B are side output,
        whose failure is a warning (the run goes on)."""
        row = self._jsonl.write({"step": step, **record})
        for writer in self._streams():
            _side_output(
                writer, "row", step, functools.partial(writer.write, {"step": step, **record})
            )
        return row

    def write_texts(self, step: int, texts: dict[str, str]) -> None:
        for tag, text in texts.items():
            for writer in self._streams():
                _side_output(
                    writer, tag, step, functools.partial(writer.write_text, tag, text, step)
                )

    def close(self) -> None:
        self._jsonl.close()
        for writer in self._streams():
            writer.close()


class Progress:
    """Steps/s, tokens/s and ETA between calls; the clock is injectable for tests."""

    def __init__(
        self,
        *,
        start_step: int,
        num_steps: int,
        tokens_per_step: int,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.num_steps = num_steps
        self.tokens_per_step = tokens_per_step
        self._clock = clock
        self._last_step = start_step
        self._last_time = clock()
        self._pause_started: float | None = None

    def pause(self) -> None:
        """Excludes eval/checkpoint/sample time from throughput until `resume`."""
        self._pause_started = self._clock()

    def resume(self) -> None:
        if self._pause_started is not None:
            self._last_time += self._clock() - self._pause_started
            self._pause_started = None

    def update(self, step: int) -> dict:
        now = self._clock()
        elapsed = max(now - self._last_time, 1e-9)
        steps_per_sec = (step - self._last_step) / elapsed
        self._last_step, self._last_time = step, now
        remaining = self.num_steps - step
        return {
            "steps_per_sec": steps_per_sec,
            "tokens_per_sec": steps_per_sec * self.tokens_per_step,
            "eta_sec": remaining / steps_per_sec if steps_per_sec > 0 else float("inf"),
        }


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def progress_line(step: int, num_steps: int, record: dict, rates: dict) -> str:
    """One log line; classifiers show accuracy where language models show bits per byte."""
    classifier = record.get("train_accuracy") is not None or record.get("val_accuracy") is not None
    parts = [f"step {step}/{num_steps}"]
    if record.get("train_loss") is not None:
        parts.append(f"loss {record['train_loss']:.4f}")
        if classifier:
            parts.append(f"acc {record['train_accuracy']:.3f}")
        else:
            parts.append(f"bpb {record['train_bpb']:.4f}")
    if record.get("val_loss") is not None:
        parts.append(f"val_loss {record['val_loss']:.4f}")
        if classifier:
            parts.append(f"val_acc {record['val_accuracy']:.3f}")
        else:
            parts.append(f"val_bpb {record['val_bpb']:.4f}")
    parts.append(f"{rates['steps_per_sec']:.2f} steps/s")
    parts.append(f"{rates['tokens_per_sec']:,.0f} tok/s")
    parts.append(f"ETA {format_duration(rates['eta_sec'])}")
    return " | ".join(parts)
