"""What a benchmark ran on: the CPU (model, family, vector flags) and the library versions.

The machines here change from day to day (AVX2-only, AVX-512 Zen 4, Zen 5 with
`avx512_bf16`), and a ratio means little without them, so every benchmark prints
`summary()` first and stores `describe()` with its results.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform

# The flags that decide XLA:CPU's (and oneDNN's) GEMM speed in f32 and bf16.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "keras", "tensorflow", "torch")


def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo ({} where there is none)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def library_versions() -> dict[str, str]:
    """Installed versions, read from package metadata (nothing is imported)."""
    versions = {}
    for name in LIBRARIES:
        for dist in (name, f"{name}-cpu"):
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def describe() -> dict:
    """The machine and software of this run, as stored beside every result."""
    fields = _cpuinfo_fields()
    flags = set(fields.get("flags", "").split())
    return {
        "cpu": fields.get("model name") or platform.processor() or "unknown CPU",
        "cpu_family": fields.get("cpu family"),
        "cpu_model": fields.get("model"),
        "vector_flags": [f for f in VECTOR_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "versions": library_versions(),
    }


def summary(info: dict | None = None) -> str:
    """One line for the top of a benchmark's output."""
    info = info or describe()
    flags = ", ".join(info["vector_flags"]) or "no AVX2"
    versions = " ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (
        f"CPU: {info['cpu']} (family {info['cpu_family']}, model {info['cpu_model']}; {flags}; "
        f"{info['cores']} cores) | {versions}"
    )


if __name__ == "__main__":
    print(summary())
