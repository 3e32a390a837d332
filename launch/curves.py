"""Loss curves of finished runs against wall-clock and against bytes seen, on one figure.

    python -m launch.curves --workdirs=/tmp/headline --label="2 x GRU 512" \
        --reference="1.4697:nanoGPT char Transformer (10.7M)" --out=/tmp/curves.png

Reads each workdir's metrics.jsonl and config.json; bytes seen = step x batch x seq_len.
Val is solid, train dashed, both in nats/byte; each --reference is a horizontal line.
"""

from __future__ import annotations

import pathlib

from absl import app, flags

from charrnn_jax import config_lib
from charrnn_jax.errors import UserError
from charrnn_jax.store import metric_logging
from charrnn_jax.store.workdir import Workdir

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories.")
_LABELS = flags.DEFINE_multi_string("label", [], "One per workdir, in order (default: its name).")
_REFERENCES = flags.DEFINE_multi_string("reference", [], "VALUE:LABEL horizontal lines.")
_OUT = flags.DEFINE_string("out", None, "PNG to write.")
_YMAX = flags.DEFINE_float("ymax", 2.0, "Upper limit of the loss axis.")
flags.mark_flags_as_required(["workdirs", "out"])


def curves(workdir: pathlib.Path) -> dict:
    """Per row: hours of wall-clock, millions of bytes seen, train and val nats/byte."""
    run = Workdir(workdir)
    if not run.metrics_file.is_file():
        raise UserError(f"{run.metrics_file} does not exist.")
    config = config_lib.load(run.config_file)
    bytes_per_step = config.train.batch_size * config.data.seq_len
    records = metric_logging.read_jsonl(run.metrics_file)
    return {
        "hours": [r["wall_time"] / 3600 for r in records],
        "mbytes": [r["step"] * bytes_per_step / 1e6 for r in records],
        "train": [r["train_loss"] for r in records],
        "val": [r["val_loss"] for r in records],
    }


def plot(runs: dict[str, dict], references: list[tuple[float, str]], out: str, ymax: float):
    import matplotlib  # Optional: the plots extra.

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # After choosing the file-only backend.

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, x_key, x_label in (
        (axes[0], "hours", "wall-clock (hours, this machine)"),
        (axes[1], "mbytes", "training bytes seen (millions)"),
    ):
        for i, (label, c) in enumerate(runs.items()):
            color = f"C{i}"
            val = [(x, v) for x, v in zip(c[x_key], c["val"], strict=True) if v is not None]
            ax.plot(c[x_key], c["train"], "--", color=color, alpha=0.6, label=f"{label}: train")
            ax.plot(*zip(*val, strict=True), "o-", color=color, label=f"{label}: val")
        for value, name in references:
            ax.axhline(value, color="k", linestyle=":", label=f"{name}: {value}")
        ax.set(xlabel=x_label, ylim=(None, ymax))
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="nats/byte (val: full split, carry kept)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv):
    del argv
    labels = _LABELS.value or [pathlib.Path(w).name for w in _WORKDIRS.value]
    if len(labels) != len(_WORKDIRS.value):
        raise UserError("Give one label per workdir.")
    runs = {
        label: curves(pathlib.Path(w)) for label, w in zip(labels, _WORKDIRS.value, strict=True)
    }
    references = []
    for ref in _REFERENCES.value:
        value, _, name = ref.partition(":")
        references.append((float(value), name))
    plot(runs, references, _OUT.value, _YMAX.value)
    print(f"Wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
