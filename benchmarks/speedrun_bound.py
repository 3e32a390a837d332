"""How fast the speedrun could possibly go on this CPU: its FLOPs against the GEMM rates.

    python -m benchmarks.speedrun_bound [--config=experiments/shakespeare_speedrun.py]
        [--seconds=616]

Issue 41 asks for the speedrun in 300 s on two Zen-class cores and for the f32 and bf16
GEMM rates beside its time. This prints both rates (one 2048^3 GEMM each, f32
accumulation, as the model's dtype runs them), the config's FLOPs (every training step's
forward and backward plus each full-split val), and so the time the run would take if
every FLOP ran at the bf16 GEMM rate: a floor no schedule of the same config can beat,
since the recurrence's elementwise gates, the scan and the optimizer only add to it.
With --seconds (a measured wall-clock, compile included) it prints the fraction of that
floor the run reached.

FLOPs per byte are counted as multiply-adds x 2 of the GEMMs only (Cho et al. 2014's GRU,
eq. 5-8: three gates over [input, hidden] per layer, then the 256-way output layer); a
training byte costs three forward passes (the forward, and the backward's input and
weight gradients), a val byte one.
"""

from __future__ import annotations

import argparse
import pathlib

from benchmarks import common, machine
from charrnn_jax import config_lib
from charrnn_jax.data import corpora

GEMM_N = 2048


def run_flops(config) -> dict:
    """The config's training and evaluation FLOPs (evaluations at eval_every and the end),
    from common.Size's count, the one the throughput benchmarks use."""
    m, t = config.model, config.train
    if m.cell != "gru":
        raise SystemExit(f"error: the bound counts GRU stacks only, not model.cell={m.cell}")
    size = common.Size(m.embed_dim, m.hidden_size, m.num_layers, config.data.seq_len)
    forward = int(size.train_flops_per_token()) // 3  # Its count: 3 forward passes a byte.
    train_bytes = t.num_steps * t.batch_size * config.data.seq_len
    val_bytes = len(corpora.load_splits(config.data)["val"])
    evals = len({*range(t.eval_every, t.num_steps + 1, t.eval_every), t.num_steps})
    return {
        "forward_flops_per_byte": forward,
        "train_flops": 3 * forward * train_bytes,
        "eval_flops": forward * val_bytes * evals,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/shakespeare_speedrun.py")
    parser.add_argument("--seconds", type=float, help="a measured wall-clock of the run")
    args = parser.parse_args(argv)
    config = config_lib.resolve(config_lib.load_config_file(pathlib.Path(args.config)))
    print(machine.summary())
    f32, bf16 = (common.gemm_flops_per_sec(d, GEMM_N, seconds=2) for d in ("float32", "bfloat16"))
    flops = run_flops(config)
    total = flops["train_flops"] + flops["eval_flops"]
    rate = bf16 if config.model.dtype == "bfloat16" else f32
    print(f"GEMM {GEMM_N}^3: f32 {f32 / 1e9:.0f} GFLOP/s, bf16 {bf16 / 1e9:.0f} GFLOP/s")
    print(
        f"{args.config}: {flops['forward_flops_per_byte'] / 1e6:.2f} MFLOP per byte forward; "
        f"{flops['train_flops'] / 1e12:.1f} TFLOP training + "
        f"{flops['eval_flops'] / 1e12:.1f} TFLOP val = {total / 1e12:.1f} TFLOP"
    )
    floor = total / rate
    print(f"floor at the {config.model.dtype} GEMM rate: {floor:.0f} s")
    if args.seconds:
        print(f"measured {args.seconds:.0f} s: {floor / args.seconds:.0%} of the floor's speed")


if __name__ == "__main__":
    main()
