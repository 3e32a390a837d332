"""When to call jax.distributed.initialize(): explicit, or detected like JAX does."""

import os

# Environments where jax.distributed.initialize() can discover the cluster by itself.
_CLUSTER_ENV_VARS = (
    "SLURM_JOB_ID",
    "TPU_WORKER_HOSTNAMES",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "JAX_COORDINATOR_ADDRESS",
)


def should_initialize_distributed(mode: str, environ=os.environ) -> bool:
    if mode != "auto":
        return mode == "on"
    if "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1")) <= 1:
        return False  # A single-task SLURM job is just one process.
    return any(var in environ for var in _CLUSTER_ENV_VARS)
