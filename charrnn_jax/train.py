"""Training: state creation, the jitted train/eval steps, and the loop.

Data parallel over every device: a 1-D 'data' mesh, the global batch sharded on it and
the state replicated; XLA inserts the gradient all-reduce. Per-step randomness comes
from fold_in(rng, step) and batches are a pure function of the step, so a resumed run
replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from charrnn_jax import (
    checkpointing,
    config_lib,
    input_pipeline,
    metric_logging,
    models,
    parallel,
    sampling,
)
from charrnn_jax.errors import NonFiniteLossError, UserError


class TrainState(train_state.TrainState):
    pass


def make_optimizer(train_config: ml_collections.ConfigDict):
    """Adam (Keras's epsilon by default), optional global-norm clipping and warmup+cosine."""
    t = train_config
    if t.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, t.learning_rate, max(t.warmup_steps, 1), t.num_steps
        )
    elif t.warmup_steps:
        schedule = optax.join_schedules(
            [
                optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps),
                optax.constant_schedule(t.learning_rate),
            ],
            [t.warmup_steps],
        )
    else:
        schedule = optax.constant_schedule(t.learning_rate)
    parts = [optax.clip_by_global_norm(t.grad_clip_norm)] if t.grad_clip_norm > 0 else []
    if t.optimizer == "keras_adam":
        parts += [scale_by_keras_adam(eps=t.adam_eps), optax.scale_by_learning_rate(schedule)]
    else:
        parts.append(optax.adam(schedule, eps=t.adam_eps))
    return optax.chain(*parts), schedule


def scale_by_keras_adam(b1=0.9, b2=0.999, eps=1e-7) -> optax.GradientTransformation:
    """Adam exactly as Keras computes it, for like-for-like comparisons.

    Keras adds eps to sqrt(v) before bias correction (m * sqrt(1-b2^t)/(1-b1^t) /
    (sqrt(v) + eps)); optax adds it after (m_hat / (sqrt(v_hat) + eps)). The two differ
    when sqrt(v) is near eps, i.e. for rarely updated params early in training.
    """

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

    def update(grads, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, grads)
        nu = jax.tree.map(lambda v, g: v + (g * g - v) * (1 - b2), state.nu, grads)
        count = state.count + 1
        t = count.astype(jnp.float32)
        alpha = jnp.sqrt(1 - b2**t) / (1 - b1**t)
        updates = jax.tree.map(lambda m, v: m * alpha / (jnp.sqrt(v) + eps), mu, nu)
        return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def initial_params(config: ml_collections.ConfigDict):
    """The params a fresh run with this config starts from (for parity comparisons)."""
    model = models.from_config(config.model)
    return model.init(
        jax.random.fold_in(jax.random.key(config.seed), 0),
        jnp.zeros((1, config.data.seq_len), jnp.int32),
    )["params"]


def create_train_state(rng, *, model: models.CharRNN, tx, seq_len: int) -> TrainState:
    params = model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    # An explicit int32 step: restored states then have the identical type.
    return state.replace(step=jnp.zeros([], jnp.int32))


def cross_entropy(logits, targets):
    """Mean softmax cross-entropy in nats. logits [B, T, V] float32, targets [B, T] int."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def loss_sums(logits, batch) -> dict:
    """Weighted sums for the batch's task; the task is read off the batch's keys.

    Language model batches have 'targets' (and optionally per-token 'weights', 0 on
    padding); classification batches have 'labels' and per-row 'weights'.
    """
    labels = batch["labels"] if "labels" in batch else batch["targets"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    weights = batch.get("weights", jnp.ones_like(ce))
    sums = {"loss_sum": jnp.sum(ce * weights), "weight": jnp.sum(weights)}
    if "labels" in batch:
        sums["correct"] = jnp.sum((jnp.argmax(logits, -1) == labels) * weights)
    return sums


def _apply(apply_fn, params, batch, **kwargs):
    logits, _ = apply_fn(
        {"params": params}, batch["inputs"], lengths=batch.get("lengths"), **kwargs
    )
    return logits


def train_step(state: TrainState, batch, dropout_rng, *, schedule):
    """One Adam step on a global batch. Returns the new state and on-device metrics."""
    rng = jax.random.fold_in(dropout_rng, state.step)

    def loss_fn(params):
        logits = _apply(state.apply_fn, params, batch, train=True, rngs={"dropout": rng})
        sums = loss_sums(logits, batch)
        return sums["loss_sum"] / jnp.maximum(sums["weight"], 1.0), sums

    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": schedule(state.step),
    }
    if "correct" in sums:
        metrics["accuracy"] = sums["correct"] / jnp.maximum(sums["weight"], 1.0)
    return state.apply_gradients(grads=grads), metrics


def eval_step(params, batch, *, apply_fn):
    return loss_sums(_apply(apply_fn, params, batch), batch)


def evaluate(eval_fn, params, batches) -> dict:
    """Val loss (and accuracy) over fixed batches: one host fetch for all of them."""
    sums = jax.device_get(
        jax.tree.map(
            lambda *x: jnp.sum(jnp.stack(x)), *[eval_fn(params, batch) for batch in batches]
        )
    )
    out = {"val_loss": float(sums["loss_sum"] / sums["weight"])}
    out["val_bpb"] = metric_logging.bits_per_byte(out["val_loss"])
    if "correct" in sums:
        out["val_accuracy"] = float(sums["correct"] / sums["weight"])
    return out


def load_data(config: ml_collections.ConfigDict):
    pipeline = input_pipeline.build(
        config.data,
        seed=config.seed,
        global_batch=config.train.batch_size,
        num_eval_batches=config.train.eval_batches,
    )
    logging.info("Data: %s", type(pipeline).__name__)
    return pipeline


def prepare_workdir(workdir) -> pathlib.Path:
    workdir = pathlib.Path(workdir).expanduser()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_test.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"Workdir {workdir} is not writable: {e.strerror or e}.") from None
    return workdir


class _StopFlag:
    """Set by SIGTERM (or SIGINT); checked once per step without any device sync."""

    def __init__(self):
        self.event = threading.Event()
        self._previous = {}

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self

    def uninstall(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _MetricWindow:
    """Per-step metrics stay on the device until a log, eval or save step fetches them."""

    def __init__(self):
        self.pending: list[tuple[int, dict]] = []
        self.host: list[dict] = []

    def add(self, step: int, metrics) -> None:
        self.pending.append((step, metrics))

    def fetch(self, last_good_checkpoint: str) -> None:
        """Moves pending metrics to the host, failing on the first non-finite step."""
        fetched = jax.device_get([m for _, m in self.pending])
        for (step, _), metrics in zip(self.pending, fetched, strict=True):
            if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                raise NonFiniteLossError(
                    f"Loss or grad norm became non-finite at step {step} (loss "
                    f"{metrics['loss']}, grad norm {metrics['grad_norm']}); nothing was saved "
                    f"after it. Last good checkpoint: {last_good_checkpoint}."
                )
            self.host.append(metrics)
        self.pending = []

    def summary(self) -> dict:
        """Means since the last summary; empties the window."""
        if not self.host:
            return {}
        out = {
            "train_loss": float(np.mean([m["loss"] for m in self.host])),
            "grad_norm": float(np.mean([m["grad_norm"] for m in self.host])),
            "learning_rate": float(self.host[-1]["learning_rate"]),
        }
        out["train_bpb"] = metric_logging.bits_per_byte(out["train_loss"])
        if "accuracy" in self.host[0]:
            out["train_accuracy"] = float(np.mean([m["accuracy"] for m in self.host]))
        self.host = []
        return out


def generate_text(params, model, config, rng) -> str:
    """A short sample for the logs; params are gathered to the host first."""
    prefix = input_pipeline.prompt_prefix(config.data.mode)
    prompt = config.sample.prompt.encode("utf-8")
    tokens, lengths = sampling.sample(
        jax.device_get(params),
        model,
        [prefix + prompt],
        length=config.sample.length,
        temperature=config.sample.temperature,
        rng=rng,
        stop_byte=prefix[0] if prefix else None,  # One example, e.g. one dinosaur name.
    )
    return input_pipeline.decode(prompt + tokens[0, : lengths[0]].tobytes())


def _restore_or_init(config, ckpt, init_fn, state_sharding, abstract_state):
    abstract = {
        item: checkpointing.abstract_like(
            getattr(abstract_state, item), getattr(state_sharding, item)
        )
        for item in checkpointing.ITEMS
    }
    step, restored = ckpt.restore(abstract)
    rng = jax.random.key(config.seed)
    if step is None:
        return init_fn(jax.random.fold_in(rng, 0)), 0
    logging.info("Resumed from checkpoint step %d in %s.", step, ckpt.directory)
    step_array = jax.jit(lambda: jnp.int32(step), out_shardings=state_sharding.step)()
    return abstract_state.replace(
        step=step_array, params=restored["params"], opt_state=restored["opt_state"]
    ), step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *, devices=None) -> dict:
    """Trains until config.train.num_steps, resuming from the workdir's latest checkpoint.

    Returns a summary: final step, last train/val loss, the step resumed from and
    whether the run stopped early on a preemption signal.
    """
    config_lib.validate(config)
    workdir = prepare_workdir(workdir)
    data = load_data(config)
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_divides(config.train.batch_size, mesh)
    t = config.train
    process_index, process_count = jax.process_index(), jax.process_count()
    is_main = process_index == 0

    model = models.from_config(config.model)
    tx, schedule = make_optimizer(t)
    repl, data_sharding = parallel.replicated(mesh), parallel.data_sharded(mesh)
    init = functools.partial(create_train_state, model=model, tx=tx, seq_len=config.data.seq_len)
    abstract_state = jax.eval_shape(init, jax.random.key(0))
    state_sharding = jax.tree.map(lambda _: repl, abstract_state)
    init_fn = jax.jit(init, out_shardings=state_sharding)
    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=t.max_to_keep)
    state, start_step = _restore_or_init(config, ckpt, init_fn, state_sharding, abstract_state)
    resumed_from = start_step or None
    if start_step >= t.num_steps:
        logging.info("Checkpoint step %d already reaches num_steps=%d.", start_step, t.num_steps)

    step_fn = jax.jit(
        functools.partial(train_step, schedule=schedule),
        in_shardings=(state_sharding, data_sharding, repl),
        out_shardings=(state_sharding, repl),
        donate_argnums=0,
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, apply_fn=model.apply),
        in_shardings=(state_sharding.params, data_sharding),
        out_shardings=repl,
    )
    eval_data = [
        parallel.global_batch(b, mesh) for b in data.eval_batches(process_index, process_count)
    ]
    rng = jax.random.key(config.seed)
    # Built by jit so that it is a global array in multi-process runs too.
    dropout_rng = jax.jit(lambda: jax.random.fold_in(rng, 1), out_shardings=repl)()
    sample_rng = jax.random.fold_in(rng, 2)

    jsonl = tb = None
    if is_main:
        config_lib.save(config, workdir / "config.json")
        jsonl = metric_logging.JsonlWriter(workdir / metric_logging.METRICS_FILE, start_step)
        tb = metric_logging.TensorBoardWriter(workdir / "tensorboard")
        logging.info(
            "Devices: %d global, %d local, process %d of %d. Model: %s params.",
            jax.device_count(),
            jax.local_device_count(),
            process_index,
            process_count,
            f"{count_params(state.params):,}",
        )
    wall_offset = jsonl.wall_time_offset if jsonl else 0.0
    run_start = time.perf_counter()
    progress = metric_logging.Progress(
        start_step=start_step,
        num_steps=t.num_steps,
        tokens_per_step=t.batch_size * config.data.seq_len,
    )
    window = _MetricWindow()
    stop = _StopFlag().install()
    summary = {
        "resumed_from": resumed_from,
        "preempted": False,
        "train_loss": None,
        "val_loss": None,
    }

    def last_good() -> str:
        latest = ckpt.latest_step()
        return f"step {latest} in {ckpt.directory}" if latest is not None else "none"

    try:
        for step in range(start_step, t.num_steps):
            local = data.train_batch(step, process_index, process_count)
            state, metrics = step_fn(state, parallel.global_batch(local, mesh), dropout_rng)
            done = step + 1
            window.add(done, metrics)
            is_last = done == t.num_steps
            preempted = stop.event.is_set() or ckpt.reached_preemption(done)
            log_now = done % t.log_every == 0 or is_last or preempted
            eval_now = done % t.eval_every == 0 or is_last
            save_now = is_last or preempted or done % t.checkpoint_every == 0
            if not (log_now or eval_now or save_now):
                continue
            window.fetch(last_good())  # Raises before any save of a diverged state.
            progress.pause()
            record = {"step": done}
            if eval_now:
                record.update(evaluate(eval_fn, state.params, eval_data))
                summary["val_loss"] = record["val_loss"]
                summary["val_accuracy"] = record.get("val_accuracy")
            if save_now:
                ckpt.save(done, state.params, state.opt_state)
            if is_main and eval_now and config.sample.length and not model.num_classes:
                text = generate_text(
                    state.params, model, config, jax.random.fold_in(sample_rng, done)
                )
                logging.info("Sample at step %d:\n%s", done, text)
                tb.write_text("sample", text, done)
            progress.resume()
            if log_now or eval_now:
                record.update(window.summary())
                summary["train_loss"] = record.get("train_loss", summary["train_loss"])
                rates = progress.update(done)
                record["tokens_per_sec"] = rates["tokens_per_sec"]
                record["wall_time"] = wall_offset + time.perf_counter() - run_start
                if is_main:
                    jsonl.write(record)
                    tb.write(record)
                    logging.info(metric_logging.progress_line(done, t.num_steps, record, rates))
            if preempted:
                logging.warning(
                    "Preemption signal: saved step %d in %s; exiting cleanly.", done, ckpt.directory
                )
                summary["preempted"] = True
                break
    finally:
        ckpt.wait_until_finished()
        ckpt.close()
        stop.uninstall()
        if is_main:
            jsonl.close()
            tb.close()
    summary["final_step"] = int(jax.device_get(state.step))
    summary["state"] = state
    summary["model"] = model
    return summary


def count_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
