"""What runs on an accelerator lowers for one, from this CPU: the train step, the full-split
eval step and the sampler export for CUDA and TPU with jax.export (no device needed), for
the fused GRU in f32 and bf16 (and unrolled, and as a wavefront), a parallel-scan linear
cell, stream mode, averaged weights, the Mogrifier GRU with DropConnect, and every other
registered cell."""

import functools

import jax
import jax.numpy as jnp
import pytest
from conftest import tiny_config
from jax import export

from charrnn_jax import config_lib, models
from charrnn_jax.inference import sampler, scoring
from charrnn_jax.models import registry
from charrnn_jax.training import optim, steps

PLATFORMS = ("cuda", "tpu")
CASES = {
    "gru_f32": {},
    "gru_bf16": {"model.dtype": "bfloat16"},
    "mingru_parallel": {"model.cell": "mingru", "model.scan": "parallel"},
    "lru_parallel_stream_ema": {
        "model.cell": "lru",
        "model.scan": "parallel",
        "data.mode": "stream",
        "train.ema_decay": 0.99,
    },
    "gru_dropconnect": {"model.recurrent_dropout": 0.25, "model.dropout": 0.2},
    "gru_unroll": {"model.unroll": 4},
    "gru_wavefront_dropout": {
        "model.num_layers": 3,
        "model.stack": "wavefront",
        "model.dropout": 0.2,
        "model.recurrent_dropout": 0.25,
    },
    "mogrifier_gru_dropconnect": {
        "model.cell": "mogrifier_gru",
        "model.mogrifier_gru.rank": 4,
        "model.recurrent_dropout": 0.25,
    },
}
CASES["transformer"] = {
    "model.cell": "transformer",
    "model.transformer.num_heads": 2,
    "model.transformer.block_size": 32,
    "model.transformer.eval_stride": 16,
}
# Every registered cell lowers: those without a case above get one at their defaults.
CASES.update(
    {
        name: {"model.cell": name}
        for name in registry.CELLS
        if not any(case.get("model.cell", "gru") == name for case in CASES.values())
    }
)


def _lowered_platforms(exported) -> tuple:
    assert exported.mlir_module()  # Serialised StableHLO exists for the whole program.
    return tuple(exported.platforms)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_train_step_lowers_for_gpu_and_tpu(case):
    config = config_lib.resolve(tiny_config(**CASES[case]))
    model = models.CharRNN(config.model)
    tx, schedule = optim.make_optimizer(config.train)
    rows = config.train.batch_size if config.data.mode == "stream" else 0
    init = functools.partial(
        steps.create_train_state,
        model=model,
        tx=tx,
        seq_len=config.data.seq_len,
        carry_rows=rows,
        ema_decay=config.train.ema_decay,
    )
    state = jax.eval_shape(init, jax.random.key(0))
    shape = (config.train.batch_size, config.data.seq_len)
    batch = {"inputs": jnp.zeros(shape, jnp.int32), "targets": jnp.zeros(shape, jnp.int32)}
    if rows:
        batch["reset"] = jnp.zeros((rows,), bool)
    step = jax.jit(functools.partial(steps.windowed_train_step, schedule=schedule))
    exported = export.export(step, platforms=PLATFORMS)(state, batch, jax.random.key(1))
    assert _lowered_platforms(exported) == PLATFORMS


def test_the_full_split_eval_step_lowers_for_gpu_and_tpu():
    config = config_lib.resolve(tiny_config())
    model = models.CharRNN(config.model)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    streams, length = 8, 4 * config.data.seq_len  # Four chunks, carried from one to the next.
    batch = {
        "inputs": jnp.zeros((streams, length), jnp.int32),
        "targets": jnp.zeros((streams, length), jnp.int32),
        "weights": jnp.ones((streams, length), jnp.float32),
    }
    kw = {"apply_fn": model.apply, "chunk": config.data.seq_len}
    evaluate = jax.jit(functools.partial(scoring.eval_step, **kw))
    exported = export.export(evaluate, platforms=PLATFORMS)(params["params"], batch)
    assert _lowered_platforms(exported) == PLATFORMS
    # The trainer's form: one segment of the split, the carry passed in and out.
    carry = jax.eval_shape(functools.partial(scoring.zero_carry, **kw), params["params"], batch)
    segment = jax.jit(functools.partial(scoring.eval_segment, **kw))
    exported = export.export(segment, platforms=PLATFORMS)(params["params"], batch, carry)
    assert _lowered_platforms(exported) == PLATFORMS


@pytest.mark.parametrize("window", [None, 16])
def test_the_sampler_lowers_for_gpu_and_tpu(window):
    model = models.CharRNN(config_lib.resolve(tiny_config()).model)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    generate = functools.partial(
        sampler._generate,
        model=model,
        length=20,
        window=window,
        greedy=False,
        top_k=None,
        stop_byte=None,
    )
    exported = export.export(jax.jit(generate), platforms=PLATFORMS)(
        params["params"],
        jnp.zeros((3, 8), jnp.int32),
        jnp.full((3,), 5, jnp.int32),
        jax.random.split(jax.random.key(0), 3),
        jnp.float32(0.8),
        jnp.float32(0.95),
    )
    assert _lowered_platforms(exported) == PLATFORMS
