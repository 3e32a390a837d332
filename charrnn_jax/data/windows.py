"""Byte streams -> windows: this process's rows of each training batch, a pure function of
(seed, step, process), and the eval batches ('random', 'epoch' and 'stream' modes).

Every batch is a pure function of (seed, step, process_index, process_count), so a
resumed or multi-host run needs no iterator state: step s always yields the same
global batch, and each process cuts out only its own rows of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from charrnn_jax.data.corpora import DataError


def local_rows(global_batch: int, process_index: int, process_count: int) -> slice:
    """The rows of the global batch that belong to this process."""
    if global_batch % process_count:
        raise DataError(
            f"Global batch {global_batch} does not divide over {process_count} processes."
        )
    per_process = global_batch // process_count
    return slice(process_index * per_process, (process_index + 1) * per_process)


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
    windows = np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int32)
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


def random_starts(
    num_tokens: int, *, seed: int, step: int, global_batch: int, seq_len: int
) -> tuple[np.ndarray, dict]:
    """'random' order: uniform windows of seq_len + 1 bytes, a fresh draw per step.

    Every order returns (starts [global_batch] int64, extra per-row arrays); the data
    modes' registry (data/pipeline.py) names each mode's order.
    """
    rng = np.random.default_rng((seed, step))
    return rng.integers(0, num_tokens - seq_len, size=global_batch), {}


def epoch_starts(
    num_tokens: int, *, seed: int, step: int, global_batch: int, seq_len: int
) -> tuple[np.ndarray, dict]:
    """'epoch' order, the TF tutorial's: non-overlapping chunks of seq_len + 1 bytes,
    shuffled by a seeded permutation per epoch, a partial last batch dropped."""
    num_chunks = num_tokens // (seq_len + 1)
    batches_per_epoch = num_chunks // global_batch
    if batches_per_epoch == 0:
        raise DataError(
            f"Epoch mode needs {global_batch} chunks of {seq_len + 1} bytes per batch; the "
            f"train split has only {num_chunks}."
        )
    epoch, index = divmod(step, batches_per_epoch)
    order = np.random.default_rng((seed, epoch)).permutation(num_chunks)
    chunk_ids = order[index * global_batch : (index + 1) * global_batch]
    return chunk_ids * (seq_len + 1), {}


def stream_starts(
    num_tokens: int, *, seed: int, step: int, global_batch: int, seq_len: int
) -> tuple[np.ndarray, dict]:
    """'stream' order (stream_window_starts), with each row's carry-reset flag."""
    starts, reset = stream_window_starts(
        num_tokens, seed=seed, step=step, global_batch=global_batch, seq_len=seq_len
    )
    return starts, {"reset": reset}


def stream_layout(num_tokens: int, *, global_batch: int, seq_len: int) -> tuple[int, int]:
    """(stream length, steps per epoch) of 'stream' mode: `global_batch` contiguous
    streams, each a whole number of seq_len windows, after an offset below seq_len."""
    steps_per_epoch = (num_tokens - 1 - seq_len) // (global_batch * seq_len)
    if steps_per_epoch < 1:
        raise DataError(
            f"Stream mode needs {global_batch} streams of at least {seq_len} bytes and a "
            f"{seq_len}-byte offset; the train split has only {num_tokens} bytes."
        )
    return steps_per_epoch * seq_len, steps_per_epoch


def stream_window_starts(
    num_tokens: int, *, seed: int, step: int, global_batch: int, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """'stream' mode (truncated BPTT, as char-rnn and AWD-LSTM train): row b reads the next
    seq_len bytes of stream b at every step, so the carry can flow from step to step.

    Each epoch starts the streams at a new seeded offset in [0, seq_len), so windows do
    not always cut the text at the same places; the carry is reset where an epoch starts.

    Returns:
      starts [global_batch] int64 and reset [global_batch] bool (True at an epoch's start).
    """
    stream_len, steps_per_epoch = stream_layout(
        num_tokens, global_batch=global_batch, seq_len=seq_len
    )
    epoch, index = divmod(step, steps_per_epoch)
    offset = int(np.random.default_rng((seed, epoch, 7)).integers(0, seq_len))
    starts = offset + np.arange(global_batch) * stream_len + index * seq_len
    return starts, np.full(global_batch, index == 0)


def stream_eval_batch(
    tokens: np.ndarray, *, streams: int, chunk: int, length: int = 0
) -> dict[str, np.ndarray]:
    """Every byte of `tokens` but the first as a target exactly once, in `streams`
    contiguous streams padded (weight 0) to a whole number of `chunk`-byte steps (or to
    `length`, a longer multiple of chunk).

    Returns:
      {'inputs', 'targets': [streams, length] int32, 'weights': [streams, length] float32}
      where length = the stream length; row b predicts bytes b*length+1 .. (b+1)*length.
    """
    predictions = len(tokens) - 1
    length = max(length, -(-predictions // (streams * chunk)) * chunk)
    padded = np.zeros(streams * length + 1, np.int32)
    padded[: len(tokens)] = tokens
    weights = np.zeros(streams * length, np.float32)
    weights[:predictions] = 1.0
    return {
        "inputs": padded[:-1].reshape(streams, length),
        "targets": padded[1:].reshape(streams, length),
        "weights": weights.reshape(streams, length),
    }


def stream_eval_segments(
    tokens: np.ndarray, *, streams: int, chunk: int, bytes_per_call: int = 0
) -> list[dict[str, np.ndarray]]:
    """stream_eval_batch cut along time into consecutive segments of one shape, each of at
    most `bytes_per_call` bytes (0: one segment) where the split allows a chunk per call.

    Scored in turn with the carry passed on (inference.scoring.eval_segment), they give
    the whole batch's sums; the padding grows by less than one chunk per segment.
    """
    chunks = -(-(len(tokens) - 1) // (streams * chunk))
    most = max(1, bytes_per_call // (streams * chunk)) if bytes_per_call else chunks
    calls = -(-chunks // most)
    per_call = -(-chunks // calls) * chunk
    batch = stream_eval_batch(tokens, streams=streams, chunk=chunk, length=calls * per_call)
    return [
        {key: value[:, i * per_call : (i + 1) * per_call] for key, value in batch.items()}
        for i in range(calls)
    ]


def train_batch(
    tokens: np.ndarray,
    *,
    seed: int,
    step: int,
    global_batch: int,
    seq_len: int,
    order: Callable = random_starts,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
    """This process's rows of the training batch for `step`, in the given order
    (random_starts, epoch_starts or stream_starts).

    Returns:
      {'inputs': [local_batch, seq_len] int32, 'targets': [local_batch, seq_len] int32},
      targets being inputs shifted left by one byte, plus the order's per-row arrays
      (stream order: 'reset').
    """
    rows = local_rows(global_batch, process_index, process_count)
    starts, extra = order(
        len(tokens), seed=seed, step=step, global_batch=global_batch, seq_len=seq_len
    )
    return {**_windows(tokens, starts[rows], seq_len), **{k: v[rows] for k, v in extra.items()}}


def eval_batches(
    tokens: np.ndarray,
    *,
    global_batch: int,
    seq_len: int,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """Fixed val batches: windows spread evenly over the split (non-overlapping when it is long)."""
    starts = np.linspace(0, len(tokens) - seq_len - 1, num_batches * global_batch).astype(np.int64)
    rows = local_rows(global_batch, process_index, process_count)
    return [
        _windows(tokens, starts[b * global_batch : (b + 1) * global_batch][rows], seq_len)
        for b in range(num_batches)
    ]


@dataclasses.dataclass
class BytePipeline:
    """A byte stream: windows of seq_len + 1 in its mode's order (random_starts,
    epoch_starts or stream_starts).

    Eval is the whole val split in `eval_streams` contiguous streams (eval_streams > 0,
    the default 'full' metric) cut along time into calls of at most eval_bytes_per_call
    bytes, or num_eval_batches batches of fixed windows.
    """

    train: np.ndarray
    val: np.ndarray
    seq_len: int
    order: Callable
    seed: int
    global_batch: int
    num_eval_batches: int
    eval_streams: int = 0
    eval_bytes_per_call: int = 0

    def train_batch(self, step: int, process_index: int = 0, process_count: int = 1):
        return train_batch(
            self.train,
            seed=self.seed,
            step=step,
            global_batch=self.global_batch,
            seq_len=self.seq_len,
            order=self.order,
            process_index=process_index,
            process_count=process_count,
        )

    @property
    def eval_carried(self) -> bool:
        """Whether eval_batches are time segments of the same streams (carry passed on)."""
        return bool(self.eval_streams)

    def eval_batches(self, process_index: int = 0, process_count: int = 1):
        if self.eval_streams:
            segments = stream_eval_segments(
                self.val,
                streams=self.eval_streams,
                chunk=self.seq_len,
                bytes_per_call=self.eval_bytes_per_call,
            )
            rows = local_rows(self.eval_streams, process_index, process_count)
            return [{key: value[rows] for key, value in s.items()} for s in segments]
        return eval_batches(
            self.val,
            global_batch=self.global_batch,
            seq_len=self.seq_len,
            num_batches=self.num_eval_batches,
            process_index=process_index,
            process_count=process_count,
        )
