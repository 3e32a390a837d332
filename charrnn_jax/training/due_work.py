"""What follows a training step when something is due: the metrics rows, the val pass,
the best params, a logged sample, early stopping and saves; and, after a resume, the
evaluation a SIGTERM interrupted (saved as pending with its unfinished row), completed
first so that the rows are those of an uninterrupted run.
"""

from __future__ import annotations

import time

import jax
from absl import logging

from charrnn_jax.errors import NonFiniteLossError
from charrnn_jax.store import checkpointing, metric_logging
from charrnn_jax.training import cadence, run_outputs, steps


class AfterSteps:
    """What follows a step when something is due: rows, the val pass, the best params, a
    sample, early stopping and saves; and, after a resume, an evaluation left pending."""

    def __init__(self, group, run_list, model, reset_fn, val, stop, start: int):
        self.group, self.run_list, self.model = group, run_list, model
        self.reset_fn, self.validation, self.stop = reset_fn, val, stop
        self.sample_rngs = [jax.random.fold_in(jax.random.key(c.seed), 2) for c in group.configs]
        config = group.configs[0]
        self.progress = metric_logging.Progress(
            start_step=start,
            num_steps=config.train.num_steps,
            tokens_per_step=group.size * config.train.batch_size * config.data.seq_len,
        )
        self.in_flight = cadence.InFlight()
        self.start, self.run_start = start, time.perf_counter()

    def first_estimate(self, state, done: int, first_row: int) -> None:
        """One line, long before the first row: how fast the steps go and how long the run
        will take (one wait for the device, once per command)."""
        jax.block_until_ready(state.step)
        elapsed = time.perf_counter() - self.run_start
        rate = (done - self.start) / max(elapsed, 1e-9)
        left = (self.progress.num_steps - done) / rate
        logging.info(
            "Step %d/%d after %.1f s (%.2f steps/s): about %s of training to go, "
            "evaluations and saves aside; the first row comes at step %d.",
            done,
            self.progress.num_steps,
            elapsed,
            rate,
            metric_logging.format_duration(left),
            first_row,
        )

    def step(self, state, done: int, due, preempted: bool):
        """(state, whether training stops here) after step `done`."""
        windows = jax.device_get(state.window)  # Tiny: the only fetch between rows.
        live = _check_windows(self.group, self.run_list, windows)
        if not live:
            logging.error("Every variant diverged; stopping at step %d.", done)
            return state, True
        rates = self.progress.update(done) if due.log else None
        self.progress.pause()  # Eval, save and sample time is not training throughput.
        records = None
        if due.log:
            records = _window_records(self.group, live, windows)
            evaluated = not due.eval or self._add_val(records, live, state, done)
            state = self.reset_fn(state)
            if not evaluated:
                self._save_pending(state, live, records, done, rates)
                return state, True
            self._write_rows(live, records, done, rates)  # Rows before the save: a kill
            # between the two then costs no row.
        finished = self._after_row(state, live, records, done, due.eval, save=due.save)
        self.progress.resume()
        if preempted and not finished:
            _mark_preempted(self.run_list, done)
            finished = True
        return state, finished

    def complete_pending(self, state, start: int) -> bool:
        """Completes the val pass a SIGTERM interrupted at `start`: its row, best params,
        sample and patience, as an uninterrupted run did them. True when training stops."""
        live = [(i, run) for i, run in enumerate(self.run_list) if run.pending]
        records = {i: dict(run.pending["record"]) for i, run in live}
        logging.info("Completing the evaluation of step %d, interrupted before.", start)
        if not self._add_val(records, live, state, start):
            _mark_preempted(self.run_list, start, during_eval=True)
            return True
        self._write_rows(live, records, start, live[0][1].pending["rates"])
        return self._after_row(state, live, records, start, True, save=False)

    def _add_val(self, records, live, state, done: int) -> bool:
        """Adds the val loss (and the raw params' beside an average) to each live run's
        record; False when a stop signal interrupted the pass."""
        calls = len(self.validation.batches)
        if calls > 1:
            logging.info("Evaluating step %d in %d device calls.", done, calls)
        sums = self.validation.run(steps.eval_params(state), self.stop)
        if sums is None:
            return False
        raw = None
        if state.ema is not None:
            raw = self.validation.run(state.params, self.stop)
            if raw is None:
                return False
        for i, _ in live:
            records[i].update(_val_record(self.group.host_row(sums, i)))
            if self.validation.nanogpt_tokens is not None:
                params = self.group.select(steps.eval_params(state), i)
                records[i]["val_loss_nanogpt"] = self.validation.nanogpt_estimate(
                    params, self.model
                )
            if raw is not None:  # The averaged weights' gain, visible beside them.
                raw_loss = _val_record(self.group.host_row(raw, i))["val_loss"]
                records[i]["val_loss_raw"] = raw_loss
                records[i]["val_bpb_raw"] = metric_logging.bits_per_byte(raw_loss)
        return True

    def _save_pending(self, state, live, records, done: int, rates: dict) -> None:
        """Saves step `done` with its unfinished row, for the resumed run to complete."""
        wall_time = time.perf_counter() - self.run_start
        for i, run in live:
            pending = {
                "record": records[i],
                "rates": rates,
                "wall_time": run.wall_offset + wall_time,
            }
            meta = run.meta_for(done, pending=pending)
            meta.pop("row", None)  # The row is made anew when the pass is completed.
            run.ckpt.save(done, items_of(self.group, state, i), meta=meta)
        _mark_preempted(self.run_list, done, during_eval=True)

    def _after_row(self, state, live, records, done: int, evaluated: bool, *, save: bool) -> bool:
        """Best params, patience, the save, then a sample (side output, after everything
        that must not be lost); True when training stops early."""
        if evaluated:
            _keep_best(self.group, live, state, records, done)
        stopping = evaluated and all(run.patience_exhausted(done) for _, run in live)
        if save or stopping:
            for i, run in live:
                run.ckpt.save(done, items_of(self.group, state, i), meta=run.meta_for(done))
        if evaluated:
            _log_samples(self.group, live, state, done, self.model, self.sample_rngs)
        if stopping:
            stop_early(self.run_list, done)
        return stopping

    def _write_rows(self, live, records, done: int, rates: dict) -> None:
        for i, run in live:
            record = records[i]
            record["tokens_per_sec"] = rates["tokens_per_sec"] / self.group.size
            record["wall_time"] = run.wall_offset + time.perf_counter() - self.run_start
            run.write(done, record)
            if run.is_main:
                line = metric_logging.progress_line(done, run.config.train.num_steps, record, rates)
                logging.info("%s%s", line, _tag(run, self.group))


def _mark_preempted(run_list, done: int, *, during_eval: bool = False) -> None:
    logging.warning(
        "Preemption signal%s: saved step %d; exiting cleanly (rerun to resume%s).",
        " during the evaluation" if during_eval else "",
        done,
        " and complete it" if during_eval else "",
    )
    for run in run_list:
        run.summary["preempted"] = True


def _keep_best(group, live, state, records, done) -> None:
    """Keeps each run's best params (checkpoints_best/)."""
    for i, run in live:
        run.keep_if_best(done, group.select(steps.eval_params(state), i), records[i]["val_loss"])


def _log_samples(group, live, state, done, model, sample_rngs) -> None:
    """A sample from each run's evaluated params (process 0, language models only)."""
    if model.config.num_classes or not live[0][1].config.sample.length or not live[0][1].is_main:
        return
    for i, run in live:
        params = group.select(steps.eval_params(state), i)
        rng = jax.random.fold_in(sample_rngs[i], done)
        run_outputs.log_sample(run, params, model, rng, done, _tag(run, group))


def stop_early(run_list, done: int) -> None:
    for run in run_list:
        run.summary["early_stopped"] = True
        logging.warning(
            "Early stop at step %d: val loss has not improved since step %d (%.4f) for %d "
            "evals (train.early_stop_patience); the best params are in %s.",
            done,
            run.best[1],
            run.best[0],
            run.config.train.early_stop_patience,
            run.workdir.best_checkpoint_dir,
        )


def _check_windows(group, run_list, windows) -> list:
    """The runs still live; a diverged plain run raises, a diverged variant is marked failed."""
    live = []
    for i, run in enumerate(run_list):
        if run.failed:
            continue
        try:
            run.check_window(group.host_row(windows, i))
        except NonFiniteLossError as e:
            if not group.stacked:
                raise
            run.failed = run.summary["failed"] = str(e)
            logging.error("Variant %s failed: %s", run.workdir.name, e)
            continue
        live.append((i, run))
    return live


def _window_records(group, live, windows) -> dict:
    """Each live run's row so far: its train window."""
    return {
        i: steps.window_record(
            group.host_row(windows, i), classifier=run.config.model.num_classes > 0
        )
        for i, run in live
    }


def _val_record(sums: dict) -> dict:
    out = {"val_loss": float(sums["loss_sum"] / sums["weight"])}
    out["val_bpb"] = metric_logging.bits_per_byte(out["val_loss"])
    if "correct" in sums:
        out["val_accuracy"] = float(sums["correct"] / sums["weight"])
    return out


def items_of(group, state, i) -> dict:
    """Variant i's checkpoint items (the carry only in stream mode)."""
    return {
        item: group.select(getattr(state, item), i)
        for item in checkpointing.ITEMS
        if getattr(state, item) is not None
    }


def _tag(run, group) -> str:
    return f" [{run.workdir.name}]" if group.stacked else ""
