"""Small helpers that keep scheduling out of the training loop: what is due, SIGTERM, and
how far the host may run ahead of the device."""

from __future__ import annotations

import collections
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


class InFlight:
    """Bounds the steps dispatched but not yet finished, so a SIGTERM is honoured soon.

    JAX dispatches asynchronously: without a bound the loop enqueues every step up to the
    next metrics row before it blocks, and a stop flag set meanwhile waits for all of
    them (log_every steps: minutes for a large model, longer than a preemption notice).
    Waiting on the step `limit` behind the newest keeps the device's queue fed while the
    host stays at most `limit` steps ahead.
    """

    def __init__(self, limit: int = 2):
        self.limit = limit
        self._queue = collections.deque()

    def add(self, marker) -> None:
        """marker: a small array computed by the newest step (not a donated buffer)."""
        self._queue.append(marker)
        while len(self._queue) > self.limit:
            self._queue.popleft().block_until_ready()
