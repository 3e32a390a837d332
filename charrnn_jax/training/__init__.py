"""Training: the loop, the jitted steps and train state, the optimizer, variant groups (a
plain run is a group of one), a run's outputs, the work that falls due after a step, the
loop's cadence (what is due, SIGTERM) and sweeps."""
