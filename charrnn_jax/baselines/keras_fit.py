"""The TF tutorial's model trained the tutorial's own way, scored with our full-split val metric.

"Text generation with an RNN" (tensorflow.org/text/tutorials/text_generation) cuts the
text into non-overlapping windows of seq_length + 1 = 101 characters, shuffles them
(buffer 10,000: the whole of tiny Shakespeare's 9.9k windows), batches 64 dropping the
remainder, and runs `model.fit` for 20 epochs of Embedding(256) -> GRU(1024) -> Dense
with Adam's defaults. This module does exactly that on our train split (bytes, not
characters) and, after every epoch, converts the weights to our Flax CharRNN and scores
the val split with `scoring.score_bytes` (every byte once, carry kept), so its curve
sits on the same axis as ours. A wall-clock budget stops `fit` mid-epoch, as the
headline comparison ("the same wall-clock") needs.

The windows come from a `keras.utils.PyDataset` rather than `tf.data`, so the baseline
runs on any Keras backend (the tests use JAX); the order is the tutorial's: a fresh
permutation of the windows every epoch, partial last batch dropped.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time

import numpy as np
from absl import logging

from charrnn_jax.baselines import keras_tutorial
from charrnn_jax.data import corpora
from charrnn_jax.store import metric_logging
from charrnn_jax.store.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class TutorialRecipe:
    """The tutorial's hyperparameters (its defaults are the tutorial's values)."""

    embed_dim: int = 256
    hidden_size: int = 1024
    seq_length: int = 100
    batch_size: int = 64
    epochs: int = 20
    learning_rate: float = 1e-3  # tf.keras.optimizers.Adam() default.


def tutorial_splits(config):
    """(train, val) bytes for the Keras side, from the one split path (data.corpora): the
    test split (data.test_fraction) stays out of both."""
    parts = corpora.load_splits(config.data)
    return parts["train"], parts["val"]


def tutorial_windows(tokens: np.ndarray, seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """`ids.batch(seq_length + 1, drop_remainder=True).map(split_input_target)`."""
    n = len(tokens) // (seq_length + 1)
    windows = np.asarray(tokens[: n * (seq_length + 1)], np.int32).reshape(n, seq_length + 1)
    return windows[:, :-1], windows[:, 1:]


def epoch_batches(num_windows: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """[batches, batch_size] window ids of one epoch: a fresh permutation, remainder dropped."""
    order = np.random.default_rng([seed, epoch]).permutation(num_windows)
    batches = num_windows // batch_size
    return order[: batches * batch_size].reshape(batches, batch_size)


def make_dataset(keras, inputs, targets, batch_size: int, seed: int):
    """The shuffled, batched windows as a PyDataset that reshuffles at every epoch end."""

    class TutorialWindows(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.ids = epoch_batches(len(inputs), batch_size, seed, 0)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, index):
            rows = self.ids[index]
            return inputs[rows], targets[rows]

        def on_epoch_end(self):
            self.epoch += 1
            self.ids = epoch_batches(len(inputs), batch_size, seed, self.epoch)

    return TutorialWindows()


def make_callback(keras, *, score_val, writer, tokens_per_step: int, budget_s: float | None):
    """Per epoch (and when the budget stops fit): a metrics row with the full-split val.
    It keeps the converted weights of the epoch with the lowest val (`.best`), which the
    table's other estimators score afterwards, as `evaluate --step=best` does for ours.

    Args:
      score_val: Flax params -> {'loss', 'bpb'} on the val split.
      writer: a metric_logging.MetricWriter.
      tokens_per_step: batch x seq_length (for tokens/s).
      budget_s: stop fit once this much wall-clock (training + evaluation) has passed.
    """

    class FullSplitEval(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()
            self.step, self.epoch_start_step, self.epoch_start = 0, 0, self.start
            self.best = None  # {'val_loss', 'step', 'epoch', 'params'} of the best epoch.

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.last_line = epoch, time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            now = time.perf_counter()
            if budget_s is not None and now - self.start >= budget_s:
                self.model.stop_training = True
            if now - self.last_line >= 30:  # An epoch can take minutes: say it is going.
                rate = (self.step - self.epoch_start_step) / max(now - self.epoch_start, 1e-9)
                logging.info(
                    "keras tutorial: epoch %d, step %d (%.1f steps/s), %.0fs in",
                    self.epoch + 1,
                    self.step,
                    rate,
                    now - self.start,
                )
                self.last_line = now

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.epoch_start
            params = keras_tutorial.keras_to_flax(keras_tutorial.get_weights(self.model))
            val = score_val(params)
            here = {"val_loss": val["loss"], "step": self.step, "epoch": epoch + 1}
            if self.best is None or here["val_loss"] < self.best["val_loss"]:
                self.best = {**here, "params": params}
            tokens = (self.step - self.epoch_start_step) * tokens_per_step
            wall_time = time.perf_counter() - self.start
            record = _epoch_row(float(logs["loss"]), val, tokens / max(seconds, 1e-9), wall_time)
            writer.write_scalars(self.step, record)
            logging.info(
                "keras tutorial: epoch %d, step %d, train %.4f, val %.4f (%.4f bpb), %.0fs",
                epoch + 1,
                self.step,
                record["train_loss"],
                val["loss"],
                val["bpb"],
                record["wall_time"],
            )
            self.epoch_start_step, self.epoch_start = self.step, time.perf_counter()

    return FullSplitEval()


def _epoch_row(train_loss: float, val: dict, tokens_per_sec: float, wall_time: float) -> dict:
    """An epoch's metrics row, in the trainer's field names (launch.curves reads both)."""
    return {
        "train_loss": train_loss,
        "train_bpb": metric_logging.bits_per_byte(train_loss),
        "val_loss": val["loss"],
        "val_bpb": val["bpb"],
        "tokens_per_sec": tokens_per_sec,
        "wall_time": wall_time,
    }


def best_scores(config, model, best: dict, val_tokens) -> dict:
    """The best epoch's weights under the comparison table's other estimators, as the
    table scores every model's best checkpoint (`evaluate --metric=nanogpt` and
    `evaluate --dynamic` with the config's eval.dynamic keys, and with lr 0 for the static
    score of the same single stream): {'step', 'epoch', 'full', 'nanogpt', 'dynamic',
    'static_one_stream'}, each a scoring result ({'loss', 'bpb', 'bytes', ...})."""
    from charrnn_jax.inference import dynamic, scoring  # These import jax: only here.

    params, settings = best["params"], dynamic.run_settings(config)

    def adapted(lr: float, decay: float) -> dict:
        logging.info("Best epoch: dynamic evaluation, lr %g, decay %g, one stream...", lr, decay)
        segment = settings["segment"]
        return dynamic.score_dynamic(params, model, val_tokens, segment=segment, lr=lr, decay=decay)

    logging.info("Best epoch %d: nanoGPT's estimator...", best["epoch"])
    nanogpt = scoring.score_nanogpt(params, model, val_tokens, seed=0)
    return {
        "step": best["step"],
        "epoch": best["epoch"],
        "full": {"loss": best["val_loss"]},
        "nanogpt": nanogpt,
        "dynamic": adapted(settings["lr"], settings["decay"]),
        "static_one_stream": adapted(0.0, 0.0),
    }


def fit(
    train_tokens: np.ndarray,
    score_val,
    workdir,
    *,
    recipe: TutorialRecipe = TutorialRecipe(),
    seed: int = 0,
    budget_s: float | None = None,
) -> dict:
    """Trains the tutorial model with `model.fit`; writes <workdir>/metrics.jsonl.

    Returns {'val_loss': the last row's, 'steps', 'wall_time', 'num_params', 'backend',
    'model': the trained Keras model, 'best': the lowest-val epoch's {'val_loss', 'step',
    'epoch', 'params' (our Flax params)}}.
    """
    keras = keras_tutorial.import_keras()
    keras.utils.set_random_seed(seed)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    inputs, targets = tutorial_windows(train_tokens, recipe.seq_length)
    model = keras_tutorial.build_model(embed_dim=recipe.embed_dim, hidden_size=recipe.hidden_size)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=recipe.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    writer = metric_logging.MetricWriter(workdir, resume_step=0, tensorboard=False)
    callback = make_callback(
        keras,
        score_val=score_val,
        writer=writer,
        tokens_per_step=recipe.batch_size * recipe.seq_length,
        budget_s=budget_s,
    )
    try:
        model.fit(
            make_dataset(keras, inputs, targets, recipe.batch_size, seed),
            epochs=recipe.epochs,
            callbacks=[callback],
            verbose=0,
        )
    finally:
        writer.close()
    rows = metric_logging.read_jsonl(Workdir(workdir).metrics_file)
    return {
        "val_loss": rows[-1]["val_loss"] if rows else math.nan,
        "steps": callback.step,
        "wall_time": rows[-1]["wall_time"] if rows else 0.0,
        "num_params": keras_tutorial.count_params(model),
        "backend": keras.backend.backend(),
        "model": model,
        "best": callback.best,
    }
