"""The training loop: restore or init, then step, log, evaluate and save until num_steps.

Data parallel over every device: a 1-D 'data' mesh, the global batch sharded on it and
the state replicated; XLA inserts the gradient all-reduce. Per-step randomness comes
from fold_in(rng, step) and batches are a pure function of the step, so a resumed run
replays exactly what an uninterrupted one would have done. A plain run is a group of one
variant (variants.Single); a vmapped sweep trains K at once (variants.Stacked).
"""

from __future__ import annotations

import functools
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from charrnn_jax import config_lib, models
from charrnn_jax.data import pipeline
from charrnn_jax.errors import NonFiniteLossError
from charrnn_jax.inference import scoring
from charrnn_jax.runtime import parallel
from charrnn_jax.store import checkpointing, metric_logging
from charrnn_jax.store.workdir import Workdir
from charrnn_jax.training import identity, optim, pacing, runs, steps, validation, variants


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir,
    *,
    devices=None,
    restart: bool = False,
    allow_config_change: frozenset = frozenset(),
) -> dict:
    """Trains until config.train.num_steps, resuming from the workdir's latest checkpoint.

    Returns a summary: final step, last train/val loss, the step resumed from, whether
    the run stopped early on a preemption signal, and the final state and model. With
    `restart`, a previous run's outputs are moved aside and training starts at step 0.
    A resume whose config or data differ from the workdir's is refused (identity.py),
    except for keys named in `allow_config_change` (or "data" for the corpus).
    """
    return _train(
        [config],
        [workdir],
        variants.Single,
        devices=devices,
        restart=restart,
        allow=frozenset(allow_config_change),
    )[0]


def train_vmapped(configs, workdirs, *, devices=None, restart: bool = False) -> list[dict]:
    """Trains K variants in one program: jax.vmap over their stacked states.

    The variants may differ only in steps.VMAPPABLE_KEYS (seed, learning rate, clipping);
    each gets exactly the init, batches and dropout of a plain run of its config, and its
    own workdir. A variant whose loss becomes non-finite is marked failed and stops
    writing; the others go on. Returns one summary per variant ('failed' holds the error).
    """
    if len(configs) != len(workdirs) or not configs:
        raise ValueError("train_vmapped needs one workdir per config, and at least one.")
    variants.check_vmappable(configs)
    return _train(list(configs), list(workdirs), variants.Stacked, devices=devices, restart=restart)


def load_data(configs) -> list:
    """One pipeline per variant; batches depend on the seed only, so seeds share one."""
    pipelines = {}
    for c in configs:
        if c.seed not in pipelines:
            pipelines[c.seed] = pipeline.build(
                c.data,
                seed=c.seed,
                global_batch=c.train.batch_size,
                num_eval_batches=c.train.eval_batches,
                eval_streams=scoring.eval_streams(c),
                eval_bytes_per_call=c.eval.bytes_per_call,
            )
    return [pipelines[c.seed] for c in configs]


def _train(
    configs, workdirs, group_type, *, devices, restart: bool, allow=frozenset()
) -> list[dict]:
    for config in configs:
        config_lib.validate(config)
    # Before any data loads or anything is created: a resume must mean the same run.
    if not restart:
        for w in workdirs:
            Workdir(w).check_no_half_restart()
    changes = [
        None if restart else identity.check_resume(c, w, allowed=allow)
        for c, w in zip(configs, workdirs, strict=True)
    ]
    config, t = configs[0], configs[0].train
    datas = load_data(configs)  # Every data error before anything is created or compiled.
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_divides(t.batch_size, mesh)
    if scoring.eval_streams(config):
        parallel.check_batch_divides(scoring.eval_streams(config), mesh, name="eval.streams")
    group = group_type(configs, mesh)
    is_main = jax.process_index() == 0
    opened = []
    try:
        for c, w, change in zip(configs, workdirs, changes, strict=True):
            opened.append(runs.Run(c, w, is_main=is_main, changes=change).open(restart=restart))
        setup = _setup(config, group, opened, datas)
    except BaseException:
        for run in opened:
            run.close()
            run.discard_if_new()
        raise
    try:
        state = _loop(config, group, opened, datas, *setup)
    finally:
        for run in opened:
            run.close()
    return _summaries(group, opened, state, setup[1])


def _setup(config, group, run_list, datas):
    """Restores or initialises the state and compiles the steps: (state, model, fns, start)."""
    model = models.from_config(config.model)
    tx, schedule = optim.make_optimizer(config.train)
    init = functools.partial(
        steps.create_train_state,
        model=model,
        tx=tx,
        seq_len=config.data.seq_len,
        carry_rows=config.train.batch_size if pipeline.MODES[config.data.mode].carries_state else 0,
        ema_decay=config.train.ema_decay,
    )
    state, state_sharding, start = group.restore_or_init([r.ckpt for r in run_list], init)
    if start is None:
        for run in run_list:
            run.check_fresh_start()
        start = 0
    for run in run_list:
        run.summary["resumed_from"] = start or None
        run.start_logs(start)
    if start >= config.train.num_steps:
        logging.info(
            "Checkpoint step %d already reaches num_steps=%d.", start, config.train.num_steps
        )
    fns = group.compile(model, schedule, state_sharding, chunk=config.data.seq_len)
    logging.info(
        "Devices: %d global, %d local, process %d of %d. Model: %s params%s.",
        jax.device_count(),
        jax.local_device_count(),
        jax.process_index(),
        jax.process_count(),
        f"{steps.count_params(state.params) // group.size:,}",
        f", {group.size} vmapped variants" if group.stacked else "",
    )
    return state, model, fns, start


def _loop(config, group, run_list, datas, state, model, fns, start):
    t = config.train
    pending = any(run.pending for run in run_list)
    if start and not pending and all(run.patience_exhausted(start) for run in run_list):
        _stop_early(run_list, start)  # Stopped early before: rerunning trains no further.
        return state
    process, processes = jax.process_index(), jax.process_count()
    dropout_rngs = group.keys(1)
    step_fn, val = _compile_for_loop(group, datas, state, fns, start, dropout_rngs, pending)
    stop = pacing.StopFlag().install()
    after = _AfterSteps(group, run_list, model, fns.reset, val, stop, start)
    try:
        if pending and after.complete_pending(state, start):
            return state
        for step in range(start, t.num_steps):
            local = [d.train_batch(step, process, processes) for d in datas]
            state = step_fn(state, group.global_batch(local), dropout_rngs)
            after.in_flight.add(state.step + 0)  # A copy: the state itself is donated next step.
            done = step + 1
            preempted = stop.is_set() or run_list[0].ckpt.reached_preemption(done)
            due = pacing.due(t, done, preempted=preempted)
            if due:
                state, finished = after.step(state, done, due, preempted)
                if finished:
                    break
    finally:
        stop.uninstall()
    return state


def _compile_for_loop(group, datas, state, fns, start, dropout_rngs, pending: bool):
    """The train step and the val pass, compiled for their batches ahead of the loop."""
    process, processes = jax.process_index(), jax.process_count()
    eval_data = [
        group.global_batch(batches)
        for batches in zip(*[d.eval_batches(process, processes) for d in datas], strict=True)
    ]
    val = validation.Validation(
        fns, eval_data, carried=datas[0].eval_carried, stoppable=processes == 1
    )
    step_fn = fns.train
    if start < group.configs[0].train.num_steps:
        first = group.global_batch([d.train_batch(start, process, processes) for d in datas])
        step_fn = validation.compile_ahead("train step", fns.train, state, first, dropout_rngs)
    if start < group.configs[0].train.num_steps or pending:
        val.compile(state.params)
    return step_fn, val


class _AfterSteps:
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
        self.in_flight = pacing.InFlight()
        self.run_start = time.perf_counter()

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
        raw = None
        if sums is not None and state.ema is not None:
            raw = self.validation.run(state.params, self.stop)
            if raw is None:
                return False
        if sums is None:
            return False
        for i, _ in live:
            records[i].update(_val_record(self.group.host_row(sums, i)))
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
            run.ckpt.save(done, _items(self.group, state, i), meta={"pending": pending})
        _mark_preempted(self.run_list, done, during_eval=True)

    def _after_row(self, state, live, records, done: int, evaluated: bool, *, save: bool) -> bool:
        """Best params and a sample, patience, and the save; True when training stops early."""
        if evaluated:
            _after_eval(self.group, live, state, records, done, self.model, self.sample_rngs)
        stopping = evaluated and all(run.patience_exhausted(done) for _, run in live)
        if save or stopping:
            for i, run in live:
                run.ckpt.save(done, _items(self.group, state, i), meta=run.meta_for(done))
        if stopping:
            _stop_early(self.run_list, done)
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


def _after_eval(group, live, state, records, done, model, sample_rngs) -> None:
    """Keeps each run's best params (checkpoints_best/) and logs a sample."""
    sample = not model.num_classes and live[0][1].config.sample.length and live[0][1].is_main
    for i, run in live:
        params = group.select(steps.eval_params(state), i)  # Once per variant, for both uses.
        run.keep_if_best(done, params, records[i]["val_loss"])
        if sample:
            rng = jax.random.fold_in(sample_rngs[i], done)
            runs.log_sample(run, params, model, rng, done, _tag(run, group))


def _stop_early(run_list, done: int) -> None:
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


def _items(group, state, i) -> dict:
    """Variant i's checkpoint items (the carry only in stream mode)."""
    return {
        item: group.select(getattr(state, item), i)
        for item in checkpointing.ITEMS
        if getattr(state, item) is not None
    }


def _tag(run, group) -> str:
    return f" [{run.workdir.name}]" if group.stacked else ""


def _summaries(group, run_list, state, model) -> list[dict]:
    final_step = int(np.max(jax.device_get(state.step)))
    out = []
    for i, run in enumerate(run_list):
        variant = state.replace(step=group.select(state.step, i), **_items(group, state, i))
        out.append(dict(run.summary, final_step=final_step, model=model, state=variant))
    return out
