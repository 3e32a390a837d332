"""Rerun the start of a published curve and say how closely it reproduces.

    python -m launch.reproduce --reference=docs/headline/gru768_regularised_metrics.jsonl \
        --until=250 --workdir=/tmp/repro -- \
        --config=experiments/shakespeare_headline_gru.py

Runs `python -m charrnn_jax.main <flags after -->` with --workdir, stops it with SIGTERM
(the trainer saves and exits cleanly) once its metrics.jsonl has a row at or past step
--until, then compares every row the two files share: the
largest |difference| of train and val loss, and whether they are bit-identical. The
config's schedule is untouched (a run stopped early, not a shorter run), so the rows are
the reference's own. --xla_flags is added to XLA_FLAGS, e.g. `--xla_cpu_max_isa=AVX2`
to generate the code an AVX2-only CPU would get.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

from absl import app, flags

from charrnn_jax.errors import UserError
from charrnn_jax.runtime import cli
from charrnn_jax.store import metric_logging
from charrnn_jax.store.workdir import Workdir

_REFERENCE = flags.DEFINE_string("reference", None, "The published metrics.jsonl.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the rerun trains (resumes if present).")
_UNTIL = flags.DEFINE_integer("until", None, "Stop after the first row at or past this step.")
_XLA_FLAGS = flags.DEFINE_string("xla_flags", "", "Added to XLA_FLAGS for the rerun.")
flags.mark_flags_as_required(["reference", "workdir", "until"])

KEYS = ("train_loss", "val_loss")


def _reached(metrics: pathlib.Path, until: int) -> bool:
    rows = metric_logging.read_jsonl(metrics) if metrics.is_file() else []
    return any(r["step"] >= until for r in rows)


def rerun(main_flags: list[str], workdir: pathlib.Path, until: int, xla_flags: str) -> int:
    """Trains until `until` (then SIGTERM); returns the trainer's exit status."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    command = cli.trainer_argv(*main_flags, f"--workdir={workdir}")
    proc = subprocess.Popen(command, env=env, stdout=sys.stderr)  # Our stdout: the verdict.
    metrics = Workdir(workdir).metrics_file
    while proc.poll() is None:
        if _reached(metrics, until):
            proc.send_signal(signal.SIGTERM)
            return proc.wait()
        time.sleep(1.0)
    return proc.returncode


def compare(reference: list[dict], rerun_rows: list[dict]) -> dict:
    """Per key: rows compared, max |difference|, and whether every shared value is equal."""
    ours = {r["step"]: r for r in rerun_rows}
    result = {}
    for key in KEYS:
        pairs = [
            (r[key], ours[r["step"]][key])
            for r in reference
            if r["step"] in ours and r[key] is not None and ours[r["step"]][key] is not None
        ]
        diffs = [abs(a - b) for a, b in pairs]
        result[key] = {
            "rows": len(pairs),
            "max_abs_diff": max(diffs, default=float("nan")),
            "identical": bool(pairs) and all(a == b for a, b in pairs),
        }
    return result


def run(main_flags: list[str]) -> None:
    if not any(f.startswith("--config=") for f in main_flags):
        raise UserError("Give the trainer's flags after --, starting with --config=...")
    reference_rows = metric_logging.read_jsonl(pathlib.Path(_REFERENCE.value))
    if not reference_rows:
        raise UserError(f"{_REFERENCE.value} has no rows.")
    workdir = pathlib.Path(_WORKDIR.value)
    status = rerun(main_flags, workdir, _UNTIL.value, _XLA_FLAGS.value)
    rows = metric_logging.read_jsonl(Workdir(workdir).metrics_file)
    if not _reached(Workdir(workdir).metrics_file, _UNTIL.value):
        raise UserError(f"The rerun stopped (exit {status}) before step {_UNTIL.value}.")
    for key, r in compare(reference_rows, rows).items():
        if not r["rows"]:
            continue  # E.g. no val row yet at --until.
        verdict = "bit-identical" if r["identical"] else f"max |diff| {r['max_abs_diff']:.2e}"
        print(f"{key}: {r['rows']} shared rows, {verdict}")
    last = max(rows, key=lambda r: r["step"])
    ref = {r["step"]: r for r in reference_rows}.get(last["step"], {})
    for key in KEYS:
        if last[key] is not None and ref.get(key) is not None:
            print(f"{key} at step {last['step']}: rerun {last[key]:.6f}, reference {ref[key]:.6f}")


def main(argv):
    cli.exit_on_user_error(run, argv[1:])


if __name__ == "__main__":
    app.run(main)
