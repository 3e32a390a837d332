"""Score a run's checkpoint under every estimator of the comparison table, each output
saved where launch.report reads it, so a seed group's every column is one command away.

    python -m launch.score --workdir=/tmp/gru_s1 [--step=best] [--estimators=full,nanogpt]
    python -m launch.report --workdir_root=/tmp --reference=1.4697

Runs `python -m charrnn_jax.evaluate --workdir=... --step=... --json` once per estimator
and writes its output to <workdir>/evaluate/<estimator>.json (atomically; a file already
there is kept, so an interrupted scoring resumes where it stopped):

  full     the full-split metric (every val byte once, carry kept or the window's stride)
  nanogpt  nanoGPT's estimate_loss() on a seeded draw (`--metric=nanogpt`)
  dynamic  dynamic evaluation with the run's eval.dynamic settings (`--dynamic`)
  static   the same single stream with a zero learning rate: dynamic's static baseline

Each is a separate process, so one that fails prints evaluate's own `error:` line and
stops the rest.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

from absl import app, flags

from charrnn_jax.errors import UserError
from charrnn_jax.store.workdir import write_atomic

FLAGS = flags.FLAGS

ESTIMATORS = {
    "full": [],
    "nanogpt": ["--metric=nanogpt"],
    "dynamic": ["--dynamic"],
    "static": ["--dynamic", "--dynamic_lr=0"],
}


def evaluate_argv(workdir: pathlib.Path, step: str, estimator: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "charrnn_jax.evaluate",
        f"--workdir={workdir}",
        f"--step={step}",
        "--json",
        *ESTIMATORS[estimator],
    ]


def score(workdir: pathlib.Path, step: str, estimators: list[str]) -> list[pathlib.Path]:
    """Writes each estimator's JSON that is not there yet; returns every file asked for."""
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise UserError(f"--estimators takes some of {', '.join(ESTIMATORS)}; got {unknown}.")
    if not (workdir / "config.json").is_file():
        raise UserError(f"{workdir} holds no run (no config.json).")
    out = workdir / "evaluate"
    out.mkdir(exist_ok=True)
    written = []
    for estimator in estimators:
        path = out / f"{estimator}.json"
        if not path.is_file():
            done = subprocess.run(
                evaluate_argv(workdir, step, estimator), capture_output=True, text=True
            )
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
                raise UserError(f"evaluate ({estimator}) failed: {lines[-1]}")
            write_atomic(path, done.stdout)
        written.append(path)
    return written


def define_flags() -> None:
    """Defined only when run as a program, so tests can import this module."""
    flags.DEFINE_string("workdir", None, "The run to score.")
    flags.DEFINE_string("step", "best", "Its checkpoint: best, latest or a step number.")
    flags.DEFINE_list("estimators", list(ESTIMATORS), "Some of: " + ", ".join(ESTIMATORS))
    flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    try:
        for path in score(pathlib.Path(FLAGS.workdir), FLAGS.step, FLAGS.estimators):
            print(path)
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
