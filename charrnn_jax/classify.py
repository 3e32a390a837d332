"""Classify texts with a trained many-to-one model (e.g. experiments/sentiment.py).

    python -m charrnn_jax.classify --workdir=/tmp/sentiment --text="that movie was just amazing"

Prints each text's class probabilities. Texts are bytes, truncated to the run's seq_len.
"""

import sys

from absl import app, flags

from charrnn_jax.errors import UserError
from charrnn_jax.runtime import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory of a classifier.")
cli.require_non_empty_paths("workdir")
_TEXT = flags.DEFINE_multi_string("text", None, "Text to classify; repeat for several.")
_STEP = flags.DEFINE_string(
    "step", None, "Checkpoint: a step number, 'latest' (default) or 'best' (lowest val loss)."
)
_LABELS = flags.DEFINE_list("labels", ["negative", "positive"], "Names of the classes.")
flags.mark_flags_as_required(["workdir", "text"])


def run() -> list[list[float]]:
    # These import jax: after cli.run's huge-page restart, which must come first.
    from charrnn_jax.inference import loading
    from charrnn_jax.inference.classifier import predict
    from charrnn_jax.store import checkpointing

    config, model, params, _ = loading.load_for_inference(
        _WORKDIR.value, checkpointing.parse_step(_STEP.value)
    )
    if not config.model.num_classes:
        raise UserError(f"{_WORKDIR.value} holds a language model; use charrnn_jax.sample.")
    texts = [t.encode("utf-8") for t in _TEXT.value]
    return predict(params, model, texts, config.data.seq_len).tolist()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")

    cli.setup_logging()
    probabilities = cli.exit_on_user_error(run)
    labels = _LABELS.value
    for text, probs in zip(_TEXT.value, probabilities, strict=True):
        names = labels if len(labels) == len(probs) else [str(i) for i in range(len(probs))]
        shown = ", ".join(f"{n}: {p:.3f}" for n, p in zip(names, probs, strict=True))
        sys.stdout.write(f"{shown}\t{text}\n")


if __name__ == "__main__":
    cli.run(main)
