"""Stacked fused GRU layers computed as a wavefront: the same function as one layer's whole
sequence after another, in T + L - 1 dependent steps instead of L * T.

Layer l at time t depends only on layer l at t - 1 and layer l - 1 at t, so at wave step s
every layer l can advance its time step t = s - l together: all L recurrent GEMMs (h @ W_h)
and the L - 1 input GEMMs of the upper layers (below @ W_i) are issued as two batched GEMMs,
each with L (or L - 1) times one layer's work to spread over cores. This is how cuDNN
schedules multi-layer RNNs (Appleyard et al. 2016, "Optimizing Performance of Recurrent
Neural Networks on GPUs", Section 3.2; Diamos et al. 2016, "Persistent RNNs").

The cell is models/fused_gru.py's (Cho et al. 2014, eq. 5-8, flax's gate order r, z, n),
with its params at the same paths, its hand-written backward run as a reverse wavefront,
and the same dropout masks drawn by the same modules, so the two schedules share
checkpoints and `model.stack` may change on resume (training/identity.py).

The price: the upper layers' input projections, one large GEMM over time*batch in the
layer-by-layer schedule, become one small GEMM per step here. Which schedule is faster is
a measured, per-backend choice (models/backend_choices.py, benchmarks/wavefront.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from charrnn_jax.models import stochastic
from charrnn_jax.models.fused_gru import (
    FusedGRUWeights,
    gru_update,
    transposed_kernel,
)
from charrnn_jax.models.precision import mixed_matmul, weight_gradient


def _batched(x, w, dtype):
    """[L, B, K] x [L, K, N] -> [L, B, N]: one layer's GEMM for each of L layers at once."""
    return jnp.einsum(
        "lbk,lkn->lbn", x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32
    )


def _shift(per_layer, length):
    """[L][T, ...] -> [T + L - 1, L, ...]: layer l's time t at wave step t + l (zeros on the
    ramps, where the layer has not started or has finished)."""
    num = len(per_layer)
    return jnp.stack(
        [
            jnp.pad(x, [(i, num - 1 - i)] + [(0, 0)] * (x.ndim - 1))[:length]
            for i, x in enumerate(per_layer)
        ],
        axis=1,
    )


def _forward(x0, tokens, h0, w_i, b_i, w_h, b_hn, masks, active, dtype, unroll):
    """The forward wave: all states [S, L, B, H] and the gates the backward reuses."""

    def step(h, inputs):
        x, token, mask, on = inputs
        if token is not None:
            x = x0.at[token].get(mode="promise_in_bounds")
        below = h[:-1] if mask is None else h[:-1] * mask  # Dropout between layers.
        xi = jnp.concatenate([x[None], _batched(below, w_i, dtype) + b_i[:, None]])
        hh = _batched(h, w_h, dtype)
        new, gates = gru_update(xi, hh, h, b_hn[:, None])
        new = jnp.where(on[..., None], new, h)
        return new, (new, *gates)

    xs = None if tokens is not None else x0
    _, (states, r, z, n, hn) = jax.lax.scan(step, h0, (xs, tokens, masks, active), unroll=unroll)
    return states, (r, z, n, hn)


def _backward(dtype, unroll, residuals, d_states):
    """The reverse wave: per step dh @ W_h^T and d(xi) @ W_i^T for all layers at once; the
    weight gradients are one batched GEMM each afterwards (as in fused_gru)."""
    table, tokens, h0, w_i, w_h, masks, active, states, (r, z, n, hn) = residuals
    hidden = h0.shape[-1]
    prev = jnp.concatenate([h0[None], states[:-1]])
    w_h_t, w_i_t = transposed_kernel(w_h, dtype), transposed_kernel(w_i, dtype)

    def step(carry, inputs):
        g, d_table = carry
        dy, hp, r, z, n, hn, mask, on, token = inputs
        g = g + dy  # What reads this step's states directly (the top layer's outputs).
        dn_pre = g * (1 - z) * (1 - n * n)
        dz_pre = g * (hp - n) * z * (1 - z)
        dr_pre = dn_pre * hn * r * (1 - r)
        keep = on[..., None]
        dxi = jnp.where(keep, jnp.concatenate([dr_pre, dz_pre, dn_pre], axis=-1), 0.0)
        dhh = jnp.where(keep, jnp.concatenate([dr_pre, dz_pre, dn_pre * r], axis=-1), 0.0)
        d_below = _batched(dxi[1:], w_i_t, dtype)
        if mask is not None:
            d_below = d_below * mask
        g_prev = jnp.where(keep, g * z, g) + _batched(dhh, w_h_t, dtype)
        g_prev = g_prev.at[:-1].add(d_below)
        if token is None:
            return (g_prev, None), (dxi[0], dhh, dxi[1:])
        d_table = d_table.at[token].add(dxi[0], mode="promise_in_bounds")
        return (g_prev, d_table), (None, dhh, dxi[1:])

    d_table = None if tokens is None else jnp.zeros_like(table)
    (d_h0, d_table), (d_x0, dhh, dxi_up) = jax.lax.scan(
        step,
        (jnp.zeros_like(h0), d_table),
        (d_states, prev, r, z, n, hn, masks, active, tokens),
        reverse=True,
        unroll=unroll,
    )
    below = prev[:, :-1] if masks is None else prev[:, :-1] * masks
    # One [H, S*B] x [S*B, 3H] GEMM per layer on its own slice: XLA:CPU runs these plain
    # GEMMs at about twice the rate of one einsum batched over the layer axis.
    d_w_h = jnp.stack([weight_gradient(prev[:, i], dhh[:, i], dtype) for i in range(len(w_h))])
    d_w_i = jnp.stack([weight_gradient(below[:, i], dxi_up[:, i], dtype) for i in range(len(w_i))])
    d_b_i = dxi_up.sum(axis=(0, 2))
    d_b_hn = dhh[..., 2 * hidden :].sum(axis=(0, 2))
    d_x0 = d_table if tokens is not None else d_x0
    return d_x0, None, d_h0, d_w_i, d_b_i, d_w_h, d_b_hn, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10))
def _wave(x0, tokens, h0, w_i, b_i, w_h, b_hn, masks, active, dtype, unroll):
    return _forward(x0, tokens, h0, w_i, b_i, w_h, b_hn, masks, active, dtype, unroll)[0]


def _wave_fwd(x0, tokens, h0, w_i, b_i, w_h, b_hn, masks, active, dtype, unroll):
    states, gates = _forward(x0, tokens, h0, w_i, b_i, w_h, b_hn, masks, active, dtype, unroll)
    table = None if tokens is None else x0  # Only the table is small enough to keep.
    return states, (table, tokens, h0, w_i, w_h, masks, active, states, gates)


_wave.defvjp(_wave_fwd, _backward)


def wavefront_gru(x0, tokens, h0, w_i, b_i, w_h, b_hn, valid, masks, dtype, unroll=1):
    """L >= 2 stacked GRU layers over time, as a wavefront.

    Args:
      x0: layer 0's input projections [T, B, 3H] (x @ w_i + b_i), or with `tokens` the
        [vocab, 3H] table of them, one row per byte.
      tokens: None, or [T, B] integer rows of the table.
      h0: [L, B, H] float32 starting states.
      w_i, b_i: [L - 1, H, 3H] and [L - 1, 3H], the input kernels of layers 1 .. L - 1.
      w_h, b_hn: [L, H, 3H] and [L, H], every layer's recurrent kernel and candidate bias.
      valid: None, or [T, B] bool; steps where False keep every layer's state.
      masks: None, or [L - 1, T, B, H] float32 scaled dropout masks on the outputs of
        layers 0 .. L - 2 (each the next layer's input).
      dtype: matmul operand dtype; unroll: wave steps per loop iteration.

    Returns:
      the top layer's states [T, B, H] and every layer's last state [L, B, H].
    """
    num_layers, time = h0.shape[0], (tokens if tokens is not None else x0).shape[0]
    length = time + num_layers - 1
    on = jnp.ones(h0.shape[1:2], bool)[None].repeat(time, 0) if valid is None else valid
    active = _shift([on] * num_layers, length)
    if tokens is not None:
        tokens = jnp.pad(tokens, [(0, num_layers - 1), (0, 0)])  # Row 0 on the ramp.
    else:
        x0 = jnp.pad(x0, [(0, num_layers - 1), (0, 0), (0, 0)])
    if masks is not None:  # Layer l + 1 reads layer l's output of time t at step t + l + 1.
        masks = _shift([jnp.zeros_like(masks[0])] + list(masks), length)[:, 1:]
    states = _wave(x0, tokens, h0, w_i, b_i, w_h, b_hn, masks, active, dtype, unroll)
    # Each layer's state is held from its last step to the end of the wave.
    return states[num_layers - 1 :, -1], states[-1]


def stack(spec, num_layers, carry, x, valid, tokens, dropout, drop_dims, train):
    """The stacked fused GRU layers, as the wavefront, in the calling module's scope.

    Called inside CharRNN's compact method so that the params (rnn_i/scan/cell/...) and
    the dropout modules (rnn_i/Dropout_0 for DropConnect, Dropout_i between layers) have
    the paths and the random streams of the layer-by-layer schedule.

    x: the [256, E] embedding table with `tokens` [T, B], or embedded inputs [T, B, E].
    Returns (ys [T, B, H] after the last layer's dropout, the new carry per layer).
    """
    hidden, dtype = spec.hidden_size, spec.dtype
    weights = [
        FusedGRUWeights(hidden, spec.recurrent_dropout, name=f"rnn_{i}")(
            x.shape[-1] if i == 0 else hidden, train
        )
        for i in range(num_layers)
    ]
    x0 = mixed_matmul(x.astype(dtype), weights[0][0].astype(dtype)) + weights[0][1]
    time, batch = (tokens if tokens is not None else x).shape[:2]
    masks = None
    if train and dropout > 0:
        ones = jnp.ones((time, batch, hidden), jnp.float32)
        masks = jnp.stack(
            [
                stochastic.Dropout(dropout, drop_dims, deterministic=False)(ones)
                for _ in weights[:-1]
            ]
        )
    ys, last = wavefront_gru(
        x0,
        tokens,
        jnp.stack(carry),
        jnp.stack([w[0] for w in weights[1:]]),
        jnp.stack([w[1] for w in weights[1:]]),
        jnp.stack([w[2] for w in weights]),
        jnp.stack([w[3] for w in weights]),
        valid,
        masks,
        dtype,
        spec.unroll,
    )
    if dropout > 0:
        ys = stochastic.Dropout(dropout, drop_dims, deterministic=not train)(ys)
    return ys, list(last)
