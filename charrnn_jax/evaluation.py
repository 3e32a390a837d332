"""Literature-grade evaluation: every byte of a split (or a file) scored once, carry kept.

The bytes are cut into contiguous streams (input_pipeline.stream_eval_batch) that one
jitted program scans chunk by chunk, carrying each stream's recurrent state from chunk
to chunk (steps.eval_step), so a byte is charged only for what the model cannot predict
from everything before it in its stream; only the first bytes of each stream start cold.
This is how char-rnn's eval_split and the enwik8/text8 tables score a model.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from charrnn_jax import input_pipeline, parallel, steps


def eval_streams(config) -> int:
    """Streams of the full-split val metric, or 0 for fixed windows (and non-byte data)."""
    evaluation = config.get("eval") or {"mode": "windows"}  # Configs from before 'eval'.
    if evaluation["mode"] != "full" or config.data.mode not in input_pipeline.BYTE_MODES:
        return 0
    return evaluation["streams"] or config.train.batch_size


def score_bytes(params, model, tokens: np.ndarray, *, streams: int, chunk: int, mesh=None):
    """Cross-entropy of `tokens[1:]` given everything before each byte in its stream.

    Args:
      params: the model's params.
      tokens: [n] uint8 bytes (n >= 2).
      streams: contiguous streams scored in parallel (a multiple of the mesh size).
      chunk: bytes per scan step (the training seq_len: same program shape as training).

    Returns:
      {'bytes': scored bytes (n - 1), 'loss': nats/byte, 'bpb': bits/byte}.
    """
    mesh = mesh or parallel.make_mesh(jax.local_devices()[:1])
    parallel.check_batch_divides(streams, mesh)
    batch = input_pipeline.stream_eval_batch(tokens, streams=streams, chunk=chunk)
    sharded = parallel.global_batch(batch, mesh)
    repl = parallel.replicated(mesh)
    score = jax.jit(
        functools.partial(steps.eval_step, apply_fn=model.apply, chunk=chunk),
        in_shardings=(repl, parallel.data_sharded(mesh)),
        out_shardings=repl,
    )
    sums = jax.device_get(score(jax.device_put(params, repl), sharded))
    return _result(sums)


def score_windows(params, model, tokens: np.ndarray, *, batch: int, seq_len: int, batches: int):
    """The old, cheap metric (eval.mode='windows'): `batches` x `batch` fixed windows of
    seq_len bytes spread over `tokens`, each from a zero carry. Only part of the split is
    scored, and each window's first bytes lack their context."""
    windows = input_pipeline.eval_batches(
        tokens, global_batch=batch, seq_len=seq_len, num_batches=batches
    )
    score = jax.jit(functools.partial(steps.eval_step, apply_fn=model.apply, chunk=seq_len))
    sums = jax.device_get([score(params, w) for w in windows])
    return _result(jax.tree.map(lambda *x: np.sum(x, dtype=np.float64), *sums))


def _result(sums) -> dict:
    loss = float(sums["loss_sum"] / sums["weight"])
    return {"bytes": int(sums["weight"]), "loss": loss, "bpb": loss / math.log(2)}
