"""Equal parameters, equal wall-clock: GRU, LSTM, minGRU, minLSTM and LRU on tiny Shakespeare.

    python -m benchmarks.cell_comparison --root=/tmp/cells [--sizes=1M,4M]
        [--cells=gru,lstm,mingru,minlstm,lru] [--minutes=3] [--plot=docs/cell_comparison.png]

For each size, every cell gets two layers (stacked cells, or residual blocks for the
linear recurrences) with the width that brings its parameter count nearest the target,
and the same recipe: embed 64, seq_len 128, batch 64, Adam 2e-3 after 50 warmup steps
(constant: a wall-clock budget has no known last step for a decay), clipping 1.0, no
dropout. Each run is the real trainer (`python -m charrnn_jax.main`) in a subprocess,
stopped by SIGTERM when its budget is spent (the trainer saves and exits), so compile time,
evaluations and logging all count. The val metric is the full split (every val byte once,
carry kept), logged every 25 steps and measured once more on the final checkpoint.
Sampling chars/s is the jitted lax.scan sampler on the final params, 200 bytes after a
6-byte prompt, at batch 1 and 64, compile excluded.

Runs go one at a time; a run whose row is already in the results file is skipped, so the
study resumes where it stopped. Prints the CPU first; the machine's other load is the
same for every cell only if nothing else starts or stops during the study.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp

from benchmarks import common, machine
from charrnn_jax import models
from charrnn_jax.data import corpora
from charrnn_jax.inference import loading, sampler, scoring
from charrnn_jax.runtime import cli
from charrnn_jax.store import metric_logging
from charrnn_jax.store.workdir import Workdir

REPO = common.REPO

PARAM_TARGETS = {"1M": 1_000_000, "4M": 4_000_000}
CELLS = ("gru", "lstm", "mingru", "minlstm", "lru")
RECIPE = {
    "model.embed_dim": 64,
    "model.num_layers": 2,
    "data.seq_len": 128,
    "train.batch_size": 64,
    "train.num_steps": 1_000_000,  # Never reached: the budget stops the run.
    "train.learning_rate": 2e-3,
    "train.warmup_steps": 50,
    "train.grad_clip_norm": 1.0,
    "train.log_every": 25,
    "train.eval_every": 25,
    "train.checkpoint_every": 500,
    "sample.length": 0,
}


def param_count(cell: str, hidden: int) -> int:
    model = models.CharRNN(
        models.ModelConfig(embed_dim=64, hidden_size=hidden, num_layers=2, cell=cell)
    )
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
    return sum(x.size for x in jax.tree.leaves(shapes))


def width_for(cell: str, target: int) -> tuple[int, int]:
    """The multiple of 16 whose parameter count is nearest `target`, and that count."""
    counts = {h: param_count(cell, h) for h in range(64, 2049, 16)}
    hidden = min(counts, key=lambda h: abs(counts[h] - target))
    return hidden, counts[hidden]


def train_for(workdir: pathlib.Path, cell: str, hidden: int, seconds: float) -> None:
    overrides = {**RECIPE, "model.cell": cell, "model.hidden_size": hidden}
    command = cli.trainer_command(REPO / "experiments" / "shakespeare.py", workdir, overrides)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(workdir.parent / f"{workdir.name}.log", "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # The trainer saves, then exits 0.
            proc.wait(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"error: training {workdir} failed; see {workdir}.log")


def sampling_rate(model, params, batch: int, length: int = 200) -> float:
    prompts = ["ROMEO:"] * batch
    keys = jax.random.split(jax.random.key(0), batch)
    kwargs = {"length": length, "temperature": 1.0, "rng": keys}
    sampler.sample(params, model, prompts, **kwargs)  # Compile.
    times = []
    for _ in range(3):
        start = time.perf_counter()
        sampler.sample(params, model, prompts, **kwargs)
        times.append(time.perf_counter() - start)
    return batch * length / statistics.median(times)


def measure(workdir: pathlib.Path) -> dict:
    config, model, params, step = loading.load_for_inference(workdir)
    d = config.data
    val = corpora.load_splits(d)["val"]
    score = scoring.score_bytes(
        params, model, val, streams=config.train.batch_size, chunk=d.seq_len
    )
    records = metric_logging.read_jsonl(Workdir(workdir).metrics_file)
    return {
        "final_step": step,
        "wall_time": records[-1]["wall_time"],
        "val_loss": score["loss"],
        "val_bpb": score["bpb"],
        "train_tokens_per_sec": statistics.median(  # The first row includes the compile.
            r["tokens_per_sec"] for r in records[1:] or records
        ),
        "sample_chars_per_sec_b1": sampling_rate(model, params, 1),
        "sample_chars_per_sec_b64": sampling_rate(model, params, 64),
    }


def plot(rows: list[dict], root: pathlib.Path, out: pathlib.Path) -> None:
    import matplotlib  # Optional: the plots extra.

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # After choosing the file-only backend.

    sizes = list(dict.fromkeys(r["size"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for row in (r for r in rows if r["size"] == size):
            records = metric_logging.read_jsonl(Workdir(root / row["run"]).metrics_file)
            points = [(r["wall_time"] / 60, r["val_bpb"]) for r in records if r["val_bpb"]]
            label = f"{row['cell']} (H={row['hidden']}, {row['params'] / 1e6:.2f}M)"
            ax.plot(*zip(*points, strict=True), marker=".", label=label)
        ax.set(title=f"~{size} parameters", xlabel="wall-clock (minutes)")
        ax.set(ylabel="val bits/byte (full split, carry kept)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="workdirs go here (outside the repo)")
    parser.add_argument("--sizes", default="1M,4M")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--plot", default="")
    parser.add_argument(
        "--out", default="", help="The results JSONL (default: ROOT/cell_comparison.jsonl)."
    )
    args = parser.parse_args()
    root = pathlib.Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    out = pathlib.Path(args.out or root / "cell_comparison.jsonl")
    done = {r["run"]: r for r in metric_logging.read_jsonl(out)} if out.exists() else {}
    cpu = machine.summary()
    print(f"# {cpu}; jax {jax.__version__}; {args.minutes:g} minutes per run", flush=True)
    print(
        "| size | cell | width | params | steps | train tok/s | val bits/byte | "
        "sample chars/s b1 | b64 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for size in args.sizes.split(","):
        for cell in args.cells.split(","):
            run = f"{size}_{cell}_{args.minutes:g}min"
            if run not in done:
                hidden, params = width_for(cell, PARAM_TARGETS[size])
                trained = root / f"{run}.trained"  # Never train twice: that would resume.
                if not trained.exists():
                    train_for(root / run, cell, hidden, args.minutes * 60)
                    trained.touch()
                row = {"run": run, "size": size, "cell": cell, "hidden": hidden}
                row.update(params=params, minutes=args.minutes, cpu=cpu)
                row.update(measure(root / run))
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                done[run] = row
            row = done[run]
            rows.append(row)
            print(
                f"| {size} | {cell} | {row['hidden']} | {row['params']:,} | "
                f"{row['final_step']} | {row['train_tokens_per_sec']:,.0f} | "
                f"{row['val_bpb']:.4f} | {row['sample_chars_per_sec_b1']:,.0f} | "
                f"{row['sample_chars_per_sec_b64']:,.0f} |",
                flush=True,
            )
    if args.plot:
        plot(rows, root, pathlib.Path(args.plot))
        print(f"Plot: {args.plot}")


if __name__ == "__main__":
    main()
