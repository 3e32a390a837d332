"""Side-by-side results of a sweep: a table sorted by best val loss, runs that differ
only in their seed as mean +- std over seeds with Welch's t-test against the best group,
and an overlay plot.

    python -m launch.report --workdir_root=/tmp/sweep [--reference=1.4697]

Reads every <workdir_root>/*/metrics.jsonl (and each run's config.json to group seeds);
a run that failed before its first row is listed with its error line. Prints the tables
and writes report.md and val_loss.png into the root. With --reference, each seed group's
mean is also tested against that number (one-sample t, one-sided: is the mean below it?).

A run's best checkpoint scored other ways (`evaluate --json > <run>/evaluate/<any>.json`:
nanoGPT's estimator, dynamic evaluation, another stride) adds one row per estimator to
the seed table, so that every column of the comparison table is a mean over seeds
printed by this command. Each estimator is named from the JSON's own fields (metric and
the settings that move its number), never from the file's name.

The tests are scipy.stats's (a dependency of jax's): Welch's unequal-variance t-test,
one-sided, H1 "this group's mean val is above the best group's". The speedrun
community's rule for a claimed gain (modded-nanogpt) is a margin of at least 0.005 nats
at p < 0.01 over several seeds.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import statistics
import sys

from absl import app, flags

from charrnn_jax.errors import UserError
from charrnn_jax.store import metric_logging
from charrnn_jax.store.workdir import Workdir, write_atomic

FLAGS = flags.FLAGS


def collect(root: pathlib.Path) -> list[dict]:
    if not root.is_dir():
        raise UserError(f"Sweep root {root} does not exist.")
    summary_file = Workdir(root).sweep_summary_file  # Written by the vmap launcher.
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    rows = []
    run_dirs = [Workdir(d) for d in sorted(root.iterdir()) if d.is_dir()]
    for workdir in [w for w in run_dirs if w.metrics_file.is_file() or _status(w, summary)]:
        records = metric_logging.read_jsonl(workdir.metrics_file)
        vals = [r for r in records if r["val_loss"] is not None]
        status = _status(workdir, summary)
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
                "error": status.get("error") or error_line(workdir),
                "seed": _config_of(workdir).get("seed"),
                "group": _group_key(_config_of(workdir)),
                "estimates": estimates(workdir),
            }
        )
    return sorted(rows, key=lambda r: (r["best_val_loss"] is None, r["best_val_loss"] or 0))


def estimator_name(record: dict) -> str:
    """What an `evaluate --json` record measured, from its fields: runs scored by the same
    command under different file names average together, and two settings never do."""
    split = re.match(r"the (\w+) split", record.get("source", ""))
    where = f"{split.group(1)}, " if split else ""
    metric = record["metric"]
    if metric == "nanogpt":
        return f"{where}nanoGPT's estimator ({record['windows']} windows, seed {record['seed']})"
    if metric == "dynamic":
        streams = f"{record['streams']} stream" + ("s" if record["streams"] > 1 else "")
        if record["learning_rate"] == 0:  # No update, so the decay cannot act either.
            return f"{where}static, {streams}"
        return (
            f"{where}dynamic (lr {record['learning_rate']:g}, decay {record['decay']:g}, "
            f"segment {record['segment']}, {streams})"
        )
    if metric == "full":
        # A recurrent model's chunk does not move its number (the carry is kept); the
        # stride of a model with a context window does.
        stride = f", stride {record['stride']}" if "stride" in record else ""
        return f"{where}full ({record['streams']} streams{stride})"
    return f"{where}{metric}"


def estimates(workdir: Workdir) -> dict[str, float]:
    """{estimator name: loss} of the run's saved `evaluate --json` outputs."""
    folder = workdir.path / "evaluate"
    found: dict[str, float] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = json.loads(path.read_text())
        if not (isinstance(record, dict) and {"metric", "loss"} <= record.keys()):
            continue  # Not evaluate's output.
        name = estimator_name(record)
        if name in found and not math.isclose(found[name], record["loss"], rel_tol=1e-9):
            raise UserError(
                f"{path} and another file in {folder} score the same estimator ({name}) "
                f"differently: {record['loss']} against {found[name]}."
            )
        found[name] = record["loss"]
    return found


def _status(workdir: Workdir, summary: dict) -> dict:
    status_file = workdir.sweep_status_file
    if status_file.is_file():
        return json.loads(status_file.read_text())
    return summary.get(workdir.name, {})


def error_line(workdir: Workdir) -> str | None:
    """The last `error:` line of a run's launch log, if it has one."""
    if not workdir.launch_log.is_file():
        return None
    lines = workdir.launch_log.read_bytes().decode("utf-8", "replace").splitlines()
    errors = [ln[len("error: ") :] for ln in lines if ln.startswith("error: ")]
    return errors[-1] if errors else None


def _config_of(workdir: Workdir) -> dict:
    """{dotted key: value} of a run's config.json ({} without one)."""
    if not workdir.config_file.is_file():
        return {}
    from charrnn_jax import config_lib  # Imports jax: only for runs that have a config.

    return config_lib.flatten(config_lib.load(workdir.config_file))


# Keys that do not make two runs different experiments: the seed (what a group averages
# over), where and how often the same run logs, and how the same function is computed
# (models/backend_choices.py: tested equal; training/identity.py lets them change).
_NOT_THE_EXPERIMENT = (
    "seed",
    "wandb.",
    "sweep.",
    "sample.",
    "train.log_every",
    "train.checkpoint_every",
    "train.max_to_keep",
    "eval.bytes_per_call",
    "eval.dynamic.",
    "model.gru_impl",
    "model.stack",
    "model.scan",
    "model.unroll",
)


def _group_key(config: dict) -> str | None:
    if not config:
        return None
    kept = {k: v for k, v in config.items() if not k.startswith(_NOT_THE_EXPERIMENT)}
    return json.dumps(kept, sort_keys=True, default=str)


def seed_groups(rows: list[dict]) -> list[dict]:
    """Runs with the same config but their seed, each as n, mean and std of the best val,
    sorted by mean; a group's name is its runs' names' common prefix."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["group"] is not None and r["best_val_loss"] is not None:
            groups.setdefault(r["group"], []).append(r)
    out = []
    for members in groups.values():
        vals = [m["best_val_loss"] for m in members]
        names = [m["name"] for m in members]
        prefix = _common_prefix(names).rstrip("_-,=s") or names[0]
        out.append(
            {
                "name": prefix if len(names) > 1 else names[0],
                "n": len(vals),
                "seeds": sorted(m["seed"] for m in members),
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else None,
                "values": vals,
                "estimates": _estimates_over(members),
            }
        )
    return sorted(out, key=lambda g: g["mean"])


def _estimates_over(members: list[dict]) -> dict[str, dict]:
    """{estimator: {"seeds", "values"}} over the group's runs that were scored that way."""
    over: dict[str, dict] = {}
    for m in sorted(members, key=lambda m: m["seed"]):
        for name, loss in m.get("estimates", {}).items():
            entry = over.setdefault(name, {"seeds": [], "values": []})
            entry["seeds"].append(m["seed"])
            entry["values"].append(loss)
    return over


def _common_prefix(names: list[str]) -> str:
    first, last = min(names), max(names)
    i = 0
    while i < min(len(first), len(last)) and first[i] == last[i]:
        i += 1
    return first[:i]


def welch_p(worse: list[float], better: list[float]) -> float | None:
    """One-sided Welch t-test p-value for mean(worse) > mean(better); None if either
    group has fewer than two runs."""
    if len(worse) < 2 or len(better) < 2:
        return None
    from scipy import stats  # A dependency of jax's; loaded only for the tests.

    return float(stats.ttest_ind(worse, better, equal_var=False, alternative="greater").pvalue)


def below_reference_p(values: list[float], reference: float) -> float | None:
    """One-sided one-sample t-test p-value for mean(values) < reference."""
    if len(values) < 2:
        return None
    from scipy import stats  # As above.

    return float(stats.ttest_1samp(values, reference, alternative="less").pvalue)


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _header(columns: list[str], reference: float | None) -> list[str]:
    """A table's head and rule lines, with the p-against-reference column if asked for."""
    if reference is not None:
        columns = [*columns, f"p (mean < {reference})"]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def seed_table(groups: list[dict], reference: float | None = None) -> str:
    """Mean +- std over seeds; each group's margin over the best group with its p-value."""
    if not groups:
        return ""
    columns = ["group", "n", "seeds", "best val mean", "std", "vs best: margin", "p (Welch)"]
    lines = _header(columns, reference)
    best = groups[0]
    for g in groups:
        margin = None if g is best else g["mean"] - best["mean"]
        p = None if g is best else welch_p(g["values"], best["values"])
        line = (
            f"| {g['name']} | {g['n']} | {','.join(map(str, g['seeds']))} | "
            f"{g['mean']:.4f} | {_fmt(g['std'], '.4f')} | {_fmt(margin, '+.4f')} | "
            f"{_fmt(p, '.2g')} |"
        )
        if reference is not None:
            line += f" {_fmt(below_reference_p(g['values'], reference), '.2g')} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def estimator_table(groups: list[dict], reference: float | None = None) -> str:
    """Each group's mean +- std under every estimator its runs were scored with."""
    lines = []
    for g in groups:
        for name, entry in sorted(g["estimates"].items()):
            values = entry["values"]
            std = statistics.stdev(values) if len(values) > 1 else None
            line = (
                f"| {g['name']} | {name} | {len(values)} | {','.join(map(str, entry['seeds']))} "
                f"| {statistics.fmean(values):.4f} | {_fmt(std, '.4f')} |"
            )
            if reference is not None:
                line += f" {_fmt(below_reference_p(values, reference), '.2g')} |"
            lines.append(line)
    head = _header(["group", "estimator", "n", "seeds", "mean", "std"], reference)
    return "\n".join([*head, *lines]) + "\n" if lines else ""


def table(rows: list[dict]) -> str:
    columns = ["run", "status", "steps", "best val loss", "best val bpb", "tokens/s"]
    lines = _header(columns, None)
    lines += [
        f"| {r['name']} | {r['status']} | {r['steps']} | {_fmt(r['best_val_loss'], '.4f')} "
        f"| {_fmt(r['best_val_bpb'], '.4f')} | {_fmt(r['tokens_per_sec'], ',.0f')} |"
        for r in rows
    ]
    failed = [r for r in rows if r["error"] and r["status"] == "failed"]
    lines += ["", *(f"- {r['name']} failed: {r['error']}" for r in failed)] if failed else []
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


def report(root: pathlib.Path, reference: float | None = None) -> str:
    rows = collect(root)
    text = table(rows)
    groups = [g for g in seed_groups(rows) if g["n"] > 1]
    if groups:
        text += "\nOver seeds (best val per run, nats/byte):\n\n" + seed_table(groups, reference)
    by_estimator = estimator_table(groups, reference)
    if by_estimator:
        text += (
            "\nOver seeds, by estimator (each run's best checkpoint as scored in its "
            "evaluate/*.json, nats/byte):\n\n" + by_estimator
        )
    write_atomic(root / "report.md", f"# Sweep {root}\n\n" + text)
    plot(rows, root / "val_loss.png")
    return text


def define_flags() -> None:
    """Defined only when run as a program, so tests can import this module."""
    flags.DEFINE_string("workdir_root", None, "The sweep's root directory.")
    flags.DEFINE_float(
        "reference", None, "Also test each seed group's mean against this val (e.g. 1.4697)."
    )
    flags.mark_flag_as_required("workdir_root")


def main(argv):
    del argv
    try:
        print(report(pathlib.Path(FLAGS.workdir_root), FLAGS.reference), end="")
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
