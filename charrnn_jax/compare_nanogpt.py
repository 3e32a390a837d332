"""Our trainer against nanoGPT's own train.py step, from the same weights on the same batches.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
    pip install torch
    python -m charrnn_jax.compare_nanogpt --config=experiments/shakespeare_nanogpt.py \
        --nanogpt_dir=/tmp/nanoGPT --steps=30 --out=/tmp/nanogpt_parity

Both sides train in float32 with dropout off, our side with its real train step and
nanoGPT's with its own model.py, configure_optimizers and train.py's schedule and
clipping (baselines/nanogpt.py). Prints each step's two losses as it goes; writes
steps.jsonl (a row per step), params.json (each param's largest difference at the end),
provenance.json (the machine, versions and model.py's sha256) and summary.md into --out.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from charrnn_jax.runtime import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
_NANOGPT_DIR = flags.DEFINE_string("nanogpt_dir", None, "A clone of karpathy/nanoGPT.")
_STEPS = flags.DEFINE_integer("steps", 20, "Train steps for both.", lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "Output directory.")
flags.mark_flags_as_required(["config", "nanogpt_dir", "out"])
cli.require_non_empty_paths("nanogpt_dir", "out")


def _print_row(row: dict) -> None:
    print(
        f"step {row['step']} | lr {row['lr_ours']:.6g} / {row['lr_nanogpt']:.6g} | loss "
        f"{row['loss_ours']:.6f} ours, {row['loss_nanogpt']:.6f} nanoGPT",
        flush=True,
    )


def _run(config, nanogpt_dir: str, steps: int, out: pathlib.Path) -> str:
    from charrnn_jax.baselines import nanogpt  # Imports jax: after the huge-page restart.
    from charrnn_jax.store.workdir import write_atomic

    nanogpt.import_model_py(nanogpt_dir)  # A wrong path fails before anything compiles.
    result = nanogpt.step_parity(config, nanogpt_dir, steps=steps, on_row=_print_row)
    out.mkdir(parents=True, exist_ok=True)
    text = nanogpt.summary(result)
    write_atomic(out / "steps.jsonl", "".join(json.dumps(r) + "\n" for r in result["rows"]))
    write_atomic(out / "params.json", json.dumps(result["params"], indent=1) + "\n")
    write_atomic(out / "provenance.json", json.dumps(result["provenance"], indent=1) + "\n")
    write_atomic(out / "summary.md", text + "\n")
    return text


def main(argv):
    del argv
    from charrnn_jax import config_lib  # Imports jax: after the huge-page restart.

    cli.setup_logging()
    config = cli.config_value(_CONFIG, check=config_lib.check_declared)
    try:
        text = cli.exit_on_user_error(
            _run, config, _NANOGPT_DIR.value, _STEPS.value, pathlib.Path(_OUT.value)
        )
    except ImportError as e:  # PyTorch, which only this comparison needs.
        sys.exit(f"error: {e} (this comparison runs nanoGPT's PyTorch code: pip install torch)")
    print(text)


if __name__ == "__main__":
    cli.run(main)
