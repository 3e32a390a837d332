"""Shared command-line plumbing: flag parsing with clear errors, quiet logs, user errors."""

from __future__ import annotations

import logging as logging_std
import sys

from absl import app, flags, logging

_HUGE_PAGES = flags.DEFINE_bool(
    "huge_pages",
    True,
    "Restart once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 where it helps (Linux, glibc "
    ">= 2.35, transparent huge pages on 'madvise'): XLA:CPU's per-step buffers then fault "
    "in 2 MiB pages, not 4 KiB ones (1.1-1.3x training speed on CPU; host_memory.py).",
)


class _QuietLibraries(logging_std.Filter):
    """Keeps Orbax's per-save INFO chatter out of the progress log (warnings still show)."""

    def filter(self, record):
        return record.levelno >= logging_std.WARNING or "orbax" not in record.pathname


def _unknown_override(argv: list[str], error: Exception) -> str:
    key = str(error).strip("\"'")
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name.startswith("--config.") and key in name.split(".")[1:]:
            return f"unknown config key {name[len('--config.') :]!r} (from {arg})"
    return f"unknown config key {key!r}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but an unknown `--config.x` gives one line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}\nPass --helpshort or --helpfull to see help on flags.")
    except (AttributeError, KeyError) as e:  # Raised by the locked ConfigDict.
        sys.exit(f"error: {_unknown_override(argv, e)}; see the config file for valid keys.")


def run(main) -> None:
    """app.run with our flag parser, restarted first with huge pages where that helps."""

    def main_with_huge_pages(argv):
        if _HUGE_PAGES.value:
            from charrnn_jax import host_memory

            host_memory.reexec_with_huge_pages()
        return main(argv)

    app.run(main_with_huge_pages, flags_parser=parse_flags)


def setup_logging() -> None:
    logging.get_absl_handler().addFilter(_QuietLibraries())


def exit_on_user_error(fn, *args, **kwargs):
    """Calls fn; a user error becomes `error: ...` on stderr and exit status 1."""
    from charrnn_jax.errors import USER_ERRORS

    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
