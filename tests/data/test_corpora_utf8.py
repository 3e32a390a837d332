"""Sampled bytes shown as text: a UTF-8 character cut off at the end is held back, so a
Japanese sample stopped at any byte prints as a clean prefix of its text."""

import pytest
from conftest import DATA_DIR

from charrnn_jax.data import corpora


def test_a_cut_japanese_text_is_held_back_to_its_last_whole_character():
    text = (DATA_DIR / "kyoka_shikibukoji_ja.txt").read_bytes()[:3000]
    whole = text.decode("utf-8", errors="ignore")
    assert any(b >= 0x80 for b in text)
    for end in range(1, 400):
        shown = corpora.decode(corpora.complete_utf8(text[:end]))
        assert "\ufffd" not in shown, end
        assert whole.startswith(shown) and len(text[:end]) - len(shown.encode()) < 4


@pytest.mark.parametrize(
    "data, kept",
    [
        (b"abc", b"abc"),
        (b"\xe5\xbc", b""),
        (b"a\xe5\xbc\x8f", b"a\xe5\xbc\x8f"),
        (b"a\xf0\x9f\x98", b"a"),
        (b"\xff", b"\xff"),
        (b"", b""),
    ],
)
def test_only_an_incomplete_final_sequence_is_dropped(data, kept):
    assert corpora.complete_utf8(data) == kept
