"""The optimizer's schedule under a vmapped sweep's traced learning rates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from charrnn_jax.training import optim

STEPS = np.arange(0, 41)


@pytest.mark.parametrize("end_learning_rate", [0.0, 1e-4])
def test_a_traced_peak_gives_the_cosine_of_each_concrete_peak(end_learning_rate):
    """Each variant's rate at every step is the plain run's (optax's own schedule)."""
    config = tiny_config(
        **{
            "train.schedule": "cosine",
            "train.warmup_steps": 5,
            "train.num_steps": 30,
            "train.end_learning_rate": end_learning_rate,
        }
    )
    peaks = [0.0, 1e-3, 3e-3]

    def rates(peak):
        _, schedule = optim.make_optimizer(config.train, learning_rate=peak)
        return jax.vmap(schedule)(jnp.asarray(STEPS))

    traced = jax.jit(jax.vmap(rates))(jnp.asarray(peaks, jnp.float32))
    for peak, ours in zip(peaks, np.asarray(traced), strict=True):
        _, schedule = optim.make_optimizer(config.train, learning_rate=peak)
        plain = np.array([schedule(step) for step in STEPS])
        np.testing.assert_allclose(ours, plain, rtol=1e-6, atol=1e-12)
    assert traced[1, 5] == pytest.approx(1e-3) and traced[2, 30] == pytest.approx(
        end_learning_rate, abs=1e-9
    )


def test_a_traced_peak_builds_the_whole_optimizer():
    """The update under jit with traced rate and clip norm: the vmapped sweep's path."""
    config = tiny_config(**{"train.schedule": "cosine", "train.warmup_steps": 2})
    params = {"w": jnp.ones((3, 3)), "b": jnp.zeros(3)}
    grads = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    def update(peak, clip):
        tx, _ = optim.make_optimizer(config.train, learning_rate=peak, grad_clip_norm=clip)
        state = tx.init(params)
        for _ in range(3):
            updates, state = tx.update(grads, state, params)
        return updates

    tx, _ = optim.make_optimizer(config.train, learning_rate=3e-3, grad_clip_norm=1.0)
    state = tx.init(params)
    for _ in range(3):
        expected, state = tx.update(grads, state, params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
        update(jnp.float32(3e-3), jnp.float32(1.0)),
        expected,
    )
