"""Training tokens/s of stacked fused GRU layers run layer by layer against the wavefront.

    python -m benchmarks.wavefront [--cases=speedrun,headline,deep4] [--rounds=3]

Each case runs the trainer's own jitted step (common.jax_train_step: forward, hand-written
backward, dropout as the case's config has it, Adam) under `model.stack='layers'` and
`'wavefront'` (models/wavefront.py), and each schedule's forward pass alone, in one
process; rounds alternate them, so a slow spell of a shared machine hits all alike, and
the table gives median tokens/s and the median per-round ratios wavefront / layers. Both
schedules compute the same function (tests/models/test_wavefront.py); `model.stack='auto'`
is set from this table (models/backend_choices.py). Prints the CPU first: ratios do not
carry across CPUs.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks import common, machine

# name -> (model config keys, batch, seq_len).
CASES = {
    # experiments/shakespeare_speedrun.py: 2 x GRU 512, bf16, variational dropout 0.1.
    "speedrun": (
        dict(
            embed_dim=64,
            hidden_size=512,
            num_layers=2,
            dtype="bfloat16",
            dropout=0.1,
            variational_dropout=True,
        ),
        64,
        128,
    ),
    "speedrun_f32": (
        dict(embed_dim=64, hidden_size=512, num_layers=2, dropout=0.1, variational_dropout=True),
        64,
        128,
    ),
    # experiments/shakespeare_headline_gru.py: 2 x GRU 768 with its four regularisers.
    "headline": (
        dict(
            embed_dim=64,
            hidden_size=768,
            num_layers=2,
            dropout=0.3,
            variational_dropout=True,
            input_dropout=0.1,
            recurrent_dropout=0.25,
        ),
        64,
        128,
    ),
    # Four layers of 256 at batch 64: where per-step GEMMs are smallest.
    "deep4": (dict(embed_dim=64, hidden_size=256, num_layers=4), 64, 128),
}
STACKS = ("layers", "wavefront")


def _step(case: str, stack: str):
    from charrnn_jax import models

    keys, batch, seq_len = CASES[case]
    model = models.CharRNN(models.ModelConfig(**keys, stack=stack))
    return common.jax_train_step(model, batch, seq_len)


def _forward(case: str, stack: str):
    """The model's forward alone (eval mode, no gradient), jitted; blocks on the logits."""
    import jax

    from charrnn_jax import models

    keys, batch, seq_len = CASES[case]
    model = models.CharRNN(models.ModelConfig(**keys, stack=stack))
    inputs, _ = common.token_batch(batch, seq_len)
    params = model.init(jax.random.key(0), inputs[:, :2])["params"]
    apply = jax.jit(lambda params, tokens: model.apply({"params": params}, tokens)[0])
    return lambda: apply(params, inputs).block_until_ready()


def measure(case: str, rounds: int, seconds: float) -> dict:
    """Median tokens/s of each schedule's train step, the median per-round ratio, and the
    same ratio for the forward pass alone (where the wavefront's gain or loss lies)."""
    _, batch, seq_len = CASES[case]
    runs, compile_s = {}, {}
    for stack in STACKS:
        started = time.perf_counter()
        runs[stack, "step"] = _step(case, stack)
        runs[stack, "step"]()  # The compile, timed apart from the rate.
        compile_s[stack] = time.perf_counter() - started
        runs[stack, "forward"] = _forward(case, stack)
    times = common.interleaved_seconds(runs, rounds=rounds, seconds=seconds)

    def ratio(part):  # Tokens/s wavefront over layers, within each round.
        return common.speedup(times["layers", part], times["wavefront", part])

    tokens = batch * seq_len
    return {
        "case": case,
        **{
            f"{s}_tokens_per_sec": statistics.median(tokens / t for t in times[s, "step"])
            for s in STACKS
        },
        "wavefront_vs_layers": ratio("step"),
        "forward_wavefront_vs_layers": ratio("forward"),
        **{f"{s}_compile_s": compile_s[s] for s in STACKS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="speedrun,headline,deep4", help=f"Of {sorted(CASES)}.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", default="", help="Append the rows to this JSONL file.")
    args = parser.parse_args()
    cpu = machine.describe()
    print(f"# {machine.summary(cpu)}")
    print(
        "| case | layers tok/s | wavefront tok/s | wavefront / layers | forward alone: w / l "
        "| compile s (l / w) |"
    )
    print("|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        row = measure(case, args.rounds, args.seconds)
        print(
            f"| {case} | {row['layers_tokens_per_sec']:,.0f} | "
            f"{row['wavefront_tokens_per_sec']:,.0f} | {row['wavefront_vs_layers']:.2f}x | "
            f"{row['forward_wavefront_vs_layers']:.2f}x | "
            f"{row['layers_compile_s']:.1f} / {row['wavefront_compile_s']:.1f} |"
        )
        common.append_results(args.out, {**row, "machine": cpu})


if __name__ == "__main__":
    main()
