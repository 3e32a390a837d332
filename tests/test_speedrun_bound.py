"""benchmarks/speedrun_bound.py counts the speedrun's FLOPs from the model's own weights,
so the floor it prints for issue 41 is the config's, not a hand count."""

import jax
import numpy as np
from conftest import load_experiment

from benchmarks import speedrun_bound
from charrnn_jax import config_lib
from charrnn_jax.data import corpora
from charrnn_jax.training import steps


def _speedrun_config(name="shakespeare_speedrun"):
    return config_lib.resolve(load_experiment(name))


def test_forward_flops_are_two_per_weight_of_every_matrix_a_byte_meets():
    config = _speedrun_config()
    params = steps.initial_params(config)
    # Every kernel but the embedding table is multiplied once per byte: 2 FLOPs a weight.
    matrices = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if leaf.ndim == 2 and "embed" not in jax.tree_util.keystr(path).lower()
    ]
    weights = sum(int(np.prod(m.shape)) for m in matrices)
    assert speedrun_bound.run_flops(config)["forward_flops_per_byte"] == 2 * weights


def test_the_run_counts_every_step_and_each_val():
    config = _speedrun_config()
    flops = speedrun_bound.run_flops(config)
    t = config.train
    train_bytes = t.num_steps * t.batch_size * config.data.seq_len
    assert flops["train_flops"] == 3 * flops["forward_flops_per_byte"] * train_bytes
    # Val at step 500 and at 1000: two passes over the 10% split.
    val_bytes = len(corpora.load_splits(config.data)["val"])
    assert flops["eval_flops"] == 2 * flops["forward_flops_per_byte"] * val_bytes


def test_the_five_minute_config_counts_its_one_val_and_fewer_flops():
    fast = _speedrun_config("shakespeare_speedrun_5min")
    slow = _speedrun_config()
    flops, slow_flops = speedrun_bound.run_flops(fast), speedrun_bound.run_flops(slow)
    val_bytes = len(corpora.load_splits(fast.data)["val"])
    # Val only at the last step: one pass over the split.
    assert flops["eval_flops"] == flops["forward_flops_per_byte"] * val_bytes
    # Its point: fewer FLOPs to 1.4697 than the ten-minute config (issue 41's floor).
    assert flops["train_flops"] < 0.5 * slow_flops["train_flops"]
