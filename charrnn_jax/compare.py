"""Loss curves of charrnn_jax against the Keras tutorial model on identical batches.

    python -m charrnn_jax.compare --config=experiments/shakespeare.py:tiny --steps=300 \
        --parity --out=/tmp/cmp

Writes loss_curves.png (vs step and vs wall-clock), curves.csv and summary.md into --out.
With --parity both start from the same weights (ours converted to Keras) and our side
uses Keras's Adam formula, so any difference left is the frameworks' float arithmetic.
Existing runs can be reused with --ours=DIR / --keras=DIR.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from charrnn_jax.runtime import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
_STEPS = flags.DEFINE_integer(
    "steps", None, "Train steps for both (default: the config's).", lower_bound=1
)
_PARITY = flags.DEFINE_bool("parity", False, "Start both from identical weights.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_OURS = flags.DEFINE_string("ours", None, "Reuse this charrnn_jax workdir instead of training.")
_KERAS = flags.DEFINE_string("keras", None, "Reuse this Keras workdir instead of training.")
_LOG_EVERY = flags.DEFINE_integer(
    "log_every",
    0,
    "Steps between rows (0: a twelfth of the run, so the curve has points).",
    lower_bound=0,
)
_EVAL_EVERY = flags.DEFINE_integer(
    "eval_every", 0, "Steps between val losses (0: a third).", lower_bound=0
)
flags.mark_flags_as_required(["config", "out"])


def main(argv):
    del argv
    from charrnn_jax import config_lib  # Imports jax: after the huge-page restart.
    from charrnn_jax.baselines.parity import compare

    cli.setup_logging()
    try:
        result = cli.exit_on_user_error(
            compare,
            cli.config_value(_CONFIG, check=config_lib.check_declared),
            _OUT.value,
            steps=_STEPS.value,
            parity=_PARITY.value,
            ours=_OURS.value,
            keras=_KERAS.value,
            log_every=_LOG_EVERY.value,
            eval_every=_EVAL_EVERY.value,
        )
    except ImportError as e:
        sys.exit(f"error: {e}")
    print(result["summary"])


if __name__ == "__main__":
    cli.run(main)
