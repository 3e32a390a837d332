"""nanoGPT's Transformer on a CPU: the train step with its linear layers' weight
gradients as one GEMM over the flattened positions (precision.flat_dot_general, what the
model runs) against autodiff of nn.Dense's own dot; and the attention core three ways.

    python -m benchmarks.transformer_step [--batches=16,64] [--rounds=3]

The model is experiments/shakespeare_nanogpt.py's (6 layers, 6 heads, 384 wide, block
256, dropout 0.2, f32), run by the trainer's own jitted step (common.jax_train_step).
Both ways compute the same function (tests/models/test_transformer.py); rounds
alternate them, so a slow spell of a shared machine hits both alike, and the table
gives median seconds per step and the median per-round ratio. GFLOP/s counts 6 x params
x tokens plus the attention's 12 x layers x block x width per token. Prints the CPU
first: ratios do not carry across CPUs.

The second table times one layer's causal attention core (scores, mask, softmax, the
weighted sum; forward and backward, no dropout) at the config's shapes: the model's
heads-first batched matmuls, einsums over the [batch, time, heads, head_dim] layout (the
model before), and jax.nn.dot_product_attention's XLA path.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks import common, machine

LAYERS, HEADS, WIDTH, BLOCK, DROPOUT = 6, 6, 384, 256, 0.2
WAYS = {"flat": "one GEMM over positions", "dense": "nn.Dense's own dot"}


def _step(way: str, batch: int):
    from charrnn_jax import models
    from charrnn_jax.models import precision, transformer

    # The module reads DOT_GENERAL when the model is traced, so set it before the compile.
    transformer.DOT_GENERAL = (
        precision.flat_dot_general if way == "flat" else precision.dense_dot_general
    )
    config = models.ModelConfig(
        hidden_size=WIDTH, num_layers=LAYERS, cell="transformer", dropout=DROPOUT
    )
    options = config.options.__class__(num_heads=HEADS, block_size=BLOCK, eval_stride=BLOCK // 2)
    step = common.jax_train_step(models.CharRNN(config.with_options(options)), batch, BLOCK)
    step()  # Compile now, with this way's dot.
    return step


def train_flops_per_token() -> float:
    params = LAYERS * 12 * WIDTH * WIDTH + common.VOCAB * WIDTH  # Blocks and the tied head.
    return 6 * params + 12 * LAYERS * BLOCK * WIDTH


def measure(batch: int, rounds: int, seconds: float) -> dict:
    steps = {way: _step(way, batch) for way in WAYS}
    times = common.interleaved_seconds(steps, rounds=rounds, seconds=seconds)
    tokens = batch * BLOCK
    row = {"part": "train_step", "batch": batch}
    for way in WAYS:
        row[f"{way}_s_per_step"] = statistics.median(times[way])
        row[f"{way}_gflops"] = train_flops_per_token() * tokens / row[f"{way}_s_per_step"] / 1e9
    row["flat_vs_dense"] = common.speedup(times["dense"], times["flat"])
    return row


def _attention(way: str, batch: int):
    import math

    import jax
    import jax.numpy as jnp

    heads, head_dim = HEADS, WIDTH // HEADS
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, cotangent = (jax.random.normal(key, (batch, BLOCK, heads, head_dim)) for key in keys)
    causal = jnp.tril(jnp.ones((BLOCK, BLOCK), jnp.bool_))
    low = jnp.finfo(jnp.float32).min

    def heads_first(q, k, v):
        q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
        scores = jnp.where(causal, jnp.matmul(q, k.swapaxes(-1, -2)) / math.sqrt(head_dim), low)
        return jnp.matmul(jax.nn.softmax(scores, axis=-1), v).transpose(0, 2, 1, 3)

    def einsums(q, k, v):
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        weights = jax.nn.softmax(jnp.where(causal, scores, low), axis=-1)
        return jnp.einsum("bhqk,bkhd->bqhd", weights, v)

    def library(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")

    core = {"heads_first": heads_first, "einsum": einsums, "dot_product_attention": library}[way]
    grad = jax.jit(jax.grad(lambda *a: jnp.sum(core(*a) * cotangent), argnums=(0, 1, 2)))
    jax.block_until_ready(grad(q, k, v))
    return lambda: jax.block_until_ready(grad(q, k, v))


ATTENTION = ("heads_first", "einsum", "dot_product_attention")


def measure_attention(batch: int, rounds: int, seconds: float) -> dict:
    runs = {way: _attention(way, batch) for way in ATTENTION}
    times = common.interleaved_seconds(runs, rounds=rounds, seconds=seconds)
    row = {"part": "attention", "batch": batch}
    for way in ATTENTION:
        row[f"{way}_ms"] = 1e3 * statistics.median(times[way])
        row[f"heads_first_vs_{way}"] = common.speedup(times[way], times["heads_first"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="Minimum timed per run.")
    parser.add_argument("--out", default="", help="Append the rows to this JSONL file.")
    args = parser.parse_args()
    cpu = machine.describe()
    print(f"# {machine.summary(cpu)}")
    print("| batch | s/step: flat / dense | GFLOP/s: flat / dense | flat / dense |")
    print("|---|---|---|---|")
    for batch in map(int, args.batches.split(",")):
        row = measure(batch, args.rounds, args.seconds)
        print(
            f"| {batch} | {row['flat_s_per_step']:.2f} / {row['dense_s_per_step']:.2f} | "
            f"{row['flat_gflops']:.0f} / {row['dense_gflops']:.0f} | "
            f"{row['flat_vs_dense']:.2f}x |"
        )
        common.append_results(args.out, {**row, "machine": cpu})
    print(
        "\n| batch | attention core ms: heads-first / einsum / dot_product_attention "
        "| heads-first / einsum | heads-first / dot_product_attention |"
    )
    print("|---|---|---|---|")
    for batch in map(int, args.batches.split(",")):
        row = measure_attention(batch, args.rounds, args.seconds)
        ms = " / ".join(f"{row[f'{way}_ms']:.0f}" for way in ATTENTION)
        print(
            f"| {batch} | {ms} | {row['heads_first_vs_einsum']:.2f}x | "
            f"{row['heads_first_vs_dot_product_attention']:.2f}x |"
        )
        common.append_results(args.out, {**row, "machine": cpu})


if __name__ == "__main__":
    main()
