"""`--config.profile.steps=START:COUNT`: a jax.profiler trace of those training steps.

The trace goes to `<workdir>/profile/` (store/workdir.py), in TensorBoard's profile
format and as a Perfetto trace (`*.trace.json.gz`): open it at ui.perfetto.dev, or with
`pip install tensorboard tensorboard-plugin-profile` and `tensorboard --logdir=WORKDIR/profile`.
Steps are dispatched asynchronously, so the trace ends only after the last profiled step
has finished on the device (one block_until_ready, once, at the end of the range).
"""

from __future__ import annotations

import jax
from absl import logging

from charrnn_jax.store.workdir import Workdir


def parse_steps(spec: str) -> tuple[int, int]:
    """'START:COUNT' -> (start, count); '' -> (0, 0), no trace. Raises ValueError."""
    if not spec:
        return 0, 0
    start, sep, count = spec.partition(":")
    if not sep or not start.isdigit() or not count.isdigit() or int(count) < 1:
        raise ValueError(f"profile.steps must be '' or 'START:COUNT' (e.g. '100:5'), got {spec!r}.")
    return int(start), int(count)


class StepProfiler:
    """Starts the trace before step START runs and stops it after step START+COUNT-1
    (steps counted from 0, as the loop counts them); process 0 only."""

    def __init__(self, spec: str, workdir, *, enabled: bool = True):
        self.start, self.count = parse_steps(spec)
        self.directory = Workdir(workdir).profile_dir
        self.enabled = enabled and self.count > 0
        self.active = False

    def before(self, step: int) -> None:
        if self.enabled and step == self.start:
            jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step + 1 == self.start + self.count:
            jax.block_until_ready(state)
            self.stop()
            logging.info(
                "Profiled steps %d-%d into %s (open the *.trace.json.gz at ui.perfetto.dev).",
                self.start,
                self.start + self.count - 1,
                self.directory,
            )

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
