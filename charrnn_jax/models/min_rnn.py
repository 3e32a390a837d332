"""minGRU and minLSTM: Feng, Tung, Ahmed, Bengio and Hajimirsadeghi, "Were RNNs All We
Needed?" (2024, arXiv:2410.01201).

Section 3: minGRU z_t = sigma(Linear(x_t)), h~_t = Linear(x_t),
h_t = (1 - z_t) h_{t-1} + z_t h~_t; minLSTM f_t, i_t, h~_t from x_t,
f'_t = f_t / (f_t + i_t), i'_t = i_t / (f_t + i_t), h_t = f'_t h_{t-1} + i'_t h~_t.
Both run in the log-space form of their Appendix B (B.3: g(x) = x + 0.5 for x >= 0,
sigmoid(x) otherwise, keeps h~ positive so the scan can run on logarithms).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from charrnn_jax.models.scans import LOG_ZERO, hold_invalid, log_space_scan


def _log_g(x):
    """log g(x), g(x) = x + 0.5 (x >= 0) or sigmoid(x): Feng et al., Appendix B.3."""
    return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), -jax.nn.softplus(-x))


# -- The recurrences ------------------------------------------------------------------------


class Projection(nn.Module):
    """A Dense (the papers' Linear, with bias) in the compute dtype, float32 out for the scan."""

    features: int
    dtype: Any
    dot_general: Any = None

    @nn.compact
    def __call__(self, x):
        dense = nn.Dense(
            self.features, use_bias=True, dtype=self.dtype, dot_general=self.dot_general
        )
        return dense(x).astype(jnp.float32)


def _states(log_a, log_b, h0, valid, parallel):
    """The min cells' shared tail: hold padded steps, scan; returns (last h, all h)."""
    log_a, log_b = hold_invalid(log_a, log_b, valid, (0.0, LOG_ZERO))
    hs = log_space_scan(log_a, log_b, h0, parallel=parallel)
    return hs[-1], hs


class MinGRU(nn.Module):
    """minGRU (Feng et al. 2024, Section 3.1 and Appendix B.3, log-space form).

    Carry: h [batch, H] float32, always >= 0 (g keeps h~ positive).
    """

    hidden_size: int
    dtype: Any
    parallel: bool
    dot_general: Any = None

    @nn.compact
    def __call__(self, h0, x, valid=None):
        k = Projection(2 * self.hidden_size, self.dtype, self.dot_general, name="gates")(x)
        k_z, k_h = jnp.split(k, 2, axis=-1)
        log_z = -jax.nn.softplus(-k_z)  # log sigmoid(k_z)
        log_a = -jax.nn.softplus(k_z)  # log (1 - sigmoid(k_z))
        log_b = log_z + _log_g(k_h)
        return _states(log_a, log_b, h0, valid, self.parallel)


class MinLSTM(nn.Module):
    """minLSTM (Feng et al. 2024, Section 3.2 with the length-independent normalisation of
    f and i, and Appendix B.3's log-space form).

    Carry: h [batch, H] float32, always >= 0.
    """

    hidden_size: int
    dtype: Any
    parallel: bool
    dot_general: Any = None

    @nn.compact
    def __call__(self, h0, x, valid=None):
        k = Projection(3 * self.hidden_size, self.dtype, self.dot_general, name="gates")(x)
        k_f, k_i, k_h = jnp.split(k, 3, axis=-1)
        # log f' = log(f / (f + i)) = -softplus(log i - log f), with log sigmoid(k) =
        # -softplus(-k): the paper's `diff` (Appendix B.3).
        diff = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
        log_a = -jax.nn.softplus(diff)
        log_b = -jax.nn.softplus(-diff) + _log_g(k_h)
        return _states(log_a, log_b, h0, valid, self.parallel)
