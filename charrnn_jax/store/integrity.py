"""Checkpoint integrity: a CRC-32 of every saved array, a sealed manifest of every file's
CRC-32, and telling corruption apart from a file system that refuses access.

Orbax writes each step atomically; these checks catch what happens to it afterwards (a
flipped bit, a truncated file) so that restore can move a corrupt step aside
(quarantine) and fall back to the previous one, and never mistake a full disk or a
permission error for corruption.
"""

from __future__ import annotations

import errno
import json
import pathlib
import zlib

import jax
import numpy as np

CHECKSUMS = "checksums"
FILE_MANIFEST = "file_crc32.json"


class CorruptCheckpoint(Exception):
    """A step whose data does not read back, or reads back different from what was saved."""


def key_of(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def checksums(tree) -> dict[str, int]:
    """CRC-32 of every leaf's bytes, by key path (replicated leaves: the local copy)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        local = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
        out[key_of(path)] = zlib.crc32(np.ascontiguousarray(np.asarray(local)).tobytes())
    return out


def file_crcs(step_dir: pathlib.Path) -> dict[str, int]:
    """CRC-32 of every file in a step directory but the manifest, by relative path."""
    out = {}
    for path in sorted(step_dir.rglob("*")):
        if path.is_file() and FILE_MANIFEST not in path.name:
            out[str(path.relative_to(step_dir))] = zlib.crc32(path.read_bytes())
    return out


def refused_by_file_system(error: BaseException) -> str | None:
    """The OS's reason if the file system refused access (not corruption), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (
            errno.EACCES,
            errno.EPERM,
            errno.EIO,
            errno.EROFS,
        ):
            return error.strerror or str(error)
        text = str(error)
        for marker in ("Permission denied", "PERMISSION_DENIED", "Read-only file system"):
            if marker in text:
                return marker
        error = error.__cause__ or error.__context__
    return None


def no_space(error: BaseException) -> bool:
    text = f"{type(error).__name__}: {error}"
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or any(
        marker in text for marker in ("No space left", "RESOURCE_EXHAUSTED", "ENOSPC")
    )


def seal(step_dir: pathlib.Path) -> None:
    """Writes the step's file manifest atomically (a temp file, then a rename)."""
    manifest = json.dumps(file_crcs(step_dir), sort_keys=True)
    tmp = step_dir / f".{FILE_MANIFEST}.tmp"
    tmp.write_text(manifest)
    tmp.replace(step_dir / FILE_MANIFEST)


def is_sealed(step_dir: pathlib.Path) -> bool:
    return (step_dir / FILE_MANIFEST).exists()


def verify_files(step_dir: pathlib.Path) -> None:
    """Every file of the step against its sealed manifest (when the step has one)."""
    manifest_path = step_dir / FILE_MANIFEST
    if not manifest_path.exists():
        return
    try:
        expected = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptCheckpoint(f"{FILE_MANIFEST}: {e}") from None
    actual = file_crcs(step_dir)
    for name, crc in expected.items():
        if actual.get(name) != crc:
            raise CorruptCheckpoint(f"file {name} is missing or differs from its checksum")
