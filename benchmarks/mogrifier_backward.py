"""The Mogrifier GRU's recurrence, forward and backward: the hand-written backward against
autodiff of the scan, and both against the fused GRU, with each one's FLOP rate.

    python -m benchmarks.mogrifier_backward [--cases=tutorial,headline_l1,headline_l2] \
        [--rounds=5]

Each case times one layer's recurrence as a train step sees it, jitted: the loss
sum(hs * cotangent) and its gradient with respect to every weight, the inputs and the
carry, for
- `gru`: the fused GRU (models/fused_gru.py: input projection hoisted, hand-written
  backward), its input projection included;
- `autodiff`: the Mogrifier GRU with autodiff of its scan (mogrifier._autodiff_recurrence,
  the reference the tests hold the hand-written one to);
- `hand`: the Mogrifier GRU as the model runs it (mogrifier_gru_recurrence).
Rounds alternate them on the same inputs, so a slow spell of a shared machine hits all
alike; the table gives medians and the median per-round ratios. GFLOP/s counts 3x the
forward's matmul FLOPs; `flop bound` is the GRU's FLOPs over the Mogrifier's, the ratio
Mogrifier / GRU that equal efficiency would give. The f32 GEMM ceiling (the best
2048^3 dot) and the CPU are printed first: ratios do not carry across CPUs.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks import common, machine

# name -> (input width E, hidden H, time T, batch B, rank of the rounds' matrices).
CASES = {
    "tutorial": (256, 1024, 100, 64, 0),  # benchmarks.throughput's tutorial/64.
    "tutorial_r64": (256, 1024, 100, 64, 64),
    "headline_l1": (64, 768, 128, 64, 0),  # experiments/shakespeare_headline.py, layer 1.
    "headline_l2": (768, 768, 128, 64, 0),  # ... and layer 2 (it reads layer 1's states).
}
ROUNDS = 5  # The headline's.
IMPLS = ("gru", "autodiff", "hand")


def forward_flops(case: str, impl: str) -> float:
    """Matmul FLOPs of one forward pass over the case's T*B positions."""
    width, hidden, time_steps, batch, rank = CASES[case]
    per_position = width * 3 * hidden + hidden * 3 * hidden
    if impl != "gru":
        per_round = rank * (width + hidden) if rank else width * hidden
        per_position += ROUNDS * per_round
    return 2 * per_position * time_steps * batch


def _inputs(case: str):
    import jax
    import jax.numpy as jnp

    width, hidden, time_steps, batch, rank = CASES[case]
    keys = iter(jax.random.split(jax.random.key(0), 32))

    def normal(*shape):
        return jax.random.normal(next(keys), shape) / shape[0] ** 0.5

    rounds = []
    for i in range(1, ROUNDS + 1):
        rows, cols = (hidden, width) if i % 2 else (width, hidden)
        rounds.append((normal(rows, rank), normal(rank, cols)) if rank else (normal(rows, cols),))
    weights = {
        "rounds": rounds,
        "w_i": normal(width, 3 * hidden),
        "b_i": jnp.zeros(3 * hidden),
        "w_h": normal(hidden, 3 * hidden),
        "b_hn": jnp.zeros(hidden),
        "h0": 0.1 * normal(batch, hidden),
        "xs": jax.random.normal(next(keys), (time_steps, batch, width)),
    }
    cotangent = jax.random.normal(next(keys), (time_steps, batch, hidden))
    return weights, cotangent


def _loss(impl: str):
    import jax.numpy as jnp

    from charrnn_jax.models import fused_gru, mogrifier

    def loss(w, cotangent):
        if impl == "gru":
            projected = jnp.einsum("tbe,eg->tbg", w["xs"], w["w_i"]) + w["b_i"]
            hs, _ = fused_gru.gru_recurrence(projected, None, w["h0"], w["w_h"], w["b_hn"], None)
        else:
            recurrence = (
                mogrifier._autodiff_recurrence
                if impl == "autodiff"
                else mogrifier.mogrifier_gru_recurrence
            )
            args = [w[k] for k in ("rounds", "w_i", "b_i", "w_h", "b_hn", "h0", "xs")]
            hs, _ = recurrence(*args, None, jnp.float32, 1)
        return jnp.sum(hs * cotangent)

    return loss


def programs(case: str) -> dict:
    """(impl, part) -> a no-argument callable that runs and blocks."""
    import jax

    weights, cotangent = _inputs(case)
    runs = {}
    for impl in IMPLS:
        loss = _loss(impl)
        train = jax.jit(jax.value_and_grad(loss))
        forward = jax.jit(loss)
        runs[impl, "train"] = lambda f=train: jax.block_until_ready(f(weights, cotangent))
        runs[impl, "forward"] = lambda f=forward: jax.block_until_ready(f(weights, cotangent))
    return runs


def measure(case: str, rounds: int, seconds: float) -> dict:
    runs = programs(case)
    for run in runs.values():
        run()  # Compile.
    times = common.interleaved_seconds(runs, rounds=rounds, seconds=seconds)

    def ratio(slow, fast, part="train"):  # Median per-round speed ratio fast / slow.
        return common.speedup(times[slow, part], times[fast, part])

    row = {"case": case, "rounds": ROUNDS, "rank": CASES[case][4]}
    for impl in IMPLS:
        for part in ("train", "forward"):
            row[f"{impl}_{part}_ms"] = 1e3 * statistics.median(times[impl, part])
        flops = 3 * forward_flops(case, impl)  # Forward, input-side and weight gradients.
        row[f"{impl}_train_gflops"] = flops / statistics.median(times[impl, "train"]) / 1e9
    row["hand_vs_autodiff"] = ratio("autodiff", "hand")
    row["hand_vs_gru"] = ratio("gru", "hand")
    row["autodiff_vs_gru"] = ratio("gru", "autodiff")
    row["flop_bound_vs_gru"] = forward_flops(case, "gru") / forward_flops(case, "hand")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cases", default="tutorial,headline_l1,headline_l2", help=f"Of {sorted(CASES)}."
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--out", default="", help="Append the rows to this JSONL file.")
    args = parser.parse_args()
    from benchmarks import throughput

    cpu = machine.describe()
    ceiling = throughput.matmul_worker()["flops_per_sec"] / 1e9
    print(f"# {machine.summary(cpu)}; f32 2048^3 GEMM {ceiling:.0f} GFLOP/s")
    print(
        "| case | train ms: gru / autodiff / hand | GFLOP/s: gru / autodiff / hand "
        "| hand / autodiff | Mogrifier / GRU: autodiff, hand (flop bound) |"
    )
    print("|---|---|---|---|---|")
    for case in args.cases.split(","):
        row = measure(case, args.rounds, args.seconds)
        ms = " / ".join(f"{row[f'{i}_train_ms']:.0f}" for i in IMPLS)
        rates = " / ".join(f"{row[f'{i}_train_gflops']:.0f}" for i in IMPLS)
        print(
            f"| {case} | {ms} | {rates} | {row['hand_vs_autodiff']:.2f}x | "
            f"{row['autodiff_vs_gru']:.2f}x, {row['hand_vs_gru']:.2f}x "
            f"({row['flop_bound_vs_gru']:.2f}x) |"
        )
        common.append_results(args.out, {**row, "gemm_gflops": ceiling, "machine": cpu})


if __name__ == "__main__":
    main()
