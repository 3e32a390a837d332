"""The train state and the pure step functions the loop jits: train, eval and vmapped train.

The state carries a metric *window*: the running reduction of every train metric since
the last metrics row (sums for means, maxima, last values: store/metric_logging.py's
TRAIN_METRICS, the one place a metric is declared), the step count, and the first step
whose loss, gradient or updated params were non-finite. It stays on the device (no host
sync per step) and is checkpointed with the params, so a resumed run writes exactly the
rows of an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from charrnn_jax import config_lib, models
from charrnn_jax.models import losses
from charrnn_jax.store.metric_logging import TRAIN_METRICS, bits_per_byte
from charrnn_jax.training import optim


class TrainState(train_state.TrainState):
    window: Any = None  # See empty_window.
    carry: Any = None  # data.mode='stream': the recurrent state carried to the next step.
    ema: Any = None  # train.ema_decay > 0: the exponential moving average of the params.
    ema_decay: float = struct.field(pytree_node=False, default=0.0)


def ema_decay_at(decay: float, updates) -> jax.Array:
    """The decay for the next update after `updates` of them: min(decay, (1+n)/(10+n)).

    Polyak averaging (Polyak and Juditsky 1992) as an exponential moving average, with
    TensorFlow's ExponentialMovingAverage warm-up so that early evaluations are not
    dominated by the random initial weights.
    """
    n = jnp.asarray(updates, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))


def update_ema(ema, params, decay):
    """ema + (1 - decay) (params - ema): a constant stays exactly constant."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)


def eval_params(state: TrainState):
    """What evaluation, the best checkpoint and samples use: the averaged weights if any."""
    return state.params if state.ema is None else state.ema


def empty_window() -> dict:
    """Each train metric's running value (0), the step count, and bad_step (0 means every
    step was finite).

    Each leaf is its own buffer, so a state built outside jit can still be donated.
    """
    window = {m.window_key: jnp.zeros([], jnp.float32) for m in TRAIN_METRICS}
    return {**window, "steps": jnp.zeros([], jnp.int32), "bad_step": jnp.zeros([], jnp.int32)}


def _accumulate(window: dict, metrics: dict) -> dict:
    """The window after one more step's metrics: each TRAIN_METRICS entry reduced its way
    (a metric the step did not produce, e.g. accuracy of a language model, counts 0)."""
    out = dict(window)
    for m in TRAIN_METRICS:
        value = jnp.asarray(metrics.get(m.source, 0.0), jnp.float32)
        running = window[m.window_key]
        if m.reduce == "mean":
            out[m.window_key] = running + value
        elif m.reduce == "max":
            out[m.window_key] = jnp.where(window["steps"] > 0, jnp.maximum(running, value), value)
        else:  # 'last'
            out[m.window_key] = value
    return out


def reset_window(state: TrainState) -> TrainState:
    """The state with an empty window (or a stack of them, for stacked variants)."""
    return state.replace(window=jax.tree.map(jnp.zeros_like, state.window))


def window_record(window: dict, *, classifier: bool) -> dict:
    """A metrics row's train fields from a fetched (numpy) window; {} for an empty one."""
    steps = int(window["steps"])
    if not steps:
        return {}
    out = {}
    for m in TRAIN_METRICS:
        if m.classifier_only and not classifier:
            continue
        value = float(window[m.window_key])
        out[m.name] = value / steps if m.reduce == "mean" else value
    out["train_bpb"] = bits_per_byte(out["train_loss"])
    return out


def create_train_state(
    rng, *, model: models.CharRNN, tx, seq_len: int, carry_rows: int = 0, ema_decay: float = 0.0
) -> TrainState:
    """A fresh state; carry_rows > 0 (stream mode) adds a zero carry of that many rows;
    ema_decay > 0 adds an average of the params, starting at the params."""
    params = model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
    carry = model.initialize_carry(carry_rows) if carry_rows else None
    ema = jax.tree.map(jnp.copy, params) if ema_decay > 0 else None
    state = TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=tx,
        window=empty_window(),
        carry=carry,
        ema=ema,
        ema_decay=ema_decay,
    )
    # An explicit int32 step: restored states then have the identical type.
    return state.replace(step=jnp.zeros([], jnp.int32))


def initial_params(config: config_lib.RunConfig):
    """The params a fresh run with this config starts from (for parity comparisons)."""
    model = models.CharRNN(config.model)
    return model.init(
        jax.random.fold_in(jax.random.key(config.seed), 0),
        jnp.zeros((1, config.data.seq_len), jnp.int32),
    )["params"]


def count_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _carry_in(state, batch):
    """Stream mode: the carried state, zeroed in rows whose stream starts anew (an epoch)."""
    if state.carry is None:
        return None
    keep = ~batch["reset"]
    return jax.tree.map(lambda c: jnp.where(keep[:, None], c, 0.0), state.carry)


def train_step(state: TrainState, batch, dropout_rng, *, schedule):
    """One Adam step on a global batch. Returns the new state and on-device metrics."""
    rng = jax.random.fold_in(dropout_rng, state.step)

    carry = _carry_in(state, batch)

    def loss_fn(params):
        logits, scored, new_carry = losses.logits_and_labels(
            state.apply_fn, params, batch, carry, train=True, rngs={"dropout": rng}
        )
        sums = losses.loss_sums(logits, scored)
        return sums["loss_sum"] / jnp.maximum(sums["weight"], 1.0), (sums, new_carry)

    (loss, (sums, new_carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": schedule(state.step),
    }
    if "correct" in sums:
        metrics["accuracy"] = sums["correct"] / jnp.maximum(sums["weight"], 1.0)
    new_state = state.apply_gradients(grads=grads)
    if carry is not None:  # Truncated BPTT: the state flows on, its gradient does not.
        new_state = new_state.replace(carry=jax.lax.stop_gradient(new_carry))
    return new_state, metrics


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def windowed_train_step(state: TrainState, batch, dropout_rng, *, schedule):
    """train_step, with its metrics added to the state's window (nothing leaves the device).

    A step is bad if its loss or gradient norm is non-finite or if the update made any
    param non-finite (a huge learning rate does that with a finite loss); the window
    keeps the first bad step so the loop can stop before saving it.
    """
    new_state, metrics = train_step(state, batch, dropout_rng, schedule=schedule)
    done = state.step + 1
    finite = (
        jnp.isfinite(metrics["loss"])
        & jnp.isfinite(metrics["grad_norm"])
        & _all_finite(new_state.params)
    )
    w = state.window
    window = {
        **_accumulate(w, metrics),
        "steps": w["steps"] + 1,
        "bad_step": jnp.where((w["bad_step"] == 0) & ~finite, done, w["bad_step"]),
    }
    if state.ema is not None:
        decay = ema_decay_at(state.ema_decay, state.step)
        new_state = new_state.replace(ema=update_ema(state.ema, new_state.params, decay))
    return new_state.replace(window=window)


VMAPPED_HPARAMS = ("learning_rate", "grad_clip_norm")  # Traced per variant in the step.
VMAPPABLE_KEYS = ("seed", *(f"train.{key}" for key in VMAPPED_HPARAMS))


def vmapped_train_step(states, batches, dropout_rngs, hparams, *, train_config):
    """windowed_train_step for K stacked variants that differ only in VMAPPABLE_KEYS.

    Args:
      states: a TrainState whose leaves have a leading variant axis K.
      batches: the variants' batches, [K, B, ...].
      dropout_rngs: [K] keys.
      hparams: {'learning_rate': [K], 'grad_clip_norm': [K]} float32.
    """

    def one(state, batch, rng, hp):
        tx, schedule = optim.make_optimizer(train_config, **hp)
        new_state = windowed_train_step(state.replace(tx=tx), batch, rng, schedule=schedule)
        return new_state.replace(tx=state.tx)  # No traced optimizer escapes.

    return jax.vmap(one)(states, batches, dropout_rngs, hparams)
