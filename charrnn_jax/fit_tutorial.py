"""The Keras tutorial model trained its own way (`model.fit`), on our split, with our val metric.

    python -m charrnn_jax.fit_tutorial --config=experiments/shakespeare_headline_gru.py \
        --out=/tmp/keras_tutorial --budget_s=7260

The config supplies only the data (file, 90/10 split), the seed and the val metric's
streams and chunk; the model and its training are the tutorial's (baselines/keras_fit).
Writes <out>/metrics.jsonl (a row per epoch, val = every val byte once, carry kept) and
<out>/config.json (the run in our config's terms), so `launch.curves` draws it beside
ours. --budget_s stops fit at that wall-clock: the headline's "same wall-clock" line.

Then (--score_best, the default) the best epoch's weights are scored as the comparison
table scores every model's best checkpoint: nanoGPT's estimator (as `evaluate
--metric=nanogpt`) and dynamic evaluation with the config's eval.dynamic keys beside the
static score of the same single stream (as `evaluate --dynamic`, and with lr 0), into
<out>/best_scores.json (the dynamic per-segment sums included).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from charrnn_jax.errors import UserError
from charrnn_jax.runtime import cli
from charrnn_jax.store.workdir import Workdir

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Output directory (must not hold a run already).")
_EPOCHS = flags.DEFINE_integer("epochs", 20, "The tutorial's epochs.", lower_bound=1)
_BUDGET = flags.DEFINE_float(
    "budget_s", 0.0, "Stop at this wall-clock in seconds (0: none).", lower_bound=0.0
)
_SCORE_BEST = flags.DEFINE_bool(
    "score_best",
    True,
    "Score the best epoch's weights with nanoGPT's estimator and dynamic evaluation "
    "(<out>/best_scores.json).",
)
flags.mark_flags_as_required(["config", "out"])

BEST_SCORES = "best_scores.json"  # In --out, beside metrics.jsonl.


def check_args(config, out: pathlib.Path, modes) -> None:
    if Workdir(out).metrics_file.exists():
        raise UserError(f"{out} already holds a run (metrics.jsonl); choose a new --out.")
    if _EPOCHS.value < 1:
        raise UserError(f"--epochs must be >= 1, got {_EPOCHS.value}.")
    if _BUDGET.value < 0:
        raise UserError(f"--budget_s must be >= 0, got {_BUDGET.value}.")
    if not modes[config.data.mode].byte_stream:
        raise UserError(f"The tutorial trains on one byte stream; data.mode={config.data.mode!r}.")


def described_config(config, recipe) -> dict:
    """Our config describing the Keras run (for launch.curves: batch and seq_len), as
    config.json holds it, with a `baseline` line saying what ran."""
    model = dataclasses.replace(
        config.model,
        cell="gru",
        num_layers=1,
        embed_dim=recipe.embed_dim,
        hidden_size=recipe.hidden_size,
        dropout=0.0,
        input_dropout=0.0,
        recurrent_dropout=0.0,
    )
    train = dataclasses.replace(
        config.train,
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        schedule="constant",
        warmup_steps=0,
        weight_decay=0.0,
        grad_clip_norm=0.0,
    )
    data = dataclasses.replace(config.data, seq_len=recipe.seq_length)
    described = dataclasses.replace(config, model=model, train=train, data=data)
    baseline = f"keras tutorial model.fit, {_EPOCHS.value} epochs, budget {_BUDGET.value}s"
    return {**described.to_dict(), "baseline": baseline}


def run() -> dict:
    # These import jax and keras: after cli.run's huge-page restart.
    from charrnn_jax import config_lib, models
    from charrnn_jax.baselines import keras_fit
    from charrnn_jax.data import pipeline
    from charrnn_jax.inference import scoring
    from charrnn_jax.store.workdir import write_atomic

    config = config_lib.resolve(cli.config_value(_CONFIG, check=config_lib.check_declared))
    out = pathlib.Path(_OUT.value)
    check_args(config, out, pipeline.MODES)
    d = config.data
    train_tokens, val_tokens = keras_fit.tutorial_splits(config)
    recipe = keras_fit.TutorialRecipe(epochs=_EPOCHS.value)
    model = models.CharRNN(
        models.ModelConfig(embed_dim=recipe.embed_dim, hidden_size=recipe.hidden_size)
    )
    streams = config.eval_streams or config.train.batch_size

    def score_val(params):
        return scoring.score_bytes(params, model, val_tokens, streams=streams, chunk=d.seq_len)

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(Workdir(out).config_file, config_lib.to_json(described_config(config, recipe)))
    result = keras_fit.fit(
        train_tokens,
        score_val,
        out,
        recipe=recipe,
        seed=config.seed,
        budget_s=_BUDGET.value or None,
    )
    if _SCORE_BEST.value and result["best"] is not None:
        result["best_scores"] = keras_fit.best_scores(config, model, result["best"], val_tokens)
        write_atomic(out / BEST_SCORES, json.dumps(result["best_scores"]) + "\n")
    return result


def main(argv):
    del argv
    cli.setup_logging()
    try:
        result = cli.exit_on_user_error(run)
    except ImportError as e:  # Keras is an optional extra.
        sys.exit(f"error: {e}")
    print(
        f"Keras tutorial ({result['backend']}, {result['num_params']:,} params): "
        f"{result['steps']} steps in {result['wall_time']:.0f}s, "
        f"last val {result['val_loss']:.4f} nats/byte; "
        f"metrics in {Workdir(_OUT.value).metrics_file}"
    )
    if "best_scores" in result:
        b = result["best_scores"]
        print(
            f"Best epoch {b['epoch']} (step {b['step']}): full split {b['full']['loss']:.4f}, "
            f"nanoGPT's estimator {b['nanogpt']['loss']:.4f}, dynamic evaluation "
            f"{b['dynamic']['loss']:.4f} (static, one stream: "
            f"{b['static_one_stream']['loss']:.4f}); in {pathlib.Path(_OUT.value) / BEST_SCORES}"
        )


if __name__ == "__main__":
    cli.run(main)
