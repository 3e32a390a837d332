"""Small helpers that keep scheduling out of the training loop: what is due, and SIGTERM."""

from __future__ import annotations

import dataclasses
import signal
import threading


@dataclasses.dataclass(frozen=True)
class Due:
    """What the loop does after a step: write a metrics row, evaluate, save."""

    log: bool
    eval: bool
    save: bool

    def __bool__(self) -> bool:
        return self.log or self.eval or self.save


def due(train_config, done: int, *, preempted: bool) -> Due:
    """After `done` steps: rows every log_every, val every eval_every, checkpoints every
    checkpoint_every, all three at the last step; a preemption only saves (the rows of a
    resumed run must be those of an uninterrupted one)."""
    t = train_config
    last = done == t.num_steps
    evaluate = done % t.eval_every == 0 or last
    return Due(
        log=done % t.log_every == 0 or last or evaluate,  # A val loss always gets its row.
        eval=evaluate,
        save=done % t.checkpoint_every == 0 or last or preempted,
    )


class StopFlag:
    """Set by SIGTERM (or SIGINT); checked once per step without any device sync."""

    def __init__(self):
        self.event = threading.Event()
        self._previous = {}

    def install(self) -> StopFlag:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def is_set(self) -> bool:
        return self.event.is_set()
