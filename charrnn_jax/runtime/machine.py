"""The machine a run was measured on, in words: the accelerator's kind, or the CPU's model.

Wall-clock numbers are comparable only between runs on one machine, so each start's
history entry names it (training/identity.py) and `launch.curves` draws a wall-clock
panel only for runs that name the same one.
"""

from __future__ import annotations

import os
import pathlib


def cpu_model(cpuinfo: pathlib.Path = pathlib.Path("/proc/cpuinfo")) -> str:
    """'AMD EPYC (family 25 model 1)': the model name with its family and model numbers
    (cloud CPUs often report only a brand), or the platform's name where /proc is absent."""
    fields = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in fields:
                fields[key.strip()] = value.strip()
    except OSError:
        import platform  # Not Linux: what the OS says.

        return platform.processor() or platform.machine() or "unknown CPU"
    name = fields.get("model name", "unknown CPU")
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def describe(devices) -> str:
    """'cpu: AMD EPYC (family 25 model 1), 2 cores' or 'gpu: 8 x NVIDIA H200'."""
    first = devices[0]
    if first.platform == "cpu":
        return f"cpu: {cpu_model()}, {len(os.sched_getaffinity(0))} cores"
    return f"{first.platform}: {len(devices)} x {first.device_kind}"
