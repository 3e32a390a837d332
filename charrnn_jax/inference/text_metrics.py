"""Quality measures for generated text that do not need a model."""

from __future__ import annotations

import re
from collections.abc import Iterable

_WELL_FORMED_NAME = re.compile(r"[A-Z][a-z]{2,24}")


def name_stats(generated: Iterable[str], training_names: Iterable[str]) -> dict:
    """Share of generated names that are new and that are well formed.

    Well formed: letters only, capitalised (one capital, then lower case), 3-25 chars.
    New: not in the training list (exact match after stripping whitespace).
    """
    names = [g.strip() for g in generated]
    known = {t.strip() for t in training_names}
    if not names:
        raise ValueError("No generated names to score.")
    return {
        "count": len(names),
        "novel": sum(n not in known for n in names) / len(names),
        "well_formed": sum(bool(_WELL_FORMED_NAME.fullmatch(n)) for n in names) / len(names),
    }
