"""nanoGPT's character Transformer as a model of ours, with its context as the carry.

Karpathy's nanoGPT `model.py` (`GPT`), whose `config/train_shakespeare_char.py` gives the
1.4697 val loss our results compare against. Copied from it, choice by choice:
- token and learned position embeddings, summed, then dropout (`GPT.forward`);
- pre-LayerNorm blocks, x + attn(ln_1(x)), then x + mlp(ln_2(x)) (`Block`);
- causal self-attention, one fused QKV projection (`c_attn`), dropout on the attention
  weights and on the output projection's result (`CausalSelfAttention`);
- an MLP of 4x width with exact (erf) GELU, dropout after its projection (`MLP`);
- a final LayerNorm and a head tied to the token embedding (`lm_head.weight = wte.weight`);
- no biases and LayerNorms without bias (`bias=False`, the train.py default);
- init: normal(0, 0.02) for every matrix and embedding, normal(0, 0.02 / sqrt(2 n_layer))
  for the residual projections (`c_proj`), as `GPT._init_weights` and its special case.

Where it differs: the vocabulary is the 256 byte values (nanoGPT's shakespeare_char
has 65 characters; tiny Shakespeare is ASCII, so a byte is a character), and the
context is a carry, so the one module serves training, full-split scoring and sampling:

The carry holds the last block_size - 1 bytes seen (and whether each slot holds one).
A call appends its valid new bytes to that context and runs the Transformer once over
the last block_size of them, positions counted from the window's first byte, as
nanoGPT's every forward does: in training (block_size new bytes, empty context) that is
nanoGPT's forward exactly; in the full-split metric (eval_stride new bytes a call) it is
the strided sliding-window evaluation, every byte scored once with at least
block_size - eval_stride bytes of context; in sampling (one byte a call) it is
nanoGPT's `generate`, which crops to the last block_size bytes and recomputes (no KV
cache: the window's positions move with every byte, so a learned-position model's
cache would be stale anyway).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from charrnn_jax.models import precision, stochastic

VOCAB_SIZE = 256


@dataclasses.dataclass(frozen=True)
class TransformerOptions:
    """The Transformer's own options (config block `model.transformer`).

    num_heads: attention heads (nanoGPT's n_head); hidden_size must divide by it.
    block_size: the context window in bytes (nanoGPT's block_size); the model's
      training windows are data.seq_len bytes, which should equal it.
    eval_stride: bytes scored per window in the full-split metric: each is scored once,
      with at least block_size - eval_stride bytes of context.
    """

    num_heads: int = 6
    block_size: int = 256
    eval_stride: int = 128

    def __post_init__(self):
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}.")
        if self.block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {self.block_size}.")
        if not 1 <= self.eval_stride <= self.block_size:
            raise ValueError(
                f"eval_stride must be in [1, block_size={self.block_size}], got {self.eval_stride}."
            )


def zero_state(batch_size: int, options: TransformerOptions):
    """An empty context: block_size - 1 byte slots, none holding a byte."""
    slots = options.block_size - 1
    return jnp.zeros((batch_size, slots), jnp.int32), jnp.zeros((batch_size, slots), jnp.bool_)


def _normal(std: float):
    return nn.initializers.normal(stddev=std)


# XLA options for the Transformer's programs (models/registry.py, Cell.compiler_options).
# On CPU in float32, XLA's YNNPACK fusions run its shapes' GEMMs ([16384, 384] x
# [384, 1536]) and batched attention matmuls ([384, 256, 64] x [384, 64, 256]) 1.1-1.6x
# slower than its Eigen path, so its float32 programs turn them off (an empty list of
# fusion kinds). In bfloat16 it is the other way round: under Eigen a bf16 step is no
# faster than f32, and with YNNPACK's bf16 GEMMs it is 1.26x faster than under Eigen at
# batch 64 on a Zen 4 with avx512_bf16, so bf16 keeps XLA's defaults, as the recurrent
# models do (their small per-step GEMMs are as fast or faster with them). Measured with
# benchmarks.transformer_step (benchmarks/README.md, "nanoGPT's Transformer on a CPU").
# The function is the same either way; only the GEMMs' rounding differs.
EIGEN_GEMMS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(family: str, dtype: str) -> dict[str, str]:
    """The XLA options of the Transformer's programs on a backend family, by compute dtype."""
    return dict(EIGEN_GEMMS) if family == "cpu" and dtype == "float32" else {}


# Every linear layer's dot (precision.flat_dot_general: the weight gradient as one GEMM
# over all positions); benchmarks.transformer_step swaps in nn.Dense's own to compare.
DOT_GENERAL = precision.flat_dot_general


def _linear(features: int, dtype, *, name: str, residual_layers: int = 0) -> nn.Dense:
    """nanoGPT's bias-free nn.Linear: normal(0, 0.02) init, or 0.02 / sqrt(2 n_layer) for
    a projection into the residual stream (`c_proj`); matmuls accumulate in float32."""
    std = 0.02 / math.sqrt(2 * residual_layers) if residual_layers else 0.02
    return nn.Dense(
        features,
        use_bias=False,
        dtype=dtype,
        dot_general=DOT_GENERAL(dtype),
        kernel_init=_normal(std),
        name=name,
    )


def _layer_norm(name: str) -> nn.LayerNorm:
    """nanoGPT's LayerNorm: no bias, epsilon 1e-5 (`F.layer_norm(..., 1e-5)`; flax's
    default is 1e-6)."""
    return nn.LayerNorm(epsilon=1e-5, use_bias=False, name=name)


class _SelfAttention(nn.Module):
    num_heads: int
    num_layers: int
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, x, mask, *, train: bool):
        batch, time, width = x.shape
        heads, head_dim = self.num_heads, width // self.num_heads
        qkv = _linear(3 * width, self.dtype, name="c_attn")(x)
        q, k, v = jnp.split(qkv.astype(jnp.float32), 3, axis=-1)
        # Heads first, [batch, heads, time, head_dim], so both products are plain batched
        # matmuls (under YNNPACK 1.24x faster than einsums over [batch, time, heads,
        # head_dim]; as fast under the Eigen path the model compiles with on CPU).
        q, k, v = (a.reshape(batch, time, heads, head_dim).transpose(0, 2, 1, 3) for a in (q, k, v))
        scores = jnp.matmul(q, k.swapaxes(-1, -2)) / math.sqrt(head_dim)
        scores = jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1)
        weights = stochastic.Dropout(self.dropout_rate, deterministic=not train)(weights)
        y = jnp.matmul(weights, v).transpose(0, 2, 1, 3).reshape(batch, time, width)
        y = _linear(width, self.dtype, name="c_proj", residual_layers=self.num_layers)(y)
        return stochastic.Dropout(self.dropout_rate, deterministic=not train)(y.astype(jnp.float32))


def _gelu(x):
    """PyTorch's exact GELU, nanoGPT's nn.GELU(): x/2 (1 + erf(x / sqrt 2)) (Hendrycks &
    Gimpel 2016, eq. 1). jax.nn.gelu(approximate=False) writes it with erfc for accuracy
    in the far negative tail, which XLA:CPU computes with an exp and selects, where erf is
    one polynomial: nanoGPT's train step runs 1.06x faster (benchmarks/README.md)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


# The MLP's activation, read when the model is traced (benchmarks.transformer_step swaps in
# jax.nn.gelu's erfc form to compare).
GELU = _gelu


class _MLP(nn.Module):
    num_layers: int
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, x, *, train: bool):
        width = x.shape[-1]
        h = _linear(4 * width, self.dtype, name="c_fc")(x)
        h = GELU(h.astype(jnp.float32))
        h = _linear(width, self.dtype, name="c_proj", residual_layers=self.num_layers)(h)
        return stochastic.Dropout(self.dropout_rate, deterministic=not train)(h.astype(jnp.float32))


class _Block(nn.Module):
    num_heads: int
    num_layers: int
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, x, mask, *, train: bool):
        attn = _SelfAttention(
            self.num_heads, self.num_layers, self.dropout_rate, self.dtype, name="attn"
        )
        x = x + attn(_layer_norm("ln_1")(x), mask, train=train)
        mlp = _MLP(self.num_layers, self.dropout_rate, self.dtype, name="mlp")
        return x + mlp(_layer_norm("ln_2")(x), train=train)


def _window(context, tokens, valid, block_size: int):
    """The context with the call's valid bytes appended, compacted (bytes in order, empty
    slots first): the Transformer's window (its last block_size slots), the new context
    (the last block_size - 1), and where each new byte sits in the window."""
    ctx_tokens, ctx_valid = context
    new_valid = jnp.ones(tokens.shape, jnp.bool_) if valid is None else valid
    seq = jnp.concatenate([ctx_tokens, tokens.astype(jnp.int32)], axis=1)
    held = jnp.concatenate([ctx_valid, new_valid], axis=1)
    order = jnp.argsort(held.astype(jnp.int32), axis=1, stable=True)  # Empty slots first.
    seq, held = (jnp.take_along_axis(a, order, axis=1) for a in (seq, held))
    slots = ctx_tokens.shape[1]
    # The valid new bytes are the last ones of the compacted sequence, in order.
    rank = jnp.cumsum(new_valid, axis=1) - 1
    where = block_size - new_valid.sum(axis=1, keepdims=True) + rank
    where = jnp.clip(where, 0, block_size - 1)
    window = (seq[:, -block_size:], held[:, -block_size:])
    return window, (seq[:, -slots:], held[:, -slots:]), where


class Transformer(nn.Module):
    """nanoGPT's GPT over a carried context: `(tokens [batch, time], context, valid,
    train=) -> (logits [batch, time, 256] float32, new context)`; time <= block_size."""

    hidden_size: int
    num_layers: int
    options: TransformerOptions
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, context, valid=None, *, train: bool = False):
        block = self.options.block_size
        if tokens.shape[1] > block:
            raise ValueError(f"{tokens.shape[1]} bytes in one call exceed block_size={block}.")
        (window, held), new_context, where = _window(context, tokens, valid, block)
        wte = nn.Embed(VOCAB_SIZE, self.hidden_size, embedding_init=_normal(0.02), name="wte")
        wpe = nn.Embed(block, self.hidden_size, embedding_init=_normal(0.02), name="wpe")
        positions = jnp.maximum(jnp.cumsum(held, axis=1) - 1, 0)  # From the window's start.
        x = wte(window) + wpe(positions)
        x = stochastic.Dropout(self.dropout_rate, deterministic=not train)(x)
        causal = jnp.tril(jnp.ones((block, block), jnp.bool_))
        mask = causal[None] & held[:, None, :]  # A query sees earlier held bytes only.
        for i in range(self.num_layers):
            block_i = _Block(
                self.options.num_heads,
                self.num_layers,
                self.dropout_rate,
                self.dtype,
                name=f"h_{i}",
            )
            x = block_i(x, mask, train=train)
        x = _layer_norm("ln_f")(x)
        x = jnp.take_along_axis(x, where[..., None], axis=1)  # Only the new bytes' outputs.
        logits = wte.attend(x.astype(jnp.float32))  # The tied head (lm_head = wte).
        return logits.astype(jnp.float32), new_context


def eval_chunk(options: TransformerOptions, seq_len: int) -> int:
    """The full-split metric scores eval_stride bytes a call (a strided sliding window)."""
    del seq_len
    return options.eval_stride


def check(model, data) -> str | None:
    """What the Transformer alone requires of a typed config (ModelConfig, DataConfig), as
    an error line (or None)."""
    options = model.options
    heads, block, stride = options.num_heads, options.block_size, options.eval_stride
    if model.hidden_size % heads:
        return (
            f"model.hidden_size={model.hidden_size} must divide by "
            f"model.transformer.num_heads={heads}."
        )
    if data.seq_len > block:
        return (
            f"data.seq_len={data.seq_len} must be <= model.transformer.block_size="
            f"{block} (the Transformer sees at most block_size bytes)."
        )
    if data.seq_len % stride:
        return (
            f"data.seq_len={data.seq_len} must divide by "
            f"model.transformer.eval_stride={stride} (the full-split metric's step)."
        )
    if model.num_classes:
        return "model.cell='transformer' is a language model: model.num_classes must be 0."
    return None


def model(
    spec, options: TransformerOptions, *, num_layers: int, dropout_rate: float, name: str
) -> Transformer:
    """The registry's whole-model factory (models/registry.py, WholeModel)."""
    return Transformer(spec.hidden_size, num_layers, options, dropout_rate, spec.dtype, name=name)
