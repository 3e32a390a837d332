"""The mesh, its shardings and process-local -> global batches."""

import jax
import numpy as np
import pytest

from charrnn_jax.errors import UserError
from charrnn_jax.runtime import parallel


@pytest.mark.parametrize("num_devices", [1, 4])
def test_global_batch_is_split_over_the_data_axis(num_devices):
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    batch = {"inputs": np.arange(8 * 3).reshape(8, 3)}
    sharded = parallel.global_batch(batch, mesh)["inputs"]
    assert sharded.shape == (8, 3)
    assert len(sharded.addressable_shards) == num_devices
    assert {s.data.shape for s in sharded.addressable_shards} == {(8 // num_devices, 3)}
    np.testing.assert_array_equal(np.asarray(sharded), batch["inputs"])


def test_variant_axis_stays_whole_and_the_batch_axis_is_split():
    mesh = parallel.make_mesh(jax.devices()[:4])
    stacked = parallel.global_batch({"x": np.zeros((3, 8, 2))}, mesh, variant_axis=True)["x"]
    assert {s.data.shape for s in stacked.addressable_shards} == {(3, 2, 2)}


def test_replicated_and_divisibility():
    mesh = parallel.make_mesh(jax.devices()[:4])
    assert parallel.replicated(mesh).is_fully_replicated
    parallel.check_batch_divides(8, mesh)
    with pytest.raises(UserError, match="does not divide over 4 devices"):
        parallel.check_batch_divides(6, mesh)
