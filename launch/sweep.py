"""Run a config's sweep(): every override set becomes one ordinary training run.

    python -m launch.sweep --config=experiments/shakespeare.py:tiny --sweep=sweep \
        --workdir_root=/tmp/sweep --launcher=local|vmap|slurm|tpu_vm [--dry_run]

Each run's workdir is <workdir_root>/<name>, the name spelled from its overrides
(e.g. `learning_rate=0.003,hidden_size=512,seed=1`), so a rerun finds it again: finished
runs are skipped and unfinished ones resume from their checkpoints.

- local: runs here, `--parallel` at a time (with `--gpus_per_run`, each gets its own
  CUDA_VISIBLE_DEVICES); a failing run is recorded and the others go on.
- vmap: one process here trains the runs `--vmap` at a time in one vmapped program
  (runs that differ only in seed, learning rate or clipping share a program; see
  charrnn_jax.training.sweep_runs). Same workdirs, so the report and sampler treat them alike.
- slurm: writes an sbatch array script (one task per run, `srun` over its nodes; the
  trainer initialises jax.distributed from SLURM) and submits it unless --dry_run.
- tpu_vm: writes one `gcloud compute tpus tpu-vm ssh --worker=all` command per run.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

from absl import app, flags

from charrnn_jax.errors import UserError
from charrnn_jax.runtime import cli
from charrnn_jax.store.workdir import Workdir, is_remote, write_atomic
from charrnn_jax.training import sweep_runs
from launch import report

FLAGS = flags.FLAGS


# Re-exported: the launchers' naming and expansion are the library's.
run_name = sweep_runs.run_name
expand = sweep_runs.expand


def train_command(config_arg: str, workdir: str, overrides: dict, python="python") -> list[str]:
    return cli.trainer_command(config_arg, workdir, overrides, python=python)


def vmap_command(config_arg: str, root: str, sweep_name: str, size: int, python="python"):
    vmapped = {"sweep.vmap": size, "sweep.name": sweep_name}
    return cli.trainer_command(config_arg, root, vmapped, python=python)


def read_status(workdir) -> dict:
    path = Workdir(workdir).sweep_status_file
    return json.loads(path.read_text()) if path.is_file() else {}


def run_local(
    config_arg: str, root: pathlib.Path, runs, *, parallel: int, gpus_per_run: int, dry_run: bool
) -> dict[str, dict]:
    """Runs what is not done yet; returns {name: status}. Failures never stop the rest."""

    def one(slot_and_run):
        slot, (name, overrides) = slot_and_run
        workdir = Workdir(root).run(name)
        cmd = train_command(config_arg, str(workdir), overrides, python=sys.executable)
        previous = read_status(workdir)
        # Done only if done by this very command: with other overrides the trainer runs
        # again and decides (it resumes a longer run, or refuses another config).
        if previous.get("status") == "done" and previous.get("command") == cmd[1:]:
            return name, {**previous, "skipped": True}
        if dry_run:
            print(shlex.join(cmd))
            return name, {"status": "dry_run"}
        env = dict(os.environ)
        if gpus_per_run:
            first = (slot % parallel) * gpus_per_run
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(first, first + gpus_per_run)))
        workdir.path.mkdir(parents=True, exist_ok=True)
        print(f"started  {name}", flush=True)
        started = time.perf_counter()
        with open(workdir.launch_log, "a") as log:
            code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        status = {
            "status": "done" if code == 0 else "failed",
            "returncode": code,
            "overrides": overrides,
            "command": cmd[1:],  # Without the interpreter's path.
        }
        if code:
            status["error"] = report.error_line(workdir)
        write_atomic(workdir.sweep_status_file, json.dumps(status, indent=2) + "\n")
        elapsed = time.perf_counter() - started
        print(f"{status['status']:8} {name} ({elapsed:.0f}s, exit {code})", flush=True)
        return name, status

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(parallel, 1)) as pool:
        results = dict(pool.map(one, enumerate(runs)))
    if not dry_run:
        write_atomic(Workdir(root).sweep_summary_file, json.dumps(results, indent=2) + "\n")
    return results


def split_config_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """(argv without them, {key: value}) for `--config.KEY=VALUE` flags: overrides applied
    to every run of the sweep, and left out of the run names."""
    rest, common = [], {}
    for arg in argv:
        if arg.startswith("--config.") and "=" in arg:
            key, value = arg[len("--config.") :].split("=", 1)
            common[key] = value
        else:
            rest.append(arg)
    return rest, common


def slurm_log_dir(root: str) -> str:
    """SLURM writes task logs to a shared file system: the root, or ./slurm_logs for a bucket."""
    return "slurm_logs" if is_remote(root) else root


def slurm_script(config_arg: str, root: str, runs, *, nodes: int, repo_dir: str) -> str:
    entries = "\n".join(
        f"  {shlex.quote(name + '|' + ' '.join(f'--config.{k}={v}' for k, v in o.items()))}"
        for name, o in runs
    )
    return f"""#!/bin/bash
#SBATCH --job-name=charrnn_sweep
#SBATCH --array=0-{len(runs) - 1}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --output={slurm_log_dir(root)}/slurm-%A_%a.out
# One array task per run; srun starts one process per node and the trainer calls
# jax.distributed.initialize() from the SLURM environment. Reruns resume.
set -euo pipefail
RUNS=(
{entries}
)
IFS='|' read -r NAME OVERRIDES <<< "${{RUNS[$SLURM_ARRAY_TASK_ID]}}"
cd {repo_dir}
srun python -m charrnn_jax.main --config={config_arg} --workdir={root}/"$NAME" $OVERRIDES
"""


def tpu_vm_commands(
    config_arg: str, root: str, runs, *, tpu_name: str, zone: str, repo_dir: str
) -> list[str]:
    """One command per run, every worker of the pod slice running the same trainer."""
    commands = []
    for name, overrides in runs:
        inner = shlex.join(train_command(config_arg, f"{root}/{name}", overrides))
        commands.append(
            f"gcloud compute tpus tpu-vm ssh {tpu_name} --zone={zone} --worker=all "
            f"--command={shlex.quote(f'cd {repo_dir} && {inner}')}"
        )
    return commands


def define_flags() -> None:
    """Defined only when run as a program, so tests can import this module."""
    flags.DEFINE_string("config", None, "Config file, optionally with ':preset'.")
    flags.DEFINE_string("sweep", "sweep", "Name of the sweep function in the file.")
    flags.DEFINE_string("workdir_root", None, "Parent of every run's workdir.")
    flags.DEFINE_enum("launcher", "local", ["local", "vmap", "slurm", "tpu_vm"], "Where to run.")
    flags.DEFINE_bool("dry_run", False, "Write/print what would run; run nothing.")
    flags.DEFINE_integer("parallel", 1, "local: runs at a time.")
    flags.DEFINE_integer("gpus_per_run", 0, "local: GPUs per run (0: no pinning).")
    flags.DEFINE_integer("vmap", 4, "vmap: variants per vmapped program.")
    flags.DEFINE_integer("nodes", 1, "slurm: nodes per run.")
    flags.DEFINE_string("tpu_name", "my-tpu", "tpu_vm: the TPU VM's name.")
    flags.DEFINE_string("zone", "us-central2-b", "tpu_vm: its zone.")
    flags.DEFINE_string("repo_dir", "~/charrnn_jax", "tpu_vm/slurm: checkout path.")
    flags.mark_flags_as_required(["config", "workdir_root"])


def main(argv, common: dict[str, str] | None = None):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        runs = expand(FLAGS.config, FLAGS.sweep)
    except UserError as e:
        sys.exit(f"error: {e}")
    common = common or {}
    # Shared overrides come first on each command line, so a run's own value wins.
    runs = [(name, {**common, **overrides}) for name, overrides in runs]
    root = FLAGS.workdir_root
    print(f"{len(runs)} runs in {root}")
    if FLAGS.launcher == "vmap":
        cmd = vmap_command(FLAGS.config, root, FLAGS.sweep, FLAGS.vmap, python=sys.executable)
        cmd += [f"--config.{key}={value}" for key, value in common.items()]
        print(shlex.join(cmd))
        if not FLAGS.dry_run:
            sys.exit(subprocess.run(cmd).returncode)
        return
    if FLAGS.launcher == "local":
        results = run_local(
            FLAGS.config,
            pathlib.Path(root),
            runs,
            parallel=FLAGS.parallel,
            gpus_per_run=FLAGS.gpus_per_run,
            dry_run=FLAGS.dry_run,
        )
        for name, status in results.items():
            print(f"{status['status']:8} {name}")
        failed = [n for n, s in results.items() if s["status"] == "failed"]
        if failed:
            sys.exit(f"{len(failed)} run(s) failed; see their launch.log")
        return
    if FLAGS.launcher == "slurm":
        # A bucket root cannot hold the script SLURM reads: it goes to the working directory.
        script_dir = pathlib.Path("." if is_remote(root) else root)
        script_dir.mkdir(parents=True, exist_ok=True)
        pathlib.Path(slurm_log_dir(root)).mkdir(parents=True, exist_ok=True)
        script = script_dir / "sweep.sbatch"
        script.write_text(
            slurm_script(FLAGS.config, root, runs, nodes=FLAGS.nodes, repo_dir=FLAGS.repo_dir)
        )
        print(f"wrote {script}")
        if not FLAGS.dry_run:
            subprocess.run(["sbatch", str(script)], check=True)
        return
    commands = tpu_vm_commands(
        FLAGS.config,
        root,
        runs,
        tpu_name=FLAGS.tpu_name,
        zone=FLAGS.zone,
        repo_dir=FLAGS.repo_dir,
    )
    print("\n".join(commands))
    if not FLAGS.dry_run:
        for command in commands:
            subprocess.run(command, shell=True, check=False)


if __name__ == "__main__":
    define_flags()
    remaining, shared = split_config_overrides(sys.argv)
    app.run(functools.partial(main, common=shared), argv=remaining)
