"""The stacked cells' layer: a registered flax cell scanned over time with nn.scan.

This is also the reference the fused GRU is tested against (model.gru_impl='flax').
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _itself(carry):
    return carry


class _MaskedCell(nn.Module):
    """One time step of a cell; rows past their length keep their old carry.

    Keeping the old carry (per-row carry selection) makes a padded row's final carry
    exactly the carry at its own length, so ragged prompts and sequences batch exactly.
    """

    cell_class: type
    hidden_size: int
    dtype: Any
    hidden_of: Callable = _itself  # A carry -> its output h (the LSTMs' carry is (c, h)).

    @nn.compact
    def __call__(self, carry, inputs):
        x, valid = inputs
        cell = self.cell_class(
            features=self.hidden_size, dtype=self.dtype, param_dtype=jnp.float32, name="cell"
        )
        new_carry, y = cell(carry, x)
        # Keep the carry in float32 so bfloat16 compute does not round the state each step.
        new_carry = jax.tree.map(lambda c: c.astype(jnp.float32), new_carry)
        if valid is not None:
            new_carry = jax.tree.map(
                lambda new, old: jnp.where(valid[:, None], new, old), new_carry, carry
            )
            y = self.hidden_of(new_carry)  # The held state.
        return new_carry, y


class RecurrentLayer(nn.Module):
    """A flax cell (nn.GRUCell, nn.LSTMCell, ...) scanned over time with its params
    broadcast to every step; a StackedLayer (models/registry.py)."""

    cell_class: type
    hidden_size: int
    dtype: Any
    unroll: int = 1  # Time steps per loop iteration (nn.scan's unroll).
    hidden_of: Callable = _itself

    @nn.compact
    def __call__(self, carry, inputs, valid=None, tokens=None, *, train: bool = False):
        """inputs: [time, batch, features]; valid: optional [time, batch] bool.

        tokens must be None (a flax cell never folds the embedding); train is unused
        (these cells have no dropout of their own)."""
        del train
        assert tokens is None, "a flax cell layer takes embedded inputs"
        cell_args = (self.cell_class, self.hidden_size, self.dtype, self.hidden_of)
        if inputs.shape[0] == 1:
            # One step (sampling): call the cell directly, skipping the scan's loop. Named
            # like the scanned module, so both paths share the same params.
            step = _MaskedCell(*cell_args, name="scan")
            carry, y = step(carry, (inputs[0], None if valid is None else valid[0]))
            return carry, y[None]
        scan = nn.scan(
            _MaskedCell,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=0,
            out_axes=0,
            unroll=self.unroll,
        )
        return scan(*cell_args, name="scan")(carry, (inputs, valid))
