"""CharRNN: Embed -> stacked recurrent layers (or residual blocks) -> Dense(256), carry in and out.

The carry is explicit so training (zero carry), priming a prompt and sampling one byte at
a time all run the same module, like the Keras tutorial's `return_state=True` model.
Which layer a cell gets (a stacked flax cell, the fused GRU, or a residual block around a
linear recurrence) is read from the cell registry (models/registry.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from charrnn_jax.models import backend_choices, blocks, registry, scans
from charrnn_jax.models.precision import dense_dot_general

VOCAB_SIZE = 256

CELL_TYPES = tuple(registry.CELLS)
SCAN_MODES = ("auto", *scans.SCAN_MODES)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
GRU_IMPLS = ("auto", *backend_choices.GRU_IMPLS)

Carry = tuple[Any, ...]  # Per layer: h (GRU, minGRU, minLSTM), (c, h) (LSTMs), (re, im) (LRU).


def zero_carry(
    cell_type: str, num_layers: int, batch_size: int, hidden_size: int, options=None
) -> Carry:
    """The all-zero starting state; kept in float32 even for bfloat16 compute (a whole
    model's: its own zero state, e.g. the Transformer's empty context).

    Every leaf is a buffer of its own, so a carry built outside jit can be donated.
    """
    cell = registry.CELLS[cell_type]
    if cell.whole_model is not None:
        options = options if options is not None else registry.make_options(cell_type)
        return (cell.zero_state(batch_size, options),)
    return tuple(cell.zero_state(batch_size, hidden_size) for _ in range(num_layers))


class CharRNN(nn.Module):
    """Byte-level recurrent language model.

    Attributes:
      embed_dim: size of each byte's embedding.
      hidden_size: width of every recurrent layer.
      num_layers: number of stacked recurrent layers.
      cell_type: a name in the cell registry (models/registry.py); 'gru' by default.
      dropout_rate: dropout on each recurrent layer's output during training (residual
        blocks: on each branch's output).
      dtype: compute dtype; params stay float32.
      gru_impl: 'fused' (hoisted input projection, hand-written backward pass), 'flax'
        (nn.scan over nn.GRUCell, the reference) or 'auto' (this backend's choice,
        models/backend_choices.py); same params, same function.
      num_classes: 0 for a language model; else a many-to-one classifier whose logits come
        from the last layer's hidden state at each row's length (padding never counts).
      input_dropout: dropout on the byte embeddings during training.
      recurrent_dropout: layers whose registry entry takes DropConnect (the fused and
        the Mogrifier GRU): DropConnect on each layer's recurrent kernel.
      variational_dropout: one dropout mask per sequence, shared by all its time steps
        (Gal and Ghahramani 2016, "A Theoretically Grounded Application of Dropout in
        Recurrent Neural Networks", Section 4), for the input and between-layer dropout.
      parallel_scan: residual blocks only: associative scan over time (True) or lax.scan.
      mlp_ratio: residual blocks only: the gated MLP's width over hidden_size.
      unroll: stacked layers: time steps per iteration of the time loop (lax.scan's
        unroll), forward and backward; the same function, fewer and larger loop bodies.
      options: the cell's own options (its registry entry's `options` dataclass, e.g.
        the Mogrifier's rounds and rank), or None for the cell's defaults.
    """

    embed_dim: int
    hidden_size: int
    num_layers: int = 1
    cell_type: str = "gru"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    num_classes: int = 0
    gru_impl: str = "fused"
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    variational_dropout: bool = False
    parallel_scan: bool = False
    mlp_ratio: int = 2
    unroll: int = 1
    options: Any = None

    def initialize_carry(self, batch_size: int) -> Carry:
        return zero_carry(
            self.cell_type, self.num_layers, batch_size, self.hidden_size, self._options()
        )

    @nn.compact
    def __call__(
        self,
        tokens,
        carry: Carry | None = None,
        *,
        lengths=None,
        valid=None,
        train: bool = False,
        time_major_logits: bool = False,
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
          time_major_logits: return logits as [time, batch, 256], skipping a transpose
            of the largest activation (the training loss does not care about order).

        Returns:
          logits [batch, time, 256] float32 (classifiers: [batch, num_classes]) and the
          new carry.
        """
        batch, time = tokens.shape
        if carry is None:
            carry = self.initialize_carry(batch)
        if valid is None and lengths is not None:
            valid = jnp.arange(time)[None, :] < lengths[:, None]
        if (cell := registry.CELLS[self.cell_type]).whole_model is not None:
            return self._whole_model(cell, tokens, carry, valid, train, time_major_logits)
        tokens_tm = tokens.T  # Time-major inside: the recurrences scan over the leading axis.
        valid_tm = None if valid is None else valid.T
        embed = nn.Embed(VOCAB_SIZE, self.embed_dim, dtype=self.dtype, name="embed")
        # Time is axis 0 inside: a variational mask is broadcast over it.
        drop_dims = (0,) if self.variational_dropout else ()
        drop_inputs = train and self.input_dropout > 0
        if cell.residual_block:
            x = self._drop_inputs(embed(tokens_tm), drop_dims, train)
            x, new_carry = self._residual_blocks(carry, x, valid_tm, train)
            return self._outputs(x, blocks.last_valid(x, valid_tm), new_carry, time_major_logits)
        # Folding the embedding into the first projection pays once there are more
        # positions than byte values (training); one-step sampling projects directly.
        # (Not with input dropout while training: each position needs its own dropped row.)
        folds = cell.folds_embedding(self._layer_spec())
        fold = folds and time * batch > VOCAB_SIZE and not drop_inputs
        x = embed(jnp.arange(VOCAB_SIZE)) if fold else embed(tokens_tm)
        if not fold:
            x = self._drop_inputs(x, drop_dims, train)
        x, new_carry = self._stacked_layers(
            x, carry, valid_tm, tokens_tm if fold else None, drop_dims, train
        )
        last = cell.hidden_of(new_carry[-1])
        if self.num_classes and self.dropout_rate > 0:
            last = nn.Dropout(self.dropout_rate, deterministic=not train)(last)
        return self._outputs(x, last, new_carry, time_major_logits)

    def _whole_model(self, cell, tokens, carry, valid, train, time_major_logits):
        """A registered whole model (the Transformer): its one carry, batch-major."""
        network = cell.whole_model(
            self._layer_spec(),
            self._options(),
            num_layers=self.num_layers,
            dropout_rate=self.dropout_rate,
            name="transformer",
        )
        logits, new_carry = network(tokens, carry[0], valid, train=train)
        return (logits.transpose(1, 0, 2) if time_major_logits else logits), (new_carry,)

    def _residual_blocks(self, carry, x, valid_tm, train):
        """num_layers pre-norm residual blocks around the registered linear recurrence."""
        return blocks.BlockStack(
            self.cell_type,
            self.hidden_size,
            self.num_layers,
            self.mlp_ratio,
            self.dropout_rate,
            self.dtype,
            self.parallel_scan,
            dense_dot_general(self.dtype),
            name="blocks",
        )(carry, x, valid_tm, train=train)

    def _stacked_layers(self, x, carry, valid_tm, folded_tokens, drop_dims, train):
        """num_layers layers from the cell's registered factory, dropout after each.

        folded_tokens: with the embedding folded into the first layer's projection, the
        [time, batch] bytes whose rows of the embedding table that layer gathers.
        """
        cell, spec, options = registry.CELLS[self.cell_type], self._layer_spec(), self._options()
        new_carry = []
        for i in range(self.num_layers):
            layer = cell.layer(spec, options, name=f"rnn_{i}")
            tokens = folded_tokens if i == 0 else None
            layer_carry, x = layer(carry[i], x, valid_tm, tokens, train=train)
            new_carry.append(layer_carry)
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, drop_dims, deterministic=not train)(x)
        return x, new_carry

    def _layer_spec(self) -> registry.LayerSpec:
        impl = backend_choices.gru_impl(
            self.gru_impl, jax.default_backend(), recurrent_dropout=self.recurrent_dropout
        )
        return registry.LayerSpec(
            self.hidden_size, self.dtype, self.recurrent_dropout, self.unroll, impl
        )

    def _options(self):
        """The cell's options: as given, or the cell's defaults."""
        return self.options if self.options is not None else registry.make_options(self.cell_type)

    def _drop_inputs(self, x, drop_dims, train):
        if not (train and self.input_dropout > 0):
            return x
        return nn.Dropout(self.input_dropout, drop_dims, deterministic=False, name="drop_in")(x)

    def _outputs(self, xs, last, new_carry, time_major_logits):
        """The head: next-byte logits from every step, or class logits from `last`."""
        if self.num_classes:
            logits = nn.Dense(
                self.num_classes,
                dtype=self.dtype,
                dot_general=dense_dot_general(self.dtype),
                name="classifier",
            )(last)
            return logits.astype(jnp.float32), tuple(new_carry)
        logits = nn.Dense(
            VOCAB_SIZE, dtype=self.dtype, dot_general=dense_dot_general(self.dtype), name="head"
        )(xs)
        logits = logits.astype(jnp.float32)
        return (logits if time_major_logits else logits.transpose(1, 0, 2)), tuple(new_carry)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The config's `model` block, typed (defaults live in config_lib.base_config only).

    options: the cell's own options, built from the block `model.<cell>` (registry).
    """

    cell: str
    embed_dim: int
    hidden_size: int
    num_layers: int
    dropout: float
    input_dropout: float
    recurrent_dropout: float
    variational_dropout: bool
    dtype: str
    gru_impl: str
    num_classes: int
    scan: str
    mlp_ratio: int
    unroll: int
    options: Any

    @classmethod
    def of(cls, block) -> ModelConfig:
        """From a ModelConfig or any mapping with these keys (e.g. the ConfigDict block)."""
        if isinstance(block, cls):
            return block
        shared = {f.name: block[f.name] for f in dataclasses.fields(cls) if f.name != "options"}
        cell = block["cell"]
        own = block[cell] if registry.options_fields(cell) else {}
        return cls(**shared, options=registry.make_options(cell, own))


def from_config(model_config) -> CharRNN:
    """Builds the model from the config's `model` block (a ModelConfig or the ConfigDict)."""
    m = ModelConfig.of(model_config)
    return CharRNN(
        embed_dim=m.embed_dim,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        cell_type=m.cell,
        dropout_rate=m.dropout,
        dtype=DTYPES[m.dtype],
        num_classes=m.num_classes,
        gru_impl=backend_choices.gru_impl(
            m.gru_impl, jax.default_backend(), recurrent_dropout=m.recurrent_dropout
        ),
        parallel_scan=scan_mode(m.scan) == "parallel",
        mlp_ratio=m.mlp_ratio,
        input_dropout=m.input_dropout,
        recurrent_dropout=m.recurrent_dropout,
        variational_dropout=m.variational_dropout,
        unroll=m.unroll,
        options=m.options,
    )


def eval_chunk(model_config, seq_len: int) -> int:
    """Bytes per carried call of the full-split metric: seq_len for the recurrent cells,
    the Transformer's eval_stride (its sliding window's step)."""
    m = ModelConfig.of(model_config)
    return registry.CELLS[m.cell].eval_chunk(m.options, seq_len)


def scan_mode(configured: str) -> str:
    """'parallel' or 'sequential'; 'auto' is the faster one on this backend."""
    return backend_choices.scan_mode(configured, jax.default_backend())
