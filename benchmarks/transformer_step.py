"""nanoGPT's Transformer on a CPU: the train step as the model runs it against the same
step with one of its CPU choices undone at a time; and the attention core three ways.

    python -m benchmarks.transformer_step [--batches=16,64] [--rounds=3] [--ways=...]
        [--parts=step,gemm,control,attention]

The model is experiments/shakespeare_nanogpt.py's (6 layers, 6 heads, 384 wide, block
256, dropout 0.2, f32), run by the trainer's own jitted step (common.jax_train_step).
The choices, each the same function as what it replaced (tests/models/test_transformer.py,
tests/models/test_dropout.py):
- `ynn_fusions`: XLA:CPU's default YNNPACK fusions instead of the model's compiler options
  (transformer.compiler_options: Eigen's GEMMs in float32);
- `erfc_gelu`: jax.nn.gelu(approximate=False), the erfc form, instead of erf's;
- `jax_random_dropout`: flax's nn.Dropout, whose threefry JAX lowers on CPU as a rolled
  loop, instead of models/stochastic.py's unrolled one (the same masks);
- `dense_dot`: autodiff of nn.Dense's own dot instead of precision.flat_dot_general (one
  weight-gradient GEMM over the flattened positions).
And two ways that are not a choice undone but the one the config could make:
- `bfloat16`: model.dtype="bfloat16" (bf16 operands, f32 params and accumulation), to
  show whether bf16 pays for the Transformer on this CPU as it does for the speedrun's
  GRU; its programs keep XLA's YNNPACK fusions (transformer.compiler_options);
- `bfloat16_eigen`: the same with Eigen's GEMMs, the float32 programs' choice (what
  bf16 ran with before: Eigen's bf16 GEMMs run at its f32 rate).
Rounds alternate the ways, so a slow spell of a shared machine hits all alike; the table
gives median seconds per step and the median per-round ratio of each way to the model.
GFLOP/s counts 6 x params x tokens plus the attention's 12 x layers x block x width per
token. Prints the CPU first: ratios do not carry across CPUs.

The second table times the step's matmul shapes alone (batch 64), each compiled with XLA's
default YNNPACK fusions and with the model's options (Eigen), interleaved.

A control row: the 2 x GRU 512 step (batch 64, 128 bytes) with XLA's defaults and with
the Transformer's options, to show why only the Transformer takes them.

The third table times one layer's causal attention core (scores, mask, softmax, the
weighted sum; forward and backward, no dropout) at the config's shapes: the model's
heads-first batched matmuls, einsums over the [batch, time, heads, head_dim] layout (the
model before), and jax.nn.dot_product_attention's XLA path.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

from benchmarks import common, machine

LAYERS, HEADS, WIDTH, BLOCK, DROPOUT = 6, 6, 384, 256, 0.2
WAYS = {
    "model": "as the model runs",
    "ynn_fusions": "XLA:CPU's YNNPACK fusions",
    "erfc_gelu": "jax.nn.gelu (erfc)",
    "jax_random_dropout": "flax's nn.Dropout",
    "dense_dot": "nn.Dense's own dot",
    "bfloat16": "model.dtype=bfloat16",
    "bfloat16_eigen": "model.dtype=bfloat16, Eigen's GEMMs",
}


@contextlib.contextmanager
def _undone(way: str):
    """The model with `way`'s choice undone while it is traced (the modules read these
    attributes at trace time), restored afterwards."""
    import flax.linen as nn
    import jax

    from charrnn_jax.models import precision, stochastic, transformer

    swaps = {
        "erfc_gelu": (transformer, "GELU", lambda x: jax.nn.gelu(x, approximate=False)),
        "jax_random_dropout": (stochastic, "Dropout", nn.Dropout),
        "dense_dot": (transformer, "DOT_GENERAL", precision.dense_dot_general),
    }
    module, name, value = swaps.get(way, (None, None, None))
    saved = getattr(module, name) if module else None
    if module:
        setattr(module, name, value)
    try:
        yield
    finally:
        if module:
            setattr(module, name, saved)


def _transformer_options() -> dict:
    """The XLA options the Transformer's programs compile with on this backend."""
    import jax

    from charrnn_jax import models

    return models.ModelConfig(cell="transformer").compiler_options(jax.default_backend())


def _step(way: str, batch: int):
    from charrnn_jax import models
    from charrnn_jax.models import transformer

    dtype = "bfloat16" if way.startswith("bfloat16") else "float32"
    config = models.ModelConfig(
        hidden_size=WIDTH, num_layers=LAYERS, cell="transformer", dropout=DROPOUT, dtype=dtype
    )
    options = config.options.__class__(num_heads=HEADS, block_size=BLOCK, eval_stride=BLOCK // 2)
    model = models.CharRNN(config.with_options(options))
    options = {"ynn_fusions": {}, "bfloat16_eigen": transformer.EIGEN_GEMMS}.get(way)
    with _undone(way):
        step = common.jax_train_step(model, batch, BLOCK, compiler_options=options)
        step()  # Compile now, with this way's choices.
    return step


def train_flops_per_token() -> float:
    params = LAYERS * 12 * WIDTH * WIDTH + common.VOCAB * WIDTH  # Blocks and the tied head.
    return 6 * params + 12 * LAYERS * BLOCK * WIDTH


def measure(batch: int, ways: list[str], rounds: int, seconds: float) -> dict:
    steps = {way: _step(way, batch) for way in ways}
    times = common.interleaved_seconds(steps, rounds=rounds, seconds=seconds)
    tokens = batch * BLOCK
    row = {"part": "train_step", "batch": batch}
    for way in ways:
        row[f"{way}_s_per_step"] = statistics.median(times[way])
        row[f"{way}_gflops"] = train_flops_per_token() * tokens / row[f"{way}_s_per_step"] / 1e9
        if way != "model":
            row[f"model_vs_{way}"] = common.speedup(times[way], times["model"])
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
    # Compiled as the model's programs are (its XLA options on this backend).
    options = _transformer_options()
    loss = lambda *a: jnp.sum(core(*a) * cotangent)  # noqa: E731
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), compiler_options=options or None)
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


# The step's matmuls at batch 64: (name, lhs shape, rhs shape), jnp.matmul of the two.
_POSITIONS = 64 * BLOCK
GEMMS = (
    ("c_attn", (_POSITIONS, WIDTH), (WIDTH, 3 * WIDTH)),
    ("c_fc", (_POSITIONS, WIDTH), (WIDTH, 4 * WIDTH)),
    ("mlp c_proj", (_POSITIONS, 4 * WIDTH), (4 * WIDTH, WIDTH)),
    ("q k^T", (64 * HEADS, BLOCK, WIDTH // HEADS), (64 * HEADS, WIDTH // HEADS, BLOCK)),
    ("weights v", (64 * HEADS, BLOCK, BLOCK), (64 * HEADS, BLOCK, WIDTH // HEADS)),
)


def measure_gemms(rounds: int, seconds: float) -> list[dict]:
    import jax
    import jax.numpy as jnp

    options = _transformer_options()
    rows = []
    for name, lhs_shape, rhs_shape in GEMMS:
        lhs = jax.random.normal(jax.random.key(0), lhs_shape)
        rhs = jax.random.normal(jax.random.key(1), rhs_shape)
        runs = {}
        for way, opts in (("ynn", None), ("model", options or None)):
            matmul = jax.jit(jnp.matmul, compiler_options=opts)
            jax.block_until_ready(matmul(lhs, rhs))
            runs[way] = lambda f=matmul, a=lhs, b=rhs: jax.block_until_ready(f(a, b))
        times = common.interleaved_seconds(runs, rounds=rounds, seconds=seconds)
        flops = 2 * lhs.size * rhs_shape[-1]
        row = {"part": "gemm", "name": name, "lhs": lhs_shape, "rhs": rhs_shape}
        for way in runs:
            row[f"{way}_gflops"] = flops / statistics.median(times[way]) / 1e9
        row["model_vs_ynn"] = common.speedup(times["ynn"], times["model"])
        rows.append(row)
    return rows


def measure_gru_control(rounds: int, seconds: float) -> dict:
    from charrnn_jax import models

    options = _transformer_options()
    gru = models.CharRNN(models.ModelConfig(embed_dim=64, hidden_size=512, num_layers=2))
    runs = {
        "ynn": common.jax_train_step(gru, 64, 128, compiler_options={}),
        "transformer_options": common.jax_train_step(gru, 64, 128, compiler_options=options),
    }
    for step in runs.values():
        step()
    times = common.interleaved_seconds(runs, rounds=rounds, seconds=seconds)
    row = {"part": "gru_control", "model": "2 x GRU 512, batch 64, 128 bytes"}
    for way in runs:
        row[f"{way}_s_per_step"] = statistics.median(times[way])
    row["ynn_vs_transformer_options"] = common.speedup(times["transformer_options"], times["ynn"])
    return row


def print_steps(args, ways: list[str], record) -> None:
    print("| batch | way | s/step | GFLOP/s | the model's speedup over it |")
    print("|---|---|---|---|---|")
    for batch in args.batch_list:
        row = record(measure(batch, ways, args.rounds, args.seconds))
        for way in ways:
            ratio = "" if way == "model" else f"{row[f'model_vs_{way}']:.2f}x"
            print(
                f"| {batch} | {WAYS[way]} | {row[f'{way}_s_per_step']:.2f} | "
                f"{row[f'{way}_gflops']:.0f} | {ratio} |"
            )


def print_gemms(args, record) -> None:
    print("\n| matmul (batch 64) | shapes | GFLOP/s: YNNPACK / the model's (Eigen) | ratio |")
    print("|---|---|---|---|")
    for row in map(record, measure_gemms(args.rounds, args.seconds)):
        shapes = f"{list(row['lhs'])} x {list(row['rhs'])}"
        print(
            f"| {row['name']} | {shapes} | {row['ynn_gflops']:.0f} / "
            f"{row['model_gflops']:.0f} | {row['model_vs_ynn']:.2f}x |"
        )


def print_control(args, record) -> None:
    row = record(measure_gru_control(args.rounds, args.seconds))
    print(
        f"\nControl, {row['model']}: {row['ynn_s_per_step']:.3f} s a step with YNNPACK, "
        f"{row['transformer_options_s_per_step']:.3f} s with the Transformer's options "
        f"(YNNPACK {row['ynn_vs_transformer_options']:.2f}x)"
    )


def print_attention(args, record) -> None:
    print(
        "\n| batch | attention core ms: heads-first / einsum / dot_product_attention "
        "| heads-first / einsum | heads-first / dot_product_attention |"
    )
    print("|---|---|---|---|")
    for batch in args.batch_list:
        row = record(measure_attention(batch, args.rounds, args.seconds))
        ms = " / ".join(f"{row[f'{way}_ms']:.0f}" for way in ATTENTION)
        print(
            f"| {batch} | {ms} | {row['heads_first_vs_einsum']:.2f}x | "
            f"{row['heads_first_vs_dot_product_attention']:.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--ways", default=",".join(WAYS), help="Always includes 'model'.")
    parser.add_argument("--parts", default="step,gemm,control,attention")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="Minimum timed per run.")
    parser.add_argument("--out", default="", help="Append the rows to this JSONL file.")
    args = parser.parse_args()
    args.batch_list = [int(b) for b in args.batches.split(",")]
    ways = ["model"] + [w for w in args.ways.split(",") if w in WAYS and w != "model"]
    cpu = machine.describe()
    print(f"# {machine.summary(cpu)}")

    def record(row: dict) -> dict:
        common.append_results(args.out, {**row, "machine": cpu})
        return row

    parts = args.parts.split(",")
    if "step" in parts:
        print_steps(args, ways, record)
    if "gemm" in parts:
        print_gemms(args, record)
    if "control" in parts:
        print_control(args, record)
    if "attention" in parts:
        print_attention(args, record)


if __name__ == "__main__":
    main()
