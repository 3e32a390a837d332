"""Datasets of whole examples: one per line ('lines' mode) or `text<TAB>label` ('labelled'),
batched as random ids per step with every val example scored once.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from charrnn_jax.data.corpora import DataError, load_bytes, resolve_path
from charrnn_jax.data.windows import local_rows


def pad_bytes(texts, width: int, *, empty: bytes = b"\n") -> tuple[np.ndarray, np.ndarray]:
    """Byte strings as one right-padded batch: THE padding of examples, of texts to
    classify and of prompts.

    Each text is cut to `width` bytes; an empty one becomes `empty` (a model reads at
    least one byte per row). Returns tokens [len(texts), width] int32 (zeros past each
    row's end) and lengths [len(texts)] int32.
    """
    tokens = np.zeros((len(texts), width), np.int32)
    lengths = np.ones(len(texts), np.int32)
    for row, text in enumerate(texts):
        data = np.frombuffer(bytes(text[:width]) or empty, np.uint8)
        tokens[row, : len(data)], lengths[row] = data, len(data)
    return tokens, lengths


def _example_ids(seed: int, step: int, num_examples: int, global_batch: int) -> np.ndarray:
    return np.random.default_rng((seed, step)).integers(0, num_examples, size=global_batch)


def _eval_id_batches(num_examples: int, global_batch: int) -> list[np.ndarray]:
    """All examples once, in order; the last batch is padded with id -1 (weight 0)."""
    ids = np.arange(-(-num_examples // global_batch) * global_batch)
    ids[num_examples:] = -1
    return np.split(ids, len(ids) // global_batch)


class _ExamplePipeline:
    """Batching for datasets of whole examples: random ids per step, every val example once.

    Subclasses hold `train`, `val`, `seed`, `global_batch` and define `_encode(split, ids)`
    (id -1 is a padding row of weight 0) and `_size(split)`.
    """

    eval_carried = False  # Each eval batch stands alone (no carry between them).

    def train_batch(self, step: int, process_index: int = 0, process_count: int = 1):
        ids = _example_ids(self.seed, step, self._size(self.train), self.global_batch)
        rows = local_rows(self.global_batch, process_index, process_count)
        return self._encode(self.train, ids[rows])

    def eval_batches(self, process_index: int = 0, process_count: int = 1):
        rows = local_rows(self.global_batch, process_index, process_count)
        return [
            self._encode(self.val, ids[rows])
            for ids in _eval_id_batches(self._size(self.val), self.global_batch)
        ]


@dataclasses.dataclass
class LinePipeline(_ExamplePipeline):
    """One example per line (e.g. a dinosaur name), for per-name language modelling.

    Each example is '\\n' + line as input and line + '\\n' as target, right-padded to
    seq_len with weight 0: the loss never sees padding, and one name never bleeds into
    the next (every example starts from a zero carry at its own '\\n').
    """

    train: list[bytes]
    val: list[bytes]
    seq_len: int
    seed: int
    global_batch: int

    def _size(self, lines: list[bytes]) -> int:
        return len(lines)

    def _encode(self, lines: list[bytes], ids: np.ndarray) -> dict[str, np.ndarray]:
        inputs = np.zeros((len(ids), self.seq_len), np.int32)
        targets = np.zeros_like(inputs)
        weights = np.zeros(inputs.shape, np.float32)
        for row, i in enumerate(ids):
            if i < 0:
                continue
            framed = np.frombuffer(b"\n" + lines[i] + b"\n", np.uint8)
            n = len(framed) - 1
            inputs[row, :n], targets[row, :n], weights[row, :n] = framed[:-1], framed[1:], 1.0
        return {"inputs": inputs, "targets": targets, "weights": weights}


@dataclasses.dataclass
class LabelledPipeline(_ExamplePipeline):
    """(text, label) examples for many-to-one classification, bytes truncated to seq_len."""

    train: tuple[list[bytes], np.ndarray]
    val: tuple[list[bytes], np.ndarray]
    seq_len: int
    seed: int
    global_batch: int

    def _size(self, split) -> int:
        return len(split[0])

    def _encode(self, split, ids: np.ndarray) -> dict[str, np.ndarray]:
        texts, labels = split
        real = ids >= 0  # The rest pad a last partial batch: one zero byte, weight 0.
        inputs, lengths = pad_bytes([texts[i] if i >= 0 else b"\0" for i in ids], self.seq_len)
        out_labels = np.where(real, labels[np.maximum(ids, 0)], 0).astype(np.int32)
        weights = real.astype(np.float32)
        return {"inputs": inputs, "lengths": lengths, "labels": out_labels, "weights": weights}


def read_lines(tokens: np.ndarray) -> list[bytes]:
    """Non-empty lines (CRLF tolerated)."""
    return [line.rstrip(b"\r") for line in tokens.tobytes().split(b"\n") if line.strip()]


def read_labelled(path: pathlib.Path) -> tuple[list[bytes], np.ndarray]:
    """`text<TAB>label` lines, or an aclImdb-style folder with pos/ and neg/ *.txt files."""
    if path.is_dir():
        texts, labels = [], []
        for label, name in ((0, "neg"), (1, "pos")):
            files = sorted((path / name).glob("*.txt"))
            texts += [f.read_bytes() for f in files]
            labels += [label] * len(files)
        if not texts:
            raise DataError(f"{path} has no pos/*.txt or neg/*.txt files.")
        return texts, np.array(labels, np.int32)
    texts, labels = [], []
    for number, line in enumerate(read_lines(load_bytes(path)), start=1):
        text, sep, label = line.rpartition(b"\t")
        if not sep or not label.strip().isdigit():
            raise DataError(f"{path}:{number}: expected 'text<TAB>integer label'.")
        texts.append(text)
        labels.append(int(label))
    return texts, np.array(labels, np.int32)


def seeded_split(num_examples: int, val_fraction: float, seed: int):
    """Shuffled (train_ids, val_ids): for example files, whose order is often sorted."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}.")
    order = np.random.default_rng((seed, 12345)).permutation(num_examples)
    num_val = max(1, int(round(num_examples * val_fraction)))
    if num_val >= num_examples:
        raise DataError(f"{num_examples} examples are too few to split off a val set.")
    return order[num_val:], order[:num_val]


def split_lines(data_config, seed: int) -> tuple[list[bytes], list[bytes]]:
    """(train, val) lines of a line-per-example file, split by a seeded shuffle."""
    d = data_config
    lines = read_lines(load_bytes(resolve_path(d.name, d.path)))
    if not lines:
        raise DataError(f"{resolve_path(d.name, d.path)} has no non-empty lines.")
    train_ids, val_ids = seeded_split(len(lines), d.val_fraction, seed)
    return [lines[i] for i in train_ids], [lines[i] for i in val_ids]
