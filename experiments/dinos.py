"""Dinosaur names (the "Character-Level Language Modeling" / Dinosaurus Island tutorial).

Run:
  python -m charrnn_jax.main --config=experiments/dinos.py --workdir=/tmp/dinos
  python -m charrnn_jax.sample --workdir=/tmp/dinos --prompt=Ram --temperature=0.2 \
      --stop=newline --num_samples=20 --names_report

Data: one name per line (1,536 in dinos.txt), data.mode='lines'. Each example is one
name: input '\\n' + name, target name + '\\n', padded to seq_len with the padding masked
out of the loss. Every example starts from a zero carry, so a name never bleeds into the
next; the sampler prefixes prompts with the same '\\n'. 10% of the names (shuffled with
the seed) are held out for val loss.

Model: GRU 128 on embeddings of 32 (~70k params). The data is 20 KB: the tutorial's
256/1024 model (4.3M params) would memorise it outright; 128 units learn the spelling
patterns and still generalise to held-out names.

Measured (2-core AMD EPYC, shared with other jobs; the first command above): 600 steps,
val loss 1.6462 nats/byte. 200 names sampled with
  python -m charrnn_jax.sample --workdir=/tmp/dinos --prompt= --num_samples=200 \
      --temperature=1.0 --stop=newline --names_report
are 100% new (not in the training list) and 96% well formed (without --stop=newline
each sample runs on for --length bytes of many names, so none is "well formed"). The
second command above (--prompt=Ram at temperature 0.2): 20/20 new and well formed,
mostly "Ramachisaurus", "Ramasaurus" and "Ramosaurus".
"""

import ml_collections

from charrnn_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = config_lib.base_config()
    config.data.name = "dinos"  # ../shared/data/dinos.txt or the registry's download.
    config.data.mode = "lines"  # One masked example per name.
    config.data.seq_len = 32  # Longest line (26 bytes) + 1, rounded up.
    config.model.embed_dim = 32  # Small vocabulary in practice (53 distinct bytes).
    config.model.hidden_size = 128  # Sized for 20 KB of text (see the docstring).
    config.model.dropout = 0.2  # 20 KB overfits fast; dropout keeps val loss down.
    config.train.batch_size = 64  # Names per step.
    config.train.num_steps = 600  # ~28 epochs of the 1,382 training names; val loss rises after.
    config.train.learning_rate = 3e-3  # A small model tolerates a higher rate.
    config.train.log_every = 100  # Steps between progress lines.
    config.train.eval_every = 100  # Steps between val losses (all held-out names).
    config.train.checkpoint_every = 200  # Steps between checkpoints.
    config.sample.prompt = ""  # Start from the beginning of a name.
    config.sample.length = 30  # One name (samples stop at the newline).
    config.sample.temperature = 0.6  # Plausible but varied names.
    return config
