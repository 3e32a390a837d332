"""Class probabilities from a trained many-to-one CharRNN (no I/O, no flags)."""

import jax
import numpy as np

from charrnn_jax.data import examples


def predict(params, model, texts: list[bytes], max_len: int):
    """Class probabilities [len(texts), num_classes] as numpy."""
    tokens, lengths = examples.pad_bytes(texts, max_len)
    logits, _ = jax.jit(model.apply)({"params": params}, tokens, lengths=lengths)
    return np.asarray(jax.nn.softmax(logits, axis=-1))
