"""Forward+backward time per token against sequence length: the fused GRU layer against the
minGRU and LRU layers, each in parallel (associative scan) and sequential (lax.scan) form.

    python -m benchmarks.linear_scaling [--seq_lens=100,1000,10000] [--tokens=10000]
        [--hidden=256] [--rounds=3] [--seconds=1.5]

The claim measured is Feng et al.'s (2024): minGRU's parallel form trains much faster per
step at long sequences. Tokens per step stay fixed (batch = tokens / seq_len), so only the
shape of the time axis changes. Each model is the full CharRNN (embed 64, one layer of
`hidden` units, the Dense(256) head); the step is jax.value_and_grad of the mean
next-byte cross-entropy, jitted. Rounds alternate the implementations (A B C ... A B C) in
one process so a slow spell of a shared machine hits all alike; the table gives the median
microseconds per token and its ratio to the GRU's. The CPU is printed first.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, machine
from charrnn_jax import models
from charrnn_jax.models import registry

IMPLS = {  # name: (cell, parallel scan)
    "gru (fused, sequential)": ("gru", False),
    "mingru parallel": ("mingru", True),
    "mingru sequential": ("mingru", False),
    "lru parallel": ("lru", True),
    "lru sequential": ("lru", False),
}


def _layer(cell: str, parallel: bool, hidden: int):
    if cell == "gru":
        return models.FusedGRULayer(hidden, jnp.float32)
    return registry.CELLS[cell].module(hidden, jnp.float32, parallel)


def _layer_step(cell: str, parallel: bool, hidden: int, batch: int, seq_len: int):
    """value_and_grad of one recurrent layer, with respect to its params and inputs."""
    layer = _layer(cell, parallel, hidden)
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.standard_normal((seq_len, batch, hidden)), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((seq_len, batch, hidden)), jnp.float32)
    carry = models.zero_carry(cell, 1, batch, hidden)[0]
    params = layer.init(jax.random.key(0), carry, inputs[:8])["params"]

    def loss(p, x):
        _, outputs = layer.apply({"params": p}, carry, x)
        return jnp.vdot(outputs, cotangent)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return lambda: jax.block_until_ready(step(params, inputs))


def _model_step(cell: str, parallel: bool, hidden: int, batch: int, seq_len: int):
    """value_and_grad of the whole one-layer CharRNN's next-byte loss (blocks included)."""
    model = models.CharRNN(
        models.ModelConfig(
            embed_dim=64,
            hidden_size=hidden,
            cell=cell,
            scan=("parallel" if parallel else "sequential"),
        )
    )
    tokens = np.random.default_rng(0).integers(0, 256, (batch, seq_len + 1)).astype(np.int32)
    inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
    params = model.init(jax.random.key(0), inputs[:, :8])["params"]

    def loss(p):
        logits, _ = model.apply({"params": p}, inputs)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1))

    step = jax.jit(jax.value_and_grad(loss))
    return lambda: jax.block_until_ready(step(params))


def _grad_step(level: str, *args):
    run = (_layer_step if level == "layer" else _model_step)(*args)
    run()  # Compile outside the timing.
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq_lens", default="100,1000,10000")
    parser.add_argument("--tokens", type=int, default=10_000, help="tokens per step")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument(
        "--level",
        choices=("layer", "model"),
        default="layer",
        help="one recurrent layer (the paper's claim), or the whole one-layer model",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--out", default="", help="Append the results to this JSONL file.")
    args = parser.parse_args()
    cpu = machine.summary()
    print(
        f"# {cpu}; jax {jax.__version__}; {args.level} level, hidden {args.hidden}, "
        f"{args.tokens:,} tokens/step; fwd+bwd microseconds per token (ratio to the GRU)"
    )
    print("| seq_len x batch | " + " | ".join(IMPLS) + " |")
    print("|---" * (len(IMPLS) + 1) + "|")
    for seq_len in map(int, args.seq_lens.split(",")):
        batch = max(1, args.tokens // seq_len)
        runs = {
            name: _grad_step(args.level, cell, parallel, args.hidden, batch, seq_len)
            for name, (cell, parallel) in IMPLS.items()
        }
        micros = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                seconds = common.timed(run, seconds=args.seconds, repeats=1)
                micros[name].append(1e6 * seconds / (batch * seq_len))
        gru = micros["gru (fused, sequential)"]
        row = {"level": args.level, "seq_len": seq_len, "batch": batch, "hidden": args.hidden}
        row["machine"] = machine.describe()
        cells = []
        for name, values in micros.items():
            ratio = statistics.median(v / g for v, g in zip(values, gru, strict=True))
            row[name] = {"us_per_token": statistics.median(values), "vs_gru": ratio}
            cells.append(f"{statistics.median(values):.3f} us ({ratio:.2f}x)")
        print(f"| {seq_len:,} x {batch} | " + " | ".join(cells) + " |", flush=True)
        common.append_results(args.out, row)


if __name__ == "__main__":
    main()
