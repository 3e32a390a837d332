"""The fused GRU: nn.GRUCell's function with the input projection hoisted out of the time
loop and a hand-written backward pass (Cho et al. 2014, "Learning Phrase Representations
using RNN Encoder-Decoder", eq. 5-8, in flax's gate order r, z, n).

Forward, one GEMM per time step (h @ W_h) plus one fused elementwise update; backward, one
GEMM per step (dh @ W_h^T), with dW_h one [H, T*B] x [T*B, 3H] GEMM after the loop.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from charrnn_jax.models import stochastic
from charrnn_jax.models.precision import mixed_matmul, weight_gradient


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


class ScanScope(nn.Module):
    """Puts the fused GRU's params where the nn.scan'd GRUCell keeps them (rnn_i/scan/cell),
    so checkpoints and weight conversions are the same for both implementations."""

    in_features: int
    hidden_size: int

    @nn.compact
    def __call__(self):
        return _GRUCellParams(self.in_features, self.hidden_size, name="cell")()


def _weights(in_features, hidden_size, recurrent_dropout, train):
    """(w_i, b_i, w_h, b_hn) of one layer, made inside the calling module's compact method
    (params under scan/cell, DropConnect's mask from Dropout_0)."""
    w_i, b_i, w_h, b_hn = ScanScope(in_features, hidden_size, name="scan")()
    if train and recurrent_dropout > 0:
        # DropConnect on the hidden-to-hidden weights (Wan et al. 2013, "Regularization
        # of Neural Networks using DropConnect", eq. 2), one mask per step for all
        # time steps and rows: the weight-dropped RNN of Merity et al. 2018,
        # "Regularizing and Optimizing LSTM Language Models", Section 4.1.
        w_h = stochastic.Dropout(recurrent_dropout, deterministic=False)(w_h)
    return w_i, b_i, w_h, b_hn


class FusedGRUWeights(nn.Module):
    """One fused GRU layer's weights alone, at the layer's paths (rnn_i/scan/cell and
    rnn_i/Dropout_0), for schedules that run several layers together (models/wavefront.py)."""

    hidden_size: int
    recurrent_dropout: float = 0.0

    @nn.compact
    def __call__(self, in_features: int, train: bool):
        return _weights(in_features, self.hidden_size, self.recurrent_dropout, train)


def _step_inputs(xi, tokens):
    """Per-step x: a slice of xi, or, given tokens, rows of the table xi gathered per step."""
    if tokens is None:
        return xi, lambda x: x
    return tokens, lambda token: xi.at[token].get(mode="promise_in_bounds")


def gru_update(xi, hh, h, b_hn):
    """nn.GRUCell's update from one step's projections xi = x @ w_i + b_i and hh = h @ w_h
    ([..., batch, 3H], gates r, z, n): the new state, interpolating with `h`, and the gates
    (r, z, n, hn) the backward pass reuses."""
    hidden = h.shape[-1]
    r = jax.nn.sigmoid(xi[..., :hidden] + hh[..., :hidden])
    z = jax.nn.sigmoid(xi[..., hidden : 2 * hidden] + hh[..., hidden : 2 * hidden])
    hn = hh[..., 2 * hidden :] + b_hn
    n = jnp.tanh(xi[..., 2 * hidden :] + r * hn)
    return n + z * (h - n), (r, z, n, hn)  # n + z * (h - n) = (1 - z) * n + z * h.


def _gru_forward(xi, tokens, h0, w_h, b_hn, valid, dtype, unroll=1):
    """The recurrence over precomputed input projections; also returns what backward needs."""
    w = w_h.astype(dtype)
    xs, x_at = _step_inputs(xi, tokens)

    def step(h, inputs):
        x, v = inputs
        x = x_at(x)
        hh = jnp.dot(h.astype(dtype), w, preferred_element_type=jnp.float32)
        new, (r, z, n, hn) = gru_update(x, hh, h, b_hn)
        if v is not None:
            new = jnp.where(v[:, None], new, h)
        return new, (new, r, z, n, hn)

    h_last, (hs, r, z, n, hn) = jax.lax.scan(step, h0, (xs, valid), unroll=unroll)
    return hs, h_last, (r, z, n, hn)


def transposed_kernel(kernel, dtype):
    """kernel^T (its last two axes swapped) in dtype, for a backward pass's per-step dots.

    Under bf16 the transpose is materialised once: left to itself XLA folds it into every
    step's dot, and XLA:CPU's bf16 dot with a transposed operand is slower (profiled in
    benchmarks/README.md, "bf16 training").
    """
    kernel_t = jnp.swapaxes(kernel, -1, -2).astype(dtype)
    return kernel_t if dtype == jnp.float32 else jax.lax.optimization_barrier(kernel_t)


def _gru_backward(dtype, unroll, residuals, cotangents):
    """Backward scan that only does dh @ w_h^T per step; dw_h is one GEMM afterwards.

    (Autodiff of the forward scan would accumulate T rank-B updates of dw_h inside the
    loop; here the per-step gate gradients are kept and contracted once over T*B.) With
    a table, each step scatter-adds its input gradient into the table's gradient, so
    the [time, batch, 3H] input gradient is never stored.
    """
    xi, tokens, h0, w_h, valid, hs, (r, z, n, hn) = residuals
    d_hs, d_h_last = cotangents
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    w_t = transposed_kernel(w_h, dtype)

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
        step,
        (d_h_last, d_table),
        (d_hs, h_prev, r, z, n, hn, valid, tokens),
        reverse=True,
        unroll=unroll,
    )
    dw_h = weight_gradient(h_prev, dhh, dtype)
    hidden = h0.shape[-1]
    db_hn = dhh[..., 2 * hidden :].sum(axis=(0, 1))
    return (dxi if tokens is None else d_table), None, dh0, dw_h, db_hn, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def gru_recurrence(xi, tokens, h0, w_h, b_hn, valid, dtype=jnp.float32, unroll=1):
    """GRU over time given the input projections.

    Args:
      xi: [time, batch, 3H] float32, x @ w_i + b_i with the gates in order r, z, n; or,
        with `tokens`, a [vocab, 3H] table of them, one row per token.
      tokens: None, or [time, batch] integer rows of the table xi (in range).
      h0: [batch, H] float32 starting state.
      w_h: [H, 3H] recurrent kernel (r, z, n); b_hn: [H] the candidate's recurrent bias.
      valid: None, or [time, batch] bool; steps where False keep the state unchanged.
      dtype: matmul operand dtype (float32 or bfloat16; accumulation is float32).
      unroll: time steps per loop iteration, forward and backward (lax.scan's unroll):
        fewer iterations and larger fused bodies; the same function.

    Returns:
      hs [time, batch, H] (the state after each step) and the last state [batch, H].
    """
    hs, h_last, _ = _gru_forward(xi, tokens, h0, w_h, b_hn, valid, dtype, unroll)
    return hs, h_last


def _gru_recurrence_fwd(xi, tokens, h0, w_h, b_hn, valid, dtype, unroll):
    hs, h_last, gates = _gru_forward(xi, tokens, h0, w_h, b_hn, valid, dtype, unroll)
    table = None if tokens is None else xi  # Only the table is small enough to keep.
    return (hs, h_last), (table, tokens, h0, w_h, valid, hs, gates)


def _gru_recurrence_bwd(dtype, unroll, residuals, cotangents):
    return _gru_backward(dtype, unroll, residuals, cotangents)


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
    unroll: int = 1

    @nn.compact
    def __call__(self, carry, inputs, valid=None, tokens=None, *, train: bool = False):
        """inputs: [time, batch, in] or, with `tokens` [time, batch], the [256, in] table."""
        w_i, b_i, w_h, b_hn = _weights(
            inputs.shape[-1], self.hidden_size, self.recurrent_dropout, train
        )
        projected = mixed_matmul(inputs.astype(self.dtype), w_i.astype(self.dtype)) + b_i
        hs, h_last = gru_recurrence(
            projected, tokens, carry, w_h, b_hn, valid, self.dtype, self.unroll
        )
        return h_last, hs
