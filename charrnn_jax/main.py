"""Entry point: `python -m charrnn_jax.main --config=experiments/shakespeare.py --workdir=DIR`.

Only flags and a call to loop.train_and_evaluate, which tests call directly
(or, with --config.sweep.vmap=K, to sweep_runs.run_vmapped). jax and the package's
jax-using modules are imported inside main(): after cli.run's huge-page restart and
after --cpu_devices is set, both of which must come before jax initialises.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from charrnn_jax.runtime import cli
from charrnn_jax.store.workdir import Workdir

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with ':preset'.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")
cli.require_non_empty_paths("workdir")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "jax.distributed.initialize(): 'auto' runs it under SLURM / TPU pods / an explicit "
    "coordinator (JAX_COORDINATOR_ADDRESS), 'on' always, 'off' never.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, with --num_processes and --process_id, for multi-process "
    "launches that JAX cannot detect by itself (e.g. several processes on one machine).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    0,
    "CPU hosts: split each batch over this many XLA CPU devices (0: JAX's default, one). "
    "Each device runs its share on its own thread. On 2 cores it loses to one device "
    "(0.61-0.74x; benchmarks/README.md, 'Training throughput'); it may pay where XLA's "
    "intra-op threads leave many cores idle. No effect on GPU/TPU devices.",
)
_RESTART = flags.DEFINE_bool(
    "restart",
    False,
    "Train from step 0 although the workdir holds checkpoints or metrics: they are moved to "
    "<workdir>/replaced-<time>/ (kept). Without it, a run never starts over silently.",
)
_ALLOW_CHANGE = flags.DEFINE_list(
    "allow_config_change",
    [],
    "Resume although these config keys changed (e.g. train.learning_rate,data.seq_len; "
    "'data' for a changed corpus). Without it a resume that would mix two runs is refused; "
    "accepted changes are recorded in <workdir>/config_history.jsonl.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import jax  # After the huge-page restart (module docstring).

    from charrnn_jax import config_lib  # After jax, as above.
    from charrnn_jax.runtime import distributed
    from charrnn_jax.training import loop

    cli.setup_logging()
    # Bad config files fail before jax starts.
    config = cli.config_value(_CONFIG, check=config_lib.check_declared)
    if _CPU_DEVICES.value:
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)  # Before any device use.
    if _COORDINATOR.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif distributed.should_initialize_distributed(_DISTRIBUTED.value):
        jax.distributed.initialize()
    if jax.process_count() > 1:  # One process: the start line says it all.
        logging.info(
            "Process %d/%d; %d local devices, %d global: %s",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
            jax.devices()[0].platform,
        )
    if config.sweep.vmap:
        cli.exit_on_user_error(_vmapped_sweep, config, _WORKDIR.value)
        return
    summary = cli.exit_on_user_error(
        loop.train_and_evaluate,
        config,
        _WORKDIR.value,
        restart=_RESTART.value,
        allow_config_change=frozenset(_ALLOW_CHANGE.value),
    )
    if summary["preempted"]:
        print(
            f"Preempted at step {summary['final_step']}; checkpoint saved. Rerun the same "
            f"command to resume."
        )
        return
    if jax.process_index() == 0:  # Process 0 logs for the run (store/metric_logging.py).
        print(closing_summary(summary, _WORKDIR.value, config.train.num_steps), file=sys.stderr)


def closing_summary(summary: dict, workdir: str, num_steps: int) -> str:
    """What a finished command leaves: the best val, where the checkpoints are, and the
    commands to run next."""
    w = Workdir(workdir)
    best = summary.get("best_val_loss")
    lines = [
        f"Done: step {summary['final_step']}/{num_steps}"
        + (
            ""
            if best is None
            else f"; best val {best:.4f} nats/byte at step {summary['best_step']}"
        )
        + (" (stopped early)" if summary.get("early_stopped") else "")
        + ".",
        f"Checkpoints: {w.checkpoint_dir} (latest), {w.best_checkpoint_dir} (best); rows: "
        f"{w.metrics_file}.",
    ]
    if not summary["model"].config.num_classes:
        lines += [
            "Next: python -m charrnn_jax.sample --workdir=" + workdir + " --step=best --length=500",
            "      python -m charrnn_jax.evaluate --workdir=" + workdir + " --step=best",
        ]
    return "\n".join(lines)


def _vmapped_sweep(config, root) -> None:
    """--config.sweep.vmap=K: the file's sweep() (or K seeds), K variants per program."""
    # Imports jax: after the restart (module docstring).
    from charrnn_jax.training import sweep_runs

    runs = sweep_runs.vmap_runs(config_flags.get_config_filename(flags.FLAGS["config"]), config)
    statuses = sweep_runs.run_vmapped(config, runs, root, size=config.sweep.vmap)
    for name, status in statuses.items():
        print(f"{status['status']:9} {name}  val_loss={status.get('val_loss')}")
    failed = [name for name, status in statuses.items() if status["status"] == "failed"]
    if failed:
        sys.exit(f"{len(failed)} variant(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    cli.run(main)
