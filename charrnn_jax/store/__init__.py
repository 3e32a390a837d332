"""Store: what a run leaves on disk: the workdir and its lock, Orbax checkpoints (save,
verified restore, integrity and quarantine), and the metric writers (JSONL, TensorBoard)."""
