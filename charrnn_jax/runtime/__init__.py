"""Runtime: what a command process stands on: flag parsing and `error:` lines, huge pages,
jax.distributed, and the device mesh with its shardings."""
