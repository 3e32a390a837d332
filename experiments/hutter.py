"""enwik8 and text8, the standard byte-level benchmarks, with the standard split.

Run (downloads the zip once, checks its digest, extracts it into the cache):
  python -m charrnn_jax.main --config=experiments/hutter.py:enwik8 --workdir=/tmp/enwik8
  python -m charrnn_jax.main --config=experiments/hutter.py:text8 --workdir=/tmp/text8
  python -m charrnn_jax.evaluate --workdir=/tmp/enwik8 --split=test --step=best

Presets: enwik8 (the Hutter Prize's first 10^8 bytes of an English Wikipedia dump,
sha256 checked) and text8 (the same text reduced to the 27 characters a-z and space;
SHA-1 checked, the only digest published for it). Split: 90M train / 5M val / 5M test
bytes (val_fraction = test_fraction = 0.05), as in every enwik8 and text8 table. Model
and training follow the usual char-level LSTM recipe at this size (AWD-LSTM's enwik8
setting, Merity et al. 2018, scaled down a little): 3 x LSTM 1024 on embeddings of 400,
truncated BPTT over 150-byte windows of 128 carried streams, Adam with warmup and cosine
decay, clipping 0.25, light dropout; val is the full 5M bytes.

Cost, measured here on a slice (steps 5-10 of the enwik8 preset on tiny Shakespeare,
whose bytes cost the same; 2-core AMD EPYC with AVX-512, shared with other jobs):
  python -m charrnn_jax.main --config=experiments/hutter.py:enwik8 --workdir=/tmp/cost \
      --config.data.path=tinyshakespeare.txt --config.train.num_steps=10 \
      --config.train.log_every=5 --config.train.warmup_steps=0
gave 1,015 tokens/s: one epoch of the 90M training bytes would take about 25 hours on
this CPU, so run it on an accelerator. Results are reported in bits/byte (val_bpb);
nothing has been trained on enwik8 or text8 here.
"""

import ml_collections

from charrnn_jax import config_lib

PROMPTS = {"enwik8": "<page>", "text8": " the "}  # text8 has no markup and no newlines.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    corpus = arg or "enwik8"
    if corpus not in PROMPTS:
        raise ValueError(f"Unknown preset {corpus!r}; use 'enwik8' or 'text8'.")
    config = config_lib.base_config()
    config.data.name = corpus  # Registered: the zip from mattmahoney.net, digest-checked.
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
    config.sample.prompt = PROMPTS[corpus]  # Where logged samples start.
    config.sample.prompt_corpus = corpus  # Only on this corpus.
    config.lock()
    return config
