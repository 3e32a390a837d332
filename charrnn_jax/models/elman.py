"""The Elman RNN: the simple recurrent network, with a choice of nonlinearity.

Elman 1990, "Finding Structure in Time" (Cognitive Science 14(2)), the context-unit
network of its Figure 2: the hidden state is a nonlinearity of the input and of the
previous state,

    h_t = f(W_x x_t + W_h h_{t-1} + b),

with f = tanh (the usual choice) or relu (Le, Jaitly and Hinton 2015, "A Simple Way to
Initialize Recurrent Networks of Rectified Linear Units", whose IRNN also starts W_h at
the identity: `recurrent_init='identity'`; a relu state is unbounded, so over a carried
stream such as the full-split val it can overflow where tanh cannot). It is the smallest
stacked cell, and the example of a cell with options of its own:
`--config.model.elman.nonlinearity=relu`.

As in the fused GRU, the input projection W_x x_t + b is one GEMM over every time step
before the loop, so each step does only h @ W_h; autodiff of the scan is its backward.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from charrnn_jax.models.precision import mixed_matmul

NONLINEARITIES = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def _identity(key, shape, dtype=jnp.float32):
    del key
    return jnp.eye(*shape, dtype=dtype)


RECURRENT_INITS = {"orthogonal": nn.initializers.orthogonal(), "identity": _identity}


@dataclasses.dataclass(frozen=True)
class ElmanOptions:
    """The Elman RNN's own options (config block `model.elman`).

    nonlinearity: the f of h_t = f(W_x x_t + W_h h_{t-1} + b), 'tanh' or 'relu'.
    recurrent_init: W_h at init, 'orthogonal' or 'identity' (the IRNN's).
    """

    nonlinearity: str = "tanh"
    recurrent_init: str = "orthogonal"

    def __post_init__(self):
        for name, choices in (
            ("nonlinearity", NONLINEARITIES),
            ("recurrent_init", RECURRENT_INITS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name} must be one of {tuple(choices)}, got {getattr(self, name)!r}."
                )


def layer(spec, options: ElmanOptions, *, name: str) -> ElmanLayer:
    """The registry's layer factory (models/registry.py, LayerFactory)."""
    return ElmanLayer(
        spec.hidden_size,
        spec.dtype,
        options.nonlinearity,
        options.recurrent_init,
        spec.unroll,
        name=name,
    )


class ElmanLayer(nn.Module):
    """The Elman RNN over a whole sequence (the registry's StackedLayer): steps where
    `valid` is False keep the carry; the carry stays float32 under bf16 compute."""

    hidden_size: int
    dtype: Any = jnp.float32
    nonlinearity: str = "tanh"
    recurrent_init: str = "orthogonal"
    unroll: int = 1

    @nn.compact
    def __call__(self, carry, inputs, valid=None, tokens=None, *, train: bool = False):
        assert tokens is None, "the Elman RNN takes embedded inputs"
        in_features, hidden = inputs.shape[-1], self.hidden_size
        w_x = self.param("input_kernel", nn.initializers.lecun_normal(), (in_features, hidden))
        b = self.param("bias", nn.initializers.zeros_init(), (hidden,))
        init_h = RECURRENT_INITS[self.recurrent_init]
        w_h = self.param("recurrent_kernel", init_h, (hidden, hidden)).astype(self.dtype)
        f = NONLINEARITIES[self.nonlinearity]
        projected = mixed_matmul(inputs.astype(self.dtype), w_x.astype(self.dtype)) + b

        def step(h, step_inputs):
            xi, v = step_inputs
            new = f(xi + jnp.dot(h.astype(self.dtype), w_h, preferred_element_type=jnp.float32))
            if v is not None:
                new = jnp.where(v[:, None], new, h)
            return new, new

        h_last, hs = jax.lax.scan(step, carry, (projected, valid), unroll=self.unroll)
        return h_last, hs
