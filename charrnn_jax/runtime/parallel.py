"""The device mesh, its shardings, and host-local numpy -> global jax.Array.

One model only: jit with NamedSharding over a 1-D ('data',) mesh. The batch is split
over 'data'; params and optimizer state are replicated. This is what pmap used to do.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from charrnn_jax.errors import UserError

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D data mesh over all (global) devices.

    Built with the Mesh constructor (Auto axes): `jax.make_mesh` now defaults to Explicit
    axes, which linen's nn.Embed rejects on a data-sharded batch.
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def model_jit(model, fn, **jit_kwargs):
    """jax.jit of a program that runs `model` (a CharRNN), compiled with the XLA options
    its cell asks for on this backend (ModelConfig.compiler_options; none for most)."""
    options = model.config.compiler_options(jax.default_backend())
    return jax.jit(fn, compiler_options=options or None, **jit_kwargs)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh, *, variant_axis: bool = False) -> NamedSharding:
    """The batch axis split over 'data'; other axes whole.

    The batch axis is the leading one, or the second after a vmapped sweep's variant axis
    (every variant's batch is split the same way; the variants are not).
    """
    return NamedSharding(
        mesh, PartitionSpec(None, DATA_AXIS) if variant_axis else PartitionSpec(DATA_AXIS)
    )


def check_batch_divides(global_batch: int, mesh: Mesh, name: str = "train.batch_size") -> None:
    """Rows of a batch (`name`) split evenly over the mesh, or one error line."""
    if global_batch % mesh.size:
        raise UserError(
            f"{name}={global_batch} does not divide over {mesh.size} devices; use a "
            f"multiple of {mesh.size}."
        )


def global_batch(local_batch, mesh: Mesh, *, variant_axis: bool = False):
    """Assembles each process's rows into one global array sharded on 'data'.

    Args:
      local_batch: pytree of numpy arrays [local_batch, ...], this process's rows
        ([variants, local_batch, ...] with variant_axis).
    """
    sharding = data_sharded(mesh, variant_axis=variant_axis)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
