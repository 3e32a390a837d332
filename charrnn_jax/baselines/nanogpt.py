"""nanoGPT's own training step beside ours, on identical batches: is our harness fair?

Our reproduction of nanoGPT (experiments/shakespeare_nanogpt.py) compares numbers only if
our trainer trains nanoGPT's model as nanoGPT's train.py does. `step_parity` runs both
from the same weights on the same batches, float32 and dropout off (the two frameworks
draw different masks), and records each side's loss on each batch before its update:
- ours: the real train step (training/steps.train_step) with the config's optimizer
  (training/optim.make_optimizer: optax's AdamW, clipping and warmup + cosine);
- nanoGPT's: `GPT` from its own model.py (imported from a clone; its code is not ours to
  ship), `GPT.configure_optimizers` (torch's AdamW, weight decay on the >= 2-D params),
  and train.py's loop: `get_lr`, `clip_grad_norm_`, `optimizer.step()`. train.py is a
  script, so `get_lr` is transcribed below.

If the losses stay together step after step and the params end within float rounding
of each other, the model, the loss, the optimizer, the decay mask, the clipping and the
schedule are nanoGPT's; what remains between the two reproductions is dropout's random
masks, bf16 rounding and the seed. Our vocabulary is the 256 byte values, so nanoGPT's
GPT is built with vocab_size=256 (its shakespeare_char has 65 characters).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import pathlib

import numpy as np

from charrnn_jax.errors import UserError

# Our Transformer's param paths (models/transformer.py) -> nanoGPT's state_dict names;
# '{i}' is the block. Kernels are [in, out] here and torch Linear weights [out, in].
_BLOCK_KERNELS = {
    ("attn", "c_attn"): "attn.c_attn.weight",
    ("attn", "c_proj"): "attn.c_proj.weight",
    ("mlp", "c_fc"): "mlp.c_fc.weight",
    ("mlp", "c_proj"): "mlp.c_proj.weight",
}
_BLOCK_NORMS = {"ln_1": "ln_1.weight", "ln_2": "ln_2.weight"}


def torch_state_dict(params, num_layers: int) -> dict[str, np.ndarray]:
    """Our Transformer's params as nanoGPT's GPT state_dict (bias=False), in numpy.

    lm_head.weight is wte's: nanoGPT ties them (`self.transformer.wte.weight =
    self.lm_head.weight`), as our head is `wte.attend`.
    """
    p = params["transformer"]
    out = {
        "transformer.wte.weight": np.asarray(p["wte"]["embedding"]),
        "transformer.wpe.weight": np.asarray(p["wpe"]["embedding"]),
        "transformer.ln_f.weight": np.asarray(p["ln_f"]["scale"]),
    }
    out["lm_head.weight"] = out["transformer.wte.weight"]
    for i in range(num_layers):
        block = p[f"h_{i}"]
        for (part, name), key in _BLOCK_KERNELS.items():
            out[f"transformer.h.{i}.{key}"] = np.asarray(block[part][name]["kernel"]).T
        for name, key in _BLOCK_NORMS.items():
            out[f"transformer.h.{i}.{key}"] = np.asarray(block[name]["scale"])
    return out


def get_lr(it: int, *, learning_rate, warmup_iters, lr_decay_iters, min_lr) -> float:
    """nanoGPT's train.py `get_lr` as it was when its README reported 1.4697 (2023): a
    linear warmup from 0, then a cosine from learning_rate to min_lr at lr_decay_iters.
    (Since December 2024 its warmup is learning_rate * (it + 1) / (warmup_iters + 1),
    which never gives 0; the cosine is unchanged.)"""
    if it < warmup_iters:
        return learning_rate * it / warmup_iters
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def nanogpt_lr(train_config, it: int) -> float:
    """get_lr with a typed TrainConfig's values in nanoGPT's names."""
    t = train_config
    return get_lr(
        it,
        learning_rate=t.learning_rate,
        warmup_iters=t.warmup_steps,
        lr_decay_iters=t.num_steps,
        min_lr=t.end_learning_rate,
    )


def import_model_py(nanogpt_dir):
    """nanoGPT's model.py from a clone (https://github.com/karpathy/nanoGPT), as a module."""
    path = pathlib.Path(nanogpt_dir) / "model.py"
    if not path.is_file():
        raise UserError(
            f"No nanoGPT model.py at {path}: pass --nanogpt_dir=<a clone of "
            "https://github.com/karpathy/nanoGPT>."
        )
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parity_config(config):
    """The config both sides train with: float32 and no dropout (a ConfigDict copy)."""
    from charrnn_jax import config_lib  # Imports jax: only when a run is prepared.

    return config_lib.with_overrides(config, {"model.dtype": "float32", "model.dropout": 0.0})


def check_supported(typed) -> None:
    """What nanoGPT's train.py can mirror: a Transformer on random windows, AdamW."""
    m, t = typed.model, typed.train
    problems = [
        (m.cell != "transformer", f"model.cell={m.cell!r} (nanoGPT's GPT is 'transformer')"),
        (typed.data.mode != "random", f"data.mode={typed.data.mode!r} (train.py: 'random')"),
        (t.optimizer != "adam", f"train.optimizer={t.optimizer!r} (train.py: AdamW)"),
        (t.schedule != "cosine", f"train.schedule={t.schedule!r} (train.py: cosine)"),
        (t.weight_decay <= 0, "train.weight_decay=0 (train.py decays the 2-D params)"),
        (t.ema_decay > 0, "train.ema_decay > 0 (train.py keeps no average)"),
    ]
    bad = [text for wrong, text in problems if wrong]
    if bad:
        raise UserError("nanoGPT's train.py cannot mirror " + "; ".join(bad) + ".")


@dataclasses.dataclass
class _Torch:
    """nanoGPT's model and optimizer, and the train.py settings its loop reads."""

    torch: object
    model: object
    optimizer: object
    grad_clip: float

    def step(self, inputs, targets, lr: float):
        """One iteration of train.py's loop (gradient_accumulation_steps = 1): the loss
        on this batch, then clip and AdamW at this lr. Returns (loss, grad norm)."""
        torch = self.torch
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        _, loss = self.model(torch.from_numpy(inputs).long(), torch.from_numpy(targets).long())
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item(), norm.item()


def _nanogpt(typed, params, nanogpt_dir) -> _Torch:
    import torch  # Optional: only this comparison needs PyTorch.

    module = import_model_py(nanogpt_dir)
    m, t = typed.model, typed.train
    gpt = module.GPT(
        module.GPTConfig(
            block_size=m.options.block_size,
            vocab_size=256,
            n_layer=m.num_layers,
            n_head=m.options.num_heads,
            n_embd=m.hidden_size,
            dropout=0.0,
            bias=False,
        )
    )
    weights = torch_state_dict(params, m.num_layers)
    gpt.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    gpt.train()
    optimizer = gpt.configure_optimizers(t.weight_decay, t.learning_rate, (0.9, t.adam_b2), "cpu")
    return _Torch(torch, gpt, optimizer, t.grad_clip_norm)


def step_parity(config, nanogpt_dir, *, steps: int, on_row=None) -> dict:
    """Trains ours and nanoGPT's side by side for `steps` steps on identical batches.

    Returns {'rows': per step, each side's loss, grad norm and lr; 'params': per param,
    the largest absolute difference at the end and the largest magnitude}.
    """
    import jax  # After the commands' huge-page restart.

    from charrnn_jax import config_lib, models
    from charrnn_jax.data import corpora, windows
    from charrnn_jax.training import optim
    from charrnn_jax.training import steps as train_steps

    typed = config_lib.resolve(parity_config(config))
    check_supported(typed)
    model = models.CharRNN(typed.model)
    tx, schedule = optim.make_optimizer(typed.train)
    state = train_steps.create_train_state(
        jax.random.fold_in(jax.random.key(typed.seed), 0),
        model=model,
        tx=tx,
        seq_len=typed.data.seq_len,
    )
    theirs = _nanogpt(typed, jax.device_get(state.params), nanogpt_dir)
    step_fn = jax.jit(lambda s, b, r: train_steps.train_step(s, b, r, schedule=schedule))
    train_bytes = corpora.load_splits(typed.data)["train"]
    rng = jax.random.key(typed.seed)
    rows = []
    for step in range(steps):
        batch = windows.train_batch(
            train_bytes,
            seed=typed.seed,
            step=step,
            global_batch=typed.train.batch_size,
            seq_len=typed.data.seq_len,
        )
        lr = nanogpt_lr(typed.train, step)
        loss, norm = theirs.step(batch["inputs"], batch["targets"], lr)
        state, metrics = step_fn(state, batch, rng)
        metrics = jax.device_get(metrics)
        row = {
            "step": step,
            "loss_ours": float(metrics["loss"]),
            "loss_nanogpt": loss,
            "grad_norm_ours": float(metrics["grad_norm"]),
            "grad_norm_nanogpt": norm,
            "lr_ours": float(metrics["learning_rate"]),
            "lr_nanogpt": lr,
        }
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return {
        "rows": rows,
        "params": param_differences(jax.device_get(state.params), theirs, typed),
        "provenance": provenance(nanogpt_dir, theirs.torch),
    }


def provenance(nanogpt_dir, torch) -> dict:
    """What ran: the machine, both frameworks' versions and which model.py (its sha256)."""
    # jax loads only when a comparison runs (the module is imported by its command first).
    import jax

    from charrnn_jax.runtime import machine

    model_py = (pathlib.Path(nanogpt_dir) / "model.py").read_bytes()
    return {
        "machine": machine.describe(jax.devices()),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "nanogpt_model_py_sha256": hashlib.sha256(model_py).hexdigest(),
    }


def param_differences(params, theirs: _Torch, typed) -> dict[str, dict]:
    """Per nanoGPT param name: max |ours - theirs| and max |theirs| after training."""
    ours = torch_state_dict(params, typed.model.num_layers)
    out = {}
    for name, value in theirs.model.state_dict().items():
        theirs_np = value.detach().numpy()
        out[name] = {
            "max_abs_diff": float(np.max(np.abs(ours[name] - theirs_np))),
            "max_abs": float(np.max(np.abs(theirs_np))),
        }
    return out


def summary(result: dict) -> str:
    """Markdown: the per-step losses (every tenth step and the last) and the params."""
    rows = result["rows"]
    shown = [r for r in rows if r["step"] % 10 == 0 or r is rows[-1]]
    lines = [
        "| step | lr ours / nanoGPT | loss ours | loss nanoGPT | difference "
        "| grad norm ours / nanoGPT |",
        "|---|---|---|---|---|---|",
    ]
    for r in shown:
        lines.append(
            f"| {r['step']} | {r['lr_ours']:.6g} / {r['lr_nanogpt']:.6g} | {r['loss_ours']:.6f} "
            f"| {r['loss_nanogpt']:.6f} | {r['loss_ours'] - r['loss_nanogpt']:+.2e} "
            f"| {r['grad_norm_ours']:.4f} / {r['grad_norm_nanogpt']:.4f} |"
        )
    worst = max(abs(r["loss_ours"] - r["loss_nanogpt"]) for r in rows)
    lr_worst = max(abs(r["lr_ours"] - r["lr_nanogpt"]) for r in rows)
    params = result["params"]
    name = max(params, key=lambda k: params[k]["max_abs_diff"] / max(params[k]["max_abs"], 1e-12))
    lines += [
        "",
        f"Largest loss difference over {len(rows)} steps: {worst:.2e} nats; largest lr "
        f"difference: {lr_worst:.2e}.",
        f"Params after the last step: the largest difference relative to the param's size is "
        f"{name}'s, {params[name]['max_abs_diff']:.2e} against a largest magnitude of "
        f"{params[name]['max_abs']:.3g}.",
    ]
    p = result.get("provenance")
    if p:
        lines.append(
            f"On {p['machine']}; jax {p['jax']}, torch {p['torch']}; nanoGPT's model.py "
            f"sha256 {p['nanogpt_model_py_sha256'][:16]}."
        )
    return "\n".join(lines)
