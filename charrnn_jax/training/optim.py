"""The optimizer: Adam (optax's, or Keras's exact formula), clipping and the LR schedule.

Kept apart from the loop so that a vmapped sweep can rebuild it with traced per-variant
learning rates and clip norms (steps.vmapped_train_step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from charrnn_jax import config_lib


def make_optimizer(
    train_config: config_lib.TrainConfig, *, learning_rate=None, grad_clip_norm=None
):
    """Adam (Keras's epsilon by default), optional global-norm clipping and warmup+cosine.

    `learning_rate` and `grad_clip_norm` replace the config's values; a vmapped sweep
    passes them as traced per-variant scalars (the optimizer state does not depend on them).
    """
    t = train_config
    peak = t.learning_rate if learning_rate is None else learning_rate
    clip = t.grad_clip_norm if grad_clip_norm is None else grad_clip_norm
    if t.schedule == "cosine":
        schedule = warmup_cosine(peak, max(t.warmup_steps, 1), t.num_steps, t.end_learning_rate)
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
    adam = (
        scale_by_keras_adam(b2=t.adam_b2, eps=t.adam_eps) if t.optimizer == "keras_adam" else None
    )
    if t.weight_decay > 0:
        # Decoupled weight decay (AdamW: Loshchilov and Hutter 2019, Algorithm 2, line 12)
        # on the matrices only; biases, norms and the LRU's vectors are not decayed.
        parts += [
            adam or optax.scale_by_adam(b2=t.adam_b2, eps=t.adam_eps),
            optax.add_decayed_weights(t.weight_decay, mask=_matrices),
            optax.scale_by_learning_rate(schedule),
        ]
    elif adam:
        parts += [adam, optax.scale_by_learning_rate(schedule)]
    else:  # Without decay, optax.adam's own state tree (older checkpoints restore).
        parts.append(optax.adam(schedule, b2=t.adam_b2, eps=t.adam_eps))
    return optax.chain(*parts), schedule


def warmup_cosine(peak, warmup_steps: int, num_steps: int, end_value: float):
    """optax.warmup_cosine_decay_schedule from 0, also for a traced peak.

    optax asks `peak_value == 0.0` in Python, which a vmapped sweep's traced per-variant
    rate cannot answer (TracerBoolConversionError). A Python peak takes optax's own
    schedule, so plain runs keep their exact rates; a traced one takes the same two
    pieces with that test done by jnp.where.
    """
    if isinstance(peak, int | float):
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup_steps, num_steps, end_value=end_value
        )
    alpha = jnp.where(peak == 0.0, 0.0, end_value / peak)  # optax's end/peak ratio.
    warmup = optax.linear_schedule(0.0, peak, warmup_steps)
    cosine = optax.cosine_decay_schedule(peak, num_steps - warmup_steps, alpha=alpha)
    return optax.join_schedules([warmup, cosine], [warmup_steps])


def _matrices(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


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
