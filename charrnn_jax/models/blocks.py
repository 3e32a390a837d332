"""The pre-norm residual block the linear-recurrence papers use in their language models.

x + Dropout(Recurrence(LayerNorm(x))), then x + Dropout(GatedMLP(LayerNorm(x))) with a
GeGLU MLP (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6). The recurrence is
whatever the cell registry names (models/registry.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from charrnn_jax.models import registry, stochastic


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
        recurrence = registry.CELLS[self.cell_type].module(
            self.hidden_size, self.dtype, self.parallel, self.dot_general, name="recurrence"
        )
        drop = stochastic.Dropout(
            self.dropout_rate, deterministic=not train or self.dropout_rate == 0
        )
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
