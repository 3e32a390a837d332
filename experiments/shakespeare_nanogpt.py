"""nanoGPT's character Transformer on tiny Shakespeare, trained and scored in our harness.

Karpathy's nanoGPT `config/train_shakespeare_char.py` in our keys (its README reports
val 1.4697 for this config, from its estimate_loss()); the model is nanoGPT's `GPT`
(charrnn_jax/models/transformer.py, which cites model.py for every choice):

  python -m charrnn_jax.main --config=experiments/shakespeare_nanogpt.py \
      --workdir=/tmp/nanogpt
  python -m charrnn_jax.evaluate --workdir=/tmp/nanogpt --step=best --metric=nanogpt
  python -m charrnn_jax.evaluate --workdir=/tmp/nanogpt --step=best   # the full split

What is nanoGPT's, key by key: 6 layers, 6 heads, 384 wide, block 256, batch 64, dropout
0.2, AdamW (lr 1e-3, beta2 0.99, weight decay 0.1 on the matrices and embeddings, eps
1e-8 as torch's), 100 warmup steps and a cosine to 1e-4 at 5,000 steps, clipping at 1.0,
val every 250 steps; training windows of block + 1 bytes drawn at random from the first
90% of the file (val is the last 10%, as its prepare.py splits), and bf16 compute with
f32 weights, optimizer state and accumulation, as nanoGPT's train.py runs bf16 autocast
on a GPU that has it (its 1.4697 is from an A100; `--config.model.dtype=float32` is the
f32 run, 1.18x slower per step on a Zen 4, benchmarks/README.md). What is ours: the 256
byte values as the vocabulary (tiny Shakespeare is ASCII: a byte is a character), the
attention core's matmuls and softmax in f32 (autocast runs the matmuls in bf16), and the
logged val: the full-split metric (every val byte once, a sliding window of 256
with stride 128, so each byte has at least 128 bytes of context) instead of the 200 x 64
random windows of estimate_loss(), which `evaluate --metric=nanogpt` computes and each
val row carries beside it (`val_loss_nanogpt`), so both curves can be drawn.

Our train step is nanoGPT's, to float rounding: `python -m charrnn_jax.compare_nanogpt
--config=experiments/shakespeare_nanogpt.py --nanogpt_dir=<a clone of nanoGPT> --steps=30`
trains this config (float32, dropout off) beside nanoGPT's own model.py,
configure_optimizers and get_lr on identical batches (docs/nanogpt_parity/, the numbers in
docs/results.md). That check found one difference, now fixed: flax's LayerNorm epsilon
(1e-6) where nanoGPT's is 1e-5: the residual stream starts at a variance of about 8e-4
(two normal(0, 0.02) embeddings summed), so the epsilon is not negligible early on.

Not yet measured: a 5,000-step run is many CPU hours (about 1.2 TFLOP a step: 8.4 s in
bf16 on 2 cores of an AMD EPYC Zen 4, `python -m benchmarks.transformer_step`, so about
12 h and 20 vals of about 8 min); no number from this config is published yet
(docs/results.md says where the run stands).
"""

import ml_collections

from charrnn_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = config_lib.base_config()
    config.data.name = "tinyshakespeare"  # The 90/10 split, as nanoGPT's prepare.py.
    config.data.seq_len = 256  # block_size: windows of 257 bytes, inputs and targets.
    config.model.cell = "transformer"  # nanoGPT's GPT (models/transformer.py).
    config.model.hidden_size = 384  # n_embd.
    config.model.num_layers = 6  # n_layer.
    config.model.transformer.num_heads = 6  # n_head.
    config.model.transformer.block_size = 256  # block_size.
    config.model.transformer.eval_stride = 128  # Full-split metric: >= 128 bytes of context.
    config.model.dropout = 0.2  # On embeddings, attention weights and residual branches.
    config.model.dtype = "bfloat16"  # nanoGPT's autocast dtype (f32 weights and accumulation).
    config.train.batch_size = 64  # batch_size (gradient_accumulation_steps = 1).
    config.train.num_steps = 5000  # max_iters = lr_decay_iters.
    config.train.learning_rate = 1e-3  # learning_rate.
    config.train.schedule = "cosine"  # Linear warmup, then cosine to end_learning_rate.
    config.train.warmup_steps = 100  # warmup_iters.
    config.train.end_learning_rate = 1e-4  # min_lr.
    config.train.adam_b2 = 0.99  # beta2.
    config.train.adam_eps = 1e-8  # torch.optim.AdamW's default.
    config.train.weight_decay = 0.1  # weight_decay, on 2-D params.
    config.train.grad_clip_norm = 1.0  # grad_clip.
    config.train.log_every = 50  # Rows (nanoGPT logs every 10 iterations).
    config.train.eval_every = 250  # eval_interval.
    config.train.checkpoint_every = 250
    config.eval.nanogpt_estimate = True  # val_loss_nanogpt beside val_loss in every val row.
    config.sample.prompt = "\n"  # nanoGPT's sample.py starts from a newline.
    config.lock()
    return config
