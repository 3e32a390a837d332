"""The device check: one command that measures what a lent accelerator can tell us.

    python -m benchmarks.device_check --out=DIR [--budget_s=480] [--smoke]

Parts, in order (each writes JSON lines to DIR/device_check.jsonl as it finishes, so a
run cut short keeps what it measured; DIR/device_check.md is the table):
1. machine: devices, driver, library versions, the measured bf16 GEMM rate and the copy
   bandwidth (the ceilings);
2. correctness on the device: the fused GRU against flax's nn.GRUCell reference (loss and
   gradients, f32 tight, bf16 within its tolerance), minGRU and LRU parallel ==
   sequential, the same seed giving the same sample, and the first train steps' losses
   on the device against the host CPU's in the same process;
3. training tokens/s (T=100 tutorial: embed 256, 1 x GRU 1024; T=128 headline: 2 x GRU
   768; batches 64/256/1024): ours fused f32 (true float32 dots) and bf16, flax's
   nn.scan reference, minGRU and LRU with both scans, against PyTorch's nn.GRU (cuDNN) in
   f32, TF32 and bf16 autocast; JAX and PyTorch each in their own process, rounds
   interleaved, ratios within a round (as benchmarks/throughput.py does); then what
   `model.gru_impl='auto'`, `model.scan='auto'` and `model.unroll` should pick on this
   device (models/backend_choices.py), from the same ratios;
4. sampling chars/s at batch 1, 64 and 1024 against a PyTorch step loop;
5. in the minutes left, the published configs trained by the real trainer, each for its
   weighted share of what is left (SIGTERM saves it): nanoGPT's Transformer first with a
   double share, then the GRU headline and the Mogrifier headline
   (experiments/shakespeare_*.py); for each the steps reached, seconds per step, the
   projected time of its whole run here, and the val of the step reached (full split;
   nanoGPT's estimator too for the Transformer). Their workdirs stay outside --out
   (--runs_dir); each run's metrics.jsonl is copied in as <config>_metrics.jsonl.

--smoke runs every part at toy sizes on the CPU in well under a minute (the test suite
runs it, so the script cannot rot before a device comes); peers that are not installed
are skipped and named.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing

from benchmarks import common, machine
from charrnn_jax.runtime import cli
from charrnn_jax.store.workdir import Workdir

FULL = {
    "sizes": {"tutorial": common.SIZES["tutorial"], "headline": common.SIZES["headline"]},
    "batches": (64, 256, 1024),
    "sample_batches": (1, 64, 1024),
    "sample_length": 500,
    "seconds": 1.0,
    "rounds": 2,
    "gemm": 8192,
    "copy_bytes": 2**31,
    "check_size": common.Size(32, 64, layers=2, seq_len=32),
}
SMOKE = {
    "sizes": {"tiny": common.Size(16, 32, layers=2, seq_len=16)},
    "batches": (4,),
    "sample_batches": (1, 4),
    "sample_length": 16,
    "seconds": 0.05,
    "rounds": 1,
    "gemm": 256,
    "copy_bytes": 2**22,
    "check_size": common.Size(16, 32, layers=1, seq_len=16),
}
OURS = (
    "ours_f32",
    "ours_bf16",
    "flax_reference",
    "ours_f32_unroll4",  # model.unroll: time steps per loop iteration.
    "ours_f32_unroll16",
    "ours_bf16_unroll8",
    "ours_f32_wavefront",  # model.stack='wavefront': stacked layers together (>= 2 layers).
    "ours_bf16_wavefront",
    "ours_f32_loop_graphs",  # The time loop inside XLA's command buffers (CUDA graphs).
    "ours_f32_no_graphs",  # Command buffers off: what they are worth today.
    "mingru_parallel",
    "mingru_sequential",
    "lru_parallel",
    "lru_sequential",
)
TORCH = ("torch_f32", "torch_tf32", "torch_bf16")
OPTIONS = tuple(i for i in OURS if "unroll" in i or i.endswith("graphs"))
WAVEFRONT = tuple(i for i in OURS if i.endswith("wavefront"))
# What each alternative is measured against, within a round: the choices 'auto' makes.
BASELINE = {
    "flax_reference": "ours_f32",
    "mingru_parallel": "mingru_sequential",
    "lru_parallel": "lru_sequential",
    **{
        option: "ours_bf16" if "bf16" in option else "ours_f32" for option in (*OPTIONS, *WAVEFRONT)
    },
}
# Rows whose name ends in a key here run in their own worker with these XLA flags (set
# before JAX starts). XLA's default command buffers hold fusions, GEMMs and custom calls
# but not WHILE loops, so each time step is still launched from the host.
_GRAPH_TYPES = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL"
XLA_FLAG_VARIANTS = {
    "_loop_graphs": f"--xla_gpu_enable_command_buffer={_GRAPH_TYPES},WHILE",
    "_no_graphs": "--xla_gpu_enable_command_buffer=",
}


def _family(impl: str) -> str:
    """The worker a row runs in: 'torch', 'jax', or 'jax' plus an XLA flag variant."""
    if impl in TORCH:
        return "torch"
    suffix = next((s for s in XLA_FLAG_VARIANTS if impl.endswith(s)), "")
    return "jax" + suffix


class Report:
    """JSON lines as they come (a cut run keeps them) and the Markdown table at the end."""

    def __init__(self, out: pathlib.Path):
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl, self.markdown = out / "device_check.jsonl", out / "device_check.md"
        self.jsonl.write_text("")
        self.lines: list[str] = []
        self.started = time.perf_counter()

    def add(self, part: str, record: dict) -> None:
        stamped = {"part": part, **record, "at_s": round(time.perf_counter() - self.started, 1)}
        with self.jsonl.open("a") as f:
            f.write(json.dumps(stamped) + "\n")

    def table(self, title: str, header: list[str], rows: list[list]) -> None:
        self.lines += [f"## {title}", "", "| " + " | ".join(header) + " |"]
        self.lines.append("|" + "---|" * len(header))
        self.lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        self.lines.append("")
        self.markdown.write_text("\n".join(self.lines))
        print("\n".join(self.lines[-len(rows) - 4 :]), flush=True)


# -- 1. The machine -------------------------------------------------------------------------


def _nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi"
    query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
    out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True)
    return out.stdout.decode().strip() or out.stderr.decode().strip()


def ceilings(settings) -> dict:
    """The measured bf16 GEMM rate and device copy bandwidth (read + write bytes)."""
    import jax
    import jax.numpy as jnp

    n = settings["gemm"]
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    gemm_s = common.timed(lambda: dot(a, b).block_until_ready(), seconds=settings["seconds"])
    x = jnp.ones((settings["copy_bytes"] // 4,), jnp.float32)
    copy = jax.jit(lambda x: x * 1.0000001)
    copy_s = common.timed(lambda: copy(x).block_until_ready(), seconds=settings["seconds"])
    device = jax.devices()[0]
    return {
        "device": f"{device.platform} {device.device_kind}",
        "devices": jax.device_count(),
        "nvidia_smi": _nvidia_smi(),
        "bf16_gemm_tflops": 2 * n**3 / gemm_s / 1e12,
        "copy_gb_per_s": 2 * x.nbytes / copy_s / 1e9,
        "machine": machine.describe(),
    }


# -- 2. Correctness on the device -------------------------------------------------------------


def _sized(models, size, **keys):
    """The ModelConfig of a benchmark size (embed, hidden, layers) with `keys` set."""
    return models.ModelConfig(
        embed_dim=size.embed_dim, hidden_size=size.hidden, num_layers=size.layers, **keys
    )


def _relative_error(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def fused_gru_against_flax(size: common.Size, dtype: str) -> dict:
    """Loss and every gradient of the fused GRU against nn.scan(nn.GRUCell), same params."""
    import jax

    from charrnn_jax import models
    from charrnn_jax.models import losses

    tokens = jax.random.randint(jax.random.key(3), (8, size.seq_len + 1), 0, common.VOCAB)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def model(impl):
        return models.CharRNN(_sized(models, size, dtype=dtype, gru_impl=impl))

    params = model("flax").init(jax.random.key(0), inputs)["params"]

    def loss(p, impl):
        logits, _ = model(impl).apply({"params": p}, inputs)
        return losses.cross_entropy(logits, targets)

    with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
        fused = jax.jit(jax.value_and_grad(functools.partial(loss, impl="fused")))(params)
        reference = jax.jit(jax.value_and_grad(functools.partial(loss, impl="flax")))(params)
    grad_error = max(
        _relative_error(a, b)
        for a, b in zip(jax.tree.leaves(fused[1]), jax.tree.leaves(reference[1]), strict=True)
    )
    tolerance = 1e-5 if dtype == "float32" else 3e-2
    loss_error = _relative_error(fused[0], reference[0])
    return {
        "check": f"fused GRU vs nn.GRUCell ({dtype})",
        "loss_rel_error": loss_error,
        "grad_rel_error": grad_error,
        "tolerance": tolerance,
        "ok": loss_error < tolerance and grad_error < tolerance,
    }


def parallel_equals_sequential(cell: str, size: common.Size) -> dict:
    import jax

    from charrnn_jax import models

    tokens = jax.random.randint(jax.random.key(4), (4, 4 * size.seq_len), 0, common.VOCAB)

    def run(parallel):
        scan = "parallel" if parallel else "sequential"
        model = models.CharRNN(_sized(models, size, cell=cell, scan=scan))
        params = model.init(jax.random.key(0), tokens[:, :8])
        with jax.default_matmul_precision("highest"):
            return jax.jit(model.apply)(params, tokens)[0]

    error = _relative_error(run(True), run(False))
    return {"check": f"{cell} parallel == sequential", "rel_error": error, "ok": error < 1e-4}


def same_seed_same_sample(size: common.Size) -> dict:
    import jax
    import jax.numpy as jnp

    from charrnn_jax import models
    from charrnn_jax.inference import sampler

    model = models.CharRNN(_sized(models, size))
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]

    def draw(seed):
        return sampler.sample(
            params, model, ["ROMEO:"] * 3, length=64, temperature=1.0, rng=jax.random.key(seed)
        )[0]

    a, b, c = draw(7), draw(7), draw(8)
    ok = (a == b).all() and not (a == c).all()
    return {"check": "same seed, same sample (another seed differs)", "ok": bool(ok)}


def train_steps_against_cpu(size: common.Size, steps: int = 5) -> dict:
    """The trainer's first steps on the default device and on the host CPU, one process."""
    import jax
    import numpy as np
    import optax

    from charrnn_jax import models
    from charrnn_jax.training import steps as train_steps

    model = models.CharRNN(_sized(models, size))
    inputs, targets = common.token_batch(16, size.seq_len)
    schedule = optax.constant_schedule(2e-3)
    step = jax.jit(functools.partial(train_steps.train_step, schedule=schedule))

    def losses(device):
        with jax.default_device(device), jax.default_matmul_precision("highest"):
            state = train_steps.create_train_state(
                jax.random.key(0), model=model, tx=optax.adam(schedule), seq_len=size.seq_len
            )
            batch = jax.device_put({"inputs": inputs, "targets": targets}, device)
            out = []
            for _ in range(steps):
                state, metrics = step(state, batch, jax.random.key(1))
                out.append(float(metrics["loss"]))
            return out

    device, cpu = losses(jax.devices()[0]), losses(jax.devices("cpu")[0])
    error = float(np.max(np.abs(np.array(device) - np.array(cpu))))
    return {
        "check": f"first {steps} train losses, device vs host CPU",
        "device_losses": device,
        "cpu_losses": cpu,
        "max_abs_diff": error,
        "ok": error < 1e-3,
    }


def correctness(settings) -> list[dict]:
    size = next(iter(settings["sizes"].values()))
    small = settings["check_size"]
    return [
        fused_gru_against_flax(small, "float32"),
        fused_gru_against_flax(small, "bfloat16"),
        parallel_equals_sequential("mingru", small),
        parallel_equals_sequential("lru", small),
        same_seed_same_sample(size),
        train_steps_against_cpu(small),
    ]


# -- 2b. What runs per time step --------------------------------------------------------------

NOT_KERNELS = {"get-tuple-element", "constant", "parameter", "tuple", "bitcast"}


def loop_bodies(compiled_text: str) -> list[dict]:
    """Each while loop's body in a compiled HLO module: the ops that launch work per time
    step (fusions, custom calls such as cuBLAS GEMMs, copies), by kind."""
    import collections
    import re

    computations = {
        m.group(1): m.group(2)
        for m in re.finditer(r"\n(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", compiled_text, re.S)
    }
    rows = []
    for body in re.findall(r"while\(.*?body=%?([\w.\-]+)", compiled_text):
        kinds = collections.Counter(
            m.group(1)
            for line in computations.get(body, "").splitlines()
            if (m := re.search(r"= [^ ]+ ([\w\-]+)\(", line)) and m.group(1) not in NOT_KERNELS
        )
        rows.append({"body": body, "ops_per_step": sum(kinds.values()), "kinds": dict(kinds)})
    return rows


def step_program(settings, out: pathlib.Path) -> list[dict]:
    """The compiled train step of the first size (fused GRU, f32): its loop bodies, and
    the whole compiled module written to OUT for reading."""
    import jax
    import optax

    from charrnn_jax.training import steps

    size = next(iter(settings["sizes"].values()))
    model = _our_model("ours_f32", size)
    state = steps.create_train_state(
        jax.random.key(0), model=model, tx=optax.adam(1e-3), seq_len=size.seq_len
    )
    inputs, targets = common.token_batch(settings["batches"][0], size.seq_len)
    step = jax.jit(
        functools.partial(steps.windowed_train_step, schedule=optax.constant_schedule(1e-3))
    )
    text = step.lower(state, {"inputs": inputs, "targets": targets}, jax.random.key(1))
    text = text.compile().as_text()
    (out / "train_step_compiled.hlo.txt").write_text(text)
    return loop_bodies(text)


# -- 3. Training tokens/s -----------------------------------------------------------------


def _our_model(impl: str, size: common.Size):
    """The model of a row name: a block cell and its scan ('mingru_parallel'), flax's
    reference, or the fused GRU with its dtype, unroll and stack ('ours_bf16_unroll8',
    'ours_f32_wavefront')."""
    from charrnn_jax import models

    parts = impl.split("_")
    if parts[0] in ("mingru", "lru"):
        return models.CharRNN(_sized(models, size, cell=parts[0], scan=parts[1]))
    unroll = next((int(p.removeprefix("unroll")) for p in parts if p.startswith("unroll")), 1)
    return models.CharRNN(
        _sized(
            models,
            size,
            dtype="bfloat16" if "bf16" in parts else "float32",
            gru_impl="flax" if impl == "flax_reference" else "fused",
            unroll=unroll,
            stack="wavefront" if "wavefront" in parts else "layers",
        )
    )


def _train_jobs(settings) -> list[tuple[str, str, int]]:
    """(impl, size, batch): the primary rows at every batch, the others at the middle one,
    the GPU options (unroll, command buffers) at the first size only, the wavefront at the
    stacked sizes only (--smoke: one row of each kind, so that every code path runs)."""
    batches = settings["batches"]
    if settings is SMOKE:
        size = next(iter(settings["sizes"]))
        impls = ("ours_f32", "ours_bf16_unroll8", "ours_f32_loop_graphs", "flax_reference")
        impls += ("ours_f32_wavefront",)
        impls += ("mingru_parallel", "mingru_sequential", "torch_f32")
        return [(impl, size, _middle_batch(settings)) for impl in impls]
    jobs = []
    for size in settings["sizes"]:
        for batch in batches:
            primary = batch == _middle_batch(settings)
            impls = [*OURS, *TORCH] if primary else ["ours_f32", "ours_bf16", *TORCH]
            if size != next(iter(settings["sizes"])):  # The options: the tutorial size only.
                impls = [i for i in impls if i not in OPTIONS]
            if settings["sizes"][size].layers < 2:  # One layer has no wavefront.
                impls = [i for i in impls if i not in WAVEFRONT]
            jobs += [(impl, size, batch) for impl in impls]
    return jobs


def _middle_batch(settings) -> int:
    return settings["batches"][len(settings["batches"]) // 2]


def train_worker(family: str, jobs: list, settings) -> list[dict]:
    """Tokens/s of every job of one family ('torch', or 'jax' with its flags) here."""
    out = []
    for impl, size_name, batch in jobs:
        size = settings["sizes"][size_name]
        started = time.perf_counter()
        try:
            if family.startswith("jax"):
                import jax

                # "f32" means float32 dots: JAX would use TF32 on recent GPUs by default.
                precision = "default" if "bf16" in impl else "highest"
                with jax.default_matmul_precision(precision):
                    step = common.jax_train_step(_our_model(impl, size), batch, size.seq_len)
                    seconds = common.timed(step, seconds=settings["seconds"], repeats=1)
            else:
                precision = impl.split("_")[1]
                step = common.torch_train_step(size, batch, precision=precision)
                seconds = common.timed(step, seconds=settings["seconds"], repeats=1)
        except Exception as e:  # noqa: BLE001 - one failing row must not lose the others.
            out.append({"impl": impl, "size": size_name, "batch": batch, "error": str(e)[:200]})
            continue
        out.append(
            {
                "impl": impl,
                "size": size_name,
                "batch": batch,
                "tokens_per_sec": batch * size.seq_len / seconds,
                "wall_s": time.perf_counter() - started,  # Compile and warm-up included.
            }
        )
    return out


def training(settings, args, report: Report) -> list[dict]:
    jobs = _train_jobs(settings)
    families = {}
    for job in jobs:
        families.setdefault(_family(job[0]), []).append(job)
    if importlib.util.find_spec("torch") is None:
        families.pop("torch", None)
        report.add("training", {"skipped": "torch is not installed"})
    rounds = []
    for index in range(settings["rounds"]):
        results = {}
        for family, family_jobs in families.items():
            spec = json.dumps({"family": family, "jobs": family_jobs, "smoke": args.smoke})
            got = common.run_worker("benchmarks.device_check", [spec], env=_worker_env(family))
            for row in got.get("rows", []) if isinstance(got, dict) else []:
                results[(row["impl"], row["size"], row["batch"])] = row
            if "error" in got:
                report.add("training", {"round": index, "family": family, "error": got["error"]})
        rounds.append(results)
        report.add("training_round", {"round": index, "rows": list(results.values())})
    return _training_rows(jobs, rounds)


def _training_rows(jobs, rounds) -> list[dict]:
    """Median tokens/s per job, its ratio to PyTorch f32 and, for an alternative in
    BASELINE, to what it is an alternative to (both ratios within a round)."""
    import statistics

    rows = []
    for impl, size, batch in jobs:
        rates = [
            r[(impl, size, batch)]["tokens_per_sec"] for r in rounds if _rate(r, impl, size, batch)
        ]
        row = {"impl": impl, "size": size, "batch": batch}
        if rates:
            row["tokens_per_sec"] = statistics.median(rates)
            row["vs_torch_f32"] = _median_ratio(rounds, (impl, size, batch), "torch_f32")
            if impl in BASELINE:
                row["vs_baseline"] = _median_ratio(rounds, (impl, size, batch), BASELINE[impl])
        rows.append(row)
    return rows


def auto_choices(rows: list[dict], size: str, batch: int) -> list[dict]:
    """What models/backend_choices.py (gru_impl, stack, scan) and model.unroll should say
    for this device: each choice with the within-round ratios at `size`/`batch` it rests
    on (the stack: at `batch` on every stacked size). A choice whose rows were not
    measured is left out."""
    ratio = {
        r["impl"]: r["vs_baseline"]
        for r in rows
        if r["size"] == size and r["batch"] == batch and r.get("vs_baseline")
    }
    choices = []
    if "flax_reference" in ratio:
        flax = ratio["flax_reference"]
        evidence = f"flax nn.scan(GRUCell) / fused = {flax:.2f}"
        choices.append(_choice("gru_impl", "flax" if flax > 1 else "fused", evidence))
    waves = {
        f"{r['impl']} at {r['size']}": r["vs_baseline"]
        for r in rows
        if r["impl"] in WAVEFRONT and r["batch"] == batch and r.get("vs_baseline")
    }
    if waves:
        mean = math.prod(waves.values()) ** (1 / len(waves))
        evidence = ", ".join(f"{i} / layers = {r:.2f}" for i, r in waves.items())
        choices.append(_choice("stack", "wavefront" if mean > 1 else "layers", evidence))
    scans = {i: ratio[i] for i in ("mingru_parallel", "lru_parallel") if i in ratio}
    if scans:
        mean = math.prod(scans.values()) ** (1 / len(scans))
        evidence = ", ".join(f"{i} / sequential = {r:.2f}" for i, r in scans.items())
        choices.append(_choice("scan", "parallel" if mean > 1 else "sequential", evidence))
    for dtype, base in (("f32", "ours_f32"), ("bf16", "ours_bf16")):
        unrolled = {
            int(i.rsplit("unroll", 1)[1]): r
            for i, r in ratio.items()
            if i.startswith(base + "_unroll")
        }
        if unrolled:
            best = max(unrolled, key=unrolled.get)
            evidence = ", ".join(f"unroll {n} / 1 = {r:.2f}" for n, r in sorted(unrolled.items()))
            pick = best if unrolled[best] > 1 else 1
            choices.append(_choice(f"unroll ({dtype})", pick, evidence))
    graphs = {i: ratio[i] for i in ratio if i.endswith("graphs")}
    if graphs:
        best = max(graphs, key=graphs.get)
        flags = XLA_FLAG_VARIANTS[best.removeprefix("ours_f32")]
        pick = flags if graphs[best] > 1 else "XLA's default"
        evidence = ", ".join(f"{i} / ours_f32 = {r:.2f}" for i, r in graphs.items())
        choices.append(_choice("command buffers", pick, evidence))
    return choices


def _choice(key: str, pick, evidence: str) -> dict:
    return {"key": key, "pick": pick, "evidence": evidence}


def _report_auto_choices(settings, train_rows: list[dict], report: Report) -> None:
    """The choices at the options' size and batch (the first size, the middle batch)."""
    size, batch = next(iter(settings["sizes"])), _middle_batch(settings)
    choices = auto_choices(train_rows, size, batch)
    for choice in choices:
        report.add("auto_choice", choice)
    report.table(
        f"What auto should pick on this device ({size}, batch {batch}; ratios within a round;"
        " copy into models/backend_choices.py)",
        ["key", "pick", "evidence"],
        [[c["key"], c["pick"], c["evidence"]] for c in choices],
    )


def _rate(results: dict, impl: str, size: str, batch: int) -> float | None:
    return results.get((impl, size, batch), {}).get("tokens_per_sec")


def _median_ratio(rounds, job: tuple, base: str) -> float | None:
    """The median over rounds of job's tokens/s over `base`'s at the same size and batch."""
    import statistics

    _, size, batch = job
    ratios = [
        _rate(r, *job) / _rate(r, base, size, batch)
        for r in rounds
        if _rate(r, *job) and _rate(r, base, size, batch)
    ]
    return statistics.median(ratios) if ratios else None


def _worker_env(family: str = "jax") -> dict:
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/charrnn_device_check_cache")
    flags = XLA_FLAG_VARIANTS.get(family.removeprefix("jax"), "")
    if flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
    return env


# -- 4. Sampling chars/s ----------------------------------------------------------------------


def sampling_worker(family: str, settings) -> list[dict]:
    size = next(iter(settings["sizes"].values()))
    length, rows = settings["sample_length"], []
    for batch in settings["sample_batches"]:
        if family == "jax":
            run = _jax_sampler(size, batch, length)
        else:
            run = _torch_sampler(size, batch, length)
        seconds = common.timed(run, seconds=settings["seconds"], repeats=1)
        rows.append({"impl": family, "batch": batch, "chars_per_sec": batch * length / seconds})
    return rows


def _jax_sampler(size: common.Size, batch: int, length: int):
    import jax
    import jax.numpy as jnp

    from charrnn_jax import models
    from charrnn_jax.inference import sampler

    model = models.CharRNN(_sized(models, size))
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    prompts = ["ROMEO: "] * batch

    def run():
        sampler.sample(
            params, model, prompts, length=length, temperature=1.0, rng=jax.random.key(1)
        )

    return run


def _torch_sampler(size: common.Size, batch: int, length: int):
    """PyTorch's idiomatic loop: one cuDNN GRU step and a multinomial draw per byte."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = common.torch_gru_model(size, device).eval()
    prompt = torch.randint(0, common.VOCAB, (batch, 7), device=device)

    @torch.inference_mode()
    def run():
        logits, state = model(prompt)
        byte = torch.multinomial(torch.softmax(logits[:, -1], -1), 1)
        for _ in range(length - 1):
            logits, state = model(byte, state)
            byte = torch.multinomial(torch.softmax(logits[:, -1], -1), 1)
        byte.tolist()

    return run


def sampling(settings, args, report: Report) -> list[dict]:
    rows = []
    for family in ("jax", "torch"):
        if family == "torch" and importlib.util.find_spec("torch") is None:
            report.add("sampling", {"skipped": "torch is not installed"})
            continue
        spec = json.dumps({"family": f"sample_{family}", "smoke": args.smoke})
        got = common.run_worker("benchmarks.device_check", [spec], env=_worker_env())
        rows += got.get("rows", [{"impl": family, "error": got.get("error")}])
    return rows


# -- 5. The published configs on the device --------------------------------------------------


class Published(typing.NamedTuple):
    """One published config of part 5: its experiment file, its toy overrides for --smoke,
    whether nanoGPT's estimator is scored too, and its weight in the shares of time."""

    config: str
    toy: dict
    nanogpt_estimate: bool
    weight: int


# In this order the configs share the minutes left, each the weighted part of what the
# ones before it left. nanoGPT's reproduction goes first with a double share: it is the
# comparisons' fairness check (docs/results.md), 15 h on two CPU cores and minutes here,
# and a run that ends early leaves its time to the others.
PUBLISHED = {
    "nanogpt": Published(
        "experiments/shakespeare_nanogpt.py",
        {
            "model.num_layers": 1,
            "model.transformer.num_heads": 2,
            "model.transformer.block_size": 32,
            "model.transformer.eval_stride": 16,
            "eval.nanogpt_estimate": False,
        },
        nanogpt_estimate=True,
        weight=2,
    ),
    "gru_headline": Published(
        "experiments/shakespeare_headline_gru.py", {}, nanogpt_estimate=False, weight=1
    ),
    "mogrifier_headline": Published(
        "experiments/shakespeare_headline.py",
        {"model.mogrifier_gru.rank": 4},
        nanogpt_estimate=False,
        weight=1,
    ),
}
PUBLISHED_COLUMNS = (
    "config",
    "steps",
    "seconds_per_step",
    "projected_run_s",
    "val_loss",
    "val_loss_nanogpt",
    "val_step",
    "train_seconds",
    "returncode",
    "skipped",
)
SMOKE_TRAIN = {  # Every published config shrunk to seconds on a CPU.
    "model.hidden_size": 32,
    "model.embed_dim": 16,
    "data.seq_len": 32,
    "train.batch_size": 8,
    "train.eval_every": 4,
    "train.checkpoint_every": 4,
    "train.log_every": 2,
    "train.num_steps": 8,
    "train.warmup_steps": 2,
    "sample.length": 0,
}


def _evaluate(workdir: pathlib.Path, *flags: str) -> dict | None:
    evaluation = subprocess.run(
        [
            sys.executable,
            "-m",
            "charrnn_jax.evaluate",
            f"--workdir={workdir}",
            "--json",
            "--nohuge_pages",
            *flags,
        ],
        cwd=common.REPO,
        capture_output=True,
        text=True,
    )
    if evaluation.returncode:
        return None
    return json.loads(evaluation.stdout.strip().splitlines()[-1])


def _seconds_per_step(rows: list[dict]) -> float | None:
    """Logged wall-clock per step after the first row (so without the compile)."""
    timed = [r for r in rows if r.get("wall_time") is not None]
    if len(timed) < 2 or timed[-1]["step"] == timed[0]["step"]:
        return None
    return (timed[-1]["wall_time"] - timed[0]["wall_time"]) / (timed[-1]["step"] - timed[0]["step"])


def _planned_steps(workdir: Workdir) -> int | None:
    """train.num_steps of the run in `workdir` (None before it wrote its config)."""
    if not workdir.config_file.exists():
        return None
    return json.loads(workdir.config_file.read_text())["train"]["num_steps"]


def train_published(name: str, args, seconds: float) -> dict:
    """The real trainer on one published config until `seconds` run out (SIGTERM: it saves
    and exits), then the full-split val of what it reached (and nanoGPT's estimator for
    the nanoGPT config), with the steps it reached, seconds per step and the projected
    time of the whole run on this device."""
    published = PUBLISHED[name]
    workdir = pathlib.Path(args.runs_dir) / f"{name}_run"
    overrides = {**SMOKE_TRAIN, **published.toy} if args.smoke else {}
    command = cli.trainer_command(published.config, workdir, overrides, "--nohuge_pages")
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=common.REPO, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=max(seconds, 1.0))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # Saves the step it reached, then exits.
        _, err = proc.communicate(timeout=300)
    rows = _read_rows(Workdir(workdir).metrics_file)
    per_step = _seconds_per_step(rows)
    planned = _planned_steps(Workdir(workdir))
    result = {
        "config": name,
        "train_seconds": time.perf_counter() - started,
        "steps": rows[-1]["step"] if rows else 0,
        "seconds_per_step": per_step,
        "projected_run_s": per_step * planned if per_step and planned else None,
        "returncode": proc.returncode,
    }
    if proc.returncode:
        result["error"] = (err or "").strip().splitlines()[-1:]
    scored = _evaluate(workdir)
    if scored is not None:
        result.update(val_loss=scored["loss"], val_step=scored["step"])
    estimated = _evaluate(workdir, "--metric=nanogpt") if published.nanogpt_estimate else None
    if estimated is not None:
        result["val_loss_nanogpt"] = estimated["loss"]
    # Only the rows come back: a device call returns at most 8 files from $OUT.
    metrics = Workdir(workdir).metrics_file
    if metrics.exists():
        shutil.copyfile(metrics, pathlib.Path(args.out) / f"{name}_metrics.jsonl")
    return result


def published_configs(args, seconds: float, report: Report) -> list[dict]:
    """Each published config in turn, sharing `seconds` by their weights."""
    results, deadline = [], time.perf_counter() + seconds
    names = list(PUBLISHED)
    for i, name in enumerate(names):
        weights = [PUBLISHED[n].weight for n in names[i:]]
        share = (deadline - time.perf_counter()) * weights[0] / sum(weights)
        result = (
            train_published(name, args, share)
            if share > 5
            else {"config": name, "skipped": "no time left"}
        )
        report.add("published", result)
        results.append(result)
    return results


def _read_rows(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


# -- The command ------------------------------------------------------------------------------


def _worker(spec: str) -> None:
    """One worker process: train or sample rows of one family, as JSON on the last line."""
    spec = json.loads(spec)
    settings = SMOKE if spec["smoke"] else FULL
    family = spec["family"]
    if family.startswith("sample_"):
        rows = sampling_worker(family.removeprefix("sample_"), settings)
    else:
        rows = train_worker(family, [tuple(j) for j in spec["jobs"]], settings)
    print(json.dumps({"rows": rows}))


def _fmt(value, spec=",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _cell(value) -> str:
    return _fmt(value, ".4g") if isinstance(value, float) else "-" if value is None else str(value)


def run(args) -> dict:
    settings = SMOKE if args.smoke else FULL
    if args.smoke:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    report, started = Report(pathlib.Path(args.out)), time.perf_counter()
    machine_row = ceilings(settings)
    report.add("machine", machine_row)
    report.table(
        "Machine",
        ["device", "bf16 GEMM TFLOP/s", "copy GB/s", "nvidia-smi"],
        [
            [
                machine_row["device"],
                f"{machine_row['bf16_gemm_tflops']:.1f}",
                f"{machine_row['copy_gb_per_s']:.0f}",
                machine_row["nvidia_smi"],
            ]
        ],
    )
    checks = correctness(settings)
    for check in checks:
        report.add("correctness", check)
    report.table(
        "Correctness on the device",
        ["check", "ok", "detail"],
        [
            [c["check"], c["ok"], {k: v for k, v in c.items() if k not in ("check", "ok")}]
            for c in checks
        ],
    )
    bodies = step_program(settings, pathlib.Path(args.out))
    for body in bodies:
        report.add("loop_body", body)
    report.table(
        "Per time step in the compiled train step (fused GRU, f32; forward, then backward)",
        ["while body", "ops launched per step", "by kind"],
        [[b["body"], b["ops_per_step"], b["kinds"]] for b in bodies],
    )
    train_rows = training(settings, args, report)
    report.table(
        "Training tokens/s (median of rounds; ratios within a round: to PyTorch nn.GRU f32,"
        " and an alternative to what it would replace: BASELINE)",
        ["size", "batch", "implementation", "tokens/s", "vs torch f32", "vs its baseline"],
        [
            [
                r["size"],
                r["batch"],
                r["impl"],
                _fmt(r.get("tokens_per_sec")),
                _fmt(r.get("vs_torch_f32"), ".2f"),
                _fmt(r.get("vs_baseline"), ".2f"),
            ]
            for r in train_rows
        ],
    )
    for row in train_rows:
        report.add("training", row)
    _report_auto_choices(settings, train_rows, report)
    sample_rows = sampling(settings, args, report)
    report.table(
        "Sampling chars/s",
        ["implementation", "batch", "chars/s"],
        [[r["impl"], r.get("batch", "-"), _fmt(r.get("chars_per_sec"))] for r in sample_rows],
    )
    for row in sample_rows:
        report.add("sampling", row)
    left = args.budget_s - (time.perf_counter() - started) - args.margin_s
    published = published_configs(args, left, report)
    report.table(
        "The published configs trained on this device (each for its share of the time left)",
        list(PUBLISHED_COLUMNS),
        [[_cell(r.get(c)) for c in PUBLISHED_COLUMNS] for r in published],
    )
    summary = {
        "seconds": time.perf_counter() - started,
        "all_checks_ok": all(c["ok"] for c in checks),
    }
    report.add("summary", summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="Folder for device_check.jsonl and device_check.md.")
    parser.add_argument("--smoke", action="store_true", help="Toy sizes on the CPU (< 1 min).")
    parser.add_argument("--budget_s", type=float, default=480.0, help="Wall-clock for it all.")
    parser.add_argument("--margin_s", type=float, default=30.0, help="Kept back at the end.")
    parser.add_argument(
        "--runs_dir",
        default="",
        help="Workdirs of the published configs' runs (default: a new temporary folder, "
        "outside --out, whose files a device call could not all bring back).",
    )
    parser.add_argument("--worker", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker[0])
        return
    if not args.out:
        parser.error("--out is required")
    args.runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="device_check_runs_")
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
