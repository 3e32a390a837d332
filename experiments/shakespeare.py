"""Tiny Shakespeare, byte level: the TF "Text generation with an RNN" model and a CPU preset.

Run:
  python -m charrnn_jax.main --config=experiments/shakespeare.py --workdir=/tmp/shakespeare
  python -m charrnn_jax.main --config=experiments/shakespeare.py:tiny --workdir=/tmp/tiny

Presets (the part after the colon):
  (none)  the tutorial model: embed 256, one GRU of 1024, batch 64, seq 100, Adam 1e-3,
          3,440 steps (= the tutorial's 20 epochs of 172 batches).
  tiny    embed 64, GRU 256: learns visibly on a 2-core CPU in a few minutes.

Measured (`CHARRNN_DATA_DIR=../shared/data make train`, 2-core AMD EPYC, float32):
  tiny, 1000 steps: train loss 1.4809, val 1.6200 nats/byte on the full split (2.3371
  bits/byte); the old fixed-window metric gives 1.6500 on the same model
  (`python -m charrnn_jax.evaluate --workdir=runs/tiny --metric=windows`).
  full (tutorial) preset: see benchmarks/README.md for its speed on CPUs.
"""

import ml_collections

from charrnn_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "full"
    config = config_lib.base_config()  # The tutorial model, batch 64 x 100, Adam 1e-3.
    config.data.name = "tinyshakespeare"  # ../shared/data/tinyshakespeare.txt or the download.
    config.train.num_steps = 3440  # The tutorial's 20 epochs of 172 batches.
    config.sample.prompt = "ROMEO:"  # Prompt for the samples logged while training.
    config.sample.prompt_corpus = "tinyshakespeare"  # On another file, from a newline.

    if preset == "tiny":
        config.model.embed_dim = 64
        config.model.hidden_size = 256
        config.train.num_steps = 1000
        config.train.learning_rate = 3e-3
        config.train.log_every = 50
        config.train.eval_every = 250
        config.train.eval_batches = 8
        config.train.checkpoint_every = 250
    elif preset != "full":
        raise ValueError(f"Unknown preset {preset!r}; use '' or 'tiny'.")

    config.lock()
    return config


def sweep() -> list[dict]:
    """Learning rate x hidden size x seed (8 runs).

    python -m launch.sweep --config=experiments/shakespeare.py:tiny --sweep=sweep \
        --workdir_root=/tmp/sweep --launcher=local
    """
    return config_lib.sweep_product(
        {
            "train.learning_rate": [1e-3, 3e-3],  # Adam peak learning rate.
            "model.hidden_size": [256, 512],  # GRU width.
            "seed": [0, 1],  # Init, batch order and dropout.
        }
    )
