"""Many-to-one sentiment classification of IMDB sentences with a byte-level LSTM.

Run:
  python -m charrnn_jax.main --config=experiments/sentiment.py --workdir=/tmp/sentiment
  python -m charrnn_jax.classify --workdir=/tmp/sentiment --text="that movie was just amazing"

Data: imdb_labelled.txt (1,000 sentences, 500 positive; UCI, CC BY 4.0) as
`text<TAB>label`; a folder in the aclImdb layout (pos/ and neg/ *.txt) also works with
--config.data.path. Texts are bytes truncated to seq_len = 250 (the seed's MAXLEN);
the classifier reads the last layer's hidden state at each text's own length, so
padding never changes a prediction. 20% of the sentences (shuffled by the seed) are val.

Model: embed 32, one LSTM of 128, dropout 0.2, Dense(2).

Measured (2-core AMD EPYC, shared with other jobs; the first command above): val accuracy
0.565, 0.595, 0.595, 0.580, 0.590, 0.610 at steps 100-600 (chance 0.50), while train loss
falls to 0.15 and val loss climbs from 0.675 (step 100, its best) to 1.254. 800 training
sentences are little for a model that must learn words from bytes: it overfits quickly.
`--step=best` (classify, sample, evaluate) serves the lowest-val-loss params, kept in
checkpoints_best/; `--config.train.early_stop_patience=2` stops once val stops improving.
"""

import ml_collections

from charrnn_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = config_lib.base_config()
    config.data.name = "imdb_labelled"  # text<TAB>label lines.
    config.data.mode = "labelled"  # (text, label) examples.
    config.data.seq_len = 250  # Bytes per text (truncated / padded).
    config.data.val_fraction = 0.2  # Held-out sentences.
    config.model.cell = "optimized_lstm"  # As the seed.
    config.model.embed_dim = 32  # Byte embedding size.
    config.model.hidden_size = 128  # LSTM units.
    config.model.dropout = 0.2  # On the final hidden state.
    config.model.num_classes = 2  # negative, positive.
    config.train.batch_size = 32  # Sentences per step.
    config.train.num_steps = 600  # About 24 epochs of 800 sentences.
    config.train.learning_rate = 2e-3  # Adam.
    config.train.grad_clip_norm = 1.0  # LSTMs over 250 steps like clipping.
    config.train.log_every = 50  # Steps between progress lines.
    config.train.eval_every = 100  # Steps between val accuracy checks.
    config.train.checkpoint_every = 100  # Steps between checkpoints.
    config.sample.length = 0  # A classifier has nothing to sample.
    return config
