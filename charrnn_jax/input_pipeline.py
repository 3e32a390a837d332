"""Bytes on disk -> uint8 arrays -> this process's slice of each global batch.

Every batch is a pure function of (seed, step, process_index, process_count), so a
resumed or multi-host run needs no iterator state: step s always yields the same
global batch, and each process cuts out only its own rows of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import tempfile
import urllib.request

import numpy as np

VOCAB_SIZE = 256  # Bytes: any file works and there is no vocab file.
DATA_DIR_ENV = "CHARRNN_DATA_DIR"
CACHE_DIR = pathlib.Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "charrnn_jax"
# Files above this are memory-mapped instead of read into RAM.
MMAP_THRESHOLD_BYTES = 1 << 30


class DataError(ValueError):
    """A data problem the user can fix (missing file, too short, bad mode)."""

    user_error = True  # One `error:` line in the CLIs (charrnn_jax.errors.is_user_error).


@dataclasses.dataclass(frozen=True)
class RegisteredDataset:
    url: str
    sha256: str


# Named corpora: looked up in $CHARRNN_DATA_DIR, then the cache, then downloaded.
REGISTRY = {
    "tinyshakespeare": RegisteredDataset(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    "dinos": RegisteredDataset(
        url="https://raw.githubusercontent.com/prateekb1912/dinosaur-island/"
        "881521cb5431586bb513e9eddc92a8915c52a884/dinos.txt",
        sha256="ad6465621cf56c08f71d4fbb40cf7eab763f9df42c54cc460d6c4d86e9c927fb",
    ),
    # 1,000 labelled IMDB sentences (UCI Sentiment Labelled Sentences, CC BY 4.0).
    "imdb_labelled": RegisteredDataset(
        url="https://raw.githubusercontent.com/usman-naveed/Classifying-Movie-Reviews/"
        "a68f80de4cb7ab78833f2df02689454cc14cc141/imdb_labelled.txt",
        sha256="9df288d4b74222fedd8a390605693c0cfa01e335f7cc0910ab050814c50a480e",
    ),
}


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(name: str, entry: RegisteredDataset, dest: pathlib.Path) -> None:
    """Downloads to a temp file and renames it, so a failed download leaves no cache entry."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=30) as resp:
            out.write(resp.read())
        got = _sha256(pathlib.Path(tmp))
        if got != entry.sha256:
            raise DataError(f"Downloaded {entry.url} has sha256 {got}, expected {entry.sha256}.")
        os.replace(tmp, dest)
    except OSError as e:
        raise DataError(
            f"Dataset {name!r} is not available offline and the download of {entry.url} failed "
            f"({e}). Set {DATA_DIR_ENV} to a folder holding {name}.txt, put the file at {dest}, "
            f"or pass --config.data.path=/path/to/file."
        ) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve_path(name: str, path: str) -> pathlib.Path:
    """Returns the file for `path` if given, else for the registered dataset `name`."""
    if path:
        return pathlib.Path(path).expanduser()
    if name not in REGISTRY:
        raise DataError(
            f"Unknown dataset {name!r}; known: {sorted(REGISTRY)}. Or set --config.data.path."
        )
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir and (candidate := pathlib.Path(data_dir) / f"{name}.txt").is_file():
        return candidate
    cached = CACHE_DIR / f"{name}.txt"
    if not cached.is_file():
        _download(name, REGISTRY[name], cached)
    return cached


def load_bytes(path: pathlib.Path) -> np.ndarray:
    """Reads a file once as uint8; files larger than MMAP_THRESHOLD_BYTES are memory-mapped."""
    if path.is_dir():
        raise DataError(f"Data path {path} is a directory; give a file (or data.name).")
    if not path.is_file():
        raise DataError(f"Data file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"Data file is empty: {path}")
    if size > MMAP_THRESHOLD_BYTES:
        return np.memmap(path, dtype=np.uint8, mode="r")
    return np.fromfile(path, dtype=np.uint8)


def split(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Splits by position: the last `val_fraction` is val (nanoGPT's split)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}.")
    n_train = int(len(tokens) * (1.0 - val_fraction))
    return tokens[:n_train], tokens[n_train:]


def check_long_enough(tokens: np.ndarray, seq_len: int, what: str) -> None:
    if len(tokens) < seq_len + 2:
        raise DataError(
            f"The {what} split has {len(tokens)} bytes; seq_len={seq_len} needs at least "
            f"{seq_len + 2}. Use a longer file, a shorter seq_len or another val_fraction."
        )


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


def window_starts(
    num_tokens: int, *, seed: int, step: int, global_batch: int, seq_len: int, mode: str
) -> np.ndarray:
    """Start offsets of the global batch's windows at `step`: `[global_batch]` int64.

    'random': uniform windows of seq_len + 1 bytes, a fresh draw per step.
    'epoch': the TF tutorial's order: non-overlapping chunks of seq_len + 1 bytes,
      shuffled by a seeded permutation per epoch, a partial last batch dropped.
    """
    if mode == "random":
        rng = np.random.default_rng((seed, step))
        return rng.integers(0, num_tokens - seq_len, size=global_batch)
    if mode == "epoch":
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
        return chunk_ids * (seq_len + 1)
    raise DataError(f"Unknown data.mode {mode!r}; expected 'random' or 'epoch'.")


def train_batch(
    tokens: np.ndarray,
    *,
    seed: int,
    step: int,
    global_batch: int,
    seq_len: int,
    mode: str = "random",
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
    """This process's rows of the training batch for `step`.

    Returns:
      {'inputs': [local_batch, seq_len] int32, 'targets': [local_batch, seq_len] int32},
      targets being inputs shifted left by one byte.
    """
    starts = window_starts(
        len(tokens), seed=seed, step=step, global_batch=global_batch, seq_len=seq_len, mode=mode
    )
    return _windows(tokens, starts[local_rows(global_batch, process_index, process_count)], seq_len)


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


def decode(data: bytes | np.ndarray) -> str:
    """Bytes -> text for display; invalid UTF-8 becomes U+FFFD."""
    raw = data if isinstance(data, bytes) else np.asarray(data, dtype=np.uint8).tobytes()
    return raw.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------
# Pipelines: what the trainer sees. Each builds this process's rows of the global batch
# for a step, and fixed eval batches, so the loop does not care which data mode it runs.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class BytePipeline:
    """A byte stream: windows of seq_len + 1 ('random' or 'epoch' order)."""

    train: np.ndarray
    val: np.ndarray
    seq_len: int
    mode: str
    seed: int
    global_batch: int
    num_eval_batches: int

    def train_batch(self, step: int, process_index: int = 0, process_count: int = 1):
        return train_batch(
            self.train,
            seed=self.seed,
            step=step,
            global_batch=self.global_batch,
            seq_len=self.seq_len,
            mode=self.mode,
            process_index=process_index,
            process_count=process_count,
        )

    def eval_batches(self, process_index: int = 0, process_count: int = 1):
        return eval_batches(
            self.val,
            global_batch=self.global_batch,
            seq_len=self.seq_len,
            num_batches=self.num_eval_batches,
            process_index=process_index,
            process_count=process_count,
        )


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
        inputs = np.zeros((len(ids), self.seq_len), np.int32)
        lengths = np.ones(len(ids), np.int32)
        out_labels = np.zeros(len(ids), np.int32)
        weights = np.zeros(len(ids), np.float32)
        for row, i in enumerate(ids):
            if i < 0:
                continue
            text = np.frombuffer(texts[i][: self.seq_len] or b"\n", np.uint8)
            inputs[row, : len(text)], lengths[row] = text, len(text)
            out_labels[row], weights[row] = labels[i], 1.0
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


def build(data_config, *, seed: int, global_batch: int, num_eval_batches: int):
    """The pipeline for data_config.mode, with every data check done up front."""
    d = data_config
    path = resolve_path(d.name, d.path)
    if d.mode in ("random", "epoch"):
        train, val = split(load_bytes(path), d.val_fraction)
        check_long_enough(train, d.seq_len, "train")
        check_long_enough(val, d.seq_len, "val")
        return BytePipeline(train, val, d.seq_len, d.mode, seed, global_batch, num_eval_batches)
    if d.mode == "lines":
        train, val = split_lines(d, seed)
        longest = max(len(line) for line in train + val)
        if longest + 1 > d.seq_len:
            raise DataError(
                f"The longest line of {path} has {longest} bytes; lines mode needs "
                f"data.seq_len >= {longest + 1}."
            )
        return LinePipeline(train, val, d.seq_len, seed, global_batch)
    if d.mode == "labelled":
        texts, labels = read_labelled(path)
        train_ids, val_ids = seeded_split(len(texts), d.val_fraction, seed)
        pick = lambda ids: ([texts[i] for i in ids], labels[ids])  # noqa: E731
        return LabelledPipeline(pick(train_ids), pick(val_ids), d.seq_len, seed, global_batch)
    raise DataError(f"Unknown data.mode {d.mode!r}.")


def prompt_prefix(mode: str) -> bytes:
    """What every training example starts with, so prompts get it too ('lines': b'\\n')."""
    return b"\n" if mode == "lines" else b""
