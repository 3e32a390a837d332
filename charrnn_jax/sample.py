"""Sampling CLI: `python -m charrnn_jax.sample --workdir=DIR --prompt="ROMEO: " --length=1000`.

Restores params from the workdir's latest (or --step) checkpoint with the config saved
beside it, runs the jitted sampler once for all prompts x num_samples, prints UTF-8.
An empty prompt starts from a newline (b"\\n"), i.e. from the start of a line.
"""

import pathlib
import sys

from absl import app, flags

from charrnn_jax.errors import UserError
from charrnn_jax.runtime import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.")
cli.require_non_empty_paths("workdir")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Prompt; repeat for several prompts.")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "A file whose bytes are one prompt.")
_LENGTH = flags.DEFINE_integer(
    "length",
    1000,
    "Bytes (not characters: UTF-8 may take several) to generate per sample.",
    lower_bound=0,
)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "0 = greedy argmax; higher = more random.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample only from the k likeliest bytes; 0 = all.")
_TOP_P = flags.DEFINE_float(
    "top_p", 1.0, "Nucleus sampling: only the likeliest bytes whose mass reaches p; 1 = all."
)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples per prompt.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed; the same seed gives the same text.")
_STEP = flags.DEFINE_string(
    "step", None, "Checkpoint: a step number, 'latest' (default) or 'best' (lowest val loss)."
)
_STOP = flags.DEFINE_string(
    "stop", "", "Stop a sample after this byte: 'newline', or a single character."
)
_WINDOW = flags.DEFINE_integer(
    "window",
    None,
    "Condition each byte only on the last N bytes (re-primes the carry "
    "from zero over them every step; N model steps per byte).",
    lower_bound=1,
)
_DTYPE = flags.DEFINE_enum(
    "dtype",
    "float32",
    ["float32", "bfloat16"],
    "Weight matrices' dtype while sampling: bfloat16 halves the bytes read per byte.",
)
_NAMES_REPORT = flags.DEFINE_bool(
    "names_report",
    False,
    "For line-per-example runs (dinos): print the share of samples "
    "that are new names and that are well formed.",
)
flags.mark_flag_as_required("workdir")


def parse_stop(stop: str) -> int | None:

    if not stop:
        return None
    if stop == "newline":
        return ord("\n")
    encoded = stop.encode("utf-8")
    if len(encoded) != 1:
        raise UserError(f"--stop must be 'newline' or one single-byte character, got {stop!r}.")
    return encoded[0]


def gather_prompts(prompts, prompt_file, num_samples) -> list[bytes]:

    collected = [p.encode("utf-8") for p in (prompts or [])]
    if prompt_file:
        path = pathlib.Path(prompt_file)
        if not path.is_file():
            raise UserError(f"Prompt file not found: {path}")
        collected.append(path.read_bytes())
    if not collected:
        collected = [b""]
    if num_samples <= 0:
        raise UserError(f"--num_samples must be positive, got {num_samples}.")
    return [p for p in collected for _ in range(num_samples)]


def run() -> list[str]:
    """Returns the generated texts (prompt + continuation), also used by tests."""
    import jax  # After cli.run's huge-page restart: jax must not load before it.

    from charrnn_jax.data import corpora, pipeline  # Import jax, as above.
    from charrnn_jax.inference import loading, sampler
    from charrnn_jax.store import checkpointing

    top_k = _TOP_K.value or None
    top_p = _TOP_P.value if _TOP_P.value != 1.0 else None
    try:
        sampler.check_args(
            length=_LENGTH.value,
            temperature=_TEMPERATURE.value,
            top_k=top_k,
            window=_WINDOW.value,
            top_p=top_p,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    stop_byte = parse_stop(_STOP.value)
    prompts = gather_prompts(_PROMPT.value, _PROMPT_FILE.value, _NUM_SAMPLES.value)
    config, model, params, step = loading.load_for_inference(
        _WORKDIR.value, checkpointing.parse_step(_STEP.value)
    )
    if model.num_classes:
        raise UserError(f"{_WORKDIR.value} holds a classifier; use charrnn_jax.classify.")
    model, params = sampler.with_weight_dtype(model, params, _DTYPE.value)
    # Line-per-example runs trained every example after a newline: prompts get one too.
    prefix = pipeline.prompt_prefix(config.data.mode)
    tokens, lengths = sampler.sample(
        params,
        model,
        [prefix + p for p in prompts],
        length=_LENGTH.value,
        temperature=_TEMPERATURE.value,
        rng=jax.random.key(_SEED.value),
        top_k=top_k,
        top_p=top_p,
        stop_byte=stop_byte,
        window=_WINDOW.value,
    )
    texts = [
        corpora.decode(prompt + bytes(row[:n]))
        for prompt, row, n in zip(prompts, tokens, lengths, strict=True)
    ]
    print(f"# {len(texts)} sample(s) from step {step} of {_WORKDIR.value}", file=sys.stderr)
    if _NAMES_REPORT.value:
        print_names_report(config, texts)
    return texts


def print_names_report(config, texts: list[str]) -> None:
    from charrnn_jax.data import examples  # After the restart, as in run().
    from charrnn_jax.inference import text_metrics

    train_lines, _ = examples.split_lines(config.data, config.seed)
    training = [line.decode("utf-8", errors="replace") for line in train_lines]
    stats = text_metrics.name_stats(texts, training)
    print(
        f"# names: {stats['count']}, new: {stats['novel']:.0%}, well formed: "
        f"{stats['well_formed']:.0%}",
        file=sys.stderr,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")

    cli.setup_logging()
    texts = cli.exit_on_user_error(run)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"----- sample {i} -----")
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


if __name__ == "__main__":
    cli.run(main)
