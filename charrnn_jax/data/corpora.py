"""A corpus on disk: the registry of named corpora, finding and checking the file, its bytes,
and the one place its train / val / test splits are cut.

Every caller (the trainer, `evaluate`, `fit_tutorial`, the benchmarks) gets its splits
from `load_splits`, so the test split can never leak into anyone's val or train bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import tempfile
import time
import urllib.request
import zipfile

import numpy as np
from absl import logging

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
    """Downloads into `.<name>.part` beside the cache entry, then checks and installs it.

    Read in 1 MiB pieces with a progress line at most every 5 s; a download cut short
    keeps its part file, and the next start asks the server for the rest (an HTTP Range
    request), so enwik8's 36 MB zip need not start over. A part whose digest is wrong
    is deleted.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.parent / f".{name}.part"
    try:
        _fetch_into(entry.url, part, name)
        install(name, entry, part, dest)
        part.unlink(missing_ok=True)  # A zip, once its member is out.
    except OSError as e:
        raise DataError(
            f"Dataset {name!r} is not available offline and the download of {entry.url} failed "
            f"({e}; rerun to resume it). Set {DATA_DIR_ENV} to a folder holding {name}.txt, "
            f"put the file at {dest}, or pass --config.data.path=/path/to/file."
        ) from None
    except DataError:
        part.unlink(missing_ok=True)  # A wrong digest: never resume from those bytes.
        raise


def _fetch_into(url: str, part: pathlib.Path, name: str) -> None:
    """Appends the rest of `url` to `part` (all of it if the server ignores the range)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=30) as resp:
        resumed = have and resp.status == 206
        have = have if resumed else 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length else None
        if resumed:
            logging.info("Resuming the download of %s at %.1f MB.", name, have / 1e6)
        last = time.perf_counter()
        with open(part, "ab" if resumed else "wb") as out:
            while piece := resp.read(1 << 20):
                out.write(piece)
                have += len(piece)
                if time.perf_counter() - last >= 5:
                    of = f" of {total / 1e6:.1f} MB ({100 * have / total:.0f}%)" if total else " MB"
                    logging.info("Downloading %s: %.1f%s.", name, have / 1e6, of)
                    last = time.perf_counter()


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


def _key(default, doc: str):
    """A config key: its default and its one comment (config_lib.base_config reads both)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The config's `data` block, typed; its defaults are the schema (base_config).

    There is no default corpus: a run names one (data.name) or a file (data.path).
    """

    name: str = _key("", "Registered dataset (see corpora.REGISTRY).")
    path: str = _key("", "Any local file; overrides data.name when set.")
    val_fraction: float = _key(0.1, "The val split: this fraction, before the test split.")
    test_fraction: float = _key(0.0, "The test split: the file's last part (0 = none).")
    mode: str = _key(
        "random",
        "'random' or 'epoch' windows, 'stream' (state carried across steps), 'lines', "
        "'labelled' (data/pipeline.py MODES).",
    )
    seq_len: int = _key(100, "Bytes per training window (inputs; targets are shifted by 1).")


def load_splits(data_config: DataConfig) -> dict:
    """{'train', 'val', 'test'} uint8 bytes of the configured corpus: THE split path.

    The test split (data.test_fraction) is cut off first, so no caller can see its
    bytes through 'train' or 'val'.
    """
    d = data_config
    tokens = load_bytes(resolve_path(d.name, d.path))
    return splits(tokens, d.val_fraction, d.test_fraction)


def complete_utf8(data: bytes) -> bytes:
    """`data` without a UTF-8 character cut off at its end (a sample stopped mid-character):
    the last lead byte's sequence is dropped if fewer bytes follow it than it announces."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # Not a continuation byte: an ASCII or a lead byte.
            need = (
                2
                if byte >> 5 == 0b110
                else 3
                if byte >> 4 == 0b1110
                else 4
                if byte >> 3 == 0b11110
                else 1
            )
            return data[:-back] if need > back else data
    return data


def decode(data: bytes | np.ndarray) -> str:
    """Bytes -> text for display; invalid UTF-8 becomes U+FFFD."""
    raw = data if isinstance(data, bytes) else np.asarray(data, dtype=np.uint8).tobytes()
    return raw.decode("utf-8", errors="replace")
