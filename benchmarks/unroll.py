"""Training tokens/s against `model.unroll` (time steps per iteration of the time loop).

    python -m benchmarks.unroll [--sizes=speedrun,tutorial] [--unrolls=1,2,4,8] [--rounds=3]

Each size runs the trainer's own jitted step (common.jax_train_step: the fused GRU, its
hand-written backward, the metric window) once per unroll factor, all in one process;
rounds visit the factors in turn (1 2 4 8 1 2 4 8 ...), so a slow spell of a shared
machine hits each alike, and the table gives median tokens/s and the median per-round
ratio to unroll=1. Unrolling trades loop overhead (one iteration's bookkeeping and, on a
GPU, its kernel launches) for larger bodies and longer compiles; the device check measures
the same factors on an accelerator. Prints the CPU first: figures do not carry across CPUs.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks import common, machine

# name -> (size, compute dtype, batch): the speedrun's model (bf16) and the tutorial's.
CASES = {
    "small": (common.SIZES["small"], "float32", 64),
    "speedrun": (common.Size(64, 512, layers=2, seq_len=128), "bfloat16", 64),
    "tutorial": (common.SIZES["tutorial"], "float32", 64),
}


def _step(case: str, unroll: int):
    from charrnn_jax import models

    size, dtype, batch = CASES[case]
    model = models.CharRNN(
        models.ModelConfig(
            embed_dim=size.embed_dim,
            hidden_size=size.hidden,
            num_layers=size.layers,
            dtype=dtype,
            unroll=unroll,
        )
    )
    return common.jax_train_step(model, batch, size.seq_len)


def measure(case: str, unrolls: list[int], rounds: int, seconds: float) -> list[dict]:
    """One row per unroll factor: median tokens/s, median ratio to the first factor."""
    size, _, batch = CASES[case]
    steps, compile_s = {}, {}
    for unroll in unrolls:
        started = time.perf_counter()
        steps[unroll] = _step(case, unroll)
        steps[unroll]()  # The compile, timed apart from the rate.
        compile_s[unroll] = time.perf_counter() - started
    rates = {unroll: [] for unroll in unrolls}
    for _ in range(rounds):
        for unroll, step in steps.items():
            seconds_per_step = common.timed(step, seconds=seconds, repeats=1)
            rates[unroll].append(batch * size.seq_len / seconds_per_step)
    base = unrolls[0]
    return [
        {
            "case": case,
            "unroll": unroll,
            "tokens_per_sec": statistics.median(rates[unroll]),
            "vs_first": statistics.median(
                a / b for a, b in zip(rates[unroll], rates[base], strict=True)
            ),
            "compile_s": compile_s[unroll],
        }
        for unroll in unrolls
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="speedrun,tutorial", help=f"Of {sorted(CASES)}.")
    parser.add_argument("--unrolls", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", default="", help="Append the rows to this JSONL file.")
    args = parser.parse_args()
    unrolls = [int(u) for u in args.unrolls.split(",")]
    cpu = machine.describe()
    print(f"# {machine.summary(cpu)}")
    print("| case | unroll | tokens/s | vs unroll " + str(unrolls[0]) + " | compile s |")
    print("|---|---|---|---|---|")
    for case in args.sizes.split(","):
        for row in measure(case, unrolls, args.rounds, args.seconds):
            print(
                f"| {case} | {row['unroll']} | {row['tokens_per_sec']:,.0f} | "
                f"{row['vs_first']:.2f} | {row['compile_s']:.1f} |"
            )
            common.append_results(args.out, {**row, "machine": cpu})


if __name__ == "__main__":
    main()
