"""The Real-Gated Linear Recurrent Unit (RG-LRU) of Griffin: De, Smith, Fernando, Botev,
Cristian-Muraru, Gu, Haroun, Berrada, Chen, Srinivasan, Desjardins, Doucet, Budden, Teh,
Pascanu, De Freitas and Gulcehre, "Griffin: Mixing Gated Linear Recurrences with Local
Attention for Efficient Language Models" (2024, arXiv:2402.19427), Section 2.4:

    r_t = sigma(W_a x_t + b_a)                          (1)  recurrence gate
    i_t = sigma(W_x x_t + b_x)                          (2)  input gate
    a_t = a^(c r_t),  a = sigma(Lambda),  c = 8         (3)
    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * x_t) (4)

computed in log space, log a_t = -c r_t softplus(-Lambda), as the paper advises for
stability; Lambda is initialised so that a lies uniformly on the ring [0.9, 0.999]
(recurrentgemma's `rnn_param_init`). Around it sits Griffin's recurrent block (their
Figure 2) without the short Conv1D: a GeLU gate branch multiplies the RG-LRU's output,
then a Linear maps back to the residual stream.

Carry: h [batch, H] float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from charrnn_jax.models.scans import hold_invalid, linear_scan

RGLRU_C = 8.0  # The fixed scalar c of eq. 3.
RGLRU_R_MIN, RGLRU_R_MAX = 0.9, 0.999  # Where a = sigma(Lambda) starts.


def _ring_lambda_init(key, shape, dtype=jnp.float32):
    """Lambda with sigma(Lambda) uniform on [r_min^2, r_max^2] in area (recurrentgemma)."""
    u = jax.random.uniform(key, shape, dtype)
    log_a = 0.5 * jnp.log(u * (RGLRU_R_MAX**2 - RGLRU_R_MIN**2) + RGLRU_R_MIN**2)
    return log_a - jnp.log1p(-jnp.exp(log_a))  # sigma^{-1}(a) = log(a / (1 - a)).


def gates(x, w_a, b_a, w_x, b_x, lam):
    """(a_t, the input term sqrt(1 - a_t^2) * i_t * x_t) of eq. 1-4, float32 [time, ...]."""
    r = jax.nn.sigmoid(x @ w_a + b_a)  # eq. 1
    i = jax.nn.sigmoid(x @ w_x + b_x)  # eq. 2
    log_a = -RGLRU_C * r * jax.nn.softplus(-lam)  # eq. 3: log a^(c r) = c r log sigma(Lambda)
    a = jnp.exp(log_a)
    # sqrt(1 - a^2) = sqrt(-expm1(2 log a)): accurate when a is near 1.
    return a, jnp.sqrt(-jnp.expm1(2.0 * log_a)) * (i * x)  # eq. 4's input term


class RGLRU(nn.Module):
    """Griffin's recurrent block (without the Conv1D) around the RG-LRU of eq. 1-4."""

    hidden_size: int
    dtype: Any
    parallel: bool
    dot_general: Any = None

    @nn.compact
    def __call__(self, h0, x, valid=None):
        """x: [time, batch, width]; returns (h at the last step, output [time, batch, width])."""
        n, width = self.hidden_size, x.shape[-1]

        def dense(features, name):
            return nn.Dense(features, dtype=self.dtype, dot_general=self.dot_general, name=name)

        gate_branch = nn.gelu(dense(n, "gate")(x).astype(jnp.float32))
        u = dense(n, "value")(x).astype(jnp.float32)
        w_a = self.param("W_a", nn.initializers.lecun_normal(), (n, n))
        w_x = self.param("W_x", nn.initializers.lecun_normal(), (n, n))
        b_a = self.param("b_a", nn.initializers.zeros_init(), (n,))
        b_x = self.param("b_x", nn.initializers.zeros_init(), (n,))
        lam = self.param("Lambda", _ring_lambda_init, (n,))
        a, b = gates(u, w_a, b_a, w_x, b_x, lam)
        a, b = hold_invalid(a, b, valid, (1.0, 0.0))
        hs = linear_scan(a, b, h0, parallel=self.parallel)
        y = dense(width, "out")((hs * gate_branch).astype(self.dtype))
        return hs[-1], y.astype(jnp.float32)
