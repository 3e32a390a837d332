"""The cell registry: every recurrent cell's name, module, zero state and how its output is read.

A new cell is its own file plus one line in CELLS; nothing else in the package compares a
cell's name. Two kinds of cell:
- stacked (`residual_block=False`): a flax RNN cell scanned over time with nn.scan, or a
  layer that scans a whole sequence itself (`sequence_layer`), layers stacked directly
  (the Keras tutorial's GRU, the LSTMs, the Mogrifier GRU);
- residual (`residual_block=True`): a recurrence over a whole sequence, `(carry, x [time,
  batch, H], valid) -> (carry, y)`, inside the pre-norm residual block of models/blocks.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from charrnn_jax.models import lru, min_rnn, mogrifier, rglru


def _zeros(batch_size: int, hidden_size: int):
    return jnp.zeros((batch_size, hidden_size), jnp.float32)


def _pair(batch_size: int, hidden_size: int):
    return _zeros(batch_size, hidden_size), _zeros(batch_size, hidden_size)


def _itself(carry):
    return carry


def _second(carry):
    return carry[1]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One registered cell.

    Attributes:
      module: the flax cell (stacked) or recurrence (residual) class.
      residual_block: whether it runs inside the pre-norm residual block with a gated MLP.
      zero_state: (batch, hidden) -> one layer's all-zero carry, float32 even under bf16.
      hidden_of: one layer's carry -> its output h (the LSTMs' carry is (c, h)).
      fused: whether model.gru_impl='fused' (the hand-written kernel) serves this cell.
      sequence_layer: stacked cells only: `module` runs a whole sequence itself,
        `(carry, x [time, batch, in], valid, train=) -> (carry, ys)`, rather than one
        step under nn.scan; such a layer takes model.recurrent_dropout (DropConnect).
    """

    module: type[nn.Module]
    residual_block: bool
    zero_state: Callable[[int, int], Any] = _zeros
    hidden_of: Callable[[Any], Any] = _itself
    fused: bool = False
    sequence_layer: bool = False


CELLS: dict[str, Cell] = {
    "gru": Cell(nn.GRUCell, residual_block=False, fused=True),
    "lstm": Cell(nn.LSTMCell, residual_block=False, zero_state=_pair, hidden_of=_second),
    "optimized_lstm": Cell(
        nn.OptimizedLSTMCell, residual_block=False, zero_state=_pair, hidden_of=_second
    ),
    "mogrifier_gru": Cell(mogrifier.MogrifierGRULayer, residual_block=False, sequence_layer=True),
    "mingru": Cell(min_rnn.MinGRU, residual_block=True),
    "minlstm": Cell(min_rnn.MinLSTM, residual_block=True),
    "lru": Cell(lru.LRU, residual_block=True, zero_state=lru.zero_state),
    "rglru": Cell(rglru.RGLRU, residual_block=True),
}
