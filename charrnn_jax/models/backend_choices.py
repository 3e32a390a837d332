"""What `model.gru_impl`, `model.stack` and `model.scan` run on each backend for 'auto', and why.

Both keys choose how the same function is computed, never which function: the fused GRU
equals flax's `nn.scan(GRUCell)` (tests/models/test_char_rnn.py) and the parallel scans
equal the sequential ones (tests/models/test_linear_cells.py), with the same params. So
one config serves CPU, GPU and TPU, and a workdir may resume on another backend or with
another choice (training/identity.py lets these keys change; the change is recorded).

Each entry says what measured it, or that nothing has yet. The device check
(benchmarks/device_check.py) prints the table its GPU measurements imply ("What auto
should pick on this device"); copy that in here with the run it came from.
"""

from __future__ import annotations

GRU_IMPLS = ("fused", "flax")
STACKS = ("layers", "wavefront")

# model.gru_impl='auto' per backend.
#   cpu: measured. The fused GRU (one GEMM per step, input projection hoisted, hand-written
#     backward) ran 1.31-1.32x flax's nn.scan(GRUCell) at small/64 and small/256
#     (benchmarks/throughput.py, benchmarks/README.md "Training throughput").
#   gpu, tpu: not measured (no device has been lent to a session yet). The fused GRU
#     runs one GEMM and one elementwise fusion per step where GRUCell's step holds six
#     Dense layers (three on the input, three on h), so it is expected to win by more
#     where each kernel launch counts; the device check measures both.
GRU_IMPL = {"cpu": "fused", "gpu": "fused", "tpu": "fused"}

# model.scan='auto' per backend (the residual blocks' linear recurrences).
#   cpu: measured. minGRU's parallel form ran 1.7-1.9x slower than its sequential form
#     at T = 100 to 10,000 (benchmarks/linear_scaling.py, docs/results.md): XLA:CPU runs
#     an elementwise lax.scan step in about a microsecond, while the associative scan does
#     about twice the arithmetic in log2(T) passes, and two cores leave it nothing to use.
#   gpu, tpu: parallel, expected rather than measured: there each sequential step costs a
#     kernel launch, and the associative scan's O(log T) depth is what the hardware runs
#     well. The device check measures minGRU and LRU in both forms.
SCAN = {"cpu": "sequential", "gpu": "parallel", "tpu": "parallel"}

# model.stack='auto' per backend (stacked fused GRU layers: one layer's whole sequence after
# another, or all layers together as a wavefront, models/wavefront.py).
#   cpu: measured. The trainer's step ran 0.94-0.97x layer by layer (2 x GRU 512 bf16 and
#     f32, the 2 x 768 GRU headline, 4 x 256; AMD Zen 3, 2 cores; benchmarks/README.md
#     "Stacked layers as a wavefront"): the forward alone gains 1.19-1.39x, but the
#     backward loses more, since the upper layers' input gradient becomes one small GEMM
#     per step instead of one large GEMM after the loop, and XLA:CPU already spreads each
#     per-step GEMM over both cores.
#   gpu, tpu: layers until measured (no device has been lent to a session yet). The
#     wavefront halves (at 2 layers) the dependent steps, each a kernel launch at a small
#     batch, as cuDNN's multi-layer schedule does, so it is expected to pay there; the
#     device check measures both and prints the pick ("stack").
STACK = {"cpu": "layers", "gpu": "layers", "tpu": "layers"}

# jax.default_backend() names; a plugin may report its platform instead of 'gpu'.
_PLATFORM_FAMILY = {"cuda": "gpu", "rocm": "gpu"}


def backend_family(backend: str) -> str:
    """'cpu', 'gpu' or 'tpu' for a jax backend or platform name."""
    return _PLATFORM_FAMILY.get(backend, backend)


def gru_impl(configured: str, backend: str, *, recurrent_dropout: float = 0.0) -> str:
    """'fused' or 'flax'. 'auto' is this backend's entry in GRU_IMPL, except that
    recurrent dropout (DropConnect on w_h) exists only in the fused GRU."""
    if configured != "auto":
        return configured
    if recurrent_dropout:
        return "fused"
    return GRU_IMPL.get(backend_family(backend), "fused")


def stack(configured: str, backend: str) -> str:
    """'layers' or 'wavefront'. 'auto' is this backend's entry in STACK."""
    if configured != "auto":
        return configured
    return STACK.get(backend_family(backend), "layers")


def scan_mode(configured: str, backend: str) -> str:
    """'parallel' or 'sequential'. 'auto' is this backend's entry in SCAN."""
    if configured != "auto":
        return configured
    return SCAN.get(backend_family(backend), "parallel")
