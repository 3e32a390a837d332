"""The Linear Recurrent Unit: Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu and De,
"Resurrecting Recurrent Neural Networks for Long Sequences" (ICML 2023, arXiv:2303.06349).

Complex diagonal x_k = lambda * x_{k-1} + gamma * (B u_k), y_k = Re(C x_k) + D * u_k
(their eq. 3-7), lambda = exp(-exp(nu) + i exp(theta)) (exponential parameterisation,
Section 3.3), ring initialisation of |lambda| in [r_min, r_max] and
gamma = sqrt(1 - |lambda|^2) (normalisation, Section 3.4; Algorithm 1 in their appendix).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from charrnn_jax.models.scans import hold_invalid, linear_scan

LRU_R_MIN, LRU_R_MAX, LRU_MAX_PHASE = 0.9, 0.999, 2 * math.pi  # Orvieto et al., Alg. 1.


def _ring_init(r_min: float, r_max: float, max_phase: float):
    """Orvieto et al., Algorithm 1: |lambda| uniform on the ring's area, phase uniform."""

    def nu_init(key, shape, dtype=jnp.float32):
        u = jax.random.uniform(key, shape, dtype)
        return jnp.log(-0.5 * jnp.log(u * (r_max**2 - r_min**2) + r_min**2))

    def theta_init(key, shape, dtype=jnp.float32):
        return jnp.log(max_phase * jax.random.uniform(key, shape, dtype))

    return nu_init, theta_init


def _scaled_normal(scale_dim: int):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype) / math.sqrt(scale_dim)

    return init


class LRU(nn.Module):
    """Linear Recurrent Unit (Orvieto et al. 2023, eq. 3-7 and Algorithm 1).

    The state has hidden_size complex units; the carry keeps its real and imaginary parts
    as two float32 arrays [batch, H] so it shards, checkpoints and masks like any carry.
    """

    hidden_size: int
    dtype: Any
    parallel: bool
    dot_general: Any = None

    @nn.compact
    def __call__(self, carry, u, valid=None):
        n, h = self.hidden_size, u.shape[-1]
        nu_init, theta_init = _ring_init(LRU_R_MIN, LRU_R_MAX, LRU_MAX_PHASE)
        nu_log = self.param("nu_log", nu_init, (n,))
        theta_log = self.param("theta_log", theta_init, (n,))
        gamma_log = self.param(
            "gamma_log",
            lambda _, shape: jnp.log(jnp.sqrt(1 - jnp.exp(-2 * jnp.exp(nu_log)))),
            (n,),
        )
        b_re = self.param("B_re", _scaled_normal(2 * h), (h, n))
        b_im = self.param("B_im", _scaled_normal(2 * h), (h, n))
        c_re = self.param("C_re", _scaled_normal(n), (n, h))
        c_im = self.param("C_im", _scaled_normal(n), (n, h))
        d = self.param("D", nn.initializers.normal(1.0), (h,))

        lam = jnp.exp(-jnp.exp(nu_log) + 1j * jnp.exp(theta_log))
        u32 = u.astype(jnp.float32)
        bu = (u32 @ b_re + 1j * (u32 @ b_im)) * jnp.exp(gamma_log)
        a = jnp.broadcast_to(lam, bu.shape)
        a, bu = hold_invalid(a, bu, valid, (1.0, 0.0))
        x0 = carry[0] + 1j * carry[1]
        xs = linear_scan(a, bu, x0, parallel=self.parallel)
        y = (xs.real @ c_re - xs.imag @ c_im) + d * u32  # Re(C x) + D u
        last = xs[-1]
        return (last.real, last.imag), y


def zero_state(batch_size: int, hidden_size: int):
    """The LRU's zero state: the real and imaginary parts, float32 [batch, H] each."""
    zeros = jnp.zeros((batch_size, hidden_size), jnp.float32)
    return zeros, jnp.zeros_like(zeros)
