"""The cell registry: every recurrent cell's name, options, layer, zero state and output.

A new cell is its own file plus one line in CELLS; nothing else in the package compares a
cell's name or spells its options. Three kinds of entry:
- stacked (`residual_block=False`): `layer(spec, options, name=)` builds one layer that
  runs a whole sequence (the StackedLayer protocol below); layers are stacked directly
  (the Keras tutorial's GRU, the LSTMs, the Mogrifier GRU, the Elman RNN);
- residual (`residual_block=True`): `module` is a recurrence over a whole sequence (the
  ResidualRecurrence protocol) inside the pre-norm residual block of models/blocks.py;
- whole model (`whole_model`): a factory of the whole network between the bytes and the
  logits (the WholeModel protocol), with a carry of its own (nanoGPT's Transformer,
  whose carry is its context window).

A cell's own options are a frozen dataclass (`options`) whose fields and defaults are
the schema: config_lib derives the config block `model.<cell name>` from it, so
`--config.model.mogrifier_gru.rounds=3` reaches the Mogrifier with no other code, and an
unknown key or a wrong type is refused as every other key is. An options class checks
its values in `__post_init__` (ValueError with the field's name; config_lib turns it
into one `error:` line).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax.numpy as jnp

from charrnn_jax.models import elman, lru, min_rnn, mogrifier, rglru, transformer, wavefront
from charrnn_jax.models.flax_cells import RecurrentLayer
from charrnn_jax.models.fused_gru import FusedGRULayer


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What the model gives every stacked layer: its width and how it computes.

    gru_impl and stack are already resolved (models/backend_choices.py).
    recurrent_dropout is DropConnect on the recurrent kernel, for layers that take it.
    """

    hidden_size: int
    dtype: Any = jnp.float32
    recurrent_dropout: float = 0.0
    unroll: int = 1
    gru_impl: str = "fused"
    stack: str = "layers"


class StackedLayer(Protocol):
    """One stacked layer over a whole sequence, time-major.

    `(carry, x [time, batch, in], valid [time, batch] bool or None, tokens, train=) ->
    (new carry, ys [time, batch, H])`. Steps where `valid` is False keep the carry, so a
    padded row ends with its own carry. The carry stays float32 under bf16 compute.
    `tokens` is None unless the cell's `folds_embedding(spec)` is true: then x is the
    [256, in] embedding table and tokens [time, batch] the bytes whose rows it gathers.
    """

    def __call__(self, carry, x, valid, tokens, *, train: bool): ...


class ResidualRecurrence(Protocol):
    """A linear recurrence inside a residual block: built as
    `module(hidden_size, dtype, parallel, dot_general, name=)` and called as
    `(carry, x [time, batch, H], valid) -> (carry, ys [time, batch, H])`."""

    def __call__(self, carry, x, valid): ...


class WholeModel(Protocol):
    """A network from bytes to logits: `(tokens [batch, time], carry, valid [batch, time]
    or None, train=) -> (logits [batch, time, 256] float32, new carry)`, built as
    `factory(spec, options, num_layers=, dropout_rate=, name=)`; its zero carry is
    `zero_state(batch, options)`."""

    def __call__(self, tokens, carry, valid, *, train: bool): ...


class LayerFactory(Protocol):
    def __call__(self, spec: LayerSpec, options: Any, *, name: str) -> StackedLayer: ...


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A cell with no options of its own (no `model.<cell>` config block)."""


def _zeros(batch_size: int, hidden_size: int):
    return jnp.zeros((batch_size, hidden_size), jnp.float32)


def _pair(batch_size: int, hidden_size: int):
    return _zeros(batch_size, hidden_size), _zeros(batch_size, hidden_size)


def _itself(carry):
    return carry


def _second(carry):
    return carry[1]


def _never(spec: LayerSpec) -> bool:
    return False


def _gru_layer(spec: LayerSpec, options, *, name: str):
    """The GRU chooses its own implementation: the fused kernel or nn.scan(GRUCell)."""
    if spec.gru_impl == "fused":
        return FusedGRULayer(
            spec.hidden_size, spec.dtype, spec.recurrent_dropout, spec.unroll, name=name
        )
    return _flax_layer(nn.GRUCell)(spec, options, name=name)


def _gru_runs_fused(spec: LayerSpec) -> bool:
    return spec.gru_impl == "fused"


def _gru_stack(spec: LayerSpec):
    """The fused GRU's layers may run together as a wavefront (models/wavefront.py)."""
    return wavefront.stack if spec.gru_impl == "fused" and spec.stack == "wavefront" else None


def _layer_by_layer(spec: LayerSpec):
    return None


def _flax_layer(cell_class, hidden_of=_itself) -> LayerFactory:
    """A flax RNN cell scanned over time (models/flax_cells.py)."""

    def build(spec: LayerSpec, options, *, name: str):
        return RecurrentLayer(
            cell_class, spec.hidden_size, spec.dtype, spec.unroll, hidden_of=hidden_of, name=name
        )

    return build


def _drop_connect_if_fused(gru_impl: str) -> bool:
    return gru_impl != "flax"


def _always(gru_impl: str) -> bool:
    return True


def _no(gru_impl: str) -> bool:
    return False


@dataclasses.dataclass(frozen=True)
class Cell:
    """One registered cell.

    Attributes:
      residual_block: whether it runs inside the pre-norm residual block with a gated MLP.
      layer: stacked cells: the LayerFactory of one layer.
      module: residual cells: the recurrence class (ResidualRecurrence).
      options: the frozen dataclass of the cell's own options (config `model.<name>`).
      zero_state: (batch, hidden) -> one layer's all-zero carry, float32 even under bf16.
      hidden_of: one layer's carry -> its output h (the LSTMs' carry is (c, h)).
      folds_embedding: spec -> whether the first layer takes the embedding table and the
        bytes (the fused GRU gathers rows of embedding @ w_i instead of a GEMM).
      drop_connect: configured model.gru_impl -> whether the layer takes
        model.recurrent_dropout (DropConnect on its recurrent kernel).
      stack: stacked cells: spec -> None (layer by layer) or a function that runs the
        whole stack its own way inside CharRNN's scope (the fused GRU's wavefront;
        models/wavefront.py's `stack` has the signature).
      whole_model: whole models: the factory of the network (WholeModel).
      eval_chunk: (options, seq_len) -> bytes per call of the full-split metric (the
        carried chunk); seq_len for the recurrent cells.
      context_window: options -> the most bytes one call may read (the Transformer's
        block_size), or None where any length goes (the recurrent cells).
      check: (ModelConfig, DataConfig) -> a config error line or None, for what only
        this cell requires.
      compiler_options: (backend family ('cpu', 'gpu', 'tpu'), model.dtype) -> XLA
        options for the programs that train and score the model (how XLA compiles them,
        never what they compute; ModelConfig.compiler_options).
    """

    residual_block: bool
    layer: LayerFactory | None = None
    module: type[nn.Module] | None = None
    options: type = NoOptions
    zero_state: Callable[[int, int], Any] = _zeros
    hidden_of: Callable[[Any], Any] = _itself
    folds_embedding: Callable[[LayerSpec], bool] = _never
    drop_connect: Callable[[str], bool] = _no
    stack: Callable[[LayerSpec], Callable | None] = _layer_by_layer
    whole_model: Callable | None = None
    eval_chunk: Callable[[Any, int], int] = lambda options, seq_len: seq_len
    context_window: Callable[[Any], int | None] = lambda options: None
    check: Callable[[Any, Any], str | None] = lambda model, data: None
    compiler_options: Callable[[str, str], Mapping[str, str]] = lambda family, dtype: {}


CELLS: dict[str, Cell] = {
    "gru": Cell(
        False,
        _gru_layer,
        folds_embedding=_gru_runs_fused,
        drop_connect=_drop_connect_if_fused,
        stack=_gru_stack,
    ),
    "lstm": Cell(False, _flax_layer(nn.LSTMCell, _second), zero_state=_pair, hidden_of=_second),
    "optimized_lstm": Cell(
        False, _flax_layer(nn.OptimizedLSTMCell, _second), zero_state=_pair, hidden_of=_second
    ),
    "mogrifier_gru": Cell(
        False, mogrifier.layer, options=mogrifier.MogrifierOptions, drop_connect=_always
    ),
    "elman": Cell(False, elman.layer, options=elman.ElmanOptions),
    "transformer": Cell(
        False,
        options=transformer.TransformerOptions,
        zero_state=transformer.zero_state,
        whole_model=transformer.model,
        eval_chunk=transformer.eval_chunk,
        context_window=lambda options: options.block_size,
        check=transformer.check,
        compiler_options=transformer.compiler_options,
    ),
    "mingru": Cell(True, module=min_rnn.MinGRU),
    "minlstm": Cell(True, module=min_rnn.MinLSTM),
    "lru": Cell(True, module=lru.LRU, zero_state=lru.zero_state),
    "rglru": Cell(True, module=rglru.RGLRU),
}


def options_fields(name: str) -> dict[str, Any]:
    """{field: default} of a cell's options ({} for a cell without options)."""
    return {f.name: f.default for f in dataclasses.fields(CELLS[name].options)}


def make_options(name: str, values=None):
    """The cell's options from a mapping of its fields (missing ones take defaults).

    Raises ValueError naming the field when a value makes no sense.
    """
    values = values or {}
    return CELLS[name].options(**{k: values[k] for k in options_fields(name) if k in values})
