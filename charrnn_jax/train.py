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
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from flax.training import train_state

from charrnn_jax import (
    checkpointing,
    config_lib,
    input_pipeline,
    metric_logging,
    models,
    parallel,
    paths,
    sampling,
)
from charrnn_jax.errors import NonFiniteLossError, UserError


class TrainState(train_state.TrainState):
    pass


def make_optimizer(
    train_config: ml_collections.ConfigDict, *, learning_rate=None, grad_clip_norm=None
):
    """Adam (Keras's epsilon by default), optional global-norm clipping and warmup+cosine.

    `learning_rate` and `grad_clip_norm` replace the config's values; a vmapped sweep
    passes them as traced per-variant scalars (the optimizer state does not depend on them).
    """
    t = train_config
    peak = t.learning_rate if learning_rate is None else learning_rate
    clip = t.grad_clip_norm if grad_clip_norm is None else grad_clip_norm
    if t.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, peak, max(t.warmup_steps, 1), t.num_steps
        )
    elif t.warmup_steps:
        schedule = optax.join_schedules(
            [
                optax.linear_schedule(0.0, peak, t.warmup_steps),
                optax.constant_schedule(peak),
            ],
            [t.warmup_steps],
        )
    else:
        schedule = optax.constant_schedule(peak)
    parts = [optax.clip_by_global_norm(clip)] if t.grad_clip_norm > 0 else []
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


def _logits_and_labels(apply_fn, params, batch, **kwargs):
    """The logits and the batch that scores them.

    Language models keep their logits time-major, as the model computes them, and the
    small integer targets and weights are transposed instead: transposing the largest
    activation (and its gradient) costs more than the loss needs.
    """
    language_model = "targets" in batch
    logits, _ = apply_fn(
        {"params": params},
        batch["inputs"],
        lengths=batch.get("lengths"),
        time_major_logits=language_model,
        **kwargs,
    )
    if language_model:
        batch = {key: batch[key].T for key in ("targets", "weights") if key in batch}
    return logits, batch


def train_step(state: TrainState, batch, dropout_rng, *, schedule):
    """One Adam step on a global batch. Returns the new state and on-device metrics."""
    rng = jax.random.fold_in(dropout_rng, state.step)

    def loss_fn(params):
        logits, scored = _logits_and_labels(
            state.apply_fn, params, batch, train=True, rngs={"dropout": rng}
        )
        sums = loss_sums(logits, scored)
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


VMAPPED_HPARAMS = ("learning_rate", "grad_clip_norm")  # Traced per variant in the step.
VMAPPABLE_KEYS = ("seed", *(f"train.{key}" for key in VMAPPED_HPARAMS))


def vmapped_train_step(states, batches, dropout_rngs, hparams, *, train_config):
    """train_step for K stacked variants that differ only in VMAPPABLE_KEYS.

    Args:
      states: a TrainState whose leaves have a leading variant axis K.
      batches: the variants' batches, [K, B, ...].
      dropout_rngs: [K] keys.
      hparams: {'learning_rate': [K], 'grad_clip_norm': [K]} float32.
    """

    def one(state, batch, rng, hp):
        tx, schedule = make_optimizer(train_config, **hp)
        new_state, metrics = train_step(state.replace(tx=tx), batch, rng, schedule=schedule)
        return new_state.replace(tx=state.tx), metrics  # No traced optimizer escapes.

    return jax.vmap(one)(states, batches, dropout_rngs, hparams)


def eval_step(params, batch, *, apply_fn):
    return loss_sums(*_logits_and_labels(apply_fn, params, batch))


def _eval_sums(eval_fn, params, batches) -> dict:
    """Summed loss weights over fixed batches: one host fetch for all of them."""
    return jax.device_get(
        jax.tree.map(
            lambda *x: jnp.sum(jnp.stack(x), axis=0),
            *[eval_fn(params, batch) for batch in batches],
        )
    )


def _val_record(sums: dict) -> dict:
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


def prepare_workdir(workdir) -> epath.Path:
    workdir = paths.workdir_path(workdir)
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


class _Run:
    """One run's outputs: checkpoints, metric streams and host-side metrics since the last record.

    A plain run has one; a vmapped sweep one per variant, each a normal workdir that can
    be sampled from or resumed on its own.
    """

    def __init__(self, config, workdir: epath.Path):
        self.config = config
        self.workdir = workdir
        self.ckpt = checkpointing.Checkpointer(workdir, max_to_keep=config.train.max_to_keep)
        self.host: list[dict] = []
        self.failed: str | None = None  # Set when a vmapped variant diverges.
        self.jsonl = self.tb = None
        self.wall_offset = 0.0
        self.summary = {
            "resumed_from": None,
            "preempted": False,
            "failed": None,
            "train_loss": None,
            "val_loss": None,
        }

    def open_logs(self, start_step: int) -> None:
        config_lib.save(self.config, self.workdir / "config.json")
        self.jsonl = metric_logging.JsonlWriter(
            self.workdir / metric_logging.METRICS_FILE, start_step
        )
        self.wall_offset = self.jsonl.wall_time_offset
        self.tb = metric_logging.TensorBoardWriter(self.workdir / "tensorboard")

    def last_good(self) -> str:
        latest = self.ckpt.latest_step()
        return f"step {latest} in {self.ckpt.directory}" if latest is not None else "none"

    def add(self, step: int, metrics: dict) -> None:
        """Keeps one step's fetched metrics; raises on the first non-finite step."""
        if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
            raise NonFiniteLossError(
                f"Loss or grad norm became non-finite at step {step} (loss "
                f"{metrics['loss']}, grad norm {metrics['grad_norm']}); nothing was saved "
                f"after it. Last good checkpoint: {self.last_good()}."
            )
        self.host.append(metrics)

    def window_summary(self) -> dict:
        """Means since the last record; empties the window."""
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

    def close(self) -> None:
        self.ckpt.wait_until_finished()
        self.ckpt.close()
        if self.jsonl:
            self.jsonl.close()
            self.tb.close()


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


def check_vmappable(configs) -> None:
    """Variants trained in one vmapped program may differ only in VMAPPABLE_KEYS."""
    flat = [config_lib.flatten(c) for c in configs]
    for key in flat[0]:
        if key in VMAPPABLE_KEYS:
            continue
        values = {repr(f.get(key)) for f in flat}
        if len(values) > 1:
            raise UserError(
                f"A vmapped sweep's variants may differ only in {', '.join(VMAPPABLE_KEYS)}; "
                f"{key} takes the values {sorted(values)}. Run those as separate sweeps."
            )
    if len({c.train.grad_clip_norm > 0 for c in configs}) > 1:
        raise UserError("A vmapped sweep needs train.grad_clip_norm > 0 in all variants or none.")


def _restore_all(runs, abstract_items):
    """Every run restored at one common step: (step or None, [restored items per run])."""
    restored = [run.ckpt.restore(abstract_items) for run in runs]
    steps = [step for step, _ in restored]
    if len(set(steps)) == 1:
        return steps[0], [items for _, items in restored]
    if None in steps:
        raise UserError(
            "The variants' workdirs hold checkpoints at different steps ("
            + ", ".join(f"{run.workdir.name}: {s}" for run, s in zip(runs, steps, strict=True))
            + "); resume them with the same variants, or move the odd ones away."
        )
    common = min(steps)
    logging.warning("Variants are at different steps %s; resuming all from %d.", steps, common)
    return common, [
        items if step == common else run.ckpt.restore(abstract_items, step=common)[1]
        for run, (step, items) in zip(runs, restored, strict=True)
    ]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *, devices=None) -> dict:
    """Trains until config.train.num_steps, resuming from the workdir's latest checkpoint.

    Returns a summary: final step, last train/val loss, the step resumed from, whether
    the run stopped early on a preemption signal, and the final state and model.
    """
    return _train([config], [workdir], devices=devices, vmapped=False)[0]


def train_vmapped(configs, workdirs, *, devices=None) -> list[dict]:
    """Trains K variants in one program: jax.vmap over their stacked states.

    The variants may differ only in VMAPPABLE_KEYS (seed, learning rate, clipping); each
    gets exactly the init, batches and dropout of a plain run of its config, and its own
    workdir (checkpoints, metrics.jsonl, TensorBoard). A variant whose loss becomes
    non-finite is marked failed and stops writing; the others go on.

    Returns one summary per variant (as train_and_evaluate's, with 'failed' set to the
    error for a diverged variant).
    """
    if len(configs) != len(workdirs) or not configs:
        raise ValueError("train_vmapped needs one workdir per config, and at least one.")
    return _train(list(configs), list(workdirs), devices=devices, vmapped=True)


def _variant_keys(configs, fold: int, repl, vmapped: bool):
    """fold_in(key(seed), fold) for the run, or stacked for every variant; global arrays."""
    if not vmapped:
        seed = configs[0].seed
        return jax.jit(lambda: jax.random.fold_in(jax.random.key(seed), fold), out_shardings=repl)()
    seeds = jnp.array([c.seed for c in configs], jnp.int32)  # As jit sees a Python int.
    return jax.jit(
        jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), fold)), out_shardings=repl
    )(seeds)


def _restore_or_init(runs, init, init_keys, repl, *, vmapped: bool):
    """The (stacked) state at the runs' common checkpoint step, or freshly initialised.

    Returns (state, state_sharding, start_step).
    """
    abstract_one = jax.eval_shape(init, jax.random.key(0))
    abstract_items = {
        item: checkpointing.abstract_like(
            getattr(abstract_one, item), jax.tree.map(lambda _: repl, getattr(abstract_one, item))
        )
        for item in checkpointing.ITEMS
    }
    start_step, restored = _restore_all(runs, abstract_items)
    init_fn = jax.vmap(init) if vmapped else init
    abstract_state = jax.eval_shape(init_fn, init_keys)
    state_sharding = jax.tree.map(lambda _: repl, abstract_state)
    if start_step is None:
        return jax.jit(init_fn, out_shardings=state_sharding)(init_keys), state_sharding, 0
    logging.info("Resumed from checkpoint step %d.", start_step)
    items = {}
    for item in checkpointing.ITEMS:
        trees = [r[item] for r in restored]
        items[item] = (
            jax.jit(
                lambda *trees: jax.tree.map(lambda *x: jnp.stack(x), *trees),
                out_shardings=getattr(state_sharding, item),
            )(*trees)
            if vmapped
            else trees[0]
        )
    step_array = jax.jit(
        lambda: jnp.full(abstract_state.step.shape, start_step, jnp.int32),
        out_shardings=state_sharding.step,
    )()
    for run in runs:
        run.summary["resumed_from"] = start_step
    return abstract_state.replace(step=step_array, **items), state_sharding, start_step


def _step_functions(
    configs, model, schedule, state_sharding, data_sharding, repl, *, vmapped: bool
):
    """The jitted train and eval steps, sharded and donating the state."""
    eval_one = functools.partial(eval_step, apply_fn=model.apply)
    if vmapped:
        hparams = jax.device_put(
            {
                key: jnp.array([c.train[key] for c in configs], jnp.float32)
                for key in VMAPPED_HPARAMS
            },
            repl,
        )
        train_fn = functools.partial(
            vmapped_train_step, hparams=hparams, train_config=configs[0].train
        )
        eval_one = jax.vmap(eval_one)
    else:
        train_fn = functools.partial(train_step, schedule=schedule)
    step_fn = jax.jit(
        train_fn,
        in_shardings=(state_sharding, data_sharding, repl),
        out_shardings=(state_sharding, repl),
        donate_argnums=0,
    )
    eval_fn = jax.jit(
        eval_one, in_shardings=(state_sharding.params, data_sharding), out_shardings=repl
    )
    return step_fn, eval_fn


def _train(configs, workdirs, *, devices, vmapped: bool) -> list[dict]:
    for config in configs:
        config_lib.validate(config)
    if vmapped:
        check_vmappable(configs)
    config, num_variants = configs[0], len(configs)
    t = config.train
    runs = [_Run(c, prepare_workdir(w)) for c, w in zip(configs, workdirs, strict=True)]
    pipelines = {}
    for c in configs:  # Batches depend on the seed only; share a pipeline per seed.
        if c.seed not in pipelines:
            pipelines[c.seed] = load_data(c)
    datas = [pipelines[c.seed] for c in configs]
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_divides(t.batch_size, mesh)
    process_index, process_count = jax.process_index(), jax.process_count()
    is_main = process_index == 0

    model = models.from_config(config.model)
    tx, schedule = make_optimizer(t)
    repl = parallel.replicated(mesh)
    data_sharding = parallel.data_sharded(mesh, variant_axis=vmapped)
    init = functools.partial(create_train_state, model=model, tx=tx, seq_len=config.data.seq_len)
    init_keys = _variant_keys(configs, 0, repl, vmapped)
    state, state_sharding, start_step = _restore_or_init(
        runs, init, init_keys, repl, vmapped=vmapped
    )
    if start_step >= t.num_steps:
        logging.info("Checkpoint step %d already reaches num_steps=%d.", start_step, t.num_steps)
    step_fn, eval_fn = _step_functions(
        configs, model, schedule, state_sharding, data_sharding, repl, vmapped=vmapped
    )
    select = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree), out_shardings=repl)

    def variant(tree, i):
        """Variant i's slice of a stacked tree (the tree itself for a plain run)."""
        return select(tree, i) if vmapped else tree

    def global_batch(local_batches):
        """One batch per variant (process-local) -> one global array, stacked if vmapped."""
        if not vmapped:
            return parallel.global_batch(local_batches[0], mesh)
        stacked = jax.tree.map(lambda *x: np.stack(x), *local_batches)
        return parallel.global_batch(stacked, mesh, variant_axis=True)

    eval_data = [
        global_batch(batches)
        for batches in zip(
            *[d.eval_batches(process_index, process_count) for d in datas], strict=True
        )
    ]
    # Built by jit so that they are global arrays in multi-process runs too.
    dropout_rngs = _variant_keys(configs, 1, repl, vmapped)
    sample_rngs = [jax.random.fold_in(jax.random.key(c.seed), 2) for c in configs]

    if is_main:
        for run in runs:
            run.open_logs(start_step)
        logging.info(
            "Devices: %d global, %d local, process %d of %d. Model: %s params%s.",
            jax.device_count(),
            jax.local_device_count(),
            process_index,
            process_count,
            f"{count_params(state.params) // num_variants:,}",
            f", {num_variants} vmapped variants" if vmapped else "",
        )
    run_start = time.perf_counter()
    progress = metric_logging.Progress(
        start_step=start_step,
        num_steps=t.num_steps,
        tokens_per_step=num_variants * t.batch_size * config.data.seq_len,
    )
    pending = []  # (step, on-device metrics) until the next log, eval or save step.
    stop = _StopFlag().install()

    def fetch_metrics():
        """Moves pending metrics to each run; a diverged run raises (plain) or is marked failed."""
        fetched = jax.device_get([m for _, m in pending])
        for i, run in enumerate(runs):
            if run.failed:
                continue
            try:
                for (step, _), metrics in zip(pending, fetched, strict=True):
                    run.add(step, _host_row(metrics, i) if vmapped else metrics)
            except NonFiniteLossError as e:
                if not vmapped:
                    raise
                run.failed = run.summary["failed"] = str(e)
                logging.error("Variant %s failed: %s", run.workdir.name, e)
        pending.clear()

    try:
        for step in range(start_step, t.num_steps):
            local = [d.train_batch(step, process_index, process_count) for d in datas]
            state, metrics = step_fn(state, global_batch(local), dropout_rngs)
            done = step + 1
            pending.append((done, metrics))
            is_last = done == t.num_steps
            preempted = stop.event.is_set() or runs[0].ckpt.reached_preemption(done)
            log_now = done % t.log_every == 0 or is_last or preempted
            eval_now = done % t.eval_every == 0 or is_last
            save_now = is_last or preempted or done % t.checkpoint_every == 0
            if not (log_now or eval_now or save_now):
                continue
            fetch_metrics()  # Raises (or marks a variant failed) before any save of it.
            live = [(i, run) for i, run in enumerate(runs) if not run.failed]
            if not live:
                logging.error("Every variant diverged; stopping at step %d.", done)
                break
            progress.pause()
            records = {i: {"step": done} for i, _ in live}
            if eval_now:
                sums = _eval_sums(eval_fn, state.params, eval_data)
                for i, run in live:
                    record = _val_record(_host_row(sums, i) if vmapped else sums)
                    records[i].update(record)
                    run.summary["val_loss"] = record["val_loss"]
                    run.summary["val_accuracy"] = record.get("val_accuracy")
            if save_now:
                for i, run in live:
                    run.ckpt.save(done, variant(state.params, i), variant(state.opt_state, i))
            if is_main and eval_now and config.sample.length and not model.num_classes:
                for i, run in live:
                    text = generate_text(
                        variant(state.params, i),
                        model,
                        run.config,
                        jax.random.fold_in(sample_rngs[i], done),
                    )
                    logging.info("Sample at step %d%s:\n%s", done, _tag(run, vmapped), text)
                    run.tb.write_text("sample", text, done)
            progress.resume()
            if log_now or eval_now:
                rates = progress.update(done)
                for i, run in live:
                    record = records[i]
                    record.update(run.window_summary())
                    run.summary["train_loss"] = record.get("train_loss", run.summary["train_loss"])
                    record["tokens_per_sec"] = rates["tokens_per_sec"] / num_variants
                    record["wall_time"] = run.wall_offset + time.perf_counter() - run_start
                    if is_main:
                        run.jsonl.write(record)
                        run.tb.write(record)
                        logging.info(
                            "%s%s",
                            metric_logging.progress_line(done, t.num_steps, record, rates),
                            _tag(run, vmapped),
                        )
            if preempted:
                logging.warning(
                    "Preemption signal: saved step %d; exiting cleanly (rerun to resume).", done
                )
                for run in runs:
                    run.summary["preempted"] = True
                break
    finally:
        stop.uninstall()
        for run in runs:
            run.close()
    final_step = int(np.max(jax.device_get(state.step)))
    summaries = []
    for i, run in enumerate(runs):
        summary = dict(run.summary, final_step=final_step, model=model)
        summary["state"] = (
            state.replace(
                step=variant(state.step, i),
                params=variant(state.params, i),
                opt_state=variant(state.opt_state, i),
            )
            if vmapped
            else state
        )
        summaries.append(summary)
    return summaries


def _host_row(tree, i: int):
    """Variant i of fetched (numpy) metrics."""
    return jax.tree.map(lambda x: x[i], tree)


def _tag(run: _Run, vmapped: bool) -> str:
    return f" [{run.workdir.name}]" if vmapped else ""


def count_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
