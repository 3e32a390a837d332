"""The data modes' registry and the one `build`: a data config -> the pipeline the trainer steps.

A data mode is one builder function plus one line in MODES; nothing else in the package
compares a mode's name. Each builder does every data check up front, before anything
compiles.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from charrnn_jax.data import corpora, examples, windows
from charrnn_jax.data.corpora import DataError


def _byte_pipeline(
    d,
    *,
    order: Callable,
    seed: int,
    global_batch: int,
    num_eval_batches: int,
    eval_streams: int,
    eval_bytes_per_call: int,
):
    """'random', 'epoch' or 'stream': windows of one long byte stream in `order`."""
    parts = corpora.load_splits(d)
    train, val = parts["train"], parts["val"]
    corpora.check_long_enough(train, d.seq_len, "train")
    corpora.check_long_enough(val, d.seq_len, "val")
    # The first batch's layout, drawn once here: an order's own data error (too few
    # chunks for an epoch, too short a split for the streams) comes before anything compiles.
    order(len(train), seed=seed, step=0, global_batch=global_batch, seq_len=d.seq_len)
    return windows.BytePipeline(
        train,
        val,
        d.seq_len,
        order,
        seed,
        global_batch,
        num_eval_batches,
        eval_streams,
        eval_bytes_per_call,
    )


def _windowed(order: Callable) -> Callable:
    """The builder of a byte mode whose training windows come in `order`."""
    return functools.partial(_byte_pipeline, order=order)


def _line_pipeline(d, *, seed: int, global_batch: int, **_):
    """'lines': one example per line, split by a seeded shuffle."""
    train, val = examples.split_lines(d, seed)
    longest = max(len(line) for line in train + val)
    if longest + 1 > d.seq_len:
        raise DataError(
            f"The longest line of {corpora.resolve_path(d.name, d.path)} has {longest} bytes; "
            f"lines mode needs data.seq_len >= {longest + 1}."
        )
    return examples.LinePipeline(train, val, d.seq_len, seed, global_batch)


def _labelled_pipeline(d, *, seed: int, global_batch: int, **_):
    """'labelled': (text, label) examples for a many-to-one classifier."""
    texts, labels = examples.read_labelled(corpora.resolve_path(d.name, d.path))
    train_ids, val_ids = examples.seeded_split(len(texts), d.val_fraction, seed)

    def pick(ids):
        return [texts[i] for i in ids], labels[ids]

    return examples.LabelledPipeline(pick(train_ids), pick(val_ids), d.seq_len, seed, global_batch)


@dataclasses.dataclass(frozen=True)
class Mode:
    """One data mode.

    Attributes:
      build: (data config, seed=, global_batch=, num_eval_batches=, eval_streams=,
        eval_bytes_per_call=) -> pipeline.
      byte_stream: windows of one long byte stream (so the full-split val metric applies).
      carries_state: the recurrent state flows from step to step (truncated BPTT).
      labelled: (text, label) examples for a many-to-one classifier.
      prompt_prefix: what every training example starts with, so prompts get it too.
      cuts_test_split: data.test_fraction cuts a test split off the file's end (the
        example modes split their examples into train and val only).
    """

    build: Callable
    byte_stream: bool = False
    carries_state: bool = False
    labelled: bool = False
    prompt_prefix: bytes = b""
    cuts_test_split: bool = False


# data.mode -> how it is built and what it means to the rest of the package.
MODES: dict[str, Mode] = {
    "random": Mode(_windowed(windows.random_starts), byte_stream=True, cuts_test_split=True),
    "epoch": Mode(_windowed(windows.epoch_starts), byte_stream=True, cuts_test_split=True),
    "stream": Mode(
        _windowed(windows.stream_starts), byte_stream=True, carries_state=True, cuts_test_split=True
    ),
    "lines": Mode(_line_pipeline, prompt_prefix=b"\n"),
    "labelled": Mode(_labelled_pipeline, labelled=True),
}


def build(
    data_config: corpora.DataConfig,
    *,
    seed: int,
    global_batch: int,
    num_eval_batches: int,
    eval_streams: int = 0,
    eval_bytes_per_call: int = 0,
):
    """The pipeline for data_config.mode, with every data check done up front.

    eval_streams > 0 scores the whole val split in that many streams (byte data only),
    eval_bytes_per_call bytes per device call at most (0: one call).
    """
    mode = MODES.get(data_config.mode)
    if mode is None:
        raise DataError(f"Unknown data.mode {data_config.mode!r}; known: {tuple(MODES)}.")
    corpora.resolve_path(data_config.name, data_config.path)  # Missing corpora fail first.
    return mode.build(
        data_config,
        seed=seed,
        global_batch=global_batch,
        num_eval_batches=num_eval_batches,
        eval_streams=eval_streams,
        eval_bytes_per_call=eval_bytes_per_call,
    )


def prompt_prefix(mode: str) -> bytes:
    """What every training example starts with, so prompts get it too ('lines': b'\\n')."""
    return MODES[mode].prompt_prefix
