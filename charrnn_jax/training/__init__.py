"""Training: the loop, the jitted steps and train state, the optimizer, the vmapped group of
variants, a run's bookkeeping, the loop's pacing (what is due, SIGTERM) and sweeps."""
