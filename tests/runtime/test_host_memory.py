"""The huge-page restart: when it applies, and that it removes the per-step page faults."""

import os
import subprocess
import sys

import pytest

from charrnn_jax.runtime import host_memory

GLIBC = ("glibc", "2.36")


@pytest.mark.parametrize(
    "environ, libc, thp_mode, expected",
    [
        ({}, GLIBC, "madvise", host_memory.TUNABLE),
        (
            {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
            GLIBC,
            "madvise",
            "glibc.malloc.arena_max=2:" + host_memory.TUNABLE,
        ),
        ({"GLIBC_TUNABLES": host_memory.TUNABLE}, GLIBC, "madvise", None),  # Restarted.
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise", None),  # User's say.
        ({}, GLIBC, "always", None),  # The kernel gives huge pages anyway.
        ({}, GLIBC, "never", None),
        ({}, ("glibc", "2.31"), "madvise", None),  # No such tunable yet.
        ({}, ("", ""), "madvise", None),  # macOS, musl.
    ],
)
def test_environment_with_huge_pages(environ, libc, thp_mode, expected):
    env = host_memory.environment_with_huge_pages(environ, libc=libc, thp_mode=thp_mode)
    assert (env and env["GLIBC_TUNABLES"]) == expected


_FAULTS_OF_A_100MB_BLOCK = """
import ctypes, resource, threading
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = []
def steps():  # Off the main thread, as XLA's executor threads allocate.
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(100 << 20)
        ctypes.memset(block, 1, 100 << 20)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=steps)
thread.start()
thread.join()
print(min(faults))
"""


def test_huge_pages_remove_the_per_step_faults():
    """A freshly mapped 100 MB block faults 25,600 times in 4 KiB pages, ~50 in 2 MiB ones."""
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env = host_memory.environment_with_huge_pages(environ)
    if env is None:
        pytest.skip("not glibc >= 2.35 with transparent huge pages on 'madvise'")

    def faults(env):
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS_OF_A_100MB_BLOCK],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout)

    assert faults(environ) >= 25_000
    assert faults(env) < 2_500
