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
import jax.numpy as jnp
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
from charrnn_jax.training import identity, optim, pacing, runs, steps, variants


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
    reset_fn = fns[2]
    if start and all(run.patience_exhausted(start) for run in run_list):
        _stop_early(run_list, start)  # Stopped early before: rerunning trains no further.
        return state
    process, processes = jax.process_index(), jax.process_count()
    dropout_rngs = group.keys(1)
    sample_rngs = [jax.random.fold_in(jax.random.key(c.seed), 2) for c in group.configs]
    step_fn, eval_fn, eval_data = _compile_for_loop(group, datas, state, fns, start, dropout_rngs)
    tokens_per_step = group.size * t.batch_size * config.data.seq_len
    progress = metric_logging.Progress(
        start_step=start, num_steps=t.num_steps, tokens_per_step=tokens_per_step
    )
    run_start, stop = time.perf_counter(), pacing.StopFlag().install()
    in_flight = pacing.InFlight()
    try:
        for step in range(start, t.num_steps):
            local = [d.train_batch(step, process, processes) for d in datas]
            state = step_fn(state, group.global_batch(local), dropout_rngs)
            in_flight.add(state.step + 0)  # A copy: the state itself is donated next step.
            done = step + 1
            preempted = stop.is_set() or run_list[0].ckpt.reached_preemption(done)
            due = pacing.due(t, done, preempted=preempted)
            if not due:
                continue
            windows = jax.device_get(state.window)  # Tiny: the only fetch between rows.
            live = _check_windows(group, run_list, windows)
            if not live:
                logging.error("Every variant diverged; stopping at step %d.", done)
                break
            progress.pause()
            if due.log:
                records = _records(group, live, windows, due.eval and (eval_fn, state, eval_data))
                state = reset_fn(state)
            progress.resume()
            if due.log:  # Rows before the save: a kill between the two then costs no row.
                _write_rows(group, live, records, done, progress.update(done), run_start)
            progress.pause()
            if due.eval:
                _after_eval(group, live, state, records, done, model, sample_rngs)
            stopping = due.eval and all(run.patience_exhausted(done) for _, run in live)
            if due.save or stopping:
                for i, run in live:
                    run.ckpt.save(done, _items(group, state, i), meta=run.meta_for(done))
            progress.resume()
            if stopping:
                _stop_early(run_list, done)
                break
            if preempted:
                logging.warning(
                    "Preemption signal: saved step %d; exiting cleanly (rerun to resume).", done
                )
                for run in run_list:
                    run.summary["preempted"] = True
                break
    finally:
        stop.uninstall()
    return state


def _compile_for_loop(group, datas, state, fns, start, dropout_rngs):
    """The eval batches, and the train and eval steps compiled for them ahead of the loop."""
    step_fn, eval_fn, _ = fns
    process, processes = jax.process_index(), jax.process_count()
    eval_data = [
        group.global_batch(batches)
        for batches in zip(*[d.eval_batches(process, processes) for d in datas], strict=True)
    ]
    if start < group.configs[0].train.num_steps:
        first = group.global_batch([d.train_batch(start, process, processes) for d in datas])
        step_fn = _compiled("train step", step_fn, state, first, dropout_rngs)
        eval_fn = _compiled("evaluation", eval_fn, state.params, eval_data[0])
    return step_fn, eval_fn, eval_data


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


def _compiled(name: str, jitted, *args):
    """`jitted` compiled ahead of the loop, saying so: it takes seconds to minutes."""
    logging.info("Compiling the %s...", name)
    started = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    logging.info("Compiled the %s in %.1f s.", name, time.perf_counter() - started)
    return compiled


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


def _records(group, live, windows, evaluation) -> dict:
    """Each live run's row: its train window and, given (eval_fn, state, batches), the val loss."""
    records = {
        i: steps.window_record(
            group.host_row(windows, i), classifier=run.config.model.num_classes > 0
        )
        for i, run in live
    }
    if evaluation:
        eval_fn, state, eval_data = evaluation
        sums = _evaluate(eval_fn, steps.eval_params(state), eval_data)
        raw = None if state.ema is None else _evaluate(eval_fn, state.params, eval_data)
        for i, _ in live:
            records[i].update(_val_record(group.host_row(sums, i)))
            if raw is not None:  # The averaged weights' gain, visible beside them.
                raw_loss = _val_record(group.host_row(raw, i))["val_loss"]
                records[i]["val_loss_raw"] = raw_loss
                records[i]["val_bpb_raw"] = metric_logging.bits_per_byte(raw_loss)
    return records


def _evaluate(eval_fn, params, eval_data) -> dict:
    """The summed eval sums of `params` over every eval batch, fetched once."""
    return jax.device_get(
        jax.tree.map(
            lambda *x: jnp.sum(jnp.stack(x), axis=0), *[eval_fn(params, b) for b in eval_data]
        )
    )


def _val_record(sums: dict) -> dict:
    out = {"val_loss": float(sums["loss_sum"] / sums["weight"])}
    out["val_bpb"] = metric_logging.bits_per_byte(out["val_loss"])
    if "correct" in sums:
        out["val_accuracy"] = float(sums["correct"] / sums["weight"])
    return out


def _write_rows(group, live, records, done, rates, run_start) -> None:
    for i, run in live:
        record = records[i]
        record["tokens_per_sec"] = rates["tokens_per_sec"] / group.size
        record["wall_time"] = run.wall_offset + time.perf_counter() - run_start
        run.write(done, record)
        if run.is_main:
            line = metric_logging.progress_line(done, run.config.train.num_steps, record, rates)
            logging.info("%s%s", line, _tag(run, group))


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
