"""minGRU, minLSTM and the LRU: recurrences linear in their state, in residual blocks.

Each recurrence is h_t = a_t * h_{t-1} + b_t with a_t and b_t computed from the input
alone, so a whole sequence can run in parallel over time (`jax.lax.associative_scan`,
O(log T) depth) or one step at a time (`jax.lax.scan`); both give the same function, and
sampling runs the one-step form in O(1) per byte. Time-major throughout: [time, batch, ...].

- minGRU and minLSTM: Feng, Tung, Ahmed, Bengio and Hajimirsadeghi, "Were RNNs All We
  Needed?" (2024, arXiv:2410.01201). Section 3, equations for minGRU (z_t = sigma(Linear(x_t)),
  h~_t = Linear(x_t), h_t = (1 - z_t) h_{t-1} + z_t h~_t) and minLSTM (f_t, i_t, h~_t
  from x_t; f'_t = f_t / (f_t + i_t), i'_t = i_t / (f_t + i_t); h_t = f'_t h_{t-1} +
  i'_t h~_t), in the log-space form of their Appendix B (B.3: g(x) = x + 0.5 for x >= 0,
  sigmoid(x) otherwise, keeps h~ positive so the scan can run on logarithms).
- LRU: Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu and De, "Resurrecting Recurrent
  Neural Networks for Long Sequences" (ICML 2023, arXiv:2303.06349). Complex diagonal
  x_k = lambda * x_{k-1} + gamma * (B u_k), y_k = Re(C x_k) + D * u_k (their eq. 3-7),
  lambda = exp(-exp(nu) + i exp(theta)) (exponential parameterisation, Section 3.3),
  ring initialisation of |lambda| in [r_min, r_max] and gamma = sqrt(1 - |lambda|^2)
  (normalisation, Section 3.4; Algorithm 1 in their appendix).

The block around each recurrence is the pre-norm residual block these papers use in their
language models: x + Dropout(Recurrence(LayerNorm(x))), then x + Dropout(GatedMLP(
LayerNorm(x))) with a GeGLU MLP (Shazeer 2020, "GLU Variants Improve Transformer").
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LINEAR_CELLS = ("mingru", "minlstm", "lru")
SCAN_MODES = ("parallel", "sequential")
LRU_R_MIN, LRU_R_MAX, LRU_MAX_PHASE = 0.9, 0.999, 2 * math.pi  # Orvieto et al., Alg. 1.


def default_scan_mode(backend: str) -> str:
    """The faster form per backend.

    CPU: sequential, measured (benchmarks/linear_scaling.py, README table): XLA:CPU runs
    an elementwise `lax.scan` step in about a microsecond, while the associative scan does
    about twice the arithmetic in log2(T) passes over the whole sequence, and two cores
    leave no parallelism for it to use; minGRU's parallel form was 1.7-1.9x slower than its
    sequential form at T = 100 to 10,000. Accelerators: parallel, expected rather than
    measured (no GPU was available): there a scan's per-step kernel launch and latency
    dominate, and the associative scan's O(log T) depth is what the hardware runs well.
    """
    return "sequential" if backend == "cpu" else "parallel"


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


def _hold_invalid(a, b, valid, identity):
    """Steps where valid is False become the identity map h -> h, so the carry is held.

    identity: (a, b) of the identity, (1, 0) in linear space or (0, LOG_ZERO) in logs.
    """
    if valid is None:
        return a, b
    keep = valid[..., None]
    return jnp.where(keep, a, identity[0]), jnp.where(keep, b, identity[1])


def _log_g(x):
    """log g(x), g(x) = x + 0.5 (x >= 0) or sigmoid(x): Feng et al., Appendix B.3."""
    return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), -jax.nn.softplus(-x))


# -- The recurrences ------------------------------------------------------------------------


class _Projection(nn.Module):
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
    log_a, log_b = _hold_invalid(log_a, log_b, valid, (0.0, LOG_ZERO))
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
        k = _Projection(2 * self.hidden_size, self.dtype, self.dot_general, name="gates")(x)
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
        k = _Projection(3 * self.hidden_size, self.dtype, self.dot_general, name="gates")(x)
        k_f, k_i, k_h = jnp.split(k, 3, axis=-1)
        # log f' = log(f / (f + i)) = -softplus(log i - log f), with log sigmoid(k) =
        # -softplus(-k): the paper's `diff` (Appendix B.3).
        diff = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
        log_a = -jax.nn.softplus(diff)
        log_b = -jax.nn.softplus(-diff) + _log_g(k_h)
        return _states(log_a, log_b, h0, valid, self.parallel)


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
        a, bu = _hold_invalid(a, bu, valid, (1.0, 0.0))
        x0 = carry[0] + 1j * carry[1]
        xs = linear_scan(a, bu, x0, parallel=self.parallel)
        y = (xs.real @ c_re - xs.imag @ c_im) + d * u32  # Re(C x) + D u
        last = xs[-1]
        return (last.real, last.imag), y


RECURRENCES = {"mingru": MinGRU, "minlstm": MinLSTM, "lru": LRU}


def zero_carry(cell_type: str, batch_size: int, hidden_size: int):
    """One block's zero state (float32; LRU: its real and imaginary parts)."""
    zeros = jnp.zeros((batch_size, hidden_size), jnp.float32)
    return (zeros, jnp.zeros_like(zeros)) if cell_type == "lru" else zeros


class GatedMLP(nn.Module):
    """GeGLU feed-forward: Dense(gelu(x W) * (x V)) (Shazeer 2020, eq. 6)."""

    ratio: int
    dtype: Any
    dot_general: Any = None

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        up = nn.Dense(
            2 * self.ratio * width, dtype=self.dtype, dot_general=self.dot_general, name="up"
        )(x)
        gate, value = jnp.split(up, 2, axis=-1)
        return nn.Dense(width, dtype=self.dtype, dot_general=self.dot_general, name="down")(
            nn.gelu(gate) * value
        )


class ResidualBlock(nn.Module):
    """Pre-norm residual block: the recurrence, then a gated MLP, each on its own branch."""

    cell_type: str
    hidden_size: int
    mlp_ratio: int
    dropout_rate: float
    dtype: Any
    parallel: bool
    dot_general: Any = None

    @nn.compact
    def __call__(self, carry, x, valid=None, *, train: bool = False):
        """x: [time, batch, hidden_size] float32; returns (new carry, same-shape output)."""
        recurrence = RECURRENCES[self.cell_type](
            self.hidden_size, self.dtype, self.parallel, self.dot_general, name="recurrence"
        )
        drop = nn.Dropout(self.dropout_rate, deterministic=not train or self.dropout_rate == 0)
        normed = nn.LayerNorm(name="norm_recurrence")(x).astype(self.dtype)
        carry, y = recurrence(carry, normed, valid)
        x = x + drop(y.astype(jnp.float32))
        normed = nn.LayerNorm(name="norm_mlp")(x).astype(self.dtype)
        mlp = GatedMLP(self.mlp_ratio, self.dtype, self.dot_general, name="mlp")(normed)
        return carry, x + drop(mlp.astype(jnp.float32))


class BlockStack(nn.Module):
    """Embedded bytes -> num_layers residual blocks -> final LayerNorm.

    A Dense maps the embedding to the blocks' width when the two differ.
    """

    cell_type: str
    hidden_size: int
    num_layers: int
    mlp_ratio: int
    dropout_rate: float
    dtype: Any
    parallel: bool
    dot_general: Any = None

    @nn.compact
    def __call__(self, carry, x, valid=None, *, train: bool = False):
        """x: [time, batch, embed]; returns ([time, batch, hidden_size], the new carry)."""
        if x.shape[-1] != self.hidden_size:
            x = nn.Dense(
                self.hidden_size, dtype=self.dtype, dot_general=self.dot_general, name="in"
            )(x)
        x = x.astype(jnp.float32)  # The residual stream stays float32.
        new_carry = []
        for i in range(self.num_layers):
            block = ResidualBlock(
                self.cell_type,
                self.hidden_size,
                self.mlp_ratio,
                self.dropout_rate,
                self.dtype,
                self.parallel,
                self.dot_general,
                name=f"block_{i}",
            )
            layer_carry, x = block(carry[i], x, valid, train=train)
            new_carry.append(layer_carry)
        return nn.LayerNorm(name="norm_out")(x).astype(self.dtype), tuple(new_carry)


def last_valid(xs, valid):
    """Each row's output at its last valid step: xs [time, batch, H], valid [time, batch]."""
    if valid is None:
        return xs[-1]
    index = jnp.max(jnp.where(valid, jnp.arange(xs.shape[0])[:, None], 0), axis=0)
    return jnp.take_along_axis(xs, index[None, :, None], axis=0)[0]
