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

from charrnn_jax.models import backend_choices, blocks, registry, scans, stochastic
from charrnn_jax.models.precision import dense_dot_general

VOCAB_SIZE = 256

CELL_TYPES = tuple(registry.CELLS)
SCAN_MODES = ("auto", *scans.SCAN_MODES)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
GRU_IMPLS = ("auto", *backend_choices.GRU_IMPLS)
STACKS = ("auto", *backend_choices.STACKS)

Carry = tuple[Any, ...]  # Per layer: h (GRU, minGRU, minLSTM), (c, h) (LSTMs), (re, im) (LRU).


def zero_carry(config: ModelConfig, batch_size: int) -> Carry:
    """The all-zero starting state; kept in float32 even for bfloat16 compute (a whole
    model's: its own zero state, e.g. the Transformer's empty context).

    Every leaf is a buffer of its own, so a carry built outside jit can be donated.
    """
    cell = registry.CELLS[config.cell]
    if cell.whole_model is not None:
        return (cell.zero_state(batch_size, config.options),)
    return tuple(cell.zero_state(batch_size, config.hidden_size) for _ in range(config.num_layers))


def _key(default, doc: str):
    """A config key: its default and its one comment (config_lib.base_config and the
    documented schema read both from here)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def _default_cell_options() -> tuple:
    return tuple(
        (name, tuple(registry.options_fields(name).items()))
        for name in registry.CELLS
        if registry.options_fields(name)
    )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The config's `model` block, typed; its defaults are the schema (base_config).

    Made once from the command's ConfigDict (config_lib.resolve) and handed whole to
    CharRNN, like Flax lm1b's TransformerConfig. The defaults are the TF tutorial's
    model: embed 256, one GRU of 1024.
    """

    cell: str = _key("gru", "A name in the cell registry (models/registry.py); GRU is the default.")
    embed_dim: int = _key(256, "Byte embedding size.")
    hidden_size: int = _key(1024, "Units per recurrent layer.")
    num_layers: int = _key(1, "Stacked recurrent layers.")
    dropout: float = _key(
        0.0,
        "Dropout on each recurrent layer's output while training (residual blocks: on "
        "each branch's output).",
    )
    input_dropout: float = _key(0.0, "Dropout on the byte embeddings while training.")
    recurrent_dropout: float = _key(
        0.0, "Cells whose registry entry takes DropConnect (fused and Mogrifier GRU): on W_h."
    )
    variational_dropout: bool = _key(
        False,
        "One dropout mask per sequence for all time steps, on the inputs and between "
        "layers (Gal and Ghahramani 2016, Section 4).",
    )
    dtype: str = _key("float32", "Compute dtype: 'float32' or 'bfloat16' (params stay f32).")
    gru_impl: str = _key(
        "auto",
        "'fused' (hoisted projection, hand-written backward), 'flax' (nn.scan(GRUCell)) or "
        "'auto': this backend's choice (models/backend_choices.py); same params, same function.",
    )
    stack: str = _key(
        "auto",
        "Stacked fused GRU layers: 'layers' (each layer's whole sequence in turn), "
        "'wavefront' (all layers together, T + L - 1 steps; models/wavefront.py) or 'auto': "
        "this backend's choice; same params, same function.",
    )
    num_classes: int = _key(0, "0 = language model; >= 2 = many-to-one classifier.")
    scan: str = _key(
        "auto",
        "Residual blocks only: 'parallel' (associative scan), 'sequential' (lax.scan) or "
        "'auto' (this backend's choice, models/backend_choices.py: sequential on CPU).",
    )
    mlp_ratio: int = _key(2, "Residual blocks only: gated MLP width / hidden_size.")
    unroll: int = _key(
        1,
        "Stacked layers: time steps per iteration of the time loop, forward and backward "
        "(lax.scan's unroll); the same function (benchmarks/README.md, 'Unrolling').",
    )
    cell_options: tuple = dataclasses.field(
        default_factory=_default_cell_options,
        metadata={
            "doc": "Each cell's own options, one block per cell that has any "
            "(`model.mogrifier_gru.rounds`): its options class (models/registry.py). Kept "
            "as written, ((cell, ((key, value), ...)), ...), so that config.json round-trips; "
            "the chosen cell's are typed and checked by `options`."
        },
    )

    @classmethod
    def from_block(cls, block) -> ModelConfig:
        """From the ConfigDict's `model` block, at the door (config_lib.resolve) only."""
        shared = {
            f.name: block[f.name] for f in dataclasses.fields(cls) if f.name != "cell_options"
        }
        blocks = tuple((name, tuple(block[name].items())) for name, _ in _default_cell_options())
        return cls(**shared, cell_options=blocks)

    def to_dict(self) -> dict:
        """The block as config.json holds it: the shared keys and one block per cell."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["cell_options"]
        out.update({name: dict(values) for name, values in self.cell_options})
        return out

    @property
    def options(self):
        """The chosen cell's own options: its registry entry's frozen dataclass.

        Raises ValueError('<cell>.<field> ...') for a value that makes no sense (the
        door, config_lib.resolve, asks once, so that it is one `error:` line there).
        """
        try:
            own = dict(dict(self.cell_options).get(self.cell, ()))
            return registry.make_options(self.cell, own)
        except ValueError as e:
            raise ValueError(f"{self.cell}.{e}") from None

    def with_options(self, options) -> ModelConfig:
        """A copy whose block for `options`'s cell holds `options` (None: this config)."""
        if options is None:
            return self
        name = next(n for n, c in registry.CELLS.items() if c.options is type(options))
        blocks = dict(self.cell_options) | {name: tuple(dataclasses.asdict(options).items())}
        return dataclasses.replace(self, cell_options=tuple(blocks.items()))

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def parallel_scan(self) -> bool:
        """Residual blocks: the associative scan, on this backend ('auto' resolved)."""
        return scan_mode(self.scan) == "parallel"

    def layer_spec(self) -> registry.LayerSpec:
        """What every stacked layer gets, with gru_impl resolved for this backend."""
        backend = jax.default_backend()
        impl = backend_choices.gru_impl(
            self.gru_impl, backend, recurrent_dropout=self.recurrent_dropout
        )
        return registry.LayerSpec(
            self.hidden_size,
            self.compute_dtype,
            self.recurrent_dropout,
            self.unroll,
            impl,
            backend_choices.stack(self.stack, backend),
        )

    def eval_chunk(self, seq_len: int) -> int:
        """Bytes per carried call of the full-split metric: seq_len for the recurrent
        cells, the Transformer's eval_stride (its sliding window's step)."""
        return registry.CELLS[self.cell].eval_chunk(self.options, seq_len)

    def context_window(self) -> int | None:
        """The most bytes one call may read (the Transformer's block_size); None for the
        recurrent cells, which read any length."""
        return registry.CELLS[self.cell].context_window(self.options)

    def compiler_options(self, backend: str) -> dict[str, str]:
        """The XLA options the cell asks for on `backend` (a jax backend or platform
        name): how the trainer's, the scorers' and dynamic evaluation's programs compile
        (runtime/parallel.py, model_jit), not what they compute. The sampler keeps
        XLA's defaults."""
        family = backend_choices.backend_family(backend)
        return dict(registry.CELLS[self.cell].compiler_options(family, self.dtype))


class CharRNN(nn.Module):
    """Byte-level recurrent language model, built from its typed config (ModelConfig):
    the cell's registry entry decides which layer it gets.

    With `num_classes` it is a many-to-one classifier whose logits come from the last
    layer's hidden state at each row's length (padding never counts).
    """

    config: ModelConfig

    def initialize_carry(self, batch_size: int) -> Carry:
        return zero_carry(self.config, batch_size)

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
        if (cell := registry.CELLS[self.config.cell]).whole_model is not None:
            return self._whole_model(cell, tokens, carry, valid, train, time_major_logits)
        tokens_tm = tokens.T  # Time-major inside: the recurrences scan over the leading axis.
        valid_tm = None if valid is None else valid.T
        c = self.config
        embed = nn.Embed(VOCAB_SIZE, c.embed_dim, dtype=c.compute_dtype, name="embed")
        # Time is axis 0 inside: a variational mask is broadcast over it.
        drop_dims = (0,) if c.variational_dropout else ()
        drop_inputs = train and c.input_dropout > 0
        if cell.residual_block:
            x = self._drop_inputs(embed(tokens_tm), drop_dims, train)
            x, new_carry = self._residual_blocks(carry, x, valid_tm, train)
            return self._outputs(x, blocks.last_valid(x, valid_tm), new_carry, time_major_logits)
        # Folding the embedding into the first projection pays once there are more
        # positions than byte values (training); one-step sampling projects directly.
        # (Not with input dropout while training: each position needs its own dropped row.)
        fold = cell.folds_embedding(c.layer_spec()) and time * batch > VOCAB_SIZE
        fold = fold and not drop_inputs
        x = embed(jnp.arange(VOCAB_SIZE)) if fold else embed(tokens_tm)
        if not fold:
            x = self._drop_inputs(x, drop_dims, train)
        x, new_carry = self._stacked_layers(
            x, carry, valid_tm, tokens_tm if fold else None, drop_dims, train
        )
        last = cell.hidden_of(new_carry[-1])
        if c.num_classes and c.dropout > 0:
            last = stochastic.Dropout(c.dropout, deterministic=not train)(last)
        return self._outputs(x, last, new_carry, time_major_logits)

    def _whole_model(self, cell, tokens, carry, valid, train, time_major_logits):
        """A registered whole model (the Transformer): its one carry, batch-major."""
        network = cell.whole_model(
            self.config.layer_spec(),
            self.config.options,
            num_layers=self.config.num_layers,
            dropout_rate=self.config.dropout,
            name="transformer",
        )
        logits, new_carry = network(tokens, carry[0], valid, train=train)
        return (logits.transpose(1, 0, 2) if time_major_logits else logits), (new_carry,)

    def _residual_blocks(self, carry, x, valid_tm, train):
        """num_layers pre-norm residual blocks around the registered linear recurrence."""
        return blocks.BlockStack(
            self.config.cell,
            self.config.hidden_size,
            self.config.num_layers,
            self.config.mlp_ratio,
            self.config.dropout,
            self.config.compute_dtype,
            self.config.parallel_scan,
            dense_dot_general(self.config.compute_dtype),
            name="blocks",
        )(carry, x, valid_tm, train=train)

    def _stacked_layers(self, x, carry, valid_tm, folded_tokens, drop_dims, train):
        """num_layers layers from the cell's registered factory, dropout after each (or
        the cell's schedule of the whole stack, e.g. the fused GRU's wavefront).

        folded_tokens: with the embedding folded into the first layer's projection, the
        [time, batch] bytes whose rows of the embedding table that layer gathers.
        """
        cell, spec, options = (
            registry.CELLS[self.config.cell],
            self.config.layer_spec(),
            self.config.options,
        )
        c = self.config
        # The wave's ramps cost (L - 1) / T of a step's work: worth it on whole windows,
        # not when sampling a byte at a time (T = 1 would do L times the work).
        time = (x if folded_tokens is None else folded_tokens).shape[0]
        long_enough = time >= 8 * (c.num_layers - 1)
        if c.num_layers > 1 and long_enough and (stack := cell.stack(spec)) is not None:
            return stack(
                spec, c.num_layers, carry, x, valid_tm, folded_tokens, c.dropout, drop_dims, train
            )
        new_carry = []
        for i in range(self.config.num_layers):
            layer = cell.layer(spec, options, name=f"rnn_{i}")
            tokens = folded_tokens if i == 0 else None
            layer_carry, x = layer(carry[i], x, valid_tm, tokens, train=train)
            new_carry.append(layer_carry)
            if self.config.dropout > 0:
                x = stochastic.Dropout(self.config.dropout, drop_dims, deterministic=not train)(x)
        return x, new_carry

    def _drop_inputs(self, x, drop_dims, train):
        if not (train and self.config.input_dropout > 0):
            return x
        return stochastic.Dropout(
            self.config.input_dropout, drop_dims, deterministic=False, name="drop_in"
        )(x)

    def _outputs(self, xs, last, new_carry, time_major_logits):
        """The head: next-byte logits from every step, or class logits from `last`."""
        if self.config.num_classes:
            logits = nn.Dense(
                self.config.num_classes,
                dtype=self.config.compute_dtype,
                dot_general=dense_dot_general(self.config.compute_dtype),
                name="classifier",
            )(last)
            return logits.astype(jnp.float32), tuple(new_carry)
        logits = nn.Dense(
            VOCAB_SIZE,
            dtype=self.config.compute_dtype,
            dot_general=dense_dot_general(self.config.compute_dtype),
            name="head",
        )(xs)
        logits = logits.astype(jnp.float32)
        return (logits if time_major_logits else logits.transpose(1, 0, 2)), tuple(new_carry)


def scan_mode(configured: str) -> str:
    """'parallel' or 'sequential'; 'auto' is the faster one on this backend."""
    return backend_choices.scan_mode(configured, jax.default_backend())
