"""Tokens/s of stream-mode (carried state) training against windowed training, one process.

    python -m benchmarks.stream_training [--sizes=small,tutorial] [--batch=64] [--rounds=5]

Both sides run the trainer's own jitted step (steps.windowed_train_step), the stream side
with a [batch, hidden] carry in the state and a per-row reset flag in the batch. Rounds
alternate the two (A B A B ...) in one process, so a slow spell of a shared machine hits
both alike; the table gives median tokens/s and the median of the per-round ratios.
Prints the CPU (model, AVX-512 / bf16 flags) first: figures do not carry across CPUs.
"""

from __future__ import annotations

import argparse
import functools
import statistics

import jax
import numpy as np
import optax

from benchmarks import common, machine
from charrnn_jax import models
from charrnn_jax.training import steps

SEQ_LEN = common.SIZES["small"].seq_len


def _step(embed_dim: int, hidden: int, batch: int, stream: bool):
    model = models.CharRNN(models.ModelConfig(embed_dim=embed_dim, hidden_size=hidden))
    state = steps.create_train_state(
        jax.random.key(0),
        model=model,
        tx=optax.adam(1e-3),
        seq_len=SEQ_LEN,
        carry_rows=batch if stream else 0,
    )
    step_fn = jax.jit(
        functools.partial(steps.windowed_train_step, schedule=optax.constant_schedule(1e-3)),
        donate_argnums=0,
    )
    inputs, targets = common.token_batch(batch, SEQ_LEN)
    data = {"inputs": inputs, "targets": targets}
    if stream:
        data["reset"] = np.zeros(batch, bool)
    data = jax.device_put(data)
    holder = {"state": state}
    rng = jax.random.key(1)

    def run():
        holder["state"] = step_fn(holder["state"], data, rng)
        jax.block_until_ready(holder["state"].window)

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="small,tutorial")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", default="", help="Append the results to this JSONL file.")
    args = parser.parse_args()
    cpu = machine.summary()
    print(f"# {cpu}")
    print("| size | windowed tok/s | stream tok/s | stream / windowed |")
    print("|---|---|---|---|")
    for size in args.sizes.split(","):
        embed_dim, hidden = common.SIZES[size].embed_dim, common.SIZES[size].hidden
        runs = {
            mode: _step(embed_dim, hidden, args.batch, mode == "stream")
            for mode in ("windowed", "stream")
        }
        rates = {mode: [] for mode in runs}
        for _ in range(args.rounds):
            for mode, run in runs.items():
                seconds = common.timed(run, seconds=args.seconds, repeats=1)
                rates[mode].append(args.batch * SEQ_LEN / seconds)
        ratio = statistics.median(
            s / w for s, w in zip(rates["stream"], rates["windowed"], strict=True)
        )
        row = {
            "size": size,
            "batch": args.batch,
            "windowed": statistics.median(rates["windowed"]),
            "stream": statistics.median(rates["stream"]),
            "ratio": ratio,
            "machine": machine.describe(),
        }
        print(
            f"| {size} | {row['windowed']:,.0f} | {row['stream']:,.0f} | {ratio:.3f}x |", flush=True
        )
        common.append_results(args.out, row)


if __name__ == "__main__":
    main()
