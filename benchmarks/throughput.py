"""Training throughput against Keras and PyTorch, measured in one run on identical shapes.

    python benchmarks/throughput.py [--sizes=small,tutorial] [--batches=64,256] \
        [--impls=ours_f32,ours_bf16,flax_reference,keras,torch_f32,torch_bf16]

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
it helps (charrnn_jax/host_memory.py). Peers run as their users run them;
`--huge_pages=all` gives them the same, `--huge_pages=none` takes it from ours.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import machine

SIZES = {"small": (64, 256), "tutorial": (256, 1024)}  # (embed_dim, hidden_size)
VOCAB, SEQ_LEN = 256, 100
IMPLS = ("ours_f32", "ours_bf16", "flax_reference", "keras", "torch_f32", "torch_bf16")


def flops_per_token(embed_dim: int, hidden: int) -> float:
    return 3 * 2 * (embed_dim * 3 * hidden + hidden * 3 * hidden + hidden * VOCAB)


def _timed(step, *, seconds: float, repeats: int = 3) -> float:
    """Median seconds per step over `repeats`, after one warm-up step."""
    step()
    times = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while count < 2 or time.perf_counter() - start < seconds:
            step()
            count += 1
        times.append((time.perf_counter() - start) / count)
    return statistics.median(times)


def _batch(batch_size: int):
    import numpy as np

    tokens = np.random.default_rng(0).integers(0, VOCAB, (batch_size, SEQ_LEN + 1))
    return tokens[:, :-1].astype(np.int32), tokens[:, 1:].astype(np.int32)


def _jax_step(impl: str, embed_dim: int, hidden: int, batch_size: int, num_devices: int = 1):
    import functools

    import jax
    import optax

    from charrnn_jax import models
    from charrnn_jax.runtime import parallel
    from charrnn_jax.training import steps

    model = models.CharRNN(
        embed_dim=embed_dim,
        hidden_size=hidden,
        dtype=models.DTYPES["bfloat16" if impl == "ours_bf16" else "float32"],
        gru_impl="flax" if impl == "flax_reference" else "fused",
    )
    tx = optax.adam(1e-3)
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
    state = steps.create_train_state(jax.random.key(0), model=model, tx=tx, seq_len=SEQ_LEN)
    state = jax.device_put(state, repl)
    step_fn = jax.jit(
        # The trainer's step: with the on-device metric window.
        functools.partial(steps.windowed_train_step, schedule=optax.constant_schedule(1e-3)),
        in_shardings=(repl, data, repl),
        out_shardings=repl,
        donate_argnums=0,
    )
    inputs, targets = _batch(batch_size)
    batch = jax.device_put({"inputs": inputs, "targets": targets}, data)
    rng = jax.random.key(1)
    holder = {"state": state}

    def step():
        holder["state"] = step_fn(holder["state"], batch, rng)
        jax.block_until_ready(holder["state"].window)

    return step


def _keras_step(embed_dim: int, hidden: int, batch_size: int):
    from charrnn_jax.baselines import keras_tutorial

    keras = keras_tutorial.import_keras()
    model = keras_tutorial.build_model(embed_dim=embed_dim, hidden_size=hidden)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    inputs, targets = _batch(batch_size)
    return lambda: float(model.train_on_batch(inputs, targets))


def _torch_step(embed_dim: int, hidden: int, batch_size: int, bf16: bool):
    import torch

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, embed_dim)
            self.gru = torch.nn.GRU(embed_dim, hidden, batch_first=True)
            self.head = torch.nn.Linear(hidden, VOCAB)

        def forward(self, x):
            return self.head(self.gru(self.embed(x))[0])

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, targets = (torch.from_numpy(a).long().to(device) for a in _batch(batch_size))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, VOCAB), targets.reshape(-1)
        )
        loss.backward()
        optimizer.step()
        loss.item()

    return step


def worker(impl: str, size: str, batch_size: int, seconds: float) -> dict:
    embed_dim, hidden = SIZES[size]
    impl, _, devices = impl.partition("@")  # "ours_f32@4": on 4 (fake CPU) devices.
    if impl.startswith(("ours", "flax")):
        step = _jax_step(impl, embed_dim, hidden, batch_size, int(devices or 1))
    elif impl == "keras":
        step = _keras_step(embed_dim, hidden, batch_size)
    else:
        step = _torch_step(embed_dim, hidden, batch_size, bf16=impl == "torch_bf16")
    seconds_per_step = _timed(step, seconds=seconds, repeats=1)  # --rounds gives the median.
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_sec": batch_size * SEQ_LEN / seconds_per_step, "peak_rss_mib": rss_mib}


def matmul_worker(n: int = 2048) -> dict:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    seconds = min(_timed(lambda: dot(a, b).block_until_ready(), seconds=0.5) for _ in range(4))
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
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env
    )
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


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
        "ceiling_fraction": rate * flops_per_token(*SIZES[size]) / ceiling_flops,
        "peak_rss_mib": max(r[impl]["peak_rss_mib"] for r in ok),
    }


def _print_row(row) -> None:
    prefix = f"{row['size']:9} {row['batch']:5d} {row['impl']:15}"
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
    parser.add_argument("--out", default="benchmarks/results/throughput.jsonl")
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
        f"{'size':9} {'batch':>5} {'implementation':15} {'tokens/s':>10} {'range':>15} "
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
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "a") as f:
        f.write(
            json.dumps(
                {
                    "time": time.time(),
                    "device": ceiling["device"],
                    "machine": machine.describe(),
                    "matmul_flops_per_sec": ceiling["flops_per_sec"],
                    "rows": rows,
                }
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
