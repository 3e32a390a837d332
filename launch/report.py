"""Side-by-side results of a sweep: a table sorted by best val loss and an overlay plot.

    python -m launch.report --workdir_root=/tmp/sweep

Reads every <workdir_root>/*/metrics.jsonl; prints the table and writes report.md and
val_loss.png into the root.
"""

from __future__ import annotations

import json
import math
import pathlib
import statistics
import sys

from absl import app, flags

from charrnn_jax.errors import UserError
from charrnn_jax.store import metric_logging
from charrnn_jax.store.workdir import Workdir

FLAGS = flags.FLAGS


def collect(root: pathlib.Path) -> list[dict]:
    if not root.is_dir():
        raise UserError(f"Sweep root {root} does not exist.")
    summary_file = Workdir(root).sweep_summary_file  # Written by the vmap launcher.
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    rows = []
    run_dirs = [Workdir(d) for d in sorted(root.iterdir()) if d.is_dir()]
    for workdir in [w for w in run_dirs if w.metrics_file.is_file()]:
        records = metric_logging.read_jsonl(workdir.metrics_file)
        vals = [r for r in records if r["val_loss"] is not None]
        status_file = workdir.sweep_status_file
        status = (
            json.loads(status_file.read_text())
            if status_file.is_file()
            else summary.get(workdir.name, {})
        )
        rates = [r["tokens_per_sec"] for r in records if r["tokens_per_sec"]]
        best = min(vals, key=lambda r: r["val_loss"]) if vals else None
        rows.append(
            {
                "name": workdir.name,
                "status": status.get("status", "unknown"),
                "steps": records[-1]["step"] if records else 0,
                "best_val_loss": best["val_loss"] if best else None,
                "best_val_bpb": best["val_loss"] / math.log(2) if best else None,
                "tokens_per_sec": statistics.median(rates) if rates else None,
                "curve": [(r["step"], r["val_loss"]) for r in vals],
            }
        )
    return sorted(rows, key=lambda r: (r["best_val_loss"] is None, r["best_val_loss"] or 0))


def table(rows: list[dict]) -> str:
    fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    lines = [
        "| run | status | steps | best val loss | best val bpb | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['status']} | {r['steps']} | {fmt(r['best_val_loss'], '.4f')} "
        f"| {fmt(r['best_val_bpb'], '.4f')} | {fmt(r['tokens_per_sec'], ',.0f')} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib  # Optional extra (.[plots]): loaded only to draw.

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # After choosing the headless backend.

    fig, ax = plt.subplots(figsize=(9, 5))
    for r in rows:
        if r["curve"]:
            ax.plot(*zip(*r["curve"], strict=True), "o-", label=r["name"])
    ax.set_xlabel("step")
    ax.set_ylabel("val cross-entropy (nats / byte)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(root: pathlib.Path) -> str:
    rows = collect(root)
    text = table(rows)
    (root / "report.md").write_text(f"# Sweep {root}\n\n" + text)
    plot(rows, root / "val_loss.png")
    return text


def define_flags() -> None:
    """Defined only when run as a program, so tests can import this module."""
    flags.DEFINE_string("workdir_root", None, "The sweep's root directory.")
    flags.mark_flag_as_required("workdir_root")


def main(argv):
    del argv
    try:
        print(report(pathlib.Path(FLAGS.workdir_root)), end="")
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
