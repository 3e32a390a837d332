"""Mixed precision's weight gradients: the values, and the layout XLA:CPU's bf16 GEMM runs fast."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charrnn_jax import models
from charrnn_jax.models.precision import weight_gradient


def _contractions(hlo_text: str, shape: str) -> list[str]:
    """The optimized HLO's dots whose f32 output has this shape ("24,40"): the weight
    gradients contracted over the positions."""
    pattern = re.compile(rf"= f32\[{shape}\]\{{1,0\}} dot\(")
    return [line for line in hlo_text.splitlines() if pattern.search(line)]


def _compiled_text(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def _operands(key=0):
    inputs = jax.random.normal(jax.random.key(key), (7, 5, 24))  # [time, batch, K]
    d_outputs = jax.random.normal(jax.random.key(key + 1), (7, 5, 40))  # [time, batch, N]
    return inputs, d_outputs


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_weight_gradient_is_the_sum_of_outer_products(dtype):
    inputs, d_outputs = _operands()
    # The reference contracts the same dtype-rounded operands in float64 on the host.
    x = np.asarray(inputs.astype(dtype).astype(jnp.float32), np.float64)
    d = np.asarray(d_outputs.astype(dtype).astype(jnp.float32), np.float64)
    expected = np.einsum("tbk,tbn->kn", x, d)
    ours = jax.jit(weight_gradient, static_argnums=2)(inputs, d_outputs, dtype)
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


def test_bf16_weight_gradient_contracts_a_row_major_copy_on_cpu():
    """Without the layout constraint XLA folds the transpose into the dot
    (lhs_contracting_dims={0}), the layout its bf16 GEMM runs at half speed on."""
    inputs, d_outputs = _operands()
    text = _compiled_text(lambda x, d: weight_gradient(x, d, jnp.bfloat16), inputs, d_outputs)
    dots = _contractions(text, "24,40")
    assert dots and all("lhs_contracting_dims={1}" in line for line in dots), dots


def test_bf16_fused_gru_gradient_takes_the_fast_layout():
    """The fused GRU's dW_h and the input projection's dW_i under bf16, through the model."""
    model = models.CharRNN(
        models.ModelConfig(embed_dim=8, hidden_size=24, num_layers=2, dtype="bfloat16")
    )
    tokens = jnp.zeros((5, 40), jnp.int32)
    params = model.init(jax.random.key(0), tokens)["params"]

    def loss(params):
        logits, _ = model.apply({"params": params}, tokens)
        return jnp.mean(logits.astype(jnp.float32) ** 2)

    # [24, 72] is both layers' dW_h and the second layer's dW_i: contracted over positions.
    dots = _contractions(_compiled_text(jax.grad(loss), params), "24,72")
    assert len(dots) >= 2, dots
    assert all("lhs_contracting_dims={1}" in line for line in dots), dots
