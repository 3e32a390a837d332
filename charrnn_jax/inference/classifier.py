"""Class probabilities from a trained many-to-one CharRNN (no I/O, no flags)."""

import jax
import numpy as np


def predict(params, model, texts: list[bytes], max_len: int):
    """Class probabilities [len(texts), num_classes] as numpy."""
    tokens = np.zeros((len(texts), max_len), np.int32)
    lengths = np.ones(len(texts), np.int32)
    for row, text in enumerate(texts):
        data = np.frombuffer(text[:max_len] or b"\n", np.uint8)
        tokens[row, : len(data)], lengths[row] = data, len(data)
    logits, _ = jax.jit(model.apply)({"params": params}, tokens, lengths=lengths)
    return np.asarray(jax.nn.softmax(logits, axis=-1))
