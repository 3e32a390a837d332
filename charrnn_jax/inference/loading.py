"""A trained workdir's params and model for inference (sampling, scoring, classifying).

Params only, no optimizer state, restored onto one device from the latest, a numbered or
the best checkpoint; the model is rebuilt from the run's own config.json.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from charrnn_jax import config_lib, models
from charrnn_jax.errors import UserError
from charrnn_jax.store import checkpointing
from charrnn_jax.store.workdir import Workdir


def load_for_inference(workdir, step: int | str | None = None):
    """Params only (no optimizer state) plus the run's config, for sampling on one device.

    Args:
      step: None for the latest checkpoint, a step number, or 'best' for the step with the
        lowest val loss (kept in checkpoints_best/ however old it is).

    Returns:
      (config, model, params, step): the run's typed config (config_lib.RunConfig).
    """
    workdir = Workdir(workdir)
    if not workdir.path.is_dir():
        raise UserError(f"Workdir {workdir.path} does not exist.")
    config = config_lib.resolve(config_lib.load(workdir.config_file))  # The door.
    model = models.CharRNN(config.model)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    )
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract
    )
    restored_step, params = checkpointing.restore_params(workdir, abstract, step)
    return config, model, params, restored_step
