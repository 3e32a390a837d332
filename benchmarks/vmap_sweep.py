"""Vmapped sweep throughput: K variants in one program against K runs one after another.

    python -m benchmarks.vmap_sweep [--sizes=tiny,small] [--variants=1,4,8] [--batches=4,32]

Both sides use the trainer's own steps (steps.vmapped_train_step and steps.windowed_train_step),
on one device, with the variants' learning rates all different. "Sequential" is the
best case for separate runs: K states in one process stepping one after another with
a single compiled step (separate processes would add start-up and compile time). Prints
total tokens/s over the K variants and the ratio vmapped / sequential; appends the rows
to --out.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections

from benchmarks import common, machine
from charrnn_jax import config_lib, models
from charrnn_jax.training import optim
from charrnn_jax.training import steps as trainer_steps

SIZES = common.SIZES
SEQ_LEN = common.SIZES["small"].seq_len


def _train_config() -> ml_collections.ConfigDict:
    """The experiments' optimizer settings (Adam, constant learning rate, no clipping)."""
    path = pathlib.Path(__file__).parents[1] / "experiments" / "shakespeare.py"
    return config_lib.load_config_file(path).train


def steps(size: str, num_variants: int, batch_size: int):
    """(sequential_step, vmapped_step): each advances all K variants by one step."""
    embed_dim, hidden = SIZES[size].embed_dim, SIZES[size].hidden
    model = models.CharRNN(models.ModelConfig(embed_dim=embed_dim, hidden_size=hidden))
    config = _train_config()
    tx, schedule = optim.make_optimizer(config)
    init = functools.partial(trainer_steps.create_train_state, model=model, tx=tx, seq_len=SEQ_LEN)
    keys = jax.random.split(jax.random.key(0), num_variants)
    inputs, targets = common.token_batch(batch_size, SEQ_LEN)
    batch = {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets)}
    rng = jax.random.key(1)

    plain = jax.jit(
        functools.partial(trainer_steps.windowed_train_step, schedule=schedule),
        donate_argnums=0,
    )
    states = [init(key) for key in keys]

    def sequential_step():
        for i in range(num_variants):
            states[i] = plain(states[i], batch, rng)
        jax.block_until_ready(states[-1].window)

    hparams = {
        "learning_rate": jnp.geomspace(1e-4, 1e-2, num_variants, dtype=jnp.float32),
        "grad_clip_norm": jnp.zeros(num_variants, jnp.float32),
    }
    vmapped = jax.jit(
        functools.partial(trainer_steps.vmapped_train_step, hparams=hparams, train_config=config),
        donate_argnums=0,
    )
    stacked = {"state": jax.vmap(init)(keys)}
    batches = jax.tree.map(lambda x: jnp.stack([x] * num_variants), batch)
    rngs = jax.random.split(rng, num_variants)

    def vmapped_step():
        stacked["state"] = vmapped(stacked["state"], batches, rngs)
        jax.block_until_ready(stacked["state"].window)

    return sequential_step, vmapped_step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--variants", default="1,4,8")
    parser.add_argument("--batches", default="4,32")
    parser.add_argument("--seconds", type=float, default=2.0, help="Minimum per repeat.")
    parser.add_argument("--out", default="", help="Append the results to this JSONL file.")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(machine.summary())
    print(f"device: {device.platform} {device.device_kind}; seq {SEQ_LEN}")
    header = (
        f"{'size':9} {'batch':>5} {'K':>3} {'sequential tok/s':>17} {'vmapped tok/s':>14} "
        f"{'vmapped/seq':>12}"
    )
    print(header + "\n" + "-" * len(header))
    rows = []
    for size, batch, num_variants in itertools.product(
        args.sizes.split(","),
        (int(b) for b in args.batches.split(",")),
        (int(k) for k in args.variants.split(",")),
    ):
        sequential_step, vmapped_step = steps(size, num_variants, batch)
        tokens = num_variants * batch * SEQ_LEN
        sequential = tokens / common.timed(sequential_step, seconds=args.seconds)
        vmapped = tokens / common.timed(vmapped_step, seconds=args.seconds)
        print(
            f"{size:9} {batch:5d} {num_variants:3d} {sequential:17,.0f} {vmapped:14,.0f} "
            f"{vmapped / sequential:11.2f}x",
            flush=True,
        )
        rows.append(
            {
                "size": size,
                "variants": num_variants,
                "batch": batch,
                "sequential_tokens_per_sec": sequential,
                "vmapped_tokens_per_sec": vmapped,
            }
        )
    record = {
        "time": time.time(),
        "device": f"{device.platform} {device.device_kind}",
        "machine": machine.describe(),
    }
    common.append_results(args.out, {**record, "rows": rows})


if __name__ == "__main__":
    main()
