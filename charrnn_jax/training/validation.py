"""The trainer's val pass: every eval batch through one compiled program, and a SIGTERM
seen between device calls.

The full-split metric (the default) arrives as consecutive time segments of the same
streams (data.windows.stream_eval_segments, at most eval.bytes_per_call bytes each). The
carry passes from one segment to the next, so the sums are those of one call over the
whole split, while a stop flag set meanwhile ends the pass after the call in flight
instead of after the whole split: a 200 MB corpus's val split took minutes on a CPU,
longer than a preemption notice. Fixed windows and example batches stand alone and are
stoppable the same way. The loop saves an interrupted pass as pending (training/loop.py)
and the resumed run completes it, so its rows are those of an uninterrupted run.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import logging

from charrnn_jax.inference import scoring
from charrnn_jax.training import cadence


def compile_ahead(name: str, jitted, *args):
    """`jitted` compiled before the loop, saying so: it takes seconds to minutes."""
    logging.info("Compiling the %s...", name)
    started = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    logging.info("Compiled the %s in %.1f s.", name, time.perf_counter() - started)
    return compiled


class Validation:
    """The val batches of a group and the program that scores them.

    Args:
      programs: the group's variant_groups.Programs.
      batches: global eval batches; with `carried`, time segments of the same streams.
      stoppable: whether a stop flag ends a pass early (single process only: processes
        that saw the signal at different calls would leave the others' collectives
        waiting).
    """

    def __init__(
        self, programs, batches: list, *, carried: bool, stoppable: bool, nanogpt_tokens=None
    ):
        self.programs = programs
        self.batches = batches
        self.carried = carried
        self.stoppable = stoppable
        self._score = programs.eval_segment if carried else programs.eval
        # eval.nanogpt_estimate: the val split's bytes, for nanoGPT's estimator.
        self.nanogpt_tokens = nanogpt_tokens

    def nanogpt_estimate(self, params, model) -> float:
        """nanoGPT's estimate_loss() of val for one variant's params (seed 0)."""
        return scoring.score_nanogpt(jax.device_get(params), model, self.nanogpt_tokens)["loss"]

    def compile(self, params) -> None:
        """Compiles the scoring program ahead of the loop, for the first batch's shape."""
        first = self.batches[0]
        if self.carried:
            carry = jax.eval_shape(self.programs.zero_carry, params, first)
            self._score = compile_ahead("evaluation", self._score, params, first, carry)
        else:
            self._score = compile_ahead("evaluation", self._score, params, first)

    def run(self, params, stop) -> dict | None:
        """Every batch's sums added up and fetched once; None if `stop` was set first.

        At most one call waits behind the one running, so a stop is seen within about
        one call's time.
        """
        in_flight = cadence.InFlight(limit=1)
        carry = self.programs.zero_carry(params, self.batches[0]) if self.carried else None
        sums = []
        for batch in self.batches:
            if self.stoppable and stop.is_set():
                return None
            if self.carried:
                piece, carry = self._score(params, batch, carry)
            else:
                piece = self._score(params, batch)
            sums.append(piece)
            in_flight.add(piece["weight"])
        return jax.device_get(jax.tree.map(lambda *x: jnp.sum(jnp.stack(x), axis=0), *sums))
