"""The stacked cells' layer: a registered flax cell scanned over time with nn.scan.

This is also the reference the fused GRU is tested against (model.gru_impl='flax').
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from charrnn_jax.models import registry


class _MaskedCell(nn.Module):
    """One time step of a cell; rows past their length keep their old carry.

    Keeping the old carry (per-row carry selection) makes a padded row's final carry
    exactly the carry at its own length, so ragged prompts and sequences batch exactly.
    """

    cell_type: str
    hidden_size: int
    dtype: Any

    @nn.compact
    def __call__(self, carry, inputs):
        x, valid = inputs
        spec = registry.CELLS[self.cell_type]
        cell = spec.module(
            features=self.hidden_size, dtype=self.dtype, param_dtype=jnp.float32, name="cell"
        )
        new_carry, y = cell(carry, x)
        # Keep the carry in float32 so bfloat16 compute does not round the state each step.
        new_carry = jax.tree.map(lambda c: c.astype(jnp.float32), new_carry)
        if valid is not None:
            new_carry = jax.tree.map(
                lambda new, old: jnp.where(valid[:, None], new, old), new_carry, carry
            )
            y = spec.hidden_of(new_carry)  # The held state.
        return new_carry, y


class RecurrentLayer(nn.Module):
    """A cell scanned over time with its params broadcast to every step."""

    cell_type: str
    hidden_size: int
    dtype: Any
    unroll: int = 1  # Time steps per loop iteration (nn.scan's unroll).

    @nn.compact
    def __call__(self, carry, inputs, valid=None):
        """inputs: [time, batch, features]; valid: optional [time, batch] bool."""
        if inputs.shape[0] == 1:
            # One step (sampling): call the cell directly, skipping the scan's loop. Named
            # like the scanned module, so both paths share the same params.
            step = _MaskedCell(self.cell_type, self.hidden_size, self.dtype, name="scan")
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
        return scan(self.cell_type, self.hidden_size, self.dtype, name="scan")(
            carry, (inputs, valid)
        )
