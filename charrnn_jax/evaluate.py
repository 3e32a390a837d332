"""Score a split, or any file, under a trained model: every byte once, carry kept.

    python -m charrnn_jax.evaluate --workdir=/tmp/tiny                  # the val split
    python -m charrnn_jax.evaluate --workdir=/tmp/tiny --split=test     # needs test_fraction
    python -m charrnn_jax.evaluate --workdir=/tmp/tiny --file=book.txt --json

    python -m charrnn_jax.evaluate --workdir=/tmp/tiny --metric=nanogpt  # nanoGPT's estimator

Prints bytes scored, nats/byte and bits/byte (--json: one JSON object). With the run's
own streams (eval.streams) and seq_len it reproduces the val_loss the trainer logged.
--metric=nanogpt is nanoGPT's estimate_loss() on the same split, for comparing with
numbers quoted from it (a different quantity: each byte sees ~128 bytes of context).
"""

import dataclasses
import json
import pathlib
import sys
import time

from absl import app, flags, logging

from charrnn_jax.errors import UserError
from charrnn_jax.runtime import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.")
cli.require_non_empty_paths("workdir")
_SPLIT = flags.DEFINE_enum("split", "val", ["train", "val", "test"], "Split of the run's data.")
_FILE = flags.DEFINE_string("file", None, "Score this file instead of a split.")
_STEP = flags.DEFINE_string(
    "step", None, "Checkpoint: a step number, 'latest' (default) or 'best' (lowest val loss)."
)
_STREAMS = flags.DEFINE_integer(
    "streams",
    0,
    "Contiguous streams scored in parallel (0: the run's eval.streams or batch).",
    lower_bound=0,
)
_METRIC = flags.DEFINE_enum(
    "metric",
    "full",
    ["full", "windows", "nanogpt"],
    "'full': every byte once, carry kept; 'windows': the run's train.eval_batches fixed "
    "windows from a zero carry (the cheap metric); 'nanogpt': nanoGPT's estimate_loss() "
    "(200 x 64 random windows of 256 bytes, every position, a zero carry each; --seed).",
)
_SEED = flags.DEFINE_integer("seed", 0, "--metric=nanogpt: the seed of the windows' draw.")
_STRIDE = flags.DEFINE_integer(
    "stride",
    0,
    "The full-split metric of a model with a context window (the Transformer): bytes "
    "scored per window, each with at least block_size - stride bytes of context (0: the "
    "run's model.transformer.eval_stride). Shows how the number moves with the stride.",
    lower_bound=0,
)
_DYNAMIC = flags.DEFINE_bool(
    "dynamic",
    False,
    "Dynamic evaluation (Krause et al. 2018): the split in order, one segment at a time, "
    "each scored first and then trained on with SGD decaying towards the trained weights "
    "(the run's eval.dynamic.* keys, or the flags below). Test-time adaptation: report it "
    "beside the static number.",
)
_DYN_LR = flags.DEFINE_float("dynamic_lr", None, "--dynamic: eval.dynamic.learning_rate.")
_DYN_DECAY = flags.DEFINE_float("dynamic_decay", None, "--dynamic: eval.dynamic.decay.")
_DYN_SEGMENT = flags.DEFINE_integer("dynamic_segment", None, "--dynamic: eval.dynamic.segment.")
_ALLOW_CHANGED = flags.DEFINE_bool(
    "allow_changed_data",
    False,
    "Score a split although the corpus differs from the one the run trained on (its "
    "data.json): the splits then hold other bytes, and the output says so.",
)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a sentence.")
flags.mark_flag_as_required("workdir")


def run() -> dict:
    # These import jax: after cli.run's huge-page restart, which must come first.
    from charrnn_jax.inference import loading
    from charrnn_jax.store import checkpointing

    config, model, params, step = loading.load_for_inference(
        _WORKDIR.value, checkpointing.parse_step(_STEP.value)
    )
    if config.model.num_classes:
        raise UserError(f"{_WORKDIR.value} holds a classifier; use charrnn_jax.classify.")
    if _STRIDE.value:
        config, model = _with_stride(config, _STRIDE.value)
    tokens, source = _tokens_to_score(config)
    if len(tokens) < 2:
        raise UserError(f"{source} has {len(tokens)} bytes; at least 2 are needed.")
    return {**_score(config, model, params, tokens, source), "step": step, "source": source}


def _with_stride(config, stride: int):
    """The run's config and model with the sliding window's stride set (the params are
    the same: the stride only chooses which positions of each window are scored)."""
    from charrnn_jax import models  # Imports jax, as in run().

    window = config.model.context_window()
    if window is None:
        raise UserError(
            f"--stride is for a model with a context window (model.cell='transformer'); "
            f"this run's {config.model.cell!r} carries its state over the whole split."
        )
    if stride > window:
        raise UserError(f"--stride={stride} exceeds the model's block_size={window}.")
    options = dataclasses.replace(config.model.options, eval_stride=stride)
    model_config = config.model.with_options(options)
    return dataclasses.replace(config, model=model_config), models.CharRNN(model_config)


def _tokens_to_score(config):
    """(bytes, what they are): --file, or the run's --split of its own corpus."""
    from charrnn_jax.data import corpora, pipeline  # Imports jax, as in run().
    from charrnn_jax.training import identity

    d = config.data
    if _FILE.value:
        return corpora.load_bytes(_path(_FILE.value)), _FILE.value
    if not pipeline.MODES[d.mode].byte_stream:
        raise UserError(f"--split needs byte data; this run has data.mode={d.mode!r}.")
    if _SPLIT.value == "test" and not d.test_fraction:
        raise UserError(
            "This run has no test split (data.test_fraction is 0). A test split is cut "
            "from the file's end when a run is trained with --config.data.test_fraction=F "
            "(e.g. 0.05); adding it later would move the val split under the trained run."
        )
    path = corpora.resolve_path(d.name, d.path)
    note = identity.check_corpus_for_scoring(
        config, _WORKDIR.value, allow_changed=_ALLOW_CHANGED.value
    )
    if note:
        print(note, file=sys.stderr)
    tokens = corpora.load_splits(d)[_SPLIT.value]
    return tokens, f"the {_SPLIT.value} split of {path}" + (" (a changed corpus)" if note else "")


def _score(config, model, params, tokens, source: str) -> dict:
    """The asked-for metric: the full split (default), fixed windows, nanoGPT's estimate
    or dynamic evaluation."""
    from charrnn_jax.inference import scoring  # Imports jax, as in run().

    if _METRIC.value == "windows":
        result = scoring.score_windows(
            params,
            model,
            tokens,
            batch=config.train.batch_size,
            seq_len=config.data.seq_len,
            batches=config.train.eval_batches,
        )
        return {**result, "metric": "windows"}
    if _DYNAMIC.value:
        return _dynamic(config, model, params, tokens)
    if _METRIC.value == "nanogpt":
        return {
            **scoring.score_nanogpt(params, model, tokens, seed=_SEED.value),
            "metric": "nanogpt",
        }
    streams = _STREAMS.value or config.eval_streams or config.train.batch_size
    logging.info("Scoring %s bytes of %s in %d streams...", f"{len(tokens):,}", source, streams)
    result = scoring.score_bytes(
        params,
        model,
        tokens,
        streams=streams,
        chunk=config.eval_chunk,
        bytes_per_call=config.eval.bytes_per_call,  # The trainer's val segments.
        progress=_progress_line(),
    )
    return full_record(config, result, streams)


def full_record(config, result: dict, streams: int) -> dict:
    """The full-split metric's output: what was scored and how (launch.report names each
    estimator from these fields, so a model with a context window records its stride,
    which moves its number; a recurrent model's chunk does not)."""
    record = {**result, "streams": streams, "metric": "full", "chunk": config.eval_chunk}
    if config.model.context_window():
        record["stride"] = config.eval_chunk
    return record


def _progress_line(every_s: float = 5.0):
    """A progress(done, total) that logs at most every `every_s` seconds, and at the end
    of a split that takes more than one device call."""
    last = [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if total > 1 and (now - last[0] >= every_s or done == total):
            logging.info("Scored %d of %d device calls (%.0f%%).", done, total, 100 * done / total)
            last[0] = now

    return progress


def _dynamic(config, model, params, tokens) -> dict:
    """`--dynamic`: the flags override the run's eval.dynamic keys."""
    # These import jax: after cli.run's huge-page restart, as in run().
    from charrnn_jax.inference import dynamic

    settings = dynamic.run_settings(
        config, lr=_DYN_LR.value, decay=_DYN_DECAY.value, segment=_DYN_SEGMENT.value
    )
    lr, decay, segment = settings["lr"], settings["decay"], settings["segment"]
    if lr < 0 or not 0 <= decay <= 1 or segment < 1:
        raise UserError(
            f"--dynamic needs learning_rate >= 0, decay in [0, 1] and segment >= 1; got "
            f"{lr}, {decay}, {segment}."
        )
    result = dynamic.score_dynamic(params, model, tokens, segment=segment, lr=lr, decay=decay)
    return {**result, "metric": "dynamic"}


def _path(name: str) -> pathlib.Path:
    return pathlib.Path(name).expanduser()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.setup_logging()
    result = cli.exit_on_user_error(run)
    if _JSON.value:
        print(json.dumps(result))
        return
    result.pop("segment_loss_sums", None)
    how = {
        "full": f"{result.get('streams')} streams, carry kept",
        "windows": "fixed windows",
        "dynamic": f"dynamic evaluation: lr {result.get('learning_rate')}, decay "
        f"{result.get('decay')}, {result.get('segment')}-byte segments, one stream",
        "nanogpt": f"nanoGPT's estimator: {result.get('windows')} random windows, seed "
        f"{result.get('seed')}",
    }[result["metric"]]
    sys.stdout.write(
        f"{result['source']}: {result['bytes']:,} bytes, {result['loss']:.4f} nats/byte, "
        f"{result['bpb']:.4f} bits/byte (step {result['step']}, {how})\n"
    )


if __name__ == "__main__":
    cli.run(main)
