"""The training loop: restore or init, compile, then step until num_steps; what follows a
step when a row, an eval or a save is due is training/due_work.py.

Data parallel over every device: a 1-D 'data' mesh, the global batch sharded on it and
the state replicated; XLA inserts the gradient all-reduce. Per-step randomness comes
from fold_in(rng, step) and batches are a pure function of the step, so a resumed run
replays exactly what an uninterrupted one would have done. A plain run is a group of one
variant (variant_groups.Single); a vmapped sweep trains K at once (variant_groups.Stacked).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from charrnn_jax import config_lib, models
from charrnn_jax.data import pipeline
from charrnn_jax.runtime import machine, parallel
from charrnn_jax.store.workdir import Workdir
from charrnn_jax.training import (
    cadence,
    due_work,
    identity,
    optim,
    profiling,
    run_outputs,
    steps,
    validation,
    variant_groups,
)


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

    This is the training library's door: the experiment's ConfigDict is resolved into
    its typed RunConfig here, once, and only that travels below.
    """
    return _train(
        [config_lib.resolve(config)],
        [workdir],
        variant_groups.Single,
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
    configs = [config_lib.resolve(c) for c in configs]  # The door, as train_and_evaluate.
    variant_groups.check_vmappable(configs)
    return _train(
        list(configs), list(workdirs), variant_groups.Stacked, devices=devices, restart=restart
    )


def load_data(configs: list[config_lib.RunConfig]) -> list:
    """One pipeline per variant; batches depend on the seed only, so seeds share one."""
    pipelines = {}
    for c in configs:
        if c.seed not in pipelines:
            pipelines[c.seed] = pipeline.build(
                c.data,
                seed=c.seed,
                global_batch=c.train.batch_size,
                num_eval_batches=c.train.eval_batches,
                eval_streams=c.eval_streams,
                eval_bytes_per_call=c.eval.bytes_per_call,
            )
    return [pipelines[c.seed] for c in configs]


def _train(
    configs, workdirs, group_type, *, devices, restart: bool, allow=frozenset()
) -> list[dict]:
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
    if config.eval_streams:
        parallel.check_batch_divides(config.eval_streams, mesh, name="eval.streams")
    group = group_type(configs, mesh)
    is_main = jax.process_index() == 0
    opened = []
    try:
        for c, w, change in zip(configs, workdirs, changes, strict=True):
            opened.append(
                run_outputs.Run(c, w, is_main=is_main, changes=change).open(restart=restart)
            )
        setup = _set_up(config, group, opened)
    except BaseException:
        for run in opened:
            run.close()
            run.discard_if_new()
        raise
    try:
        state = _loop(config, group, opened, datas, setup)
    finally:
        for run in opened:
            run.close()
    return _summaries(group, opened, state, setup.model)


class Setup(NamedTuple):
    """What the loop starts from: the restored or fresh state, the model, the group's
    compiled programs, and the first step to train."""

    state: Any
    model: models.CharRNN
    programs: variant_groups.Programs
    start: int


def _set_up(config, group, run_list) -> Setup:
    """Restores or initialises the state and compiles the group's programs."""
    model = models.CharRNN(config.model)
    tx, schedule = optim.make_optimizer(config.train)
    init = functools.partial(
        steps.create_train_state,
        model=model,
        tx=tx,
        seq_len=config.data.seq_len,
        carry_rows=config.carry_rows,
        ema_decay=config.train.ema_decay,
    )
    state, state_sharding, start = group.restore_or_init([r.ckpt for r in run_list], init)
    if start is None:
        for run in run_list:
            run.check_fresh_start()
        start = 0
    for i, run in enumerate(run_list):
        run.summary["resumed_from"] = start or None
        run.start_logs(start)
        run.heal_best(start, functools.partial(group.select, steps.eval_params(state), i))
    if start >= config.train.num_steps:
        logging.info(
            "Checkpoint step %d already reaches num_steps=%d.", start, config.train.num_steps
        )
    programs = group.compile(model, schedule, state_sharding, chunk=config.eval_chunk)
    _log_start(config, group, run_list, state, start)
    return Setup(state, model, programs, start)


def _log_start(config, group, run_list, state, start: int) -> None:
    """One line saying what this command is about to do, and on what."""
    t = config.train
    where = str(run_list[0].workdir.path) + (
        f" and {group.size - 1} more vmapped variants" if group.stacked else ""
    )
    logging.info(
        "Training %s: steps %d to %d, %s params, on %s (%s, process %d of %d); a row "
        "every %d steps, val every %d, a checkpoint every %d.",
        where,
        start,
        t.num_steps,
        f"{steps.count_params(state.params) // group.size:,}",
        machine.describe(jax.devices()),
        f"{jax.device_count()} device" + ("s" if jax.device_count() > 1 else ""),
        jax.process_index(),
        jax.process_count(),
        t.log_every,
        t.eval_every,
        t.checkpoint_every,
    )


def _loop(config, group, run_list, datas, setup: Setup):
    """Steps from setup.start to train.num_steps; due_work does what falls due."""
    t, state, start, programs = config.train, setup.state, setup.start, setup.programs
    pending = any(run.pending for run in run_list)
    if start and not pending and all(run.patience_exhausted(start) for run in run_list):
        # Stopped early before: rerunning trains no further.
        due_work.stop_early(run_list, start)
        return state
    process, processes = jax.process_index(), jax.process_count()
    dropout_rngs = group.keys(1)
    step_fn, val = _compile_for_loop(group, datas, state, programs, start, dropout_rngs, pending)
    stop = cadence.StopFlag().install()
    after = due_work.AfterSteps(group, run_list, setup.model, programs.reset, val, stop, start)
    profiler = profiling.StepProfiler(
        config.profile.steps, run_list[0].workdir, enabled=run_list[0].is_main
    )
    # A first estimate after a few steps, where the first row is still far off.
    first_row = (start // t.log_every + 1) * t.log_every
    probe = start + 5 if first_row - start > 10 and run_list[0].is_main else None
    try:
        if pending and after.complete_pending(state, start):
            return state
        for step in range(start, t.num_steps):
            local = [d.train_batch(step, process, processes) for d in datas]
            profiler.before(step)
            state = step_fn(state, group.global_batch(local), dropout_rngs)
            profiler.after(step, state)
            after.in_flight.add(state.step + 0)  # A copy: the state itself is donated next step.
            done = step + 1
            if done == probe:
                after.first_estimate(state, done, first_row)
            preempted = stop.is_set() or run_list[0].ckpt.reached_preemption(done)
            due = cadence.due(t, done, preempted=preempted)
            if due:
                state, finished = after.step(state, done, due, preempted)
                if finished:
                    break
    finally:
        profiler.stop()
        stop.uninstall()
    return state


def _compile_for_loop(group, datas, state, programs, start, dropout_rngs, pending: bool):
    """The train step and the val pass, compiled for their batches ahead of the loop."""
    process, processes = jax.process_index(), jax.process_count()
    eval_data = [
        group.global_batch(batches)
        for batches in zip(*[d.eval_batches(process, processes) for d in datas], strict=True)
    ]
    c = group.configs[0]
    estimate = c.eval.nanogpt_estimate and pipeline.MODES[c.data.mode].byte_stream
    if estimate and processes > 1:
        logging.warning("eval.nanogpt_estimate is single-process only: not logged here.")
    val = validation.Validation(
        programs,
        eval_data,
        carried=datas[0].eval_carried,
        stoppable=processes == 1,
        nanogpt_tokens=datas[0].val if estimate and processes == 1 else None,
    )
    step_fn = programs.train
    if start < group.configs[0].train.num_steps:
        first = group.global_batch([d.train_batch(start, process, processes) for d in datas])
        step_fn = validation.compile_ahead("train step", programs.train, state, first, dropout_rngs)
    if start < group.configs[0].train.num_steps or pending:
        val.compile(state.params)
    return step_fn, val


def _summaries(group, run_list, state, model) -> list[dict]:
    final_step = int(np.max(jax.device_get(state.step)))
    out = []
    for i, run in enumerate(run_list):
        variant = state.replace(
            step=group.select(state.step, i), **due_work.items_of(group, state, i)
        )
        best_val, best_step = run.best
        out.append(
            dict(
                run.summary,
                final_step=final_step,
                best_val_loss=None if best_val == float("inf") else best_val,
                best_step=best_step or None,
                model=model,
                state=variant,
            )
        )
    return out
