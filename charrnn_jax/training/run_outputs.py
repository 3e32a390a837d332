"""One run's outputs: its locked workdir, checkpoints, metric writer and summary.

A plain run has one Run; a vmapped sweep one per variant, each an ordinary workdir that
can be sampled from or resumed on its own.
"""

from __future__ import annotations

import jax
from absl import logging
from jax.experimental import multihost_utils

from charrnn_jax import config_lib
from charrnn_jax.data import corpora, pipeline
from charrnn_jax.errors import NonFiniteLossError, UserError
from charrnn_jax.inference import sampler
from charrnn_jax.store import checkpointing, metric_logging
from charrnn_jax.store.workdir import Workdir, WorkdirLock
from charrnn_jax.training import identity


class Run:
    """Opens (creates, locks) a workdir, and owns what the trainer writes into it."""

    def __init__(self, config, workdir, *, is_main: bool, changes: dict | None = None):
        self.config = config
        self.changes = changes  # What a resume changed in the config (identity.py).
        self.workdir = Workdir(workdir)
        self.is_main = is_main
        self.failed: str | None = None  # Set when a vmapped variant diverges.
        self.summary = {
            "resumed_from": None,
            "preempted": False,
            "early_stopped": False,
            "failed": None,
            "train_loss": None,
            "val_loss": None,
            "val_accuracy": None,
        }
        self.writer = None
        self.wall_offset = 0.0
        self.best = (float("inf"), 0)  # (val loss, step) of checkpoints_best/.
        self.last_row: dict | None = None  # The metrics row last written.
        self.pending: dict | None = None  # The restored step's interrupted val pass.
        # The run's identity (its config and corpus record), kept in every checkpoint's
        # meta so that a lost or damaged config.json or data.json can be checked against
        # and rebuilt from the checkpoint (identity.py).
        self.identity: dict = {}
        self._created = False
        self._lock = WorkdirLock(self.workdir)
        self.ckpt = self.best_ckpt = None

    def open(self, *, restart: bool) -> Run:
        """Creates and locks the workdir (process 0), then opens its checkpoints.

        With `restart`, a previous run's outputs are moved aside (kept) first.
        """
        self._created = self.workdir.prepare()
        if self.is_main:
            self._lock.acquire()
            if restart:
                self.workdir.set_aside("--restart")
        if restart and jax.process_count() > 1:  # Nobody opens checkpoints before the move.
            multihost_utils.sync_global_devices("charrnn_restart")
        self.ckpt = checkpointing.Checkpointer(
            self.workdir, max_to_keep=self.config.train.max_to_keep
        )
        self.best_ckpt = checkpointing.Checkpointer(self.workdir, max_to_keep=1, best=True)
        return self

    def check_fresh_start(self) -> None:
        """A run never silently starts from zero over checkpoints, quarantined ones included."""
        if self.workdir.has_checkpoints():
            raise UserError(
                f"{self.workdir.path} holds checkpoints but none could be restored (see "
                f"{self.workdir.quarantine_dir}); pass --restart to train from step 0 (the old "
                f"outputs are moved aside, not deleted)."
            )

    def start_logs(self, start_step: int) -> None:
        meta = self.ckpt.read_meta(start_step) if start_step else {}
        # A val pass a SIGTERM interrupted at the restored step: its row is made anew.
        self.pending = meta.get("pending")
        # Every process reads the best val so far so that all of them make the same
        # best-checkpoint and early-stopping decisions.
        self.best = self._best_so_far(start_step)
        self.identity = identity.record_of(self.config)
        if not self.is_main:
            return
        identity.record_start(self.config, self.workdir, step=start_step, changes=self.changes)
        self.writer = metric_logging.MetricWriter(
            self.workdir,
            resume_step=start_step - 1 if self.pending else start_step,
            wandb_config={
                **config_lib.as_dict(self.config.wandb),
                "run_config": self.config.to_dict(),
            },
            restored_row=meta.get("row"),
        )
        self.wall_offset = self.writer.wall_time_offset
        if self.pending:
            self.wall_offset = self.pending["wall_time"]

    def _best_so_far(self, start_step: int) -> tuple[float, int]:
        """(val loss, step) of checkpoints_best/, from the metric stored inside it, so a
        lost or cut metrics.jsonl can never let a worse model replace it; rows up to the
        restored step fill in for best checkpoints written before the metric was stored.
        """
        best = (float("inf"), 0)
        best_step = self.best_ckpt.latest_step()
        if best_step is not None:
            stored = self.best_ckpt.read_meta(best_step).get("val_loss")
            if stored is not None:
                best = (float(stored), best_step)
        if start_step:
            rows = metric_logging.read_jsonl(self.workdir.metrics_file)
            last = start_step - 1 if self.pending else start_step
            vals = [(r["val_loss"], r["step"]) for r in rows if r["step"] <= last]
            best = min([best] + [v for v in vals if v[0] is not None])
        if best_step is not None and best[1] != best_step and best[0] == float("inf"):
            logging.warning(
                "%s holds step %d with no stored val loss and no row for it: it is kept until "
                "a val loss is measured, and replaced by the first one.",
                self.workdir.best_checkpoint_dir,
                best_step,
            )
        return best

    def meta_for(self, step: int, **extra) -> dict:
        """What a checkpoint at `step` keeps beside the arrays: the run's identity and the
        row written at it."""
        meta = {identity.META_KEY: self.identity, **extra}
        if self.last_row and self.last_row["step"] == step:
            meta["row"] = self.last_row
        return meta

    def last_good(self) -> str:
        latest = self.ckpt.latest_step()
        return f"step {latest} in {self.ckpt.directory}" if latest is not None else "none"

    def check_window(self, window: dict) -> None:
        """Raises if a step since the last row was non-finite (fetched window, numpy)."""
        bad = int(window["bad_step"])
        if bad:
            raise NonFiniteLossError(
                f"Loss, gradient or params became non-finite at step {bad} (train loss "
                f"summed over the steps since the last row: {float(window['loss'])}); nothing "
                f"was saved after it. Last good checkpoint: {self.last_good()}."
            )

    def keep_if_best(self, step: int, params, val_loss: float) -> None:
        """Saves params to checkpoints_best/ when val loss improves (every process calls)."""
        if val_loss < self.best[0]:
            self.best = (val_loss, step)
            self.best_ckpt.save(step, {"params": params}, meta={"val_loss": val_loss})

    def heal_best(self, start_step: int, restored_params) -> None:
        """Saves the restored params as the best if the rows say the restored step is the
        best and checkpoints_best/ does not hold it: a kill after the regular save of a
        step committed and before its best save did leaves exactly that, and the run
        would otherwise serve an older best forever. restored_params: () -> the params
        the best save would have held (the restored state's evaluated params)."""
        val, step = self.best
        if not start_step or step != start_step or val == float("inf"):
            return
        if self.best_ckpt.latest_step() == start_step:
            return
        logging.warning(
            "%s lacks step %d, the best val so far (%.4f): saving it now from the restored "
            "checkpoint (its save was cut short).",
            self.workdir.best_checkpoint_dir,
            start_step,
            val,
        )
        self.best_ckpt.save(start_step, {"params": restored_params()}, meta={"val_loss": val})

    def patience_exhausted(self, step: int) -> bool:
        """train.early_stop_patience evals in a row without a better val loss (0: never)."""
        t = self.config.train
        patience = t.early_stop_patience
        return bool(patience) and step - self.best[1] >= patience * t.eval_every

    def write(self, step: int, record: dict) -> None:
        self.summary["train_loss"] = record.get("train_loss", self.summary["train_loss"])
        for key in ("val_loss", "val_accuracy"):
            if key in record:
                self.summary[key] = record[key]
        # Every process keeps the row (as the JSONL holds it), so all save the same
        # checkpoint items (meta_for); only process 0 has a writer.
        self.last_row = {k: {"step": step, **record}.get(k) for k in metric_logging.FIELDS}
        if self.writer:
            self.writer.write_scalars(step, record)

    def close(self) -> None:
        try:
            for ckpt in (self.ckpt, self.best_ckpt):
                if ckpt:
                    ckpt.wait_until_finished()
                    ckpt.close()
        finally:
            if self.writer:
                self.writer.close()
            self._lock.release()

    def discard_if_new(self) -> None:
        """After a failed start: remove the workdir if this run created it and it holds nothing."""
        if self._created and self.is_main and not self.workdir.has_checkpoints():
            self._lock.release()
            self.workdir.path.rmtree(missing_ok=True)


def generate_text(params, model, config, rng) -> str:
    """A short sample for the logs; params are gathered to the host first."""
    prefix = pipeline.prompt_prefix(config.data.mode)
    # Any prompt is bytes: a shell argument that is not UTF-8 reaches Python as lone
    # surrogates, which surrogateescape turns back into the bytes that were typed.
    prompt = config.logged_prompt.encode("utf-8", "surrogateescape")
    tokens, lengths = sampler.sample(
        jax.device_get(params),
        model,
        [prefix + prompt],
        length=config.sample.length,
        temperature=config.sample.temperature,
        rng=rng,
        stop_byte=prefix[0] if prefix else None,  # One example, e.g. one dinosaur name.
    )
    # Whole characters only: a sample cut mid-character would end in U+FFFD.
    return corpora.decode(corpora.complete_utf8(prompt + tokens[0, : lengths[0]].tobytes()))


def log_sample(run: Run, params, model, rng, step: int, tag: str) -> None:
    """Logs a sample; a failure to make or write one is one warning, never the run's end
    (a logged sample is side output: the checkpoint and the row come first)."""
    try:
        text = generate_text(params, model, run.config, rng)
        logging.info("Sample at step %d%s:\n%s", step, tag, text)
        if run.writer:
            run.writer.write_texts(step, {"sample": text})
    except Exception as e:  # noqa: BLE001 - any failure of side output; training goes on.
        first = next((ln for ln in str(e).splitlines() if ln.strip()), "")
        logging.warning(
            "The logged sample at step %d failed (%s: %s); training goes on.",
            step,
            type(e).__name__,
            first[:300],
        )
