"""Sweep expansion, launchers (local, SLURM, TPU VM) and sweep reports."""
