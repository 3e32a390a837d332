"""Loss curves of runs against bytes seen (and wall-clock, for runs on one machine).

    python -m launch.curves --workdirs=/tmp/headline --label="2 x GRU 512" \
        --reference="1.4697:nanoGPT char Transformer (10.7M)" --out=/tmp/curves.png

A run is a workdir, a metrics.jsonl (a committed `NAME_metrics.jsonl` reads the
`NAME_config.json` beside it), or a glob of either; repeat --workdirs for several (a
comma list also works when no name holds a comma: a sweep's names do). Bytes seen =
step x batch x seq_len from the run's config; without one, the x axis is the step. Val
is solid with points, train dashed, both in nats/byte; each --reference is a horizontal
line of its own style. The legend sits below the plots, outside the data.

Wall-clock is comparable only on one machine, so its panel is drawn (--wall_clock=auto)
only when every run's config_history.jsonl names the same machine, or --machine names
the machine of runs that record none; otherwise the figure says why it is absent. The
suffix of --out picks the format: .png, or .svg / .pdf for a vector figure.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import pathlib

from absl import app, flags

from charrnn_jax.errors import UserError
from charrnn_jax.runtime import cli
from charrnn_jax.store import metric_logging
from charrnn_jax.store.workdir import Workdir

_WORKDIRS = flags.DEFINE_multi_string(
    "workdirs", None, "A workdir, a metrics.jsonl or a glob; repeat for several runs."
)
_LABELS = flags.DEFINE_multi_string("label", [], "One per run, in order (default: its name).")
_REFERENCES = flags.DEFINE_multi_string("reference", [], "VALUE:LABEL horizontal lines.")
_OUT = flags.DEFINE_string("out", None, "The figure to write: .png, .svg or .pdf.")
_YMAX = flags.DEFINE_float("ymax", 2.0, "Upper limit of the loss axis.")
_WALL_CLOCK = flags.DEFINE_enum(
    "wall_clock", "auto", ["auto", "on", "off"], "The wall-clock panel (see the docstring)."
)
_MACHINE = flags.DEFINE_string(
    "machine", None, "The machine of runs whose history names none (committed metrics)."
)
flags.mark_flags_as_required(["workdirs", "out"])
cli.require_non_empty_paths("out")

FORMATS = (".png", ".svg", ".pdf")
# Reference lines: each its own dash pattern and grey, so a printed page tells them apart.
REFERENCE_STYLES = [(0, (1, 1.5)), (0, (6, 2)), (0, (4, 1.5, 1, 1.5)), (0, (10, 3))]
REFERENCE_GREYS = ["0.15", "0.45", "0.3", "0.6"]


@dataclasses.dataclass
class Run:
    """One run's rows, ready to draw."""

    label: str
    steps: list[int]
    train: list[float | None]
    val: list[float | None]
    hours: list[float]
    mbytes: list[float] | None  # None without a config.json (no batch or seq_len).
    machine: str | None  # None when its history names none, or several.


def expand(values: list[str]) -> list[pathlib.Path]:
    """Every run the --workdirs values name: paths as given (commas and all), globs
    expanded in order, else comma-separated lists of paths."""
    paths = []
    for value in values:
        if pathlib.Path(value).expanduser().exists():
            paths.append(pathlib.Path(value).expanduser())
        elif any(c in value for c in "*?["):
            found = sorted(glob.glob(str(pathlib.Path(value).expanduser())))
            if not found:
                raise UserError(f"--workdirs={value!r} matches nothing.")
            paths += [pathlib.Path(p) for p in found]
        else:
            for part in value.split(","):
                if not pathlib.Path(part).expanduser().exists():
                    raise UserError(f"No run at {part!r} (a workdir or a metrics.jsonl).")
                paths.append(pathlib.Path(part).expanduser())
    return paths


def read_run(path: pathlib.Path, label: str, machine: str | None = None) -> Run:
    """A run from its workdir or its metrics.jsonl (config.json and the history beside it
    are read if present)."""
    folder, metrics = (path.parent, path) if path.is_file() else (path, Workdir(path).metrics_file)
    if not metrics.is_file():
        raise UserError(f"{metrics} does not exist: is {path} a finished run?")
    rows = metric_logging.read_jsonl(metrics)
    if not rows:
        raise UserError(f"{metrics} holds no rows.")
    run = Workdir(folder)
    config_file = _config_beside(metrics, run.config_file)
    per_step = _bytes_per_step(config_file) if config_file else None
    return Run(
        label=label,
        steps=[r["step"] for r in rows],
        train=[r.get("train_loss") for r in rows],
        val=[r.get("val_loss") for r in rows],
        hours=[r["wall_time"] / 3600 for r in rows],
        mbytes=None if per_step is None else [r["step"] * per_step / 1e6 for r in rows],
        machine=_recorded_machine(run.history_file) or machine,
    )


def _config_beside(metrics: pathlib.Path, workdir_config: pathlib.Path) -> pathlib.Path | None:
    """The run's config: its workdir's, or for a committed `NAME_metrics.jsonl` the
    `NAME_config.json` beside it (how docs/ keeps several runs in one folder)."""
    committed = metrics.with_name(metrics.name.replace("_metrics.jsonl", "_config.json"))
    for candidate in (workdir_config, committed):
        if candidate != metrics and candidate.is_file():
            return candidate
    return None


def _bytes_per_step(config_file: pathlib.Path) -> int:
    try:
        config = json.loads(config_file.read_text())
        return config["train"]["batch_size"] * config["data"]["seq_len"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{config_file} holds no train.batch_size and data.seq_len: {e}") from None


def _recorded_machine(history: pathlib.Path) -> str | None:
    """The one machine every start of the run names, or None (none recorded, or several)."""
    if not history.is_file():
        return None
    names = set()
    for line in history.read_text().splitlines():
        try:
            names.add(json.loads(line).get("machine"))
        except (ValueError, AttributeError):
            continue  # A cut line: the start it records is also in the rows.
    return names.pop() if len(names) == 1 else None


def wall_clock_machine(runs: list[Run], mode: str) -> tuple[str | None, str]:
    """(the machine whose wall-clock panel to draw, or None; a note when it is not)."""
    if mode == "off":
        return None, ""
    machines = {run.machine for run in runs}
    if len(machines) == 1 and None not in machines:
        return machines.pop(), ""
    unnamed = [run.label for run in runs if run.machine is None]
    why = (
        f"no machine recorded for {', '.join(unnamed)} (name it with --machine)"
        if unnamed
        else f"runs measured on {len(machines)} machines: {'; '.join(sorted(machines))}"
    )
    if mode == "on":
        raise UserError(f"--wall_clock=on, but {why}.")
    return None, f"Wall-clock not drawn: {why}."


def plot(runs: list[Run], references, out, ymax: float, *, wall_clock: str = "auto"):
    """Draws the figure into `out` and returns it (tests read its axes)."""
    import matplotlib  # Optional: the plots extra.

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # After choosing the file-only backend.

    machine, note = wall_clock_machine(runs, wall_clock)
    by_bytes = all(run.mbytes is not None for run in runs)
    panels = [("mbytes", "training bytes seen (millions)")] if by_bytes else [("steps", "step")]
    if machine:
        panels.insert(0, ("hours", f"wall-clock (hours; {machine})"))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(9, 6 * len(panels)), 5.5), sharey=True, layout="constrained"
    )
    axes = list(axes) if len(panels) > 1 else [axes]
    for ax, (x_key, x_label) in zip(axes, panels, strict=True):
        _draw_runs(ax, runs, x_key)
        for i, (value, name) in enumerate(references):
            style, grey = REFERENCE_STYLES[i % 4], REFERENCE_GREYS[i % 4]
            ax.axhline(value, color=grey, linestyle=style, linewidth=1.4, label=f"{name}: {value}")
        ax.set(xlabel=x_label, ylim=(None, ymax))
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="nats/byte (val: full split, carry kept)")
    handles, labels = axes[0].get_legend_handles_labels()
    ncol = min(len(panels) + 1, len(labels))
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8)
    if note:  # The figure says why; the full reason is printed.
        fig.suptitle(
            "Wall-clock not drawn: the runs were not all measured on one named machine.",
            fontsize=8,
            color="0.35",
        )
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return fig, note


def _draw_runs(ax, runs: list[Run], x_key: str) -> None:
    """Each run's train (dashed) and val (solid, points) curves, only where rows hold them."""
    for i, run in enumerate(runs):
        xs, color = getattr(run, x_key), f"C{i}"
        train = [(x, v) for x, v in zip(xs, run.train, strict=True) if v is not None]
        val = [(x, v) for x, v in zip(xs, run.val, strict=True) if v is not None]
        if train:
            ax.plot(*zip(*train, strict=True), linestyle="--", color=color, alpha=0.6,
                    label=f"{run.label}: train")  # fmt: skip
        if val:
            ax.plot(*zip(*val, strict=True), marker="o", color=color, label=f"{run.label}: val")


def _references(values: list[str]) -> list[tuple[float, str]]:
    out = []
    for ref in values:
        value, _, name = ref.partition(":")
        try:
            out.append((float(value), name or value))
        except ValueError:
            raise UserError(
                f"--reference={ref!r} must be VALUE:LABEL, e.g. 1.4697:nanoGPT."
            ) from None
    return out


def run() -> str:
    out = pathlib.Path(_OUT.value).expanduser()
    if out.suffix not in FORMATS:
        raise UserError(f"--out={_OUT.value!r} must end in one of {', '.join(FORMATS)}.")
    if not out.parent.is_dir():
        raise UserError(f"--out's folder {out.parent} does not exist.")
    references = _references(_REFERENCES.value)
    paths = expand(_WORKDIRS.value)
    labels = _LABELS.value or [p.parent.name if p.is_file() else p.name for p in paths]
    if len(labels) != len(paths):
        raise UserError(f"Give one --label per run: {len(paths)} runs, {len(labels)} labels.")
    runs = [read_run(p, label, _MACHINE.value) for p, label in zip(paths, labels, strict=True)]
    _, note = plot(runs, references, out, _YMAX.value, wall_clock=_WALL_CLOCK.value)
    return f"Wrote {out}" + (f" ({note})" if note else "")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    print(cli.exit_on_user_error(run))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)  # No huge-page restart: no XLA work here.
