"""Loss curves of charrnn_jax against the Keras tutorial model on identical batches.

The library behind `python -m charrnn_jax.compare` (see that module for the command).
With parity, both start from the same weights (ours converted to Keras) and our side uses
Keras's Adam formula, so any difference left is the frameworks' float arithmetic.
"""

from __future__ import annotations

import csv
import math
import pathlib

from charrnn_jax.store import metric_logging
from charrnn_jax.store.workdir import Workdir

SYSTEMS = ("charrnn_jax", "keras")


def prepare_config(config, *, steps: int | None, parity: bool, log_every=0, eval_every=0):
    """The config both sides train with: a copy of `config` (a ConfigDict) with the
    cadence and eval mode set.

    The cadence fits the steps asked for (a row every ~1/12 of the run, val every ~1/3)
    so the curves have points to draw; log_every / eval_every > 0 set it instead. Both
    sides score val on the same fixed windows (eval.mode='windows'): the Keras model has
    no carried-state evaluation.
    """
    from charrnn_jax import config_lib  # Imports jax: only when runs are prepared.

    n = config.train.num_steps if steps is None else steps
    log_every = log_every or max(1, n // 12)
    overrides = {
        "train.num_steps": n,
        "train.log_every": log_every,
        "train.eval_every": eval_every or max(log_every, n // 3),
        "eval.mode": "windows",
    }
    if parity:
        overrides["train.optimizer"] = "keras_adam"
    return config_lib.with_overrides(config, overrides)  # A copy: the caller's stays.


def run_both(config, out: pathlib.Path, *, parity: bool, ours=None, keras=None) -> dict:
    """Trains (or reuses) both runs. Returns {system: workdir} plus param counts."""
    # jax and keras load only when runs are trained (plots alone need neither).
    import jax

    from charrnn_jax import config_lib
    from charrnn_jax.baselines import keras_tutorial
    from charrnn_jax.training import loop, steps

    typed = config_lib.resolve(config)  # Both sides read the one typed config.
    keras_tutorial.check_supported(typed)
    info = {
        "charrnn_jax": pathlib.Path(ours) if ours else out / "charrnn_jax",
        "keras": pathlib.Path(keras) if keras else out / "keras",
    }
    params = steps.initial_params(typed)
    info["params_ours"] = steps.count_params(params)
    if not ours:
        loop.train_and_evaluate(config, info["charrnn_jax"], devices=jax.devices()[:1])
    initial = keras_tutorial.flax_to_keras(jax.device_get(params)) if parity else None
    model = keras_tutorial.build_model(
        embed_dim=typed.model.embed_dim,
        hidden_size=typed.model.hidden_size,
        num_layers=typed.model.num_layers,
    )
    info["params_keras"] = keras_tutorial.count_params(model)
    info["backend"] = keras_tutorial.import_keras().backend.backend()
    if not keras:
        keras_tutorial.train(typed, info["keras"], initial_weights=initial)
    return info


def load_curves(workdirs: dict) -> dict[str, list[dict]]:
    return {s: metric_logging.read_jsonl(Workdir(workdirs[s]).metrics_file) for s in SYSTEMS}


def write_csv(curves: dict, path: pathlib.Path) -> None:
    fields = ["system", "step", "wall_time", "train_loss", "val_loss", "tokens_per_sec"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for system, records in curves.items():
            for r in records:
                writer.writerow({"system": system, **{k: r.get(k) for k in fields[1:]}})


def max_abs_diff(curves: dict, key: str) -> tuple[float, int]:
    """Largest |ours - keras| over the steps both logged; and how many steps that was."""
    ours = {r["step"]: r[key] for r in curves["charrnn_jax"] if r[key] is not None}
    theirs = {r["step"]: r[key] for r in curves["keras"] if r[key] is not None}
    shared = sorted(set(ours) & set(theirs))
    return max((abs(ours[s] - theirs[s]) for s in shared), default=float("nan")), len(shared)


def _median_rate(records) -> float:
    rates = sorted(r["tokens_per_sec"] for r in records[1:] or records if r["tokens_per_sec"])
    return rates[len(rates) // 2] if rates else float("nan")


def summary_markdown(curves: dict, info: dict, *, parity: bool) -> str:
    rows = []
    for system in SYSTEMS:
        last = curves[system][-1]
        vals = [r["val_loss"] for r in curves[system] if r["val_loss"] is not None]
        rows.append(
            (
                system,
                last["step"],
                last["train_loss"],
                vals[-1] if vals else None,
                _median_rate(curves[system]),
            )
        )
    speed = rows[0][4] / rows[1][4]
    train_diff, n_train = max_abs_diff(curves, "train_loss")
    val_diff, n_val = max_abs_diff(curves, "val_loss")
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    mode = "parity: identical initial weights" if parity else "each with its own initialisers"
    lines = [
        f"# charrnn_jax vs Keras tutorial ({mode})",
        "",
        f"Keras backend: {info['backend']}. Same byte batches on both sides.",
        "",
        "| system | steps | final train loss | train bpb | final val loss | val bpb "
        "| tokens/s (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for system, steps, tl, vl, rate in rows:
        lines.append(
            f"| {system} | {steps} | {fmt(tl)} | {fmt(tl / math.log(2))} | {fmt(vl)} | "
            f"{fmt(vl / math.log(2) if vl is not None else None)} | {rate:,.0f} |"
        )
    lines += [
        "",
        f"- Speed ratio (charrnn_jax / Keras tokens/s): **{speed:.2f}x**",
        f"- Max |Δ train loss| over {n_train} shared log steps: {train_diff:.2e}; "
        f"max |Δ val loss| over {n_val} evals: {val_diff:.2e}",
        f"- Params: charrnn_jax {info['params_ours']:,}, Keras {info['params_keras']:,}. Keras's "
        "GRU keeps a recurrent bias for the z and r gates too (2 x hidden more); it is only "
        "ever added to the input bias, so the two models compute the same family of functions.",
    ]
    return "\n".join(lines) + "\n"


def plot(curves: dict, path: pathlib.Path, title: str) -> None:
    import matplotlib  # Optional extra (.[plots]): loaded only to draw.

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # After choosing the headless backend.

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = {"charrnn_jax": "tab:blue", "keras": "tab:orange"}
    for system, records in curves.items():
        for ax, x_key in zip(axes, ("step", "wall_time"), strict=True):
            train = [(r[x_key], r["train_loss"]) for r in records if r["train_loss"] is not None]
            val = [(r[x_key], r["val_loss"]) for r in records if r["val_loss"] is not None]
            ax.plot(
                *zip(*train, strict=True), color=colors[system], alpha=0.8, label=f"{system} train"
            )
            if val:
                ax.plot(*zip(*val, strict=True), "o--", color=colors[system], label=f"{system} val")
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("wall-clock seconds")
    axes[0].set_ylabel("cross-entropy (nats / byte)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(
    config, out, *, steps=None, parity=False, ours=None, keras=None, log_every=0, eval_every=0
) -> dict:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = prepare_config(
        config, steps=steps, parity=parity, log_every=log_every, eval_every=eval_every
    )
    info = run_both(config, out, parity=parity, ours=ours, keras=keras)
    curves = load_curves(info)
    write_csv(curves, out / "curves.csv")
    summary = summary_markdown(curves, info, parity=parity)
    (out / "summary.md").write_text(summary)
    m = config.model
    plot(
        curves,
        out / "loss_curves.png",
        f"byte-level GRU E{m.embed_dim}/H{m.hidden_size}, batch {config.train.batch_size} x "
        f"{config.data.seq_len}; Keras backend {info['backend']}" + (" (parity)" if parity else ""),
    )
    return {"summary": summary, "curves": curves, **info}
