"""The Mogrifier GRU: a GRU whose input and previous state first gate each other.

Melis, Kočiský and Blunsom 2020, "Mogrifier LSTM" (ICLR), eq. 1-2: before the cell sees
x_t and h_{t-1}, they modulate one another for `rounds` rounds,

    x^i = 2 sigmoid(Q^i h^{i-1}) * x^{i-2}   for odd i,
    h^i = 2 sigmoid(R^i x^{i-1}) * h^{i-2}   for even i,

(x^{-1} = x_t, h^0 = h_{t-1}), and the cell runs on the last x and h. The paper's gains
were largest on small character-level corpora (PTB-char), which is why it is here.

The paper mogrifies an LSTM; this is the same circuit in front of the GRU of
models/fused_gru.py (Cho et al. 2014, eq. 5-8, flax's gate order r, z, n). The gates
and the candidate read the modulated pair; the update interpolates with the *unmodulated*
h_{t-1}, the GRU's memory, as the paper leaves the LSTM's memory c_{t-1} unmodulated.
With rounds=0 the layer is nn.GRUCell's function with the same params (tested).

Unlike the fused GRU, the input projection cannot be hoisted out of the time loop (x^i
depends on h_{t-1}), so the step projects both; autodiff of the scan gives the backward
pass. DropConnect on the recurrent kernel (model.recurrent_dropout) is drawn once per
call, outside the loop, as in the fused GRU.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from charrnn_jax.models.fused_gru import ScanScope


class _Modulation(nn.Module):
    """One round's matrix (Q^i: state -> input, or R^i: input -> state), full rank or
    factorised at `rank` as the paper does to save parameters (Q = Q_left Q_right)."""

    in_features: int
    out_features: int
    rank: int

    @nn.compact
    def __call__(self):
        init = nn.initializers.lecun_normal()
        if not self.rank or self.rank >= min(self.in_features, self.out_features):
            return self.param("kernel", init, (self.in_features, self.out_features), jnp.float32)
        left = self.param("left", init, (self.in_features, self.rank), jnp.float32)
        right = self.param("right", init, (self.rank, self.out_features), jnp.float32)
        return left @ right


def mogrify(x, h, q_kernels, r_kernels, dtype=jnp.float32):
    """Eq. 1-2: x and h gate each other, x first; len(q) + len(r) rounds in all.

    x [batch, in], h [batch, H]; q_kernels[j] [H, in] (round 2j + 1), r_kernels[j] [in, H]
    (round 2j + 2). Matmul operands in `dtype`, accumulation and gates in float32.
    """
    for i in range(len(q_kernels) + len(r_kernels)):
        if i % 2 == 0:
            gate = jnp.dot(h.astype(dtype), q_kernels[i // 2], preferred_element_type=jnp.float32)
            x = 2 * jax.nn.sigmoid(gate) * x
        else:
            gate = jnp.dot(x.astype(dtype), r_kernels[i // 2], preferred_element_type=jnp.float32)
            h = 2 * jax.nn.sigmoid(gate) * h
    return x, h


def _gru_update(x, h, h_mod, w_i, b_i, w_h, b_hn, dtype):
    """One GRU step (flax's GRUCell) whose gates read (x, h_mod) and whose update keeps h."""
    hidden = h.shape[-1]
    xi = jnp.dot(x.astype(dtype), w_i, preferred_element_type=jnp.float32) + b_i
    hh = jnp.dot(h_mod.astype(dtype), w_h, preferred_element_type=jnp.float32)
    r = jax.nn.sigmoid(xi[:, :hidden] + hh[:, :hidden])
    z = jax.nn.sigmoid(xi[:, hidden : 2 * hidden] + hh[:, hidden : 2 * hidden])
    n = jnp.tanh(xi[:, 2 * hidden :] + r * (hh[:, 2 * hidden :] + b_hn))
    return n + z * (h - n)  # = (1 - z) * n + z * h, as nn.GRUCell.


class MogrifierGRULayer(nn.Module):
    """A Mogrifier GRU over a whole sequence: `(carry, inputs [time, batch, in], valid,
    train=) -> (last carry, states [time, batch, H])`; steps where `valid` is False keep
    the carry, so padded rows end with their own carry.

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
    def __call__(self, carry, inputs, valid=None, *, train: bool = False):
        in_features = inputs.shape[-1]
        w_i, b_i, w_h, b_hn = ScanScope(in_features, self.hidden_size, name="scan")()
        if train and self.recurrent_dropout > 0:
            # DropConnect on W_h, one mask per call (Merity et al. 2018, Section 4.1).
            w_h = nn.Dropout(self.recurrent_dropout, deterministic=False)(w_h)
        q_kernels, r_kernels = _RoundKernels(
            in_features, self.hidden_size, self.rounds, self.rank, name="mogrifier"
        )()
        q_kernels = [q.astype(self.dtype) for q in q_kernels]
        r_kernels = [r.astype(self.dtype) for r in r_kernels]
        w_i, w_h = w_i.astype(self.dtype), w_h.astype(self.dtype)

        def step(h, step_inputs):
            x, v = step_inputs
            x_mod, h_mod = mogrify(x, h, q_kernels, r_kernels, self.dtype)
            new = _gru_update(x_mod, h, h_mod, w_i, b_i, w_h, b_hn, self.dtype)
            if v is not None:
                new = jnp.where(v[:, None], new, h)
            return new, new

        h_last, hs = jax.lax.scan(
            step, carry, (inputs.astype(jnp.float32), valid), unroll=self.unroll
        )
        return h_last, hs


class _RoundKernels(nn.Module):
    """The rounds' matrices: q1, q3, ... (state -> input) and r2, r4, ... (input -> state)."""

    in_features: int
    hidden_size: int
    rounds: int
    rank: int

    @nn.compact
    def __call__(self):
        q_kernels, r_kernels = [], []
        for i in range(1, self.rounds + 1):
            if i % 2:
                q_kernels.append(
                    _Modulation(self.hidden_size, self.in_features, self.rank, name=f"q{i}")()
                )
            else:
                r_kernels.append(
                    _Modulation(self.in_features, self.hidden_size, self.rank, name=f"r{i}")()
                )
        return q_kernels, r_kernels
