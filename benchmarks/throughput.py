"""Training throughput against Keras and PyTorch, measured in one run on identical shapes.

    python -m benchmarks.throughput [--sizes=small,tutorial] [--batches=64,256] \
        [--impls=ours_f32,ours_bf16,flax_reference,keras,torch_f32,torch_bf16]

`--impls=ours_f32,ours_mogrifier,ours_mogrifier_r64` adds the Mogrifier GRU (f32, 5 rounds;
full rank and rank 64) beside the fused GRU; its % ceiling counts the rounds' FLOPs too.

`--impls=ours_f32,ours_f32@2,ours_f32@4` gives the data-parallel scaling rows: the same
global batch sharded over 1, 2 and 4 fake CPU devices of the same 2 cores, which shows the
sharded step's overhead (it cannot show a speed-up without more hardware).

Every (implementation, size, batch) runs in its own subprocess, so peak RSS is its own:
one warm-up step, then at least --seconds of steps. --rounds (3) interleaves them: each
round runs every implementation once, back to back, so a slow spell of a shared machine
hits all of them alike. The table gives the median tokens/s over rounds with its range,
the median over rounds of the ratio to ours (f32) in the same round, the fraction of
this machine's f32 matmul ceiling (the best of the 2048^3 jnp.dots run at the start and
after every round; training FLOPs per token are 3x the forward's 2*(E*3H + H*3H + H*V))
and peak RSS. Implementations whose library is not installed are skipped (Keras: `pip
install .[keras]`, with `.[tensorflow]` for its TF backend; PyTorch: `pip install
torch`). Results are appended to --out as one JSON line per run. On a GPU the same
command measures the GPU (JAX and PyTorch use it when present).

Our rows run as `charrnn_jax.main` runs them: with glibc's huge-page malloc tunable where
it helps (charrnn_jax/runtime/host_memory.py). Peers run as their users run them;
`--huge_pages=all` gives them the same, `--huge_pages=none` takes it from ours.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import sys
import time

from benchmarks import common, machine

SIZES = {name: common.SIZES[name] for name in ("small", "tutorial")}
SEQ_LEN = 100
IMPLS = ("ours_f32", "ours_bf16", "flax_reference", "keras", "torch_f32", "torch_bf16")
MOGRIFIER_RANKS = {"ours_mogrifier": 0, "ours_mogrifier_r64": 64}  # Not in the default run.
MOGRIFIER_ROUNDS = 5  # models/mogrifier.py's default, the headline's setting.


def jax_step(impl: str, size: common.Size, batch_size: int, num_devices: int = 1):
    from charrnn_jax import models
    from charrnn_jax.models.mogrifier import MogrifierOptions

    mogrifier = impl in MOGRIFIER_RANKS
    model = models.CharRNN(
        models.ModelConfig(
            embed_dim=size.embed_dim,
            hidden_size=size.hidden,
            num_layers=size.layers,
            cell="mogrifier_gru" if mogrifier else "gru",
            dtype="bfloat16" if impl == "ours_bf16" else "float32",
            gru_impl="flax" if impl == "flax_reference" else "fused",
        ).with_options(
            MogrifierOptions(MOGRIFIER_ROUNDS, MOGRIFIER_RANKS.get(impl, 0)) if mogrifier else None
        )
    )
    return common.jax_train_step(model, batch_size, SEQ_LEN, num_devices=num_devices)


def train_flops_per_token(impl: str, size: common.Size) -> float:
    """The GRU's training FLOPs per token, plus the Mogrifier's rounds: each layer's odd
    rounds map h to its input width, its even rounds the input to h (full rank), or
    through a rank-k pair of matrices."""
    flops = size.train_flops_per_token()
    if impl not in MOGRIFIER_RANKS:
        return flops
    rank = MOGRIFIER_RANKS[impl]
    for width in [size.embed_dim] + [size.hidden] * (size.layers - 1):
        per_round = rank * (width + size.hidden) if rank else width * size.hidden
        flops += 3 * 2 * MOGRIFIER_ROUNDS * per_round
    return flops


def _keras_step(size: common.Size, batch_size: int):
    from charrnn_jax.baselines import keras_tutorial

    keras = keras_tutorial.import_keras()
    model = keras_tutorial.build_model(embed_dim=size.embed_dim, hidden_size=size.hidden)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    inputs, targets = common.token_batch(batch_size, SEQ_LEN)
    return lambda: float(model.train_on_batch(inputs, targets))


def worker(impl: str, size: str, batch_size: int, seconds: float) -> dict:
    shape = SIZES[size]
    impl, _, devices = impl.partition("@")  # "ours_f32@4": on 4 (fake CPU) devices.
    if impl.startswith(("ours", "flax")):
        step = jax_step(impl, shape, batch_size, int(devices or 1))
    elif impl == "keras":
        step = _keras_step(shape, batch_size)
    else:
        precision = "bf16" if impl == "torch_bf16" else "f32"
        step = common.torch_train_step(shape, batch_size, precision=precision)
    seconds_per_step = common.timed(step, seconds=seconds, repeats=1)  # Rounds: the median.
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_sec": batch_size * SEQ_LEN / seconds_per_step, "peak_rss_mib": rss_mib}


def matmul_worker(n: int = 2048) -> dict:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    seconds = min(
        common.timed(lambda: dot(a, b).block_until_ready(), seconds=0.5) for _ in range(4)
    )
    device = jax.devices()[0]
    return {
        "flops_per_sec": 2 * n**3 / seconds,
        "device": f"{device.platform} {device.device_kind}",
    }


def available(impl: str) -> bool:
    module = {"keras": "keras", "torch_f32": "torch", "torch_bf16": "torch"}.get(impl.split("@")[0])
    return module is None or importlib.util.find_spec(module) is not None


def run_worker(args: list[str], huge_pages: bool = False) -> dict:
    """One measurement in a fresh process; `huge_pages` as charrnn_jax's CLIs set it up."""
    from charrnn_jax.runtime import host_memory

    env = dict(os.environ)
    if huge_pages:
        env = host_memory.environment_with_huge_pages(env) or env
    if "@" in args[0]:  # Fake CPU devices for the scaling rows (ignored on a GPU).
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args[0].split('@')[1]}"
    return common.run_worker("benchmarks.throughput", args, env)


def _measure_round(impls, size, batch, args) -> dict:
    """Every implementation once, back to back, so slow spells of a shared machine hit
    all of them alike; ratios are taken within a round."""
    results = {}
    for impl in impls:
        huge = args.huge_pages == "all" or (
            args.huge_pages == "ours" and impl.startswith(("ours", "flax"))
        )
        results[impl] = run_worker([impl, size, str(batch), f"--seconds={args.seconds}"], huge)
    return results


def _summarize(impl, size, batch, rounds, ceiling_flops) -> dict:
    ok = [r for r in rounds if "error" not in r[impl]]
    row = {"size": size, "batch": batch, "impl": impl}
    if not ok:
        return {**row, "error": rounds[0][impl]["error"]}
    rates = [r[impl]["tokens_per_sec"] for r in ok]
    ratios = [
        r[impl]["tokens_per_sec"] / r["ours_f32"]["tokens_per_sec"]
        for r in ok
        if "tokens_per_sec" in r.get("ours_f32", {})
    ]
    rate = statistics.median(rates)
    return {
        **row,
        "tokens_per_sec": rate,
        "rounds": rates,
        "vs_ours": statistics.median(ratios) if ratios else None,
        "ceiling_fraction": rate * train_flops_per_token(impl, SIZES[size]) / ceiling_flops,
        "peak_rss_mib": max(r[impl]["peak_rss_mib"] for r in ok),
    }


def _print_row(row) -> None:
    prefix = f"{row['size']:9} {row['batch']:5d} {row['impl']:18}"
    if "error" in row:
        print(f"{prefix} error: {row['error'][:60]}", flush=True)
        return
    spread = f"{min(row['rounds']):,.0f}-{max(row['rounds']):,.0f}"
    ratio = f"{row['vs_ours']:7.2f}x" if row["vs_ours"] else f"{'':8}"
    print(
        f"{prefix} {row['tokens_per_sec']:10,.0f} {spread:>15} {ratio} "
        f"{100 * row['ceiling_fraction']:8.1f}% {row['peak_rss_mib']:8.0f}",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="small,tutorial")
    parser.add_argument("--batches", default="64")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--seconds", type=float, default=3.0, help="Minimum timed per run.")
    parser.add_argument(
        "--rounds", type=int, default=3, help="Interleaved rounds; rows give their median."
    )
    parser.add_argument(
        "--huge_pages",
        choices=("ours", "all", "none"),
        default="ours",
        help="Which rows run with glibc's huge-page tunable: 'ours' as `charrnn_jax.main` "
        "runs by default (peers as their users run them), 'all' gives peers the same.",
    )
    parser.add_argument("--out", default="", help="Append the results to this JSONL file.")
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        result = (
            matmul_worker()
            if args.worker == ["matmul"]
            else worker(args.worker[0], args.worker[1], int(args.worker[2]), args.seconds)
        )
        print(json.dumps(result))
        return

    # The ceiling is the best GEMM measurement of the run (one at the start, one per
    # round): a noisy neighbour only ever slows a measurement down.
    matmuls = [run_worker(["matmul"], huge_pages=True)]
    impls = [impl for impl in args.impls.split(",") if available(impl)]
    measured = []
    for size in args.sizes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            rounds = []
            for index in range(args.rounds):
                rounds.append(_measure_round(impls, size, batch, args))
                matmuls.append(run_worker(["matmul"], huge_pages=True))
                print(f"{size}/{batch}: round {index + 1} of {args.rounds}", file=sys.stderr)
            measured.append((size, batch, rounds))
    ceiling = max(matmuls, key=lambda r: r["flops_per_sec"])
    print(machine.summary())
    print(
        f"device: {ceiling['device']}; f32 matmul: {ceiling['flops_per_sec'] / 1e9:.0f} "
        f"GFLOP/s (2048^3, best of {len(matmuls)} in this run)"
    )
    header = (
        f"{'size':9} {'batch':>5} {'implementation':18} {'tokens/s':>10} {'range':>15} "
        f"{'vs ours':>8} {'% ceiling':>9} {'RSS MiB':>8}"
    )
    print(header + "\n" + "-" * len(header))
    rows = []
    for size, batch, rounds in measured:
        for impl in impls:
            row = _summarize(impl, size, batch, rounds, ceiling["flops_per_sec"])
            rows.append(row)
            _print_row(row)
    skipped = [impl for impl in args.impls.split(",") if impl not in impls]
    if skipped:
        print(f"not installed: {', '.join(skipped)}")
    common.append_results(
        args.out,
        {
            "time": time.time(),
            "device": ceiling["device"],
            "machine": machine.describe(),
            "matmul_flops_per_sec": ceiling["flops_per_sec"],
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
