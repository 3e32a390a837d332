"""CharRNN: Embed -> stacked nn.scan'd recurrent cells -> Dense(256), with the carry in and out.

The carry is explicit so training (zero carry), priming a prompt and sampling one byte at
a time all run the same module, like the Keras tutorial's `return_state=True` model.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

VOCAB_SIZE = 256

CELL_TYPES = {
    "gru": nn.GRUCell,
    "lstm": nn.LSTMCell,
    "optimized_lstm": nn.OptimizedLSTMCell,
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

Carry = tuple[Any, ...]  # One entry per layer: h for GRU, (c, h) for LSTMs.


def zero_carry(cell_type: str, num_layers: int, batch_size: int, hidden_size: int) -> Carry:
    """The all-zero starting state; kept in float32 even for bfloat16 compute."""
    h = jnp.zeros((batch_size, hidden_size), jnp.float32)
    layer = h if cell_type == "gru" else (h, h)
    return tuple(layer for _ in range(num_layers))


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
        cell = CELL_TYPES[self.cell_type](
            features=self.hidden_size, dtype=self.dtype, param_dtype=jnp.float32, name="cell"
        )
        new_carry, y = cell(carry, x)
        # Keep the carry in float32 so bfloat16 compute does not round the state each step.
        new_carry = jax.tree.map(lambda c: c.astype(jnp.float32), new_carry)
        if valid is not None:
            new_carry = jax.tree.map(
                lambda new, old: jnp.where(valid[:, None], new, old), new_carry, carry
            )
        return new_carry, y


class RecurrentLayer(nn.Module):
    """A cell scanned over time with its params broadcast to every step."""

    cell_type: str
    hidden_size: int
    dtype: Any

    @nn.compact
    def __call__(self, carry, inputs, valid=None):
        """inputs: [batch, time, features]; valid: optional [batch, time] bool."""
        if inputs.shape[1] == 1:
            # One step (sampling): call the cell directly, skipping the scan's loop. Named
            # like the scanned module, so both paths share the same params.
            step = _MaskedCell(self.cell_type, self.hidden_size, self.dtype, name="scan")
            carry, y = step(carry, (inputs[:, 0], None if valid is None else valid[:, 0]))
            return carry, y[:, None]
        scan = nn.scan(
            _MaskedCell,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        return scan(self.cell_type, self.hidden_size, self.dtype, name="scan")(
            carry, (inputs, valid)
        )


class CharRNN(nn.Module):
    """Byte-level recurrent language model.

    Attributes:
      embed_dim: size of each byte's embedding.
      hidden_size: width of every recurrent layer.
      num_layers: number of stacked recurrent layers.
      cell_type: 'gru' (default), 'lstm' or 'optimized_lstm'.
      dropout_rate: dropout on each recurrent layer's output during training.
      dtype: compute dtype; params stay float32.
      num_classes: 0 for a language model; else a many-to-one classifier whose logits come
        from the last layer's hidden state at each row's length (padding never counts).
    """

    embed_dim: int
    hidden_size: int
    num_layers: int = 1
    cell_type: str = "gru"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    num_classes: int = 0

    def initialize_carry(self, batch_size: int) -> Carry:
        return zero_carry(self.cell_type, self.num_layers, batch_size, self.hidden_size)

    @nn.compact
    def __call__(
        self, tokens, carry: Carry | None = None, *, lengths=None, valid=None, train: bool = False
    ):
        """Runs the model over a batch of byte sequences.

        Args:
          tokens: [batch, time] integer bytes.
          carry: per-layer state from a previous call, or None for zeros.
          lengths: optional [batch] valid lengths; the returned carry of each row is its
            carry after `lengths[row]` bytes (logits past that are meaningless).
          valid: optional [batch, time] bool, a general form of `lengths`: steps where it
            is False leave the carry unchanged (e.g. left padding).
          train: enables dropout (needs a 'dropout' rng).

        Returns:
          logits [batch, time, 256] float32 (classifiers: [batch, num_classes]) and the
          new carry.
        """
        batch, time = tokens.shape
        if carry is None:
            carry = self.initialize_carry(batch)
        if valid is None and lengths is not None:
            valid = jnp.arange(time)[None, :] < lengths[:, None]
        x = nn.Embed(VOCAB_SIZE, self.embed_dim, dtype=self.dtype, name="embed")(tokens)
        new_carry = []
        for i in range(self.num_layers):
            layer_carry, x = RecurrentLayer(
                self.cell_type, self.hidden_size, self.dtype, name=f"rnn_{i}"
            )(carry[i], x, valid)
            new_carry.append(layer_carry)
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if self.num_classes:
            last = new_carry[-1] if self.cell_type == "gru" else new_carry[-1][1]
            if self.dropout_rate > 0:
                last = nn.Dropout(self.dropout_rate, deterministic=not train)(last)
            logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(last)
            return logits.astype(jnp.float32), tuple(new_carry)
        logits = nn.Dense(VOCAB_SIZE, dtype=self.dtype, name="head")(x)
        return logits.astype(jnp.float32), tuple(new_carry)


def from_config(model_config) -> CharRNN:
    """Builds the model from the config's `model` block."""
    return CharRNN(
        embed_dim=model_config.embed_dim,
        hidden_size=model_config.hidden_size,
        num_layers=model_config.num_layers,
        cell_type=model_config.cell,
        dropout_rate=model_config.dropout,
        dtype=DTYPES[model_config.dtype],
        num_classes=model_config.get("num_classes", 0),
    )
