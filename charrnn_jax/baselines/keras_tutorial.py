"""The TF "Text generation with an RNN" model in Keras 3, trained on our exact batches.

Embedding(256, E) -> GRU(H, return_sequences=True) x layers -> Dense(256), Adam with
Keras defaults, SparseCategoricalCrossentropy(from_logits=True). Keras is imported only
here (optional extra: `pip install .[keras]`); the backend is whatever KERAS_BACKEND
names, else TensorFlow when installed, else JAX.

Weight conversion between this model and our Flax CharRNN (GRU cells):
  Keras GRU (reset_after=True): kernel [E, 3H] and recurrent_kernel [H, 3H] with the
  gates in the order z, r, h, and bias [2, 3H] = (input bias, recurrent bias).
  Flax GRUCell: ir/iz/in kernels [E, H] with biases, hr/hz [H, H] without, hn [H, H]
  with a bias. The recurrent z and r biases Keras has are only ever added to the input
  biases, so Keras -> Flax folds them in (their sum is what matters) and Flax -> Keras
  writes zeros there. Flax -> Keras -> Flax is therefore exactly the identity.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import time

import numpy as np
from absl import logging

from charrnn_jax import models
from charrnn_jax.data import pipeline
from charrnn_jax.errors import UserError
from charrnn_jax.store import metric_logging

GATES_KERAS_ORDER = ("z", "r", "n")  # Keras calls the candidate gate "h"; Flax calls it "n".


def _select_backend() -> str:
    if "KERAS_BACKEND" not in os.environ:
        has_tf = importlib.util.find_spec("tensorflow") is not None
        os.environ["KERAS_BACKEND"] = "tensorflow" if has_tf else "jax"
    return os.environ["KERAS_BACKEND"]


def import_keras():
    _select_backend()
    try:
        import keras  # Optional extra: only this module ever loads it.
    except ImportError:
        raise ImportError("The Keras baseline needs `pip install .[keras]`.") from None
    return keras


def build_model(*, embed_dim: int, hidden_size: int, num_layers: int = 1):
    keras = import_keras()
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(models.VOCAB_SIZE, embed_dim, name="embedding")(inputs)
    for i in range(num_layers):
        x = keras.layers.GRU(hidden_size, return_sequences=True, name=f"gru_{i}")(x)
    logits = keras.layers.Dense(models.VOCAB_SIZE, name="dense")(x)
    return keras.Model(inputs, logits, name="keras_tutorial")


def _split_gates(array, hidden: int) -> dict:
    return {g: array[..., i * hidden : (i + 1) * hidden] for i, g in enumerate(GATES_KERAS_ORDER)}


def keras_to_flax(weights: dict) -> dict:
    """{'embedding': [E], 'gru_i': [kernel, recurrent, bias], 'dense': [k, b]} -> Flax params."""
    params = {
        "embed": {"embedding": np.asarray(weights["embedding"][0])},
        "head": {
            "kernel": np.asarray(weights["dense"][0]),
            "bias": np.asarray(weights["dense"][1]),
        },
    }
    layer = 0
    while f"gru_{layer}" in weights:
        kernel, recurrent, bias = (np.asarray(w) for w in weights[f"gru_{layer}"])
        hidden = recurrent.shape[0]
        k, u = _split_gates(kernel, hidden), _split_gates(recurrent, hidden)
        b_in, b_rec = _split_gates(bias[0], hidden), _split_gates(bias[1], hidden)
        cell = {
            f"i{g}": {"kernel": k[g], "bias": b_in[g] + (b_rec[g] if g != "n" else 0)}
            for g in GATES_KERAS_ORDER
        }
        cell.update({f"h{g}": {"kernel": u[g]} for g in ("z", "r")})
        cell["hn"] = {"kernel": u["n"], "bias": b_rec["n"]}
        params[f"rnn_{layer}"] = {"scan": {"cell": cell}}
        layer += 1
    return params


def flax_to_keras(params) -> dict:
    """Flax CharRNN (GRU) params -> the weight lists Keras's layers take in set_weights."""
    weights = {
        "embedding": [np.asarray(params["embed"]["embedding"])],
        "dense": [np.asarray(params["head"]["kernel"]), np.asarray(params["head"]["bias"])],
    }
    layer = 0
    while f"rnn_{layer}" in params:
        cell = params[f"rnn_{layer}"]["scan"]["cell"]
        if "iz" not in cell:
            raise ValueError("Only GRU models convert to the Keras tutorial model.")
        kernel = np.concatenate([cell[f"i{g}"]["kernel"] for g in GATES_KERAS_ORDER], axis=1)
        recurrent = np.concatenate([cell[f"h{g}"]["kernel"] for g in GATES_KERAS_ORDER], axis=1)
        hidden = recurrent.shape[0]
        b_in = np.concatenate([cell[f"i{g}"]["bias"] for g in GATES_KERAS_ORDER])
        b_rec = np.concatenate([np.zeros(2 * hidden, b_in.dtype), cell["hn"]["bias"]])
        weights[f"gru_{layer}"] = [kernel, recurrent, np.stack([b_in, b_rec])]
        layer += 1
    return {k: [np.asarray(w, np.float32) for w in v] for k, v in weights.items()}


def get_weights(model) -> dict:
    return {layer.name: layer.get_weights() for layer in model.layers if layer.get_weights()}


def set_weights(model, weights: dict) -> None:
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)


def count_params(model) -> int:
    return int(model.count_params())


def check_supported(config) -> None:
    m, t = config.model, config.train
    if m.cell != "gru" or m.dropout or m.dtype != "float32":
        raise UserError(
            "The Keras tutorial baseline is a float32 GRU without dropout; got "
            f"cell={m.cell}, dropout={m.dropout}, dtype={m.dtype}."
        )
    if t.schedule != "constant" or t.warmup_steps:
        raise UserError("The Keras baseline uses a constant learning rate (as the tutorial).")


def _compiled_model(keras, config, initial_weights: dict | None):
    """The tutorial's model at our sizes, compiled with Keras's Adam at our settings."""
    model = build_model(
        embed_dim=config.model.embed_dim,
        hidden_size=config.model.hidden_size,
        num_layers=config.model.num_layers,
    )
    if initial_weights is not None:
        set_weights(model, initial_weights)
    t = config.train
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=t.learning_rate,
            epsilon=t.adam_eps,
            global_clipnorm=t.grad_clip_norm or None,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def train(config, workdir, *, initial_weights: dict | None = None) -> dict:
    """Trains the Keras model on exactly our batches; writes <workdir>/metrics.jsonl.

    Args:
      config: our config (data, model sizes, batch, steps, learning rate, eps).
      workdir: output directory.
      initial_weights: Keras weights to start from (parity mode), else Keras's init.
    """
    check_supported(config)
    keras = import_keras()
    keras.utils.set_random_seed(config.seed)
    d, t = config.data, config.train
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # The trainer's own pipeline: the same batches, val windows and checks as ours.
    data = pipeline.build(
        d, seed=config.seed, global_batch=t.batch_size, num_eval_batches=t.eval_batches
    )
    eval_data = data.eval_batches()
    model = _compiled_model(keras, config, initial_weights)
    writer = metric_logging.MetricWriter(workdir, resume_step=0)
    progress = metric_logging.Progress(
        start_step=0, num_steps=t.num_steps, tokens_per_step=t.batch_size * d.seq_len
    )
    losses, start, val_loss = [], time.perf_counter(), None
    for step in range(t.num_steps):
        batch = data.train_batch(step)
        losses.append(float(model.train_on_batch(batch["inputs"], batch["targets"])))
        done = step + 1
        eval_now = done % t.eval_every == 0 or done == t.num_steps
        if not (done % t.log_every == 0 or eval_now):
            continue
        record = {"train_loss": float(np.mean(losses))}
        record["train_bpb"] = metric_logging.bits_per_byte(record["train_loss"])
        rates = progress.update(done)
        record["tokens_per_sec"] = rates["tokens_per_sec"]
        if eval_now:
            progress.pause()
            val_loss = float(
                np.mean([model.test_on_batch(b["inputs"], b["targets"]) for b in eval_data])
            )
            record.update(val_loss=val_loss, val_bpb=metric_logging.bits_per_byte(val_loss))
            progress.resume()
        record["wall_time"] = time.perf_counter() - start
        writer.write_scalars(done, record)
        logging.info("keras: %s", metric_logging.progress_line(done, t.num_steps, record, rates))
        losses = []
    writer.close()
    return {
        "model": model,
        "val_loss": val_loss,
        "backend": keras.backend.backend(),
        "num_params": count_params(model),
    }
