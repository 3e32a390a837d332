"""The Mogrifier GRU: a GRU whose input and previous state first gate each other.

Melis, Kočiský and Blunsom 2020, "Mogrifier LSTM" (ICLR), eq. 1-2: before the cell sees
x_t and h_{t-1}, they modulate one another for `rounds` rounds,

    x^i = 2 sigmoid(Q^i h^{i-1}) * x^{i-2}   for odd i,
    h^i = 2 sigmoid(R^i x^{i-1}) * h^{i-2}   for even i,

(x^{-1} = x_t, h^0 = h_{t-1}), and the cell runs on the last x and h. The paper reports
gains on word- and character-level language modelling, PTB-char among them (a corpus of
a few MB, near tiny Shakespeare's scale), which is why it is here.

The paper mogrifies an LSTM; this is the same circuit in front of the GRU of
models/fused_gru.py (Cho et al. 2014, eq. 5-8, flax's gate order r, z, n). The gates
and the candidate read the modulated pair; the update interpolates with the *unmodulated*
h_{t-1}, the GRU's memory, as the paper leaves the LSTM's memory c_{t-1} unmodulated.
With rounds=0 the layer is nn.GRUCell's function with the same params (tested).

Unlike the fused GRU, the input projection cannot be hoisted out of the time loop (x^i
depends on h_{t-1}), so each step does all its matmuls. What can be hoisted is the
weights' gradients: the backward pass is hand-written in the fused GRU's style
(mogrifier_gru_recurrence), doing only d @ W^T per step and every weight's gradient as
one GEMM over time*batch after the loop. Autodiff of the scan instead adds T rank-batch
updates into each of the 2 + rounds weight gradients inside the loop: the same FLOPs at a
lower rate. By hand the recurrence trains 1.06-1.11x faster and at the fused GRU's FLOP
rate, so the Mogrifier now costs what its FLOPs cost (benchmarks/README.md, "The
Mogrifier's backward"). The rank option factorises the rounds' matrices, which cuts
those matmuls. DropConnect on the recurrent kernel (model.recurrent_dropout) is drawn
once per call, outside the loop, as in the fused GRU.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from charrnn_jax.models import stochastic
from charrnn_jax.models.fused_gru import (
    ScanScope,
    gru_update,
    transposed_kernel,
)
from charrnn_jax.models.precision import weight_gradient


@dataclasses.dataclass(frozen=True)
class MogrifierOptions:
    """The Mogrifier's own options (config block `model.mogrifier_gru`).

    rounds: rounds of mutual gating of x and h before each step (the paper's experiments
      use 5; 0 = a plain GRU).
    rank: the rank of the rounds' matrices (0 = full; the paper factorises Q = Q_l Q_r).
    """

    rounds: int = 5
    rank: int = 0

    def __post_init__(self):
        for name in ("rounds", "rank"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")


def layer(spec, options: MogrifierOptions, *, name: str) -> MogrifierGRULayer:
    """The registry's layer factory (models/registry.py, LayerFactory)."""
    return MogrifierGRULayer(
        spec.hidden_size,
        spec.dtype,
        rounds=options.rounds,
        rank=options.rank,
        recurrent_dropout=spec.recurrent_dropout,
        unroll=spec.unroll,
        name=name,
    )


class _Modulation(nn.Module):
    """One round's matrix (Q^i: state -> input, or R^i: input -> state) as the factors to
    multiply by in turn: (kernel,), or (left, right) when factorised at `rank` as the paper
    does to save parameters (Q = Q_left Q_right), applied as two thin matmuls so the rank
    also saves FLOPs."""

    in_features: int
    out_features: int
    rank: int

    @nn.compact
    def __call__(self) -> tuple:
        init = nn.initializers.lecun_normal()
        shape = (self.in_features, self.out_features)
        if not self.rank or self.rank >= min(shape):
            return (self.param("kernel", init, shape, jnp.float32),)
        left = self.param("left", init, (self.in_features, self.rank), jnp.float32)
        right = self.param("right", init, (self.rank, self.out_features), jnp.float32)
        return left, right


def _matmul(a, kernel, dtype):
    """Operands in dtype, accumulation in float32."""
    return jnp.dot(a.astype(dtype), kernel, preferred_element_type=jnp.float32)


def _modulation(a, factors, dtype):
    """Q^i a or R^i a through its factors; also the factors' inputs after the first (the
    rank-r intermediate a Q_left, which the backward needs for Q_right's gradient)."""
    mids = []
    for j, factor in enumerate(factors):
        if j:
            mids.append(a)
        a = _matmul(a, factor, dtype)
    return a, mids


def _forward_step(h, x, valid, rounds, w_i, b_i, w_h, b_hn, dtype):
    """One time step, eq. 1-2 then the GRU update on the modulated pair; returns the new
    state and what the backward step reads: the rounds' sigmoids, their factor
    intermediates and the GRU's gates (the states between rounds are recomputed from the
    sigmoids, _states, rather than stored)."""
    x_states, h_states, sigmoids, mids = [x], [h], [], []
    for i, factors in enumerate(rounds, start=1):
        k = (i + 1) // 2
        if i % 2:  # Odd rounds: the state gates the input.
            pre, mid = _modulation(h_states[k - 1], factors, dtype)
            sigmoid = jax.nn.sigmoid(pre)
            x_states.append(2 * sigmoid * x_states[k - 1])
        else:  # Even rounds: the input gates the state.
            pre, mid = _modulation(x_states[k], factors, dtype)
            sigmoid = jax.nn.sigmoid(pre)
            h_states.append(2 * sigmoid * h_states[k - 1])
        sigmoids.append(sigmoid)
        mids.append(mid)
    xi = _matmul(x_states[-1], w_i, dtype) + b_i
    hh = _matmul(h_states[-1], w_h, dtype)
    new, gates = gru_update(xi, hh, h, b_hn)  # Interpolating with the unmodulated h.
    if valid is not None:
        new = jnp.where(valid[:, None], new, h)
    return new, (sigmoids, mids, gates)


def _states(x, h, sigmoids):
    """The states between rounds from the step's input, state and sigmoids (any leading
    shape): x_states[k] = 2 s_{2k-1} x_states[k-1], h_states[k] = 2 s_{2k} h_states[k-1]."""
    x_states, h_states = [x], [h]
    for i, sigmoid in enumerate(sigmoids, start=1):
        states = x_states if i % 2 else h_states
        states.append(2 * sigmoid * states[-1])
    return x_states, h_states


def _autodiff_recurrence(rounds, w_i, b_i, w_h, b_hn, h0, xs, valid, dtype, unroll):
    """The Mogrifier GRU over time with autodiff of the scan as its backward: the
    reference the hand-written backward is tested against."""
    rounds, w_i, w_h = jax.tree.map(lambda k: k.astype(dtype), (rounds, w_i, w_h))

    def step(h, inputs):
        x, v = inputs
        new, _ = _forward_step(h, x, v, rounds, w_i, b_i, w_h, b_hn, dtype)
        return new, new

    h_last, hs = jax.lax.scan(step, h0, (xs, valid), unroll=unroll)
    return hs, h_last


def _forward(rounds, w_i, b_i, w_h, b_hn, h0, xs, valid, dtype, unroll):
    """The forward scan, keeping each step's residuals for _backward."""
    rounds, w_i, w_h = jax.tree.map(lambda k: k.astype(dtype), (rounds, w_i, w_h))

    def step(h, inputs):
        x, v = inputs
        new, residuals = _forward_step(h, x, v, rounds, w_i, b_i, w_h, b_hn, dtype)
        return new, (new, residuals)

    h_last, (hs, residuals) = jax.lax.scan(step, h0, (xs, valid), unroll=unroll)
    return hs, h_last, residuals


def _chain_backward(d_out, factors_t, dtype):
    """Back through a round's factors (a F_1 F_2 ...): the gradient at its input `a`, and
    at each factor's output in order (for the factors' gradients after the loop)."""
    d_outputs = []
    for factor_t in reversed(factors_t):
        d_outputs.insert(0, d_out)
        d_out = _matmul(d_out, factor_t, dtype)
    return d_out, d_outputs


def _backward_step(dh, h, x, valid, residuals, rounds_t, w_i_t, w_h_t, dtype):
    """One step of the reverse scan: the GRU's gate gradients (as the fused GRU's
    backward), then the rounds in reverse, where for x' = 2 sigmoid(u) * x_prev:
    d x_prev = 2 sigmoid(u) * d x', d u = 2 x_prev * sigmoid(u) (1 - sigmoid(u)) * d x'
    (likewise for h), and u's input gets d u through the round's factors transposed.

    Returns the gradients at h_{t-1} and x_t, and the per-step output gradients of every
    matmul (d u of each factor, dxi, dhh), contracted into the weights' gradients after
    the loop. The backward is linear in dh, so masking dh once makes every gradient of a
    padded step zero, and the carry's gradient passes it through unchanged.
    """
    sigmoids, _, (r, z, n, hn) = residuals
    x_states, h_states = _states(x, h, sigmoids)
    d_new = dh if valid is None else jnp.where(valid[:, None], dh, 0.0)
    dn_pre = d_new * (1 - z) * (1 - n * n)
    dz_pre = d_new * (h - n) * z * (1 - z)
    dr_pre = dn_pre * hn * r * (1 - r)
    dxi = jnp.concatenate([dr_pre, dz_pre, dn_pre], axis=-1)
    dhh = jnp.concatenate([dr_pre, dz_pre, dn_pre * r], axis=-1)
    d_x = [None] * (len(x_states) - 1) + [_matmul(dxi, w_i_t, dtype)]
    d_h = [None] * (len(h_states) - 1) + [_matmul(dhh, w_h_t, dtype)]

    def add(grads, k, value):
        grads[k] = value if grads[k] is None else grads[k] + value

    d_rounds = [None] * len(rounds_t)
    for i in range(len(rounds_t), 0, -1):
        k, sigmoid = (i + 1) // 2, sigmoids[i - 1]
        # Odd rounds gate x and read h; even rounds gate h and read x.
        gated, d_gated, d_read = (x_states, d_x, d_h) if i % 2 else (h_states, d_h, d_x)
        out, src = (k, k - 1)  # x_k = 2 s x_{k-1} (odd); h_k = 2 s h_{k-1} (even).
        d_out = d_gated[out]
        add(d_gated, src, d_out * 2 * sigmoid)
        d_pre = d_out * 2 * gated[src] * sigmoid * (1 - sigmoid)
        d_input, d_rounds[i - 1] = _chain_backward(d_pre, rounds_t[i - 1], dtype)
        add(d_read, k - 1 if i % 2 else k, d_input)
    dh_prev = d_new * z + d_h[0]
    if valid is not None:
        dh_prev = jnp.where(valid[:, None], dh_prev, dh)
    return dh_prev, d_x[0], (d_rounds, dxi, dhh)


def _backward(dtype, unroll, saved, cotangents):
    """The reverse scan does only the per-step input-side dots (d @ W^T); every weight's
    gradient is one [K, T*B] x [T*B, N] GEMM after it, as in the fused GRU's backward
    (autodiff would add T rank-B updates to each weight's gradient inside the loop)."""
    rounds, w_i, w_h, h0, xs, valid, hs, residuals = saved
    d_hs, d_h_last = cotangents
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    rounds_t = [[transposed_kernel(f, dtype) for f in factors] for factors in rounds]
    w_i_t, w_h_t = transposed_kernel(w_i, dtype), transposed_kernel(w_h, dtype)

    def step(dh_next, inputs):
        dy, h, x, v, res = inputs
        dh_prev, d_x, d_outputs = _backward_step(
            dh_next + dy, h, x, v, res, rounds_t, w_i_t, w_h_t, dtype
        )
        return dh_prev, (d_x, d_outputs)

    dh0, (d_xs, (d_rounds, dxi, dhh)) = jax.lax.scan(
        step, d_h_last, (d_hs, h_prev, xs, valid, residuals), reverse=True, unroll=unroll
    )
    sigmoids, mids, _ = residuals
    x_states, h_states = _states(xs, h_prev, sigmoids)
    d_factors = []
    for i, d_outputs in enumerate(d_rounds, start=1):
        k = (i + 1) // 2
        first = h_states[k - 1] if i % 2 else x_states[k]
        inputs = [first, *mids[i - 1]]
        d_factors.append(
            tuple(weight_gradient(a, d, dtype) for a, d in zip(inputs, d_outputs, strict=True))
        )
    dw_i = weight_gradient(x_states[-1], dxi, dtype)
    dw_h = weight_gradient(h_states[-1], dhh, dtype)
    hidden = h0.shape[-1]
    db_i = dxi.sum(axis=(0, 1))
    db_hn = dhh[..., 2 * hidden :].sum(axis=(0, 1))
    return d_factors, dw_i, db_i, dw_h, db_hn, dh0, d_xs, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def mogrifier_gru_recurrence(
    rounds, w_i, b_i, w_h, b_hn, h0, xs, valid, dtype=jnp.float32, unroll=1
):
    """The Mogrifier GRU over time, with a hand-written backward pass (_backward).

    Args:
      rounds: float32 factors of each round's matrix, in order: Q^1, R^2, Q^3, ...; each a
        tuple, (kernel,) or factorised (left, right); Q's are [H, in], R's [in, H].
      w_i [in, 3H], b_i [3H], w_h [H, 3H], b_hn [H]: the GRU's, gates in flax's order r, z, n.
      h0: [batch, H] float32; xs: [time, batch, in] float32.
      valid: None, or [time, batch] bool; steps where False keep the state unchanged.
      dtype: matmul operand dtype (accumulation is float32); unroll: lax.scan's unroll.

    Returns:
      hs [time, batch, H] and the last state [batch, H].
    """
    hs, h_last, _ = _forward(rounds, w_i, b_i, w_h, b_hn, h0, xs, valid, dtype, unroll)
    return hs, h_last


def _recurrence_fwd(rounds, w_i, b_i, w_h, b_hn, h0, xs, valid, dtype, unroll):
    hs, h_last, residuals = _forward(rounds, w_i, b_i, w_h, b_hn, h0, xs, valid, dtype, unroll)
    return (hs, h_last), (rounds, w_i, w_h, h0, xs, valid, hs, residuals)


mogrifier_gru_recurrence.defvjp(_recurrence_fwd, _backward)


class MogrifierGRULayer(nn.Module):
    """A Mogrifier GRU over a whole sequence: `(carry, inputs [time, batch, in], valid,
    tokens=None, train=) -> (last carry, states [time, batch, H])` (the registry's
    StackedLayer); steps where `valid` is False keep the carry, so padded rows end with
    their own carry.

    Its GRU params sit where the GRU's do (rnn_i/scan/cell/...), the rounds' matrices
    beside them (rnn_i/mogrifier/q1, r2, q3, ...).
    """

    hidden_size: int
    dtype: Any
    rounds: int = 5
    rank: int = 0
    recurrent_dropout: float = 0.0
    unroll: int = 1

    @nn.compact
    def __call__(self, carry, inputs, valid=None, tokens=None, *, train: bool = False):
        assert tokens is None, "the Mogrifier takes embedded inputs"
        in_features = inputs.shape[-1]
        w_i, b_i, w_h, b_hn = ScanScope(in_features, self.hidden_size, name="scan")()
        if train and self.recurrent_dropout > 0:
            # DropConnect on W_h, one mask per call (Merity et al. 2018, Section 4.1).
            w_h = stochastic.Dropout(self.recurrent_dropout, deterministic=False)(w_h)
        rounds = _RoundKernels(
            in_features, self.hidden_size, self.rounds, self.rank, name="mogrifier"
        )()
        hs, h_last = mogrifier_gru_recurrence(
            rounds,
            w_i,
            b_i,
            w_h,
            b_hn,
            carry,
            inputs.astype(jnp.float32),
            valid,
            self.dtype,
            self.unroll,
        )
        return h_last, hs


class _RoundKernels(nn.Module):
    """The rounds' matrices: q1, q3, ... (state -> input) and r2, r4, ... (input -> state)."""

    in_features: int
    hidden_size: int
    rounds: int
    rank: int

    @nn.compact
    def __call__(self) -> list:
        rounds = []
        for i in range(1, self.rounds + 1):
            if i % 2:
                name, shape = f"q{i}", (self.hidden_size, self.in_features)
            else:
                name, shape = f"r{i}", (self.in_features, self.hidden_size)
            rounds.append(_Modulation(*shape, self.rank, name=name)())
        return rounds
