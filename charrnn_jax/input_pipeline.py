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
import shutil
import tempfile
import urllib.request
import zipfile

import numpy as np

VOCAB_SIZE = 256  # Bytes: any file works and there is no vocab file.
DATA_DIR_ENV = "CHARRNN_DATA_DIR"
CACHE_DIR = pathlib.Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "charrnn_jax"
# Files above this are memory-mapped instead of read into RAM.
MMAP_THRESHOLD_BYTES = 1 << 30
BYTE_MODES = ("random", "epoch", "stream")  # One long byte stream (vs whole examples).


class DataError(ValueError):
    """A data problem the user can fix (missing file, too short, bad mode)."""

    user_error = True  # One `error:` line in the CLIs (charrnn_jax.errors.is_user_error).


@dataclasses.dataclass(frozen=True)
class RegisteredDataset:
    """Where a named corpus comes from and the digest of what is downloaded.

    `member` names the file to extract when the download is a zip archive; `sha1` stands
    in for `sha256` where only a SHA-1 of the archive is published.
    """

    url: str
    sha256: str = ""
    sha1: str = ""
    member: str = ""


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
    # The Hutter Prize corpus: the first 10^8 bytes of an English Wikipedia XML dump
    # (2006). Standard split: 90M/5M/5M (data.val_fraction = data.test_fraction = 0.05).
    # sha256 of the archive as Hugging Face's datasets records it (36,445,475 bytes).
    "enwik8": RegisteredDataset(
        url="http://mattmahoney.net/dc/enwik8.zip",
        sha256="547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
        member="enwik8",
    ),
    # enwik8's text reduced to 27 characters (a-z and space), 10^8 bytes; same split. Only
    # a SHA-1 of this archive is published (GluonNLP's registry); we check that one.
    "text8": RegisteredDataset(
        url="http://mattmahoney.net/dc/text8.zip",
        sha1="6c70299b93b7e1f927b42cd8f6ac1a31547c7a2e",
        member="text8",
    ),
}


def _digest(path: pathlib.Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: pathlib.Path) -> str:
    return _digest(path, "sha256")


def install(name: str, entry: RegisteredDataset, download: pathlib.Path, dest: pathlib.Path):
    """Checks a downloaded file's digest, then puts it (or its zip member) at `dest`.

    The member is extracted to a temporary file and renamed, so an interrupted
    extraction never leaves a partial corpus in the cache.
    """
    algorithm, expected = ("sha256", entry.sha256) if entry.sha256 else ("sha1", entry.sha1)
    got = _digest(download, algorithm)
    if got != expected:
        raise DataError(f"Downloaded {entry.url} has {algorithm} {got}, expected {expected}.")
    if not entry.member:
        os.replace(download, dest)
        return
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{name}.member.")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            zipfile.ZipFile(download) as archive,
            archive.open(entry.member) as member,
        ):
            shutil.copyfileobj(member, out, 1 << 20)
        os.replace(tmp, dest)
    except (KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{entry.url} is not a zip holding {entry.member!r}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _download(name: str, entry: RegisteredDataset, dest: pathlib.Path) -> None:
    """Downloads to a temp file and renames it, so a failed download leaves no cache entry."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=30) as resp:
            out.write(resp.read())
        install(name, entry, pathlib.Path(tmp), dest)
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
    parts = splits(tokens, val_fraction, 0.0)
    return parts["train"], parts["val"]


def splits(tokens: np.ndarray, val_fraction: float, test_fraction: float) -> dict:
    """{'train', 'val', 'test'} by position: test is the file's last `test_fraction`, val
    the `val_fraction` before it (with test_fraction 0, nanoGPT's 90/10 split exactly)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}.")
    if not 0.0 <= test_fraction < 1.0 - val_fraction:
        raise DataError(
            f"data.test_fraction must be in [0, 1 - val_fraction), got {test_fraction}."
        )
    if test_fraction:  # Rounded: 1 - 0.05 - 0.05 is 0.8999..., and enwik8 wants 90M exactly.
        n_train = round(len(tokens) * (1.0 - val_fraction - test_fraction))
        n_val_end = round(len(tokens) * (1.0 - test_fraction))
    else:  # nanoGPT's (and our earlier runs') boundary, kept to the byte.
        n_train, n_val_end = int(len(tokens) * (1.0 - val_fraction)), len(tokens)
    return {
        "train": tokens[:n_train],
        "val": tokens[n_train:n_val_end],
        "test": tokens[n_val_end:],
    }


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
    # 'stream' rows also carry reset flags: train_batch calls stream_window_starts itself.
    raise DataError(f"Unknown data.mode {mode!r}; expected 'random', 'epoch' or 'stream'.")


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


def stream_eval_batch(tokens: np.ndarray, *, streams: int, chunk: int) -> dict[str, np.ndarray]:
    """Every byte of `tokens` but the first as a target exactly once, in `streams`
    contiguous streams padded (weight 0) to a whole number of `chunk`-byte steps.

    Returns:
      {'inputs', 'targets': [streams, length] int32, 'weights': [streams, length] float32}
      where length = the stream length; row b predicts bytes b*length+1 .. (b+1)*length.
    """
    predictions = len(tokens) - 1
    length = -(-predictions // (streams * chunk)) * chunk
    padded = np.zeros(streams * length + 1, np.int32)
    padded[: len(tokens)] = tokens
    weights = np.zeros(streams * length, np.float32)
    weights[:predictions] = 1.0
    return {
        "inputs": padded[:-1].reshape(streams, length),
        "targets": padded[1:].reshape(streams, length),
        "weights": weights.reshape(streams, length),
    }


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
    rows = local_rows(global_batch, process_index, process_count)
    if mode == "stream":
        starts, reset = stream_window_starts(
            len(tokens), seed=seed, step=step, global_batch=global_batch, seq_len=seq_len
        )
        return {**_windows(tokens, starts[rows], seq_len), "reset": reset[rows]}
    starts = window_starts(
        len(tokens), seed=seed, step=step, global_batch=global_batch, seq_len=seq_len, mode=mode
    )
    return _windows(tokens, starts[rows], seq_len)


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
    """A byte stream: windows of seq_len + 1 ('random', 'epoch' or 'stream' order).

    Eval is the whole val split in `eval_streams` contiguous streams (eval_streams > 0,
    the default 'full' metric), or num_eval_batches batches of fixed windows.
    """

    train: np.ndarray
    val: np.ndarray
    seq_len: int
    mode: str
    seed: int
    global_batch: int
    num_eval_batches: int
    eval_streams: int = 0

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
        if self.eval_streams:
            batch = stream_eval_batch(self.val, streams=self.eval_streams, chunk=self.seq_len)
            rows = local_rows(self.eval_streams, process_index, process_count)
            return [{key: value[rows] for key, value in batch.items()}]
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


def build(
    data_config, *, seed: int, global_batch: int, num_eval_batches: int, eval_streams: int = 0
):
    """The pipeline for data_config.mode, with every data check done up front.

    eval_streams > 0 scores the whole val split in that many streams (byte data only).
    """
    d = data_config
    path = resolve_path(d.name, d.path)
    if d.mode in BYTE_MODES:
        parts = splits(load_bytes(path), d.val_fraction, d.get("test_fraction", 0.0))
        train, val = parts["train"], parts["val"]
        check_long_enough(train, d.seq_len, "train")
        check_long_enough(val, d.seq_len, "val")
        if d.mode == "stream":
            stream_layout(len(train), global_batch=global_batch, seq_len=d.seq_len)
        return BytePipeline(
            train, val, d.seq_len, d.mode, seed, global_batch, num_eval_batches, eval_streams
        )
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
