"""text8 (enwik8 reduced to the 27 characters a-z and space), byte level, the standard split.

Run (downloads text8.zip once, checks its SHA-1, the only digest published for it, and
extracts it into the cache):
  python -m charrnn_jax.main --config=experiments/text8.py --workdir=/tmp/text8
  python -m charrnn_jax.evaluate --workdir=/tmp/text8 --split=test --step=best

Split: 90M train / 5M val / 5M test bytes (val_fraction = test_fraction = 0.05), as in
every text8 table. Model and training follow the usual char-level LSTM recipe at this
size (AWD-LSTM's enwik8 setting, Merity et al. 2018, scaled down a little; text8 papers
use the same): 3 x LSTM 1024 on embeddings of 400, truncated BPTT over 150-byte windows
of 128 carried streams, Adam with warmup and cosine decay, clipping 0.25, light dropout;
val is the full 5M bytes.

Cost, measured here: EPOCH_COST
Results are reported in bits/byte (val_bpb); nothing has been trained to convergence here.
"""

import ml_collections

from charrnn_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = config_lib.base_config()
    config.data.name = "text8"  # Registered: the zip from mattmahoney.net, SHA-1-checked.
    config.data.val_fraction = 0.05  # 5M bytes before the test split.
    config.data.test_fraction = 0.05  # The last 5M bytes.
    config.data.mode = "stream"  # Carried state across steps (truncated BPTT).
    config.data.seq_len = 150  # Bytes per step of each stream (the BPTT length).

    config.model.cell = "optimized_lstm"  # Flax's fused-gate LSTM.
    config.model.embed_dim = 400  # Byte embedding size.
    config.model.hidden_size = 1024  # Units per layer.
    config.model.num_layers = 3  # Stacked layers.
    config.model.dropout = 0.1  # Little: 90M bytes overfit slowly.

    config.train.batch_size = 128  # Streams; 128 x 150 = 19,200 bytes per step.
    config.train.num_steps = 94_000  # About 20 epochs of the 90M training bytes.
    config.train.learning_rate = 1e-3  # Adam.
    config.train.schedule = "cosine"  # Warmup, then cosine decay to 0.
    config.train.warmup_steps = 1_000  # Linear warmup.
    config.train.grad_clip_norm = 0.25  # AWD-LSTM's clip.
    config.train.log_every = 200  # Steps between progress lines.
    config.train.eval_every = 2_000  # Full-split val (5M bytes) every 2,000 steps.
    config.train.checkpoint_every = 1_000  # Steps between checkpoints.
    config.train.early_stop_patience = 5  # Evals without a better val before stopping.
    config.sample.prompt = " the "  # text8 has no newlines: start mid-sentence.
    config.lock()
    return config
