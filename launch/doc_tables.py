"""The docs' tables that the code can write: the cell table and the config keys.

    python -m launch.doc_tables          # rewrite them in place
    python -m launch.doc_tables --check  # exit 1 if a table is stale (the tests ask)

Each table sits between `<!-- generated: NAME -->` and `<!-- end generated -->` in its
page, so the text around it stays hand-written. The cell table is read from
`models/registry.CELLS`, the key table from `config_lib.schema()` (each key's default
and its one comment), so neither can drift from the code.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = {"cells": REPO / "docs" / "architecture.md", "config": REPO / "docs" / "config.md"}


def cell_table() -> str:
    """One row per registered cell: its kind, module and options with their defaults."""
    from charrnn_jax.models import registry

    rows = [
        "| cell | kind | built by | options (`model.<cell>.<key>`, default) |",
        "|---|---|---|---|",
    ]
    for name, cell in registry.CELLS.items():
        kind = (
            "whole model"
            if cell.whole_model
            else ("residual block" if cell.residual_block else "stacked")
        )
        built = cell.whole_model or cell.module or cell.layer
        where = f"`{built.__module__.removeprefix('charrnn_jax.')}.{built.__qualname__}`"
        options = ", ".join(f"`{f.name}`={f.default!r}" for f in dataclasses.fields(cell.options))
        rows.append(f"| `{name}` | {kind} | {where} | {options or '-'} |")
    return "\n".join(rows)


def config_table() -> str:
    """Every config key with its default and its comment, in RunConfig's order."""
    from charrnn_jax import config_lib

    rows = ["| key | default | what it does |", "|---|---|---|"]
    for key, default, doc in config_lib.schema():
        rows.append(f"| `{key}` | `{default!r}` | {doc.replace('|', '/')} |")
    return "\n".join(rows)


TABLES = {"cells": cell_table, "config": config_table}


def rewritten(text: str, name: str) -> str:
    """`text` with the table NAME between its markers replaced by the current one."""
    pattern = re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- end generated -->)", re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"no '<!-- generated: {name} -->' block")
    return pattern.sub(lambda m: m.group(1) + TABLES[name]() + "\n" + m.group(2), text)


def main(argv: list[str]) -> int:
    stale = []
    for name, page in PAGES.items():
        text = page.read_text()
        new = rewritten(text, name)
        if new != text:
            stale.append(f"{page.relative_to(REPO)} ({name})")
            if "--check" not in argv:
                page.write_text(new)
    if stale and "--check" in argv:
        print("stale: " + ", ".join(stale) + "; run python -m launch.doc_tables")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
