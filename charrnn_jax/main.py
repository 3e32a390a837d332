"""Entry point: `python -m charrnn_jax.main --config=experiments/shakespeare.py --workdir=DIR`.

Only flags and a call to train.train_and_evaluate, which tests call directly.
"""

import logging as logging_std
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with ':preset'.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed.initialize(): 'auto' runs it under SLURM / TPU pods / an explicit "
    "coordinator (JAX_COORDINATOR_ADDRESS), 'on' always, 'off' never.",
)
flags.mark_flags_as_required(["config", "workdir"])

# Environments where jax.distributed.initialize() can discover the cluster by itself.
_CLUSTER_ENV_VARS = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                     "JAX_COORDINATOR_ADDRESS")


def should_initialize_distributed(mode: str, environ=os.environ) -> bool:
    if mode != "auto":
        return mode == "on"
    if "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1")) <= 1:
        return False  # A single-task SLURM job is just one process.
    return any(var in environ for var in _CLUSTER_ENV_VARS)


class _QuietLibraries(logging_std.Filter):
    """Keeps Orbax's per-save INFO chatter out of the progress log (warnings still show)."""

    def filter(self, record):
        return record.levelno >= logging_std.WARNING or "orbax" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import jax

    logging.get_absl_handler().addFilter(_QuietLibraries())

    from charrnn_jax import train
    from charrnn_jax.errors import USER_ERRORS

    if should_initialize_distributed(_DISTRIBUTED.value):
        jax.distributed.initialize()
    logging.info("Process %d/%d; %d local devices, %d global: %s", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.devices()[0].platform)
    try:
        summary = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if summary["preempted"]:
        print(f"Preempted at step {summary['final_step']}; checkpoint saved. Rerun the same "
              f"command to resume.")


if __name__ == "__main__":
    app.run(main)
