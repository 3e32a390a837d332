"""CharRNN: Embed -> stacked nn.scan'd recurrent cells -> Dense(256), with the carry in and out.

The carry is explicit so training (zero carry), priming a prompt and sampling one byte at
a time all run the same module, like the Keras tutorial's `return_state=True` model.
The linear recurrences (minGRU, minLSTM, LRU) replace the stacked cells with residual
blocks (see linear_recurrences); everything around them is the same.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from charrnn_jax import linear_recurrences

VOCAB_SIZE = 256

CLASSIC_CELLS = {
    "gru": nn.GRUCell,
    "lstm": nn.LSTMCell,
    "optimized_lstm": nn.OptimizedLSTMCell,
}
CELL_TYPES = (*CLASSIC_CELLS, *linear_recurrences.LINEAR_CELLS)
SCAN_MODES = ("auto", *linear_recurrences.SCAN_MODES)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
GRU_IMPLS = ("fused", "flax")

Carry = tuple[Any, ...]  # Per layer: h (GRU, minGRU, minLSTM), (c, h) (LSTMs), (re, im) (LRU).


def zero_carry(cell_type: str, num_layers: int, batch_size: int, hidden_size: int) -> Carry:
    """The all-zero starting state; kept in float32 even for bfloat16 compute.

    Every leaf is a buffer of its own, so a carry built outside jit can be donated.
    """

    if cell_type in linear_recurrences.LINEAR_CELLS:
        return tuple(
            linear_recurrences.zero_carry(cell_type, batch_size, hidden_size)
            for _ in range(num_layers)
        )

    def zeros():
        return jnp.zeros((batch_size, hidden_size), jnp.float32)

    return tuple(zeros() if cell_type == "gru" else (zeros(), zeros()) for _ in range(num_layers))


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
        cell = CLASSIC_CELLS[self.cell_type](
            features=self.hidden_size, dtype=self.dtype, param_dtype=jnp.float32, name="cell"
        )
        new_carry, y = cell(carry, x)
        # Keep the carry in float32 so bfloat16 compute does not round the state each step.
        new_carry = jax.tree.map(lambda c: c.astype(jnp.float32), new_carry)
        if valid is not None:
            new_carry = jax.tree.map(
                lambda new, old: jnp.where(valid[:, None], new, old), new_carry, carry
            )
            y = new_carry if self.cell_type == "gru" else new_carry[1]  # The held state.
        return new_carry, y


class RecurrentLayer(nn.Module):
    """A cell scanned over time with its params broadcast to every step."""

    cell_type: str
    hidden_size: int
    dtype: Any

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
        )
        return scan(self.cell_type, self.hidden_size, self.dtype, name="scan")(
            carry, (inputs, valid)
        )


class _DenseParams(nn.Module):
    """The kernel (and bias) nn.Dense would create, returned instead of applied."""

    in_features: int
    features: int
    kernel_init: Any
    use_bias: bool

    @nn.compact
    def __call__(self):
        kernel = self.param(
            "kernel", self.kernel_init, (self.in_features, self.features), jnp.float32
        )
        bias = (
            self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
            if self.use_bias
            else None
        )
        return kernel, bias


class _GRUCellParams(nn.Module):
    """nn.GRUCell's params (names, shapes, initialisers), fused across the gates r, z, n.

    Returns (w_i [in, 3H], b_i [3H], w_h [H, 3H], b_hn [H]).
    """

    in_features: int
    hidden_size: int

    @nn.compact
    def __call__(self):
        h = self.hidden_size
        inputs = [
            _DenseParams(self.in_features, h, nn.initializers.lecun_normal(), True, name=f"i{g}")()
            for g in "rzn"
        ]
        hidden = [
            _DenseParams(h, h, nn.initializers.orthogonal(), g == "n", name=f"h{g}")()
            for g in "rzn"
        ]
        w_i = jnp.concatenate([k for k, _ in inputs], axis=1)
        b_i = jnp.concatenate([b for _, b in inputs])
        w_h = jnp.concatenate([k for k, _ in hidden], axis=1)
        return w_i, b_i, w_h, hidden[2][1]


class _ScanScope(nn.Module):
    """Puts the fused GRU's params where the nn.scan'd GRUCell keeps them (rnn_i/scan/cell),
    so checkpoints and weight conversions are the same for both implementations."""

    in_features: int
    hidden_size: int

    @nn.compact
    def __call__(self):
        return _GRUCellParams(self.in_features, self.hidden_size, name="cell")()


@jax.custom_vjp
def mixed_matmul(x, w):
    """x [..., K] @ w [K, N] on low-precision operands with float32 accumulation and output.

    Autodiff of a bfloat16 dot gives bfloat16 -> bfloat16 dots in the backward pass,
    which XLA:CPU runs slower than float32; here all three GEMMs take bfloat16 operands
    and accumulate in float32.
    """
    return jnp.dot(x, w, preferred_element_type=jnp.float32)


def _mixed_matmul_fwd(x, w):
    return mixed_matmul(x, w), (x, w)


def _mixed_matmul_bwd(residuals, g):
    x, w = residuals
    g = g.astype(x.dtype)
    dx = jnp.dot(g, w.T, preferred_element_type=jnp.float32).astype(x.dtype)
    dw = jnp.dot(
        x.reshape(-1, x.shape[-1]).T, g.reshape(-1, g.shape[-1]), preferred_element_type=jnp.float32
    )
    return dx, dw.astype(w.dtype)


mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


def _mixed_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """nn.Dense's dot_general, through mixed_matmul (Dense contracts lhs's last axis)."""
    del precision, preferred_element_type
    (lhs_contract, rhs_contract), batch_dims = dimension_numbers
    assert tuple(rhs_contract) == (0,) and batch_dims == ((), ()), dimension_numbers
    return mixed_matmul(lhs, rhs)


def _dense_dot_general(dtype):
    """Float32 keeps nn.Dense's own dot; lower precisions go through mixed_matmul."""
    return None if dtype == jnp.float32 else _mixed_dot_general


def _step_inputs(xi, tokens):
    """Per-step x: a slice of xi, or, given tokens, rows of the table xi gathered per step."""
    if tokens is None:
        return xi, lambda x: x
    return tokens, lambda token: xi.at[token].get(mode="promise_in_bounds")


def _gru_forward(xi, tokens, h0, w_h, b_hn, valid, dtype):
    """The recurrence over precomputed input projections; also returns what backward needs."""
    hidden = h0.shape[-1]
    w = w_h.astype(dtype)
    xs, x_at = _step_inputs(xi, tokens)

    def step(h, inputs):
        x, v = inputs
        x = x_at(x)
        hh = jnp.dot(h.astype(dtype), w, preferred_element_type=jnp.float32)
        r = jax.nn.sigmoid(x[:, :hidden] + hh[:, :hidden])
        z = jax.nn.sigmoid(x[:, hidden : 2 * hidden] + hh[:, hidden : 2 * hidden])
        hn = hh[:, 2 * hidden :] + b_hn
        n = jnp.tanh(x[:, 2 * hidden :] + r * hn)
        new = n + z * (h - n)  # = (1 - z) * n + z * h, as nn.GRUCell.
        if v is not None:
            new = jnp.where(v[:, None], new, h)
        return new, (new, r, z, n, hn)

    h_last, (hs, r, z, n, hn) = jax.lax.scan(step, h0, (xs, valid))
    return hs, h_last, (r, z, n, hn)


def _gru_backward(dtype, residuals, cotangents):
    """Backward scan that only does dh @ w_h^T per step; dw_h is one GEMM afterwards.

    (Autodiff of the forward scan would accumulate T rank-B updates of dw_h inside the
    loop; here the per-step gate gradients are kept and contracted once over T*B.) With
    a table, each step scatter-adds its input gradient into the table's gradient, so
    the [time, batch, 3H] input gradient is never stored.
    """
    xi, tokens, h0, w_h, valid, hs, (r, z, n, hn) = residuals
    d_hs, d_h_last = cotangents
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    w_t = w_h.T.astype(dtype)
    if dtype != jnp.float32:
        # Materialise the transpose once: left to itself XLA folds it into every step's
        # dot, and XLA:CPU's bf16 dot with a transposed operand is slower (profiled in
        # benchmarks/README.md, "bf16 training").
        w_t = jax.lax.optimization_barrier(w_t)

    def step(carry, inputs):
        dh_next, d_table = carry
        dy, hp, r, z, n, hn, v, token = inputs
        dh = dh_next + dy
        dn_pre = dh * (1 - z) * (1 - n * n)
        dz_pre = dh * (hp - n) * z * (1 - z)
        dr_pre = dn_pre * hn * r * (1 - r)
        dxi = jnp.concatenate([dr_pre, dz_pre, dn_pre], axis=-1)
        dhh = jnp.concatenate([dr_pre, dz_pre, dn_pre * r], axis=-1)
        dh_prev = dh * z + jnp.dot(dhh.astype(dtype), w_t, preferred_element_type=jnp.float32)
        if v is not None:  # Masked steps passed the carry through unchanged.
            keep = v[:, None]
            dxi, dhh = jnp.where(keep, dxi, 0.0), jnp.where(keep, dhh, 0.0)
            dh_prev = jnp.where(keep, dh_prev, dh)
        if token is None:
            return (dh_prev, None), (dxi, dhh)
        d_table = d_table.at[token].add(dxi, mode="promise_in_bounds")
        return (dh_prev, d_table), (None, dhh)

    d_table = None if tokens is None else jnp.zeros_like(xi)
    (dh0, d_table), (dxi, dhh) = jax.lax.scan(
        step, (d_h_last, d_table), (d_hs, h_prev, r, z, n, hn, valid, tokens), reverse=True
    )
    # One contraction over time*batch in the arrays' own order (given einsum's two
    # contracted axes, XLA ordered them (batch, time) and transposed dhh to match).
    positions = dhh.shape[0] * dhh.shape[1]
    dw_h = jnp.dot(
        h_prev.reshape(positions, -1).T.astype(dtype),
        dhh.reshape(positions, -1).astype(dtype),
        preferred_element_type=jnp.float32,
    )
    hidden = h0.shape[-1]
    db_hn = dhh[..., 2 * hidden :].sum(axis=(0, 1))
    return (dxi if tokens is None else d_table), None, dh0, dw_h, db_hn, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def gru_recurrence(xi, tokens, h0, w_h, b_hn, valid, dtype=jnp.float32):
    """GRU over time given the input projections.

    Args:
      xi: [time, batch, 3H] float32, x @ w_i + b_i with the gates in order r, z, n; or,
        with `tokens`, a [vocab, 3H] table of them, one row per token.
      tokens: None, or [time, batch] integer rows of the table xi (in range).
      h0: [batch, H] float32 starting state.
      w_h: [H, 3H] recurrent kernel (r, z, n); b_hn: [H] the candidate's recurrent bias.
      valid: None, or [time, batch] bool; steps where False keep the state unchanged.
      dtype: matmul operand dtype (float32 or bfloat16; accumulation is float32).

    Returns:
      hs [time, batch, H] (the state after each step) and the last state [batch, H].
    """
    hs, h_last, _ = _gru_forward(xi, tokens, h0, w_h, b_hn, valid, dtype)
    return hs, h_last


def _gru_recurrence_fwd(xi, tokens, h0, w_h, b_hn, valid, dtype):
    hs, h_last, gates = _gru_forward(xi, tokens, h0, w_h, b_hn, valid, dtype)
    table = None if tokens is None else xi  # Only the table is small enough to keep.
    return (hs, h_last), (table, tokens, h0, w_h, valid, hs, gates)


def _gru_recurrence_bwd(dtype, residuals, cotangents):
    return _gru_backward(dtype, residuals, cotangents)


gru_recurrence.defvjp(_gru_recurrence_fwd, _gru_recurrence_bwd)


class FusedGRULayer(nn.Module):
    """nn.GRUCell's math with the input projection hoisted out of the time loop.

    One [time*batch, in] x [in, 3H] GEMM before the recurrence (or, for the first layer,
    a [256, 3H] table of embedding @ w_i whose rows the recurrence gathers per byte), then
    a scan that does only h @ w_h per step, with a hand-written backward pass (see
    gru_recurrence).
    """

    hidden_size: int
    dtype: Any
    recurrent_dropout: float = 0.0

    @nn.compact
    def __call__(self, carry, inputs, valid=None, tokens=None, *, train: bool = False):
        """inputs: [time, batch, in] or, with `tokens` [time, batch], the [256, in] table."""
        w_i, b_i, w_h, b_hn = _ScanScope(inputs.shape[-1], self.hidden_size, name="scan")()
        if train and self.recurrent_dropout > 0:
            # DropConnect on the hidden-to-hidden weights (Wan et al. 2013, "Regularization
            # of Neural Networks using DropConnect", eq. 2), one mask per step for all
            # time steps and rows: the weight-dropped RNN of Merity et al. 2018,
            # "Regularizing and Optimizing LSTM Language Models", Section 4.1.
            w_h = nn.Dropout(self.recurrent_dropout, deterministic=False)(w_h)
        projected = mixed_matmul(inputs.astype(self.dtype), w_i.astype(self.dtype)) + b_i
        hs, h_last = gru_recurrence(projected, tokens, carry, w_h, b_hn, valid, self.dtype)
        return h_last, hs


class CharRNN(nn.Module):
    """Byte-level recurrent language model.

    Attributes:
      embed_dim: size of each byte's embedding.
      hidden_size: width of every recurrent layer.
      num_layers: number of stacked recurrent layers.
      cell_type: 'gru' (default), 'lstm' or 'optimized_lstm'; or 'mingru', 'minlstm' or
        'lru', each in a residual block with a gated MLP (see linear_recurrences).
      dropout_rate: dropout on each recurrent layer's output during training (residual
        blocks: on each branch's output).
      dtype: compute dtype; params stay float32.
      gru_impl: 'fused' (hoisted input projection, hand-written backward pass) or 'flax'
        (nn.scan over nn.GRUCell, the reference); same params, same function.
      num_classes: 0 for a language model; else a many-to-one classifier whose logits come
        from the last layer's hidden state at each row's length (padding never counts).
      input_dropout: dropout on the byte embeddings during training.
      recurrent_dropout: fused GRU only: DropConnect on each layer's recurrent kernel.
      variational_dropout: one dropout mask per sequence, shared by all its time steps
        (Gal and Ghahramani 2016, "A Theoretically Grounded Application of Dropout in
        Recurrent Neural Networks", Section 4), for the input and between-layer dropout.
      parallel_scan: residual blocks only: associative scan over time (True) or lax.scan.
      mlp_ratio: residual blocks only: the gated MLP's width over hidden_size.
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

    def initialize_carry(self, batch_size: int) -> Carry:
        return zero_carry(self.cell_type, self.num_layers, batch_size, self.hidden_size)

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
        # Time-major inside: the recurrences scan over the leading axis.
        tokens_tm = tokens.T
        valid_tm = None if valid is None else valid.T
        embed = nn.Embed(VOCAB_SIZE, self.embed_dim, dtype=self.dtype, name="embed")
        # Time is axis 0 inside: a variational mask is broadcast over it.
        drop_dims = (0,) if self.variational_dropout else ()
        drop_inputs = train and self.input_dropout > 0
        if self.cell_type in linear_recurrences.LINEAR_CELLS:
            x, new_carry = linear_recurrences.BlockStack(
                self.cell_type,
                self.hidden_size,
                self.num_layers,
                self.mlp_ratio,
                self.dropout_rate,
                self.dtype,
                self.parallel_scan,
                _dense_dot_general(self.dtype),
                name="blocks",
            )(carry, self._drop_inputs(embed(tokens_tm), drop_dims, train), valid_tm, train=train)
            return self._outputs(
                x, linear_recurrences.last_valid(x, valid_tm), new_carry, time_major_logits
            )
        fused = self.cell_type == "gru" and self.gru_impl == "fused"
        # Folding the embedding into the first projection pays once there are more
        # positions than byte values (training); one-step sampling projects directly.
        # (Not with input dropout while training: each position needs its own dropped row.)
        fold = fused and time * batch > VOCAB_SIZE and not drop_inputs
        x = embed(jnp.arange(VOCAB_SIZE)) if fold else embed(tokens_tm)
        if not fold:
            x = self._drop_inputs(x, drop_dims, train)
        new_carry = []
        for i in range(self.num_layers):
            if fused:
                layer = FusedGRULayer(
                    self.hidden_size, self.dtype, self.recurrent_dropout, name=f"rnn_{i}"
                )
                layer_carry, x = layer(
                    carry[i], x, valid_tm, tokens_tm if (fold and i == 0) else None, train=train
                )
            else:
                layer_carry, x = RecurrentLayer(
                    self.cell_type, self.hidden_size, self.dtype, name=f"rnn_{i}"
                )(carry[i], x, valid_tm)
            new_carry.append(layer_carry)
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, drop_dims, deterministic=not train)(x)
        last = new_carry[-1] if self.cell_type == "gru" else new_carry[-1][1]
        if self.num_classes and self.dropout_rate > 0:
            last = nn.Dropout(self.dropout_rate, deterministic=not train)(last)
        return self._outputs(x, last, new_carry, time_major_logits)

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
                dot_general=_dense_dot_general(self.dtype),
                name="classifier",
            )(last)
            return logits.astype(jnp.float32), tuple(new_carry)
        logits = nn.Dense(
            VOCAB_SIZE, dtype=self.dtype, dot_general=_dense_dot_general(self.dtype), name="head"
        )(xs)
        logits = logits.astype(jnp.float32)
        return (logits if time_major_logits else logits.transpose(1, 0, 2)), tuple(new_carry)


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
        gru_impl=model_config.get("gru_impl", "fused"),
        parallel_scan=scan_mode(model_config.get("scan", "auto")) == "parallel",
        mlp_ratio=model_config.get("mlp_ratio", 2),
        input_dropout=model_config.get("input_dropout", 0.0),
        recurrent_dropout=model_config.get("recurrent_dropout", 0.0),
        variational_dropout=model_config.get("variational_dropout", False),
    )


def scan_mode(configured: str) -> str:
    """'parallel' or 'sequential'; 'auto' is the faster one on this backend."""
    if configured != "auto":
        return configured
    return linear_recurrences.default_scan_mode(jax.default_backend())
