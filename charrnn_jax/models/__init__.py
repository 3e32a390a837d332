"""Models: the cell registry, ModelConfig and CharRNN, the flax cells under nn.scan, the
fused GRU, mixed precision, the linear scans, the linear cells and their residual blocks.

Imports nothing else of the package. The names below are the models' public API.
"""

from charrnn_jax.models.char_rnn import (
    CELL_TYPES,
    DTYPES,
    GRU_IMPLS,
    SCAN_MODES,
    STACKS,
    VOCAB_SIZE,
    CharRNN,
    ModelConfig,
    scan_mode,
    zero_carry,
)
from charrnn_jax.models.fused_gru import FusedGRULayer, gru_recurrence
from charrnn_jax.models.precision import mixed_matmul

__all__ = [
    "CELL_TYPES",
    "DTYPES",
    "GRU_IMPLS",
    "SCAN_MODES",
    "STACKS",
    "VOCAB_SIZE",
    "CharRNN",
    "ModelConfig",
    "FusedGRULayer",
    "gru_recurrence",
    "mixed_matmul",
    "scan_mode",
    "zero_carry",
]
