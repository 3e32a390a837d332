"""Tiny Shakespeare with a stacked LSTM (OptimizedLSTMCell) and dropout.

Run:
  python -m charrnn_jax.main --config=experiments/shakespeare_lstm.py --workdir=/tmp/lstm
  python -m charrnn_jax.main --config=experiments/shakespeare_lstm.py:tiny --workdir=/tmp/lstm_tiny

Presets:
  (none)  2 x LSTM 512, embed 128, dropout 0.3 (Karpathy's char-rnn setting; the
          sliding-window seed used LSTM 256 with dropout 0.3).
  tiny    2 x LSTM 128, dropout 0.1: learns on a 2-core CPU in a few minutes.

Measured (2-core AMD EPYC, shared with other jobs; the second command above): tiny,
279,808 params, 1000 steps: train 1.8569, val 1.8640 nats/byte on the full split.
The full preset was not run here (it wants an accelerator).
"""

import ml_collections

from charrnn_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or ""
    config = config_lib.base_config()
    config.data.name = "tinyshakespeare"  # ../shared/data/tinyshakespeare.txt or the download.
    config.sample.prompt = "ROMEO:"  # Prompt for the samples logged while training.
    config.sample.prompt_corpus = "tinyshakespeare"  # On another file, from a newline.
    config.model.cell = "optimized_lstm"  # Flax's fused-gate LSTM.
    config.model.num_layers = 2  # Stacked layers.
    if preset == "tiny":
        config.model.embed_dim = 64  # Byte embedding size.
        config.model.hidden_size = 128  # Units per layer.
        config.model.dropout = 0.1  # Light dropout for a small model.
        config.train.num_steps = 1000  # A few minutes on 2 CPU cores.
        config.train.learning_rate = 3e-3  # A small model tolerates a higher rate.
        config.train.eval_every = 250  # Steps between val losses (and samples).
        config.train.eval_batches = 8  # Val windows in eval.mode='windows'.
        config.train.checkpoint_every = 250  # Steps between checkpoints.
    elif not preset:
        config.model.embed_dim = 128  # Byte embedding size.
        config.model.hidden_size = 512  # Units per layer.
        config.model.dropout = 0.3  # Between layers and before the output layer.
        config.train.num_steps = 10000  # Dropout needs longer training.
        config.train.learning_rate = 2e-3  # Karpathy's char-rnn default.
    else:
        raise ValueError(f"Unknown preset {preset!r}; use '' or 'tiny'.")
    return config
