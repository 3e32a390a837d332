"""Literature-grade evaluation: every byte of a split (or a file) scored once, carry kept.

The bytes are cut into contiguous streams (windows.stream_eval_batch) that one
jitted program scans chunk by chunk, carrying each stream's recurrent state from chunk
to chunk (eval_step), so a byte is charged only for what the model cannot predict
from everything before it in its stream; only the first bytes of each stream start cold.
This is how char-rnn's eval_split and the enwik8/text8 tables score a model.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from charrnn_jax.data import windows
from charrnn_jax.models.losses import logits_and_labels, loss_sums
from charrnn_jax.runtime import parallel


def eval_step(params, batch, *, apply_fn, chunk: int):
    """Summed loss, weights (and correct predictions) of one batch.

    A language-model batch longer than `chunk` bytes is a set of contiguous streams
    (data.windows.stream_eval_batch): it is scored chunk by chunk in one lax.scan with
    the carry kept, so every byte is scored once with all the context before it.
    """
    length = batch["inputs"].shape[1]
    if "targets" not in batch or length <= chunk:
        logits, scored, _ = logits_and_labels(apply_fn, params, batch)
        return loss_sums(logits, scored)
    zero = zero_carry(params, batch, apply_fn=apply_fn, chunk=chunk)
    return eval_segment(params, batch, zero, apply_fn=apply_fn, chunk=chunk)[0]


def eval_segment(params, batch, carry, *, apply_fn, chunk: int):
    """(sums, carry at its end) of one time segment of contiguous streams, from `carry`.

    Consecutive segments of the same streams (data.windows.stream_eval_segments), each
    started from the carry the one before ended with, score exactly what one eval_step
    over the whole streams does; the trainer scores a long val split this way so that
    it can honour a SIGTERM between device calls (training/validation.py).
    """
    length = batch["inputs"].shape[1]
    chunks = jax.tree.map(
        lambda x: x.reshape(x.shape[0], length // chunk, chunk).swapaxes(0, 1), batch
    )

    def score(carry, piece):
        logits, scored, carry = logits_and_labels(apply_fn, params, piece, carry)
        return carry, loss_sums(logits, scored)

    carry, sums = jax.lax.scan(score, carry, chunks)
    return jax.tree.map(lambda x: x.sum(axis=0), sums), carry


def zero_carry(params, batch, *, apply_fn, chunk: int):
    """The zero carry of `batch`'s streams: where every stream's scoring starts."""
    first = jax.tree.map(lambda x: x[:, :chunk], batch)
    shapes = jax.eval_shape(lambda: logits_and_labels(apply_fn, params, first)[2])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def score_bytes(
    params,
    model,
    tokens: np.ndarray,
    *,
    streams: int,
    chunk: int,
    mesh=None,
    bytes_per_call: int = 0,
    progress=None,
):
    """Cross-entropy of `tokens[1:]` given everything before each byte in its stream.

    Args:
      params: the model's params.
      tokens: [n] uint8 bytes (n >= 2).
      streams: contiguous streams scored in parallel (a multiple of the mesh size).
      chunk: bytes per scan step (the training seq_len: same program shape as training).
      bytes_per_call: at most this many bytes per device call (0: one call), the carry
        passed from call to call: the same segments, so the same sums, as the trainer's
        val pass with eval.bytes_per_call.
      progress: called as progress(calls done, calls) after each call.

    Returns:
      {'bytes': scored bytes (n - 1), 'loss': nats/byte, 'bpb': bits/byte}.
    """
    mesh = mesh or parallel.make_mesh(jax.local_devices()[:1])
    parallel.check_batch_divides(streams, mesh, name="streams")
    segments = windows.stream_eval_segments(
        tokens, streams=streams, chunk=chunk, bytes_per_call=bytes_per_call
    )
    params = jax.device_put(params, parallel.replicated(mesh))
    return _score_segments(params, model, segments, mesh, chunk, progress)


def _score_segments(params, model, segments, mesh, chunk: int, progress) -> dict:
    """Consecutive time segments of the same streams, the carry passed from each to the
    next, their sums added on the device in one reduction (as the trainer's val pass)."""
    repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
    segment = parallel.model_jit(
        model,
        functools.partial(eval_segment, apply_fn=model.apply, chunk=chunk),
        in_shardings=(repl, data, data),
        out_shardings=(repl, data),
        donate_argnums=2,
    )
    first = parallel.global_batch(segments[0], mesh)
    carry = parallel.model_jit(
        model,
        functools.partial(zero_carry, apply_fn=model.apply, chunk=chunk),
        out_shardings=data,
    )(params, first)
    pieces = []
    for i, batch in enumerate(segments):
        piece, carry = segment(
            params, first if i == 0 else parallel.global_batch(batch, mesh), carry
        )
        pieces.append(piece)
        if progress:
            jax.block_until_ready(piece)
            progress(i + 1, len(segments))
    return result(jax.device_get(jax.tree.map(lambda *x: jnp.sum(jnp.stack(x), axis=0), *pieces)))


def score_windows(params, model, tokens: np.ndarray, *, batch: int, seq_len: int, batches: int):
    """The old, cheap metric (eval.mode='windows'): `batches` x `batch` fixed windows of
    seq_len bytes spread over `tokens`, each from a zero carry. Only part of the split is
    scored, and each window's first bytes lack their context."""
    fixed = windows.eval_batches(tokens, global_batch=batch, seq_len=seq_len, num_batches=batches)
    score = parallel.model_jit(
        model, functools.partial(eval_step, apply_fn=model.apply, chunk=seq_len)
    )
    sums = jax.device_get([score(params, w) for w in fixed])
    return result(jax.tree.map(lambda *x: np.sum(x, dtype=np.float64), *sums))


# nanoGPT's estimate_loss() (train.py): eval_iters batches of batch_size random windows of
# block_size bytes, every position scored, the mean of the batches' means; its
# config/train_shakespeare_char.py sets 200, 64 and 256.
NANOGPT_ITERS, NANOGPT_BATCH, NANOGPT_BLOCK = 200, 64, 256


def nanogpt_window_starts(n: int, *, seed: int, iters: int, batch: int, block: int) -> np.ndarray:
    """[iters, batch] window starts, each uniform in [0, n - block) as nanoGPT's get_batch
    draws them (torch.randint(len(data) - block_size, ...)); seeded, so two models are
    scored on the same windows."""
    if n - block < 1:
        raise ValueError(f"{n} bytes hold no window of {block} + 1 bytes.")
    return np.random.default_rng(seed).integers(0, n - block, size=(iters, batch))


def score_nanogpt(
    params,
    model,
    tokens: np.ndarray,
    *,
    seed: int = 0,
    iters: int = NANOGPT_ITERS,
    batch: int = NANOGPT_BATCH,
    block: int | None = None,
) -> dict:
    """nanoGPT's estimator: the mean loss over `iters` x `batch` random windows of
    `block` bytes (targets the next byte), every position counted, each window from a
    zero carry (as a window implies for a recurrent model), so on average a byte is
    predicted from about block / 2 bytes of context. Not the full-split metric: it
    estimates a different quantity, and is here so that numbers quoted from nanoGPT
    can be matched on its own estimator.

    `block` defaults to nanoGPT's 256, or to a Transformer's block_size where that is
    shorter: nanoGPT's get_batch draws windows of the model's own block_size.
    """
    if block is None:
        window = model.config.context_window()
        block = NANOGPT_BLOCK if window is None else min(window, NANOGPT_BLOCK)
    starts = nanogpt_window_starts(len(tokens), seed=seed, iters=iters, batch=batch, block=block)
    offsets = np.arange(block + 1)
    score = _window_scorer(model, block)
    sums = []
    for row in starts:
        windows_ = tokens[row[:, None] + offsets].astype(np.int32)
        sums.append(score(params, {"inputs": windows_[:, :-1], "targets": windows_[:, 1:]}))
    sums = jax.device_get(sums)  # One fetch at the end: no host sync per batch.
    total = jax.tree.map(lambda *x: np.sum(x, dtype=np.float64), *sums)
    return {**result(total), "windows": int(starts.size), "block": block, "seed": seed}


@functools.lru_cache(maxsize=8)
def _window_scorer(model, block: int):
    """One jitted scorer per model and window length, so repeated estimates (every val
    row of a run) compile once."""
    return parallel.model_jit(
        model, functools.partial(eval_step, apply_fn=model.apply, chunk=block)
    )


def result(sums) -> dict:
    loss = float(sums["loss_sum"] / sums["weight"])
    return {"bytes": int(sums["weight"]), "loss": loss, "bpb": loss / math.log(2)}
