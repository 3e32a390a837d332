"""Dynamic evaluation: the model adapts its weights to the text it has already scored.

Krause, Kahembwe, Murray and Renals 2018, "Dynamic Evaluation of Neural Sequence
Models" (ICML; arXiv:1709.07432). The split is read in order, one segment of `segment`
bytes at a time, the recurrent state (or the Transformer's context) carried on:

    loss_i  = L(s_i; theta_{i-1})                                  (scored first)
    theta_i = theta_{i-1} - lr * grad L(s_i; theta_{i-1}) + decay * (theta_g - theta_{i-1})

with theta_g the trained weights: plain SGD with the paper's decay towards the global
parameters (its "global prior"; the paper's best numbers add an RMS normalisation of
the step, which this does not). Each segment is scored with weights that have seen only
the segments before it, so no byte is trained on before it is scored. It is test-time
adaptation, so it is reported beside the static full-split number, never instead of it.

The whole pass is one jitted lax.scan over segments (no host round trip per segment)
and writes nothing: the checkpoint it starts from is never touched.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from charrnn_jax.data import windows
from charrnn_jax.inference import scoring
from charrnn_jax.models import losses
from charrnn_jax.runtime import parallel


def dynamic_sums(params, batch, carry, *, apply_fn, segment: int, lr: float, decay: float):
    """Per-segment {'loss_sum', 'weight'} of one stream batch [streams, n * segment]."""
    length = batch["inputs"].shape[1]
    pieces = jax.tree.map(
        lambda x: x.reshape(x.shape[0], length // segment, segment).swapaxes(0, 1), batch
    )
    trained = params

    def one_segment(state, piece):
        theta, carry = state

        def loss_fn(p):
            logits, scored, new_carry = losses.logits_and_labels(apply_fn, p, piece, carry)
            sums = losses.loss_sums(logits, scored)
            return sums["loss_sum"] / jnp.maximum(sums["weight"], 1.0), (sums, new_carry)

        (_, (sums, new_carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(theta)
        theta = jax.tree.map(lambda t, g, t0: t - lr * g + decay * (t0 - t), theta, grads, trained)
        return (theta, jax.lax.stop_gradient(new_carry)), sums

    _, sums = jax.lax.scan(one_segment, (params, carry), pieces)
    return sums


def run_settings(config, *, lr=None, decay=None, segment=None) -> dict:
    """{'lr', 'decay', 'segment'}: the run's eval.dynamic keys, each replaced where given
    (evaluate's flags); a segment of 0 is the run's full-split chunk."""
    dyn = config.eval.dynamic
    return {
        "lr": dyn.learning_rate if lr is None else lr,
        "decay": dyn.decay if decay is None else decay,
        "segment": (dyn.segment if segment is None else segment) or config.eval_chunk,
    }


def score_dynamic(
    params,
    model,
    tokens: np.ndarray,
    *,
    segment: int,
    lr: float,
    decay: float,
    streams: int = 1,
) -> dict:
    """Dynamic evaluation of `tokens[1:]` (one stream by default: the split in order).

    Returns {'bytes', 'loss', 'bpb', 'segment_loss_sums', 'segment_bytes', ...}; the
    per-segment sums show the adaptation and let causality be checked.
    """
    batch = windows.stream_eval_batch(tokens, streams=streams, chunk=segment)
    zero = scoring.zero_carry(params, batch, apply_fn=model.apply, chunk=segment)
    run = parallel.model_jit(
        model,
        functools.partial(dynamic_sums, apply_fn=model.apply, segment=segment, lr=lr, decay=decay),
    )
    sums = jax.device_get(run(params, batch, zero))
    total = {k: np.sum(v, dtype=np.float64) for k, v in sums.items()}
    return {
        **scoring.result(total),
        "segment_loss_sums": [float(x) for x in sums["loss_sum"]],
        "segment_bytes": [int(x) for x in sums["weight"]],
        "segment": segment,
        "streams": streams,
        "learning_rate": lr,
        "decay": decay,
    }
