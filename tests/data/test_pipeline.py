"""The byte pipeline: shifts, purity in the step, per-process tiling, data errors."""

import hashlib
import urllib.request

import numpy as np
import pytest

from charrnn_jax.data import corpora, windows


@pytest.fixture
def tokens(shakespeare_path):
    return corpora.load_bytes(shakespeare_path)


def test_load_reads_every_byte_as_uint8(tokens, shakespeare_path):
    raw = shakespeare_path.read_bytes()
    assert tokens.dtype == np.uint8 and len(tokens) == len(raw) == 1_115_394
    assert (
        hashlib.sha256(tokens.tobytes()).hexdigest() == corpora.REGISTRY["tinyshakespeare"].sha256
    )


def test_large_files_are_memory_mapped(tmp_path, monkeypatch):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * 4)
    monkeypatch.setattr(corpora, "MMAP_THRESHOLD_BYTES", 100)
    loaded = corpora.load_bytes(path)
    assert isinstance(loaded, np.memmap) and loaded[255] == 255


def test_split_is_positional_nanogpt_style(tokens):
    parts = corpora.splits(tokens, 0.1, 0.0)
    train, val = parts["train"], parts["val"]
    assert len(train) == int(len(tokens) * 0.9)
    np.testing.assert_array_equal(np.concatenate([train, val]), tokens)


ORDERS = [windows.random_starts, windows.epoch_starts, windows.stream_starts]


@pytest.mark.parametrize("order", ORDERS)
def test_targets_are_inputs_shifted_by_one(tokens, order):
    batch = windows.train_batch(tokens, seed=0, step=3, global_batch=8, seq_len=50, order=order)
    assert batch["inputs"].shape == batch["targets"].shape == (8, 50)
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    # Each row is a real window of the file.
    text = tokens.tobytes()
    for row in range(8):
        window = bytes(batch["inputs"][row].astype(np.uint8)) + bytes([batch["targets"][row, -1]])
        assert window in text


@pytest.mark.parametrize("order", ORDERS)
def test_batch_is_a_pure_function_of_the_step(tokens, order):
    kwargs = dict(seed=7, global_batch=8, seq_len=20, order=order)
    first = windows.train_batch(tokens, step=5, **kwargs)
    for step in range(5):  # Drawing other steps first changes nothing.
        windows.train_batch(tokens, step=step, **kwargs)
    np.testing.assert_array_equal(
        windows.train_batch(tokens, step=5, **kwargs)["inputs"], first["inputs"]
    )
    other = windows.train_batch(tokens, step=6, **kwargs)
    assert not np.array_equal(other["inputs"], first["inputs"])
    reseeded = windows.train_batch(tokens, step=5, **{**kwargs, "seed": 8})
    assert not np.array_equal(reseeded["inputs"], first["inputs"])


@pytest.mark.parametrize("order", ORDERS)
def test_process_slices_tile_the_global_batch(tokens, order):
    kwargs = dict(seed=1, step=2, global_batch=12, seq_len=16, order=order)
    whole = windows.train_batch(tokens, **kwargs)
    parts = [
        windows.train_batch(tokens, process_index=i, process_count=3, **kwargs) for i in range(3)
    ]
    for key in whole:  # Stream order's reset flags too.
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_epoch_mode_visits_every_chunk_once_per_epoch():
    tokens = np.arange(101 * 40, dtype=np.int64) % 251
    seq_len, batch = 100, 8  # 40 chunks -> 5 batches per epoch.
    starts = np.concatenate(
        [
            windows.epoch_starts(len(tokens), seed=0, step=s, global_batch=batch, seq_len=seq_len)[
                0
            ]
            for s in range(5)
        ]
    )
    assert sorted(starts.tolist()) == [i * (seq_len + 1) for i in range(40)]
    next_epoch = windows.epoch_starts(
        len(tokens), seed=0, step=5, global_batch=batch, seq_len=seq_len
    )[0]
    assert not np.array_equal(next_epoch, starts[:batch])  # Reshuffled.


def test_eval_batches_are_fixed_and_tile_over_processes(tokens):
    val = corpora.splits(tokens, 0.1, 0.0)["val"]
    kwargs = dict(global_batch=8, seq_len=32, num_batches=3)
    a, b = windows.eval_batches(val, **kwargs), windows.eval_batches(val, **kwargs)
    assert len(a) == 3
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    halves = [
        windows.eval_batches(val, process_index=i, process_count=2, **kwargs) for i in range(2)
    ]
    np.testing.assert_array_equal(
        np.concatenate([halves[0][1]["inputs"], halves[1][1]["inputs"]]), a[1]["inputs"]
    )


def test_missing_empty_and_short_files_are_clear_errors(tmp_path):
    with pytest.raises(corpora.DataError, match="not found"):
        corpora.load_bytes(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(corpora.DataError, match="empty"):
        corpora.load_bytes(tmp_path / "empty.txt")
    with pytest.raises(corpora.DataError, match="needs at least 102"):
        corpora.check_long_enough(np.zeros(50, np.uint8), 100, "train")


def test_batch_that_does_not_divide_over_processes_is_an_error(tokens):
    with pytest.raises(corpora.DataError, match="does not divide"):
        windows.train_batch(tokens, seed=0, step=0, global_batch=10, seq_len=8, process_count=4)


def test_registry_prefers_the_data_dir(shakespeare_path):
    assert corpora.resolve_path("tinyshakespeare", "") == shakespeare_path
    assert str(corpora.resolve_path("tinyshakespeare", "/some/file.txt")) == "/some/file.txt"
    with pytest.raises(corpora.DataError, match="Unknown dataset"):
        corpora.resolve_path("nope", "")


def test_offline_download_names_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv(corpora.DATA_DIR_ENV)
    monkeypatch.setattr(corpora, "CACHE_DIR", tmp_path / "cache")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(corpora.DataError, match="CHARRNN_DATA_DIR") as err:
        corpora.resolve_path("tinyshakespeare", "")
    assert "--config.data.path" in str(err.value)
    assert not (tmp_path / "cache" / "tinyshakespeare.txt").exists()


def test_download_checks_sha256_and_caches(tmp_path, monkeypatch, shakespeare_path):
    monkeypatch.delenv(corpora.DATA_DIR_ENV)
    monkeypatch.setattr(corpora, "CACHE_DIR", tmp_path / "cache")
    served = {"body": shakespeare_path.read_bytes()}

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _Response(served["body"]))
    path = corpora.resolve_path("tinyshakespeare", "")
    assert path == tmp_path / "cache" / "tinyshakespeare.txt" and path.stat().st_size == 1_115_394
    path.unlink()
    served["body"] = b"tampered"
    with pytest.raises(corpora.DataError, match="sha256"):
        corpora.resolve_path("tinyshakespeare", "")
    assert not path.exists()


class _Response:
    """A server's answer: `body` from byte `start` (206 when a range was asked), read in
    pieces; `fail_after` cuts the connection after that many bytes."""

    def __init__(self, body: bytes, start: int = 0, fail_after: int | None = None):
        self.body, self.pos, self.fail_after = body, start, fail_after
        self.status = 206 if start else 200
        self.headers = {"Content-Length": str(len(body) - start)}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, size=-1):
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise urllib.error.URLError("connection reset")
        end = len(self.body) if size < 0 else self.pos + size
        if self.fail_after is not None:
            end = min(end, self.fail_after)
        piece, self.pos = self.body[self.pos : end], min(end, len(self.body))
        return piece


def test_a_cut_download_resumes_where_it_stopped(tmp_path, monkeypatch, shakespeare_path):
    monkeypatch.delenv(corpora.DATA_DIR_ENV)
    monkeypatch.setattr(corpora, "CACHE_DIR", tmp_path / "cache")
    body, asked = shakespeare_path.read_bytes(), []

    def first_cut(request, timeout):
        asked.append(request.get_header("Range"))
        return _Response(body, fail_after=(1 << 20) + 5)  # Dies after a piece and 5 bytes.

    monkeypatch.setattr(urllib.request, "urlopen", first_cut)
    with pytest.raises(corpora.DataError, match="rerun to resume"):
        corpora.resolve_path("tinyshakespeare", "")
    part = tmp_path / "cache" / ".tinyshakespeare.part"
    got = (1 << 20) + 5
    assert part.stat().st_size == got  # Every byte it got is kept.

    def rest(request, timeout):
        asked.append(request.get_header("Range"))
        return _Response(body, start=int(request.get_header("Range")[6:-1]))

    monkeypatch.setattr(urllib.request, "urlopen", rest)
    path = corpora.resolve_path("tinyshakespeare", "")
    assert asked == [None, f"bytes={got}-"]
    assert path.read_bytes() == body and not part.exists()


def test_decode_replaces_invalid_utf8():
    assert corpora.decode(np.array([0x68, 0x69, 0xFF], np.uint8)) == "hi\ufffd"
    assert corpora.decode("小路".encode()) == "小路"


@pytest.mark.parametrize("mode", ["lines", "labelled"])
def test_example_modes_refuse_a_test_fraction_in_one_line(mode):
    from conftest import tiny_config

    from charrnn_jax import config_lib
    from charrnn_jax.errors import UserError

    overrides = {"data.mode": mode, "data.test_fraction": 0.05}
    if mode == "labelled":
        overrides.update({"model.num_classes": 2, "data.name": "imdb_labelled"})
    with pytest.raises(UserError, match=rf"data.mode='{mode}' splits its examples into train"):
        config_lib.resolve(tiny_config(**overrides))
