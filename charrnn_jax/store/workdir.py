"""The workdir: one owner for every path and file name of a run and of a sweep.

A run's identity is its workdir (config.json, metrics.jsonl, tensorboard/, checkpoints/),
so every module that reads or writes one asks a `Workdir` for the path instead of
spelling a file name. Workdirs are etils paths: a local directory or a bucket URL
(gs://...), which Orbax, the metric writers and the sampler all accept.

`WorkdirLock` makes a workdir single-writer: a second trainer fails at once with one
line naming the holder, and a lock left by a killed process is never an obstacle (the
kernel drops an flock with its holder).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from absl import logging
from etils import epath

from charrnn_jax.errors import UserError

PARTIAL = ".partial"  # Suffix of a --restart's folder while it is being filled.


def workdir_path(workdir) -> epath.Path:
    """A local path (with ~ expanded) or a bucket URL, kept a URL (pathlib would not)."""
    return epath.Path(os.path.expanduser(os.fspath(workdir)))


def is_remote(path) -> bool:
    """A bucket URL (gs://, s3://): no absolute(), no appends, no file locks."""
    return "://" in os.fspath(path)


def write_atomic(path, text: str) -> None:
    """Writes a whole file so that a kill or a full disk leaves the old file or the new
    one, never a cut one: a temp file beside it, fsync, then a rename (local paths; a
    bucket object is replaced whole by its store already)."""
    path = workdir_path(path)
    if is_remote(path):
        path.write_text(text)
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(directory) -> None:
    """The rename itself survives a power cut once the directory is synced (POSIX)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def append_line(path, line: str) -> None:
    """Appends one line to a local JSONL file, starting it on a fresh line if the last
    one was cut (a kill mid-append), so a cut line never swallows the next record."""
    path = workdir_path(path)
    before = path.read_text() if path.exists() else ""
    if before and not before.endswith("\n"):
        before += "\n"
    write_atomic(path, before + line.rstrip("\n") + "\n")


class Workdir:
    """Names of everything a run or a sweep root holds; creates nothing until `prepare`."""

    def __init__(self, path):
        self.path = path.path if isinstance(path, Workdir) else workdir_path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"Workdir({os.fspath(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_remote(self) -> bool:
        return is_remote(self.path)

    # A run's files.
    @property
    def config_file(self) -> epath.Path:
        return self.path / "config.json"

    @property
    def metrics_file(self) -> epath.Path:
        return self.path / "metrics.jsonl"

    @property
    def data_file(self) -> epath.Path:
        """The corpus the run trained on: each file's size and sha256 (training/identity.py)."""
        return self.path / "data.json"

    @property
    def history_file(self) -> epath.Path:
        """Every start's config and what it changed (training/identity.py)."""
        return self.path / "config_history.jsonl"

    @property
    def tensorboard_dir(self) -> epath.Path:
        return self.path / "tensorboard"

    @property
    def profile_dir(self) -> epath.Path:
        """jax.profiler traces of `profile.steps` (training/profiling.py)."""
        return self.path / "profile"

    @property
    def checkpoint_dir(self) -> epath.Path:
        """Absolute for local paths: Orbax requires it."""
        return (self.path if self.is_remote else self.path.absolute()) / "checkpoints"

    @property
    def best_checkpoint_dir(self) -> epath.Path:
        """The params of the step with the lowest val loss so far (`--step=best`)."""
        return self.checkpoint_dir.parent / "checkpoints_best"

    @property
    def quarantine_dir(self) -> epath.Path:
        """Checkpoints that failed to read back or verify, kept for inspection."""
        return self.checkpoint_dir.parent / "checkpoints_unreadable"

    @property
    def lock_file(self) -> epath.Path:
        return self.path / "trainer.lock"

    @property
    def sweep_status_file(self) -> epath.Path:
        """One launched run's status (local/SLURM launchers)."""
        return self.path / "sweep_status.json"

    @property
    def launch_log(self) -> epath.Path:
        """A launched run's stdout and stderr (local launcher)."""
        return self.path / "launch.log"

    # A sweep root's files.
    @property
    def sweep_summary_file(self) -> epath.Path:
        return self.path / "sweep_summary.json"

    def run(self, name: str) -> Workdir:
        """The workdir of one run of a sweep rooted here."""
        return Workdir(self.path / name)

    def has_checkpoints(self) -> bool:
        """Any checkpoint, best, readable or quarantined: a reason never to start from zero."""
        return any(
            d.is_dir() and any(child.name.isdigit() for child in d.iterdir())
            for d in (self.checkpoint_dir, self.best_checkpoint_dir, self.quarantine_dir)
        )

    def prepare(self) -> bool:
        """Creates the directory and checks it is writable; returns True if it was created."""
        if not self.is_remote and os.path.islink(self.path) and not self.path.exists():
            raise UserError(
                f"Workdir {self.path} is a symbolic link to {os.readlink(self.path)}, which "
                f"does not exist: create its target, or remove the link."
            )
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write_test.{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise UserError(f"Workdir {self.path} is not writable: {e.strerror or e}.") from None
        return created

    def _outputs(self) -> list[epath.Path]:
        """Everything a run writes into its workdir (the lock aside)."""
        named = [
            self.checkpoint_dir,
            self.best_checkpoint_dir,
            self.quarantine_dir,
            self.metrics_file,
            self.tensorboard_dir,
            self.config_file,
            self.history_file,
            self.data_file,
        ]
        damaged = list(self.path.glob("metrics.jsonl.damaged-*")) if self.path.exists() else []
        return [p for p in named + damaged if p.exists()]

    def half_restart(self) -> epath.Path | None:
        """The `replaced-*.partial/` folder of a --restart that was interrupted, if any."""
        if not self.path.exists():
            return None
        return next(iter(sorted(self.path.glob(f"replaced-*{PARTIAL}"))), None)

    def check_no_half_restart(self) -> None:
        """A plain rerun after an interrupted --restart would mix the two runs: refuse."""
        if (partial := self.half_restart()) is not None:
            raise UserError(
                f"A --restart of {self.path} was interrupted ({partial.name} holds part of the "
                f"old run); rerun with --restart to finish moving it aside, or move it back."
            )

    def set_aside(self, reason: str) -> epath.Path | None:
        """Moves a previous run's outputs into `replaced-<time>/` (--restart): kept, not lost.

        The moves go into `replaced-<time>.partial/`, renamed once all are in: a kill at
        any point leaves either that journal folder (a plain rerun refuses; --restart
        finishes the move) or the whole old run in `replaced-<time>/`.
        """
        partial = self.half_restart()
        outputs = self._outputs()
        if not outputs and partial is None:
            return None
        if partial is None:
            partial = self.path / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}{PARTIAL}"
            partial.mkdir(parents=True, exist_ok=True)
        for p in outputs:
            p.rename(partial / p.name)
        target = partial.parent / partial.name.removesuffix(PARTIAL)
        partial.rename(target)
        logging.warning("%s: moved the previous run's outputs to %s.", reason, target)
        return target


class WorkdirLock:
    """An exclusive flock on the workdir's directory itself, with the holder's pid and
    host in `<workdir>/trainer.lock` for the message a second trainer gets.

    The directory, not the file, is what is locked, so deleting trainer.lock (a cleanup
    script, a user tidying up) cannot let a second trainer in: the lock lives as long as
    the directory and its holder. The kernel releases an flock when its process dies, so
    a `kill -9`'d trainer leaves no stale lock. Bucket workdirs (gs://) have no file
    locks: there nothing is locked, and a warning says so.
    """

    def __init__(self, workdir: Workdir):
        self.workdir = workdir
        self._file = None
        self._dir_fd: int | None = None

    def acquire(self) -> WorkdirLock:
        if self.workdir.is_remote:
            logging.warning(
                "%s is a bucket: it cannot be locked; run one trainer on it at a time.",
                self.workdir.path,
            )
            return self
        dir_fd = os.open(os.fspath(self.workdir.path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(dir_fd)
            lock_file = self.workdir.lock_file
            holder = (lock_file.read_text().strip() if lock_file.exists() else "") or "{}"
            raise UserError(
                f"Workdir {self.workdir.path} is in use by another trainer ({_describe(holder)})"
                f"; wait for it to finish, stop it, or use another workdir."
            ) from None
        self._dir_fd = dir_fd
        path = os.fspath(self.workdir.lock_file)
        handle = open(path, "a+")  # noqa: SIM115 - held open for the run's lifetime.
        handle.seek(0)
        handle.truncate()
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}
        handle.write(json.dumps(holder) + "\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._dir_fd is not None:
            fcntl.flock(self._dir_fd, fcntl.LOCK_UN)
            os.close(self._dir_fd)
            self._dir_fd = None


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
