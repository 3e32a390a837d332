"""Workdir paths: local directories or bucket URLs (gs://...), as etils paths.

Orbax, the metric writers and the sampler all take these, so a run can live in a bucket
on a TPU VM as well as on a local disk.
"""

from __future__ import annotations

import os

from etils import epath


def workdir_path(workdir) -> epath.Path:
    """A local path (with ~ expanded) or a bucket URL, kept a URL (pathlib would not)."""
    return epath.Path(os.path.expanduser(os.fspath(workdir)))


def is_remote(path) -> bool:
    """A bucket URL (gs://, s3://): no absolute(), no appends."""
    return "://" in os.fspath(path)
