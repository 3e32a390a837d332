"""Shared command-line plumbing: flag parsing with clear errors, quiet logs, user errors."""

from __future__ import annotations

import _thread
import contextlib
import importlib.util
import logging as logging_std
import pathlib
import re
import sys
import threading
import time

from absl import app, flags, logging

from charrnn_jax.errors import is_user_error
from charrnn_jax.runtime import host_memory

_HUGE_PAGES = flags.DEFINE_bool(
    "huge_pages",
    True,
    "Restart once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 where it helps (Linux, glibc "
    ">= 2.35, transparent huge pages on 'madvise'): XLA:CPU's per-step buffers then fault "
    "in 2 MiB pages, not 4 KiB ones (1.1-1.3x training speed on CPU; host_memory.py).",
)


class _QuietLibraries(logging_std.Filter):
    """Keeps library chatter out of the progress log: Orbax's per-save INFO lines and JAX's
    note that no TPU is present (warnings and errors still show)."""

    def filter(self, record):
        text = str(record.msg)
        if "Unable to initialize backend" in text or "read_only" in text or "read only" in text:
            return False  # No TPU here / Orbax noting that a reader opened checkpoints read-only.
        if "orbax" not in record.pathname:
            return True
        if record.levelno >= logging_std.WARNING and record.exc_info:
            # Orbax's background writers log each failure with a traceback; the trainer
            # reports the failure itself, so one line of it is enough here.
            record.msg = (record.getMessage().splitlines() or [""])[0][:300]
            record.args, record.exc_info, record.exc_text = (), None, None
        return record.levelno >= logging_std.WARNING


def _quiet_unraisable(unraisable) -> None:
    """Orbax/TensorStore coroutines abandoned after a failed read or write print 'Exception
    ignored' tracebacks at exit; the trainer has already reported that failure itself.

    A Ctrl-C that lands in such a callback (JAX's gc callback, say) would be swallowed
    here and the run would go on: it is handed back to the main thread instead."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        _thread.interrupt_main()
        return
    logging.debug("Ignored in %r: %s", unraisable.object, unraisable.exc_value)


def _unknown_override(argv: list[str], error: Exception) -> str:
    """`unknown config key 'train.num_step'; did you mean 'train.num_steps'?` from the
    locked ConfigDict's error (a KeyError, or an AttributeError wrapping one)."""
    inner = error.args[0] if error.args and isinstance(error.args[0], BaseException) else error
    text = str(inner.args[0]) if inner.args else str(inner)
    found = re.search(r'Key "([^"]+)"', text) or re.match(r"'([^']+)'", text)
    unknown = found.group(1) if found else text.strip("\"'").splitlines()[0]
    guess = re.search(r'Did you mean "([^"]+)"', text)
    key = unknown
    for arg in argv:
        name = arg.split("=", 1)[0]
        parts = name[len("--config.") :].split(".")
        if name.startswith("--config.") and unknown in parts:
            key = ".".join(parts)
            if guess:
                parts[parts.index(unknown)] = guess.group(1)
            break
    else:
        parts = [guess.group(1)] if guess else []
    hint = f"did you mean {'.'.join(parts)!r}?" if guess else "see the config file for valid keys."
    return f"unknown config key {key!r}; {hint}"


@contextlib.contextmanager
def _flag_errors(argv: list[str]):
    """A bad flag, config file, preset or `--config.x` becomes one `error:` line."""
    try:
        yield
    except flags.Error as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        if "Traceback (most recent call last):" in lines:  # get_config raised: say what.
            lines = [f"{lines[0]} {lines[-1]}"]
        sys.exit(f"error: {lines[0] if lines else e}\nPass --helpshort or --helpfull for flags.")
    except (AttributeError, KeyError) as e:  # Raised by the locked ConfigDict.
        sys.exit(f"error: {_unknown_override(argv, e)}")
    except OSError as e:  # --config=FILE that cannot be read.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        sys.exit(f"error: cannot read the config file: {lines[-1] if lines else e}")
    except Exception as e:  # noqa: BLE001 - get_config(preset) rejected the flags' values.
        sys.exit(f"error: bad --config: {type(e).__name__}: {_first_line(e)}")


def require_non_empty_paths(*names: str) -> None:
    """These path flags may not be empty: `--workdir=$UNSET` would train into the current
    directory. Checked at parse time, so it is one `error:` line before anything runs."""
    for name in names:
        flags.register_validator(
            name,
            lambda value: value is None or bool(str(value).strip()),
            message=f"--{name} must be a non-empty path (is a shell variable unset?).",
        )


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with bad flags as one line (see _flag_errors), not a traceback, and
    `--config=NAME[:preset]` naming a shipped experiment (see named_config)."""
    argv = [_with_named_config(arg) for arg in argv]
    with _flag_errors(argv):
        return flags.FLAGS(argv)


def shipped_experiments() -> dict[str, pathlib.Path]:
    """{name: file} of the experiment configs: installed as charrnn_jax.experiments (the
    wheel ships experiments/ there), or a clone's experiments/ folder."""
    folders = [pathlib.Path(__file__).resolve().parents[2] / "experiments"]
    spec = importlib.util.find_spec("charrnn_jax.experiments")
    if spec is not None and spec.submodule_search_locations:
        folders += [pathlib.Path(p) for p in spec.submodule_search_locations]
    found = {}
    for folder in folders:
        for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
            if path.stem != "__init__":
                found.setdefault(path.stem, path)
    return found


def named_config(value: str) -> str:
    """`shakespeare:tiny` -> the shipped file's path with the preset, so the design card's
    command works after `pip install` from any directory; a path is left as it is."""
    name, sep, preset = value.partition(":")
    if "/" in name or name.endswith(".py") or pathlib.Path(name).exists():
        return value
    shipped = shipped_experiments()
    if name not in shipped:
        sys.exit(
            f"error: --config={value}: no file {name!r} here and no shipped experiment of "
            f"that name (shipped: {', '.join(shipped) or 'none'})."
        )
    return f"{shipped[name]}{sep}{preset}"


def _with_named_config(arg: str) -> str:
    if arg.startswith("--config=") and arg != "--config=":
        return "--config=" + named_config(arg[len("--config=") :])
    return arg


def config_value(config_flag, check=None):
    """The value of a config_flags flag, or one `error:` line. A file that failed to load
    (missing, unknown preset) is held as a proxy that raises on first attribute access.

    check: config -> None, raising a UserError for a config the file should not have
    built (config_lib.check_declared: a key base_config() does not declare).
    """
    with _flag_errors(sys.argv):
        config = config_flag.value
        config.get  # noqa: B018 - raises here, not later, for a config that failed to load.
    if type(config).__name__ != "ConfigDict":
        sys.exit(
            f"error: get_config in {_config_file(config_flag)} returned a "
            f"{type(config).__name__}; it must return an ml_collections.ConfigDict "
            f"(config_lib.base_config() with your changes)."
        )
    if check is not None:
        exit_on_user_error(check, config, _config_file(config_flag))
    return config


def _config_file(config_flag) -> str:
    """The file of a --config flag, without its ':preset'."""
    from ml_collections import config_flags  # Only where a config file is read.

    return config_flags.get_config_filename(flags.FLAGS[config_flag.name])


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")


def run(main) -> None:
    """app.run with our flag parser, restarted first with huge pages where that helps."""

    def main_with_huge_pages(argv):
        if _HUGE_PAGES.value:
            host_memory.reexec_with_huge_pages()
        return main(argv)

    app.run(main_with_huge_pages, flags_parser=parse_flags)


def _one_line_thread_error(args) -> None:
    """A background thread's failure (Orbax's async writers) as one warning line; the main
    thread reraises it where it waits for that thread, and reports it there."""
    first = next((ln for ln in str(args.exc_value).splitlines() if ln.strip()), "")
    name = args.thread.name if args.thread else "?"
    logging.warning("Background thread %s failed: %s: %s", name, args.exc_type.__name__, first)


class _PlainFormatter(logging_std.Formatter):
    """`07:17:02 message` (and `warning: message`): what a user reads, without absl's
    thread id and source line. `--log_prefix` brings absl's own format back."""

    def format(self, record):
        text = super().format(record)
        if record.levelno >= logging_std.WARNING:
            return f"{time.strftime('%H:%M:%S')} {record.levelname.lower()}: {text}"
        return f"{time.strftime('%H:%M:%S')} {text}"


_LOG_PREFIX = flags.DEFINE_bool(
    "log_prefix", False, "absl's full log prefix (level, date, thread, file:line) on each line."
)


def setup_logging() -> None:
    """Quiet library chatter and plain lines on stderr. `--verbosity=-1` keeps only
    warnings and errors (a sweep's logs), `--verbosity=1` adds debug lines."""
    handler = logging.get_absl_handler()
    handler.addFilter(_QuietLibraries())
    if not _LOG_PREFIX.value:
        handler.setFormatter(_PlainFormatter())
    # asyncio's "exception was never retrieved" repeats, as a traceback, a checkpoint write
    # failure that checkpointing.Checkpointer turns into one error line.
    logging_std.getLogger("asyncio").setLevel(logging_std.CRITICAL)
    sys.unraisablehook = _quiet_unraisable
    threading.excepthook = _one_line_thread_error


def failure_line(error: BaseException) -> str | None:
    """The one line a failure the user can act on gets, or None for a bug (traceback)."""
    if is_user_error(error):
        return str(error)
    if isinstance(error, OSError):  # A full disk, a vanished directory, permissions.
        return f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    text = str(error)
    if "RESOURCE_EXHAUSTED" in text or "Out of memory" in text:
        first = next((line for line in text.splitlines() if line.strip()), text)
        return (
            f"out of memory ({first.strip()[:200]}); lower train.batch_size or data.seq_len, "
            f"or use a smaller model."
        )
    return None


def exit_on_user_error(fn, *args, **kwargs):
    """Calls fn; a failure the user can act on becomes `error: ...` on stderr, exit status 1;
    Ctrl-C before the training loop takes it over (start-up, data, compile) is one line
    and exit status 130 (the trainer has removed a workdir it had just created)."""
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); a run that had started is resumable.", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        line = failure_line(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(1)


def trainer_command(
    config_arg: str, workdir, overrides: dict | None = None, *extra: str, python: str = ""
) -> list[str]:
    """`python -m charrnn_jax.main` as an argv: the one way launchers, benchmarks and tests
    start the real trainer in a subprocess. `overrides` become --config.KEY=VALUE flags."""
    return trainer_argv(
        f"--config={config_arg}",
        f"--workdir={workdir}",
        *(f"--config.{key}={value}" for key, value in (overrides or {}).items()),
        *extra,
        python=python,
    )


def trainer_argv(*flags: str, python: str = "") -> list[str]:
    """`python -m charrnn_jax.main FLAGS...` (see trainer_command)."""
    return [python or sys.executable, "-m", "charrnn_jax.main", *flags]
