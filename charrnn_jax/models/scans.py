"""The scans of the linear recurrences: h_t = a_t * h_{t-1} + b_t, in linear or log space,
over time in parallel (`jax.lax.associative_scan`, O(log T) depth) or step by step
(`jax.lax.scan`); both give the same function. Time-major: [time, batch, ...].

The log-space form is Feng et al. 2024 ("Were RNNs All We Needed?", Appendix B).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SCAN_MODES = ("parallel", "sequential")


# -- The scans: h_t = a_t * h_{t-1} + b_t ----------------------------------------------------


def _combine(left, right):
    """Composes two affine maps h -> a h + b (left first); associative."""
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r


def linear_scan(a, b, h0, *, parallel: bool):
    """All states of h_t = a_t * h_{t-1} + b_t (real or complex), a, b: [time, ...]."""
    if a.shape[0] == 1:  # One step (sampling): no scan at all.
        return a * h0 + b
    if parallel:
        b = b.at[0].add(a[0] * h0)  # Fold the starting state into the first step.
        return jax.lax.associative_scan(_combine, (a, b), axis=0)[1]

    def step(h, inputs):
        a_t, b_t = inputs
        h = a_t * h + b_t
        return h, h

    return jax.lax.scan(step, h0, (a, b))[1]


def _log_combine(left, right):
    """_combine on logarithms of non-negative a and b (Feng et al., Appendix B)."""
    log_a_l, log_b_l = left
    log_a_r, log_b_r = right
    return log_a_l + log_a_r, jnp.logaddexp(log_b_l + log_a_r, log_b_r)


# log 0 in the log-space scan: finite, so logaddexp and its gradient never meet inf - inf,
# and exp of it (or of it plus any log gate) is exactly 0 in float32.
LOG_ZERO = -1e30


def _safe_log(h):
    """log h for h >= 0, with log 0 = LOG_ZERO and a zero (not NaN) gradient there."""
    positive = h > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, h, 1.0)), LOG_ZERO)


def log_space_scan(log_a, log_b, h0, *, parallel: bool):
    """All states of h_t = exp(log_a_t) h_{t-1} + exp(log_b_t), for h0 >= 0.

    Parallel: an associative scan on (log a, log b) pairs, so products of many gates
    never underflow; sequential: the same recurrence in linear space.
    """
    if not parallel or log_a.shape[0] == 1:
        return linear_scan(jnp.exp(log_a), jnp.exp(log_b), h0, parallel=False)
    log_b = log_b.at[0].set(jnp.logaddexp(log_a[0] + _safe_log(h0), log_b[0]))
    return jnp.exp(jax.lax.associative_scan(_log_combine, (log_a, log_b), axis=0)[1])


def hold_invalid(a, b, valid, identity):
    """Steps where valid is False become the identity map h -> h, so the carry is held.

    identity: (a, b) of the identity, (1, 0) in linear space or (0, LOG_ZERO) in logs.
    """
    if valid is None:
        return a, b
    keep = valid[..., None]
    return jnp.where(keep, a, identity[0]), jnp.where(keep, b, identity[1])
