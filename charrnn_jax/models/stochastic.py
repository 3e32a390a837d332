"""Dropout with jax.random.bernoulli's mask, bit for bit, at a fraction of its cost on CPU.

JAX lowers its threefry2x32 hash on CPU as a rolled loop over the hash's five groups of
four rounds (to compile faster), so drawing a mask streams two uint32 arrays of the
mask's shape through memory five times: nanoGPT's attention-weight dropout, a
[64, 6, 256, 256] mask per layer, made it 9% of that model's train step. Written out
here with the same counters, XLA fuses the whole hash into the op that applies the mask:
the step runs 1.25x faster (benchmarks/README.md, "nanoGPT's Transformer on a CPU").

The masks are the same bits as `jax.random.bernoulli`'s, so every run, checkpoint and
resume of before stays what it was (tests/models/test_dropout.py compares them).

The hash is Threefry-2x32 with 20 rounds (Salmon et al. 2011, "Parallel Random Numbers:
As Easy as 1, 2, 3", SC'11, section 3 and its rotation constants), keyed and counted as
JAX's partitionable `random_bits` does (the flat index of each element as the counter's
low word, the high word 0; the two output words xor-ed). Other key kinds, JAX's older
non-partitionable bits, 64-bit mode and masks of 2^32 elements or more fall back to
jax.random.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)  # Threefry's key-schedule constant C240.
_ONE_BITS = np.uint32(0x3F800000)  # float32 1.0: uniform's exponent, as jax.random sets it.
_MANTISSA_SHIFT = np.uint32(32 - 23)


def _rotate_left(x, r: int):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _flat_index(shape) -> jax.Array:
    """Each element's row-major index as uint32, built from broadcast iotas (as JAX's
    iota_2x32_shape is) so that the SPMD partitioner can split it with its array."""
    strides = np.cumprod((1, *shape[::-1]))[:-1][::-1]
    index = jnp.zeros(shape, jnp.uint32)
    for axis, stride in enumerate(strides):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
    return index


def threefry_bits(key: jax.Array, shape) -> jax.Array:
    """uint32 [shape]: `jax.random.bits(key, shape)` for a threefry2x32 key, unrolled."""
    data = jax.random.key_data(key)
    k0, k1 = data[0], data[1]
    schedule = (k0, k1, k0 ^ k1 ^ _KEY_PARITY)
    x0 = jnp.zeros(shape, jnp.uint32) + schedule[0]  # The counter's high word is 0.
    x1 = _flat_index(shape) + schedule[1]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, r) ^ x0
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + np.uint32(group + 1)
    return x0 ^ x1


def _unrolled_applies(key: jax.Array, shape) -> bool:
    return (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        and str(jax.random.key_impl(key)) == "threefry2x32"
        and jax.config.jax_threefry_partitionable
        and not jax.config.jax_enable_x64  # Then bernoulli draws float64 from 64 bits.
        and math.prod(shape) < 2**32
    )


def bernoulli(key: jax.Array, p: float, shape) -> jax.Array:
    """bool [shape]: `jax.random.bernoulli(key, p, shape)`, the same bits."""
    shape = tuple(shape)
    if not _unrolled_applies(key, shape):
        return jax.random.bernoulli(key, p, shape)
    mantissa = threefry_bits(key, shape) >> _MANTISSA_SHIFT
    uniform = lax.bitcast_convert_type(mantissa | _ONE_BITS, jnp.float32) - jnp.float32(1.0)
    return uniform < jnp.float32(p)


class Dropout(nn.Dropout):
    """flax's nn.Dropout with the mask from `bernoulli` above. The class keeps flax's name,
    so its auto-named instances (Dropout_0, ...) and the rngs folded from their paths, and
    therefore the masks, are nn.Dropout's."""

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:  # nn.Dropout's guard against 0 / 0 in the gradient.
            return jnp.zeros_like(inputs)
        keep_prob = 1.0 - self.rate
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        shared = {axis % inputs.ndim for axis in self.broadcast_dims}
        mask_shape = [1 if axis in shared else n for axis, n in enumerate(inputs.shape)]
        mask = jnp.broadcast_to(bernoulli(rng, keep_prob, mask_shape), inputs.shape)
        return lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))
