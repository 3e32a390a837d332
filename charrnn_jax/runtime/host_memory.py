"""Transparent huge pages for XLA:CPU's step buffers, through glibc's malloc tunable.

XLA:CPU allocates a step's temporaries as one block (about 100 MB at E64/H256, batch 64)
and frees it when the step ends. glibc serves a block that large with a fresh mmap, so
every step faults it back in 4 KiB at a time: a quarter of the step's CPU time went to the
kernel. With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35) malloc asks for
transparent huge pages on such blocks, where the kernel grants them on request ("madvise",
the usual default): 2 MiB faults, fewer TLB misses, 1.1-1.3x training tokens/s on CPU
(benchmarks/README.md, "Huge pages on CPU"), and memory still goes back to the OS on
free. The tunable is read once at process start, hence the re-exec.
"""

from __future__ import annotations

import logging
import os
import pathlib
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_huge_page_mode() -> str | None:
    """The kernel's THP mode ('always', 'madvise' or 'never'); None where there is none."""
    try:
        text = _THP_MODE.read_text()
    except OSError:
        return None
    return text[text.find("[") + 1 : text.find("]")] if "[" in text else None


def environment_with_huge_pages(environ, *, libc=None, thp_mode=None) -> dict | None:
    """`environ` plus the tunable, or None when the tunable is set or would change nothing.

    Only 'madvise' needs it: 'always' gives large blocks huge pages already, 'never' never.
    """
    libc_name, version = libc or platform.libc_ver()
    thp_mode = thp_mode or transparent_huge_page_mode()
    tunables = environ.get("GLIBC_TUNABLES", "")
    if libc_name != "glibc" or thp_mode != "madvise" or "glibc.malloc.hugetlb" in tunables:
        return None
    if tuple(int(part) for part in version.split(".")[:2]) < (2, 35):
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def reexec_with_huge_pages() -> None:
    """Restarts this process with the tunable set, where it would help; else returns."""
    env = environment_with_huge_pages(os.environ)
    if env is None:
        return
    # Said only when asked (--verbosity=1): every command restarts this way, and a line
    # about it on every start is noise to a user.
    logging.debug("Restarting with GLIBC_TUNABLES=%s (huge pages for XLA:CPU).", TUNABLE)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
