"""The loss of a CharRNN's logits: what the train step minimises and what scoring sums.

One definition for both, so a trained loss and a scored one can never disagree about
padding, weights or the classifier's accuracy (training/steps.py, inference/scoring.py).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


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


def logits_and_labels(apply_fn, params, batch, carry=None, **kwargs):
    """The logits, the batch that scores them, and the new carry.

    Language models keep their logits time-major, as the model computes them, and the
    small integer targets and weights are transposed instead: transposing the largest
    activation (and its gradient) costs more than the loss needs.
    """
    language_model = "targets" in batch
    logits, new_carry = apply_fn(
        {"params": params},
        batch["inputs"],
        carry,
        lengths=batch.get("lengths"),
        time_major_logits=language_model,
        **kwargs,
    )
    if language_model:
        batch = {key: batch[key].T for key in ("targets", "weights") if key in batch}
    return logits, batch, new_carry
