"""Mixed precision: low-precision matmul operands with float32 accumulation, forward and back.

Autodiff of a bfloat16 dot gives bfloat16 -> bfloat16 dots in the backward pass, which
XLA:CPU runs slower than float32 (benchmarks/README.md); every dense layer of the models
takes its dot from `dense_dot_general` so all three GEMMs accumulate in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.layout import Layout, with_layout_constraint


@jax.custom_vjp
def mixed_matmul(x, w):
    """x [..., K] @ w [K, N] on low-precision operands with float32 accumulation and output.

    Autodiff of a bfloat16 dot gives bfloat16 -> bfloat16 dots in the backward pass,
    which XLA:CPU runs slower than float32; here all three GEMMs take bfloat16 operands
    and accumulate in float32.
    """
    return jnp.dot(x, w, preferred_element_type=jnp.float32)


def _mixed_matmul_fwd(x, w):
    return mixed_matmul(x, w), (x, w)


def weight_gradient(inputs, d_outputs, dtype):
    """sum over all positions of inputs^T d_outputs ([..., K], [..., N] -> [K, N]): a
    weight's gradient as one GEMM over the flattened leading axes, in dtype with float32
    accumulation. The positions are flattened in the arrays' own order (a [T, B, K] input
    contracted over two axes by einsum, XLA would order them (batch, time) and transpose
    one to match). Under low precision on a CPU the transposed input is laid out as its
    own row-major [K, positions] array (see row_major_on_cpu)."""
    inputs_t = inputs.reshape(-1, inputs.shape[-1]).T.astype(dtype)
    if dtype != jnp.float32:
        inputs_t = row_major_on_cpu(inputs_t)
    return jnp.dot(
        inputs_t,
        d_outputs.reshape(-1, d_outputs.shape[-1]).astype(dtype),
        preferred_element_type=jnp.float32,
    )


def row_major_on_cpu(matrix):
    """matrix, laid out row-major (its last axis minor) when compiled for a CPU.

    A weight gradient contracts over the positions, the major axis of both operands.
    XLA folds the transpose of the left one into the dot (or lays it out as a bitcast),
    and XLA:CPU's bf16 GEMM with its contraction major runs at about half the rate of
    the same GEMM on a row-major copy ([1024, 6400] x [6400, 3072] on a Zen 4: 246 ms
    against 143 ms with the copy, converts included; float32 gains nothing, so it keeps
    XLA's choice). The constraint makes XLA write that copy. Other backends choose their
    own layouts.
    """
    constrain = functools.partial(with_layout_constraint, layouts=Layout((0, 1)))
    return jax.lax.platform_dependent(matrix, cpu=constrain, default=lambda m: m)


def _mixed_matmul_bwd(residuals, g):
    x, w = residuals
    g = g.astype(x.dtype)
    dx = jnp.dot(g, w.T, preferred_element_type=jnp.float32).astype(x.dtype)
    return dx, weight_gradient(x, g, x.dtype).astype(w.dtype)


mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


def _mixed_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """nn.Dense's dot_general, through mixed_matmul (Dense contracts lhs's last axis)."""
    del precision, preferred_element_type
    (lhs_contract, rhs_contract), batch_dims = dimension_numbers
    assert tuple(rhs_contract) == (0,) and batch_dims == ((), ()), dimension_numbers
    return mixed_matmul(lhs, rhs)


def flat_dot_general(dtype):
    """nn.Dense's dot through mixed_matmul at every dtype, float32 included, so that the
    weight gradient is one [K, positions] x [positions, N] GEMM over the flattened
    positions. Autodiff of nn.Dense's own dot on a [batch, time, K] input contracts two
    axes, and XLA:CPU makes them minor with a transpose of the [batch, time, N] cotangent
    fused into the elementwise op before it, which walks its inputs with a stride of N:
    a quarter of the Transformer's train step (benchmarks/README.md, "nanoGPT's
    Transformer on a CPU"). The same forward; the gradients to float32 rounding."""
    del dtype
    return _mixed_dot_general


def dense_dot_general(dtype):
    """Float32 keeps nn.Dense's own dot; lower precisions go through mixed_matmul."""
    return None if dtype == jnp.float32 else _mixed_dot_general
