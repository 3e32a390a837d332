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
depends on h_{t-1}), so each step does all its matmuls, and autodiff of the scan is the
backward pass (a hand-written rule that hoists the kernels' gradients out of the loop,
as the fused GRU does, bought little: the step is bound by its matmuls). The rank option
factorises the rounds' matrices, which cuts those matmuls. DropConnect on the recurrent
kernel (model.recurrent_dropout) is drawn once per call, outside the loop, as in the
fused GRU.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from charrnn_jax.models.fused_gru import ScanScope, gru_update


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


def _step(h, x, valid, rounds, w_i, b_i, w_h, b_hn, dtype):
    """One time step: eq. 1-2, then the GRU update on the modulated pair."""

    def matmul(a, kernel):  # Operands in dtype, accumulation in float32.
        return jnp.dot(a.astype(dtype), kernel, preferred_element_type=jnp.float32)

    def modulation(a, factors):  # Q^i a or R^i a, full or factorised.
        for factor in factors:
            a = matmul(a, factor)
        return a

    x_mod, h_mod = x, h
    for i, factors in enumerate(rounds, start=1):
        if i % 2:  # Odd rounds: the state gates the input.
            x_mod = 2 * jax.nn.sigmoid(modulation(h_mod, factors)) * x_mod
        else:  # Even rounds: the input gates the state.
            h_mod = 2 * jax.nn.sigmoid(modulation(x_mod, factors)) * h_mod
    xi = matmul(x_mod, w_i) + b_i
    hh = matmul(h_mod, w_h)
    new, _ = gru_update(xi, hh, h, b_hn)  # Interpolating with the unmodulated h.
    if valid is not None:
        new = jnp.where(valid[:, None], new, h)
    return new


def mogrifier_gru_recurrence(
    rounds, w_i, b_i, w_h, b_hn, h0, xs, valid, dtype=jnp.float32, unroll=1
):
    """The Mogrifier GRU over time (autodiff of the scan is its backward pass).

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
    rounds, w_i, w_h = jax.tree.map(lambda k: k.astype(dtype), (rounds, w_i, w_h))

    def step(h, inputs):
        x, v = inputs
        new = _step(h, x, v, rounds, w_i, b_i, w_h, b_hn, dtype)
        return new, new

    h_last, hs = jax.lax.scan(step, h0, (xs, valid), unroll=unroll)
    return hs, h_last


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
            w_h = nn.Dropout(self.recurrent_dropout, deterministic=False)(w_h)
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
