"""Where the fused GRU's time goes, f32 against bf16: the bound on bf16's training gain.

    python -m benchmarks.gru_profile [--sizes=small,tutorial] [--batch=64] [--rounds=5] \
        [--out=benchmarks/results/gru_profile.jsonl]

The train step at these sizes is mostly the recurrence (models.gru_recurrence: a forward
scan and a hand-written backward scan over T=100 steps). This times the step, the
recurrence whole and in parts, each part a separately jitted program of the same shapes,
f32 and bf16 rounds interleaved, median of --rounds:

  train step         the throughput benchmark's step (one layer, Adam, the 256-way head)
  forward            the forward scan (gate math + h @ W_h per step)
  forward+backward   value and gradient of the recurrence
  backward           the difference of the two
  dot chain fwd      a scan doing only the per-step h @ W_h ([B, H] x [H, 3H])
  dot chain bwd      a scan doing only the per-step dh @ W_h^T ([B, 3H] x [3H, H])
  dW_h GEMM          the backward's one [H, T*B] x [T*B, 3H] contraction (weight_gradient)
  empty scan         T iterations carrying [B, H] and adding 1: the loop's own cost

and prints the remainder of the backward (gate gradients, stores, loop: backward minus
its dot chain and GEMM), which stays f32 arithmetic in bf16 mode. With the parts'
bf16 times, "bf16 bound" is the speedup bf16 could reach if every dot ran at twice the
f32 rate and the rest were unchanged (Amdahl): what limits the target of 1.6x-2x.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, machine, throughput
from charrnn_jax import models
from charrnn_jax.models.precision import weight_gradient

SIZES = {name: common.SIZES[name].hidden for name in ("small", "tutorial")}  # hidden_size
SEQ_LEN = 100
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


def timed(fn, *args, repeats: int = 3) -> float:
    """Median seconds per call of fn(*args) (common.timed over single-call spans).

    measure() calls this once per program per round, so every round warms again: the
    programs run interleaved, and each is timed with its own weights back in cache.
    """
    return common.timed(lambda: jax.block_until_ready(fn(*args)), seconds=0.0, repeats=repeats)


def programs(size: str, batch: int, dtype) -> dict:
    """name -> (jitted fn, args): the train step, the recurrence and its parts at these
    shapes."""
    hidden = SIZES[size]
    rng = np.random.default_rng(0)
    xi = jnp.asarray(rng.normal(size=(SEQ_LEN, batch, 3 * hidden)), jnp.float32)
    h0 = jnp.asarray(rng.normal(size=(batch, hidden)) * 0.1, jnp.float32)
    w_h = jnp.asarray(rng.normal(size=(hidden, 3 * hidden)) / np.sqrt(hidden), jnp.float32)
    b_hn = jnp.zeros((hidden,), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(SEQ_LEN, batch, hidden)), jnp.float32)
    recur = functools.partial(models.gru_recurrence, tokens=None, valid=None, dtype=dtype)

    def forward(xi, h0, w_h):
        return recur(xi, h0=h0, w_h=w_h, b_hn=b_hn)[0]

    def forward_backward(xi, h0, w_h):
        hs, pullback = jax.vjp(forward, xi, h0, w_h)
        return hs, pullback(cot)

    def dot_chain(h, w, *, transpose: bool):
        w = (w.T if transpose else w).astype(dtype)

        def step(h, _):
            x = jnp.concatenate([h, h, h], axis=-1) if transpose else h
            out = jnp.dot(x.astype(dtype), w, preferred_element_type=jnp.float32)
            return out[:, :hidden], None

        return jax.lax.scan(step, h, None, length=SEQ_LEN)[0]

    def dw_gemm(hs, dhh):
        return weight_gradient(hs, dhh, dtype)

    def empty_scan(h):
        return jax.lax.scan(lambda h, _: (h + 1.0, None), h, None, length=SEQ_LEN)[0]

    dhh = jnp.concatenate([cot, cot, cot], axis=-1)
    impl = "ours_f32" if dtype == jnp.float32 else "ours_bf16"
    train_step = throughput.jax_step(impl, common.SIZES[size], batch)
    return {
        "train step": (train_step, ()),
        "forward": (jax.jit(forward), (xi, h0, w_h)),
        "forward+backward": (jax.jit(forward_backward), (xi, h0, w_h)),
        "dot chain fwd": (jax.jit(functools.partial(dot_chain, transpose=False)), (h0, w_h)),
        "dot chain bwd": (jax.jit(functools.partial(dot_chain, transpose=True)), (h0, w_h)),
        "dW_h GEMM": (jax.jit(dw_gemm), (cot, dhh)),
        "empty scan": (jax.jit(empty_scan), (h0,)),
    }


def measure(size: str, batch: int, rounds: int) -> dict:
    """{dtype: {part: median ms}}, the dtypes' rounds interleaved."""
    progs = {name: programs(size, batch, dt) for name, dt in DTYPES.items()}
    samples = {name: {part: [] for part in progs[name]} for name in DTYPES}
    for _ in range(rounds):
        for name in DTYPES:
            for part, (fn, args) in progs[name].items():
                samples[name][part].append(timed(fn, *args, repeats=1) * 1e3)
    ms = {
        name: {p: statistics.median(v) for p, v in parts.items()} for name, parts in samples.items()
    }
    for parts in ms.values():
        parts["backward"] = parts["forward+backward"] - parts["forward"]
        parts["backward rest"] = parts["backward"] - parts["dot chain bwd"] - parts["dW_h GEMM"]
    return ms


def bf16_bound(parts: dict) -> float:
    """f32 forward+backward / (its dots at half the time + everything else unchanged)."""
    dots = parts["dot chain fwd"] + parts["dot chain bwd"] + parts["dW_h GEMM"]
    return parts["forward+backward"] / (parts["forward+backward"] - dots / 2)


ORDER = (
    "train step",
    "forward",
    "backward",
    "forward+backward",
    "dot chain fwd",
    "dot chain bwd",
    "dW_h GEMM",
    "backward rest",
    "empty scan",
)


def print_table(size: str, batch: int, ms: dict) -> None:
    print(f"\n{size}/{batch} (T={SEQ_LEN}, H={SIZES[size]}), median ms")
    print(f"{'part':<18} {'f32':>9} {'bf16':>9} {'f32/bf16':>9}")
    for part in ORDER:
        f32, bf16 = ms["f32"][part], ms["bf16"][part]
        print(f"{part:<18} {f32:>9.2f} {bf16:>9.2f} {f32 / bf16:>8.2f}x")
    print(f"bf16 bound if every dot ran 2x (Amdahl, from f32 parts): {bf16_bound(ms['f32']):.2f}x")
    share = {name: ms[name]["forward+backward"] / ms[name]["train step"] for name in DTYPES}
    print(f"recurrence's share of the train step: f32 {share['f32']:.0%}, bf16 {share['bf16']:.0%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,tutorial")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None, help="Append the results here as JSON lines.")
    args = parser.parse_args()
    info = machine.describe()
    print(machine.summary(info))
    rows = []
    for size in args.sizes.split(","):
        ms = measure(size, args.batch, args.rounds)
        print_table(size, args.batch, ms)
        rows.append({"size": size, "batch": args.batch, "ms": ms, "bound": bf16_bound(ms["f32"])})
    if args.out:
        with pathlib.Path(args.out).open("a") as f:
            for row in rows:
                f.write(json.dumps({**row, "machine": info}) + "\n")


if __name__ == "__main__":
    main()
