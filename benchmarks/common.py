"""What every benchmark shares: the model sizes, one timer, synthetic batches, the trainer's
jitted step, the PyTorch GRU peer, a worker in its own process, and where results go.

Run the benchmarks from the repository root as modules (`python -m benchmarks.throughput`);
each prints the machine (benchmarks/machine.py) before its table. Results are written
only where --out says: a benchmark never rewrites the committed benchmarks/results/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
VOCAB = 256


@dataclasses.dataclass(frozen=True)
class Size:
    """A model shape: Embed(embed_dim) -> layers x GRU(hidden) -> Dense(256), on seq_len."""

    embed_dim: int
    hidden: int
    layers: int = 1
    seq_len: int = 100

    def train_flops_per_token(self) -> float:
        """3x the forward's 2 * (E*3H + (layers-1)*H*3H + layers*H*3H + H*V) FLOPs."""
        gates = 3 * self.hidden
        inputs = self.embed_dim * gates + (self.layers - 1) * self.hidden * gates
        recurrent = self.layers * self.hidden * gates
        return 3 * 2 * (inputs + recurrent + self.hidden * VOCAB)


SIZES = {
    "tiny": Size(32, 64),
    "small": Size(64, 256),  # The CPU-small size of ../shared/BENCHMARKS.md.
    "tutorial": Size(256, 1024),  # The TF tutorial's model.
    "headline": Size(64, 768, layers=2, seq_len=128),  # experiments/shakespeare_headline_gru.py
}


def gemm_flops_per_sec(dtype: str = "float32", n: int = 2048, seconds: float = 0.5) -> float:
    """FLOP/s of one n^3 GEMM in `dtype` with f32 accumulation (the models' bf16 path)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    return 2 * n**3 / timed(lambda: dot(a, b).block_until_ready(), seconds=seconds)


def timed(fn, *, seconds: float = 0.5, repeats: int = 3) -> float:
    """Median seconds per call of fn() (which must block) over `repeats` spans of at least
    `seconds` and two calls each, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - start < seconds:
            fn()
            calls += 1
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def interleaved_seconds(runs: dict, *, rounds: int, seconds: float) -> dict:
    """{key: [seconds per call, one per round]} of each no-argument run (which must
    block): each round times every run once, back to back, so a slow spell of a shared
    machine hits all of them alike."""
    times = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            times[key].append(timed(run, seconds=seconds, repeats=1))
    return times


def speedup(slow: list[float], fast: list[float]) -> float:
    """The median over rounds of slow / fast seconds: how much faster `fast` ran, taken
    within each round (interleaved_seconds) before the median."""
    return statistics.median(s / f for s, f in zip(slow, fast, strict=True))


def token_batch(batch_size: int, seq_len: int, seed: int = 0):
    """Random bytes as (inputs, targets) [batch, seq_len] int32, targets shifted by one."""
    import numpy as np

    tokens = np.random.default_rng(seed).integers(0, VOCAB, (batch_size, seq_len + 1))
    return tokens[:, :-1].astype(np.int32), tokens[:, 1:].astype(np.int32)


def jax_train_step(
    model, batch_size: int, seq_len: int, *, num_devices: int = 1, compiler_options=None
):
    """The trainer's step (with its on-device metric window), jitted over a data mesh and
    donating the state; returns a closure that runs one step and blocks on it.

    compiler_options: XLA options in place of the model's own (parallel.model_jit); {} for
    XLA's defaults."""
    import functools

    import jax
    import optax

    from charrnn_jax.runtime import parallel
    from charrnn_jax.training import steps

    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
    tx = optax.adam(1e-3)
    state = steps.create_train_state(jax.random.key(0), model=model, tx=tx, seq_len=seq_len)
    jit = (
        functools.partial(parallel.model_jit, model)
        if compiler_options is None
        else functools.partial(jax.jit, compiler_options=compiler_options or None)
    )
    step_fn = jit(
        functools.partial(steps.windowed_train_step, schedule=optax.constant_schedule(1e-3)),
        in_shardings=(repl, data, repl),
        out_shardings=repl,
        donate_argnums=0,
    )
    inputs, targets = token_batch(batch_size, seq_len)
    batch = jax.device_put({"inputs": inputs, "targets": targets}, data)
    holder, rng = {"state": jax.device_put(state, repl)}, jax.random.key(1)

    def step():
        holder["state"] = step_fn(holder["state"], batch, rng)
        jax.block_until_ready(holder["state"].window)

    return step


def torch_gru_model(size: Size, device: str):
    """PyTorch's idiomatic peer: nn.Embedding -> nn.GRU (cuDNN on a GPU) -> nn.Linear."""
    import torch

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, size.embed_dim)
            self.gru = torch.nn.GRU(
                size.embed_dim, size.hidden, num_layers=size.layers, batch_first=True
            )
            self.head = torch.nn.Linear(size.hidden, VOCAB)

        def forward(self, x, state=None):
            out, state = self.gru(self.embed(x), state)
            return self.head(out), state

    return Model().to(device)


def torch_train_step(size: Size, batch_size: int, *, precision: str = "f32"):
    """One Adam step of the PyTorch peer: precision 'f32' (true float32 matmuls), 'tf32'
    (TF32 matmuls and cuDNN) or 'bf16' (autocast); on the GPU when there is one."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    model = torch_gru_model(size, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, targets = (
        torch.from_numpy(a).long().to(device) for a in token_batch(batch_size, size.seq_len)
    )

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits, _ = model(inputs)
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, VOCAB), targets.reshape(-1)
        )
        loss.backward()
        optimizer.step()
        loss.item()  # Blocks until the step is done (the GPU included).

    return step


def run_worker(module: str, args: list[str], env: dict | None = None, timeout=None) -> dict:
    """`python -m <module> --worker <args>` in a fresh process: the JSON of its last line,
    or {'error': its last stderr line}."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", module, "--worker", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if out.returncode:
        lines = out.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def append_results(path: str | None, record: dict) -> None:
    """Appends one JSON line to --out, if given (never by default: see the docstring)."""
    if not path:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
