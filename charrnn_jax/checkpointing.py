"""Orbax checkpoints in `<workdir>/checkpoints`: async save, restore onto sharded targets.

A checkpoint holds params and optimizer state; its step number is the train step. The
data position needs nothing more, because every batch is a pure function of the step.
Orbax writes each step to a temporary directory and renames it when complete, so a
kill at any moment leaves the previous checkpoints intact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from charrnn_jax import config_lib, models, paths
from charrnn_jax.errors import UserError

CHECKPOINT_DIR = "checkpoints"
QUARANTINE_DIR = "checkpoints_unreadable"
ITEMS = ("params", "opt_state")


class Checkpointer:
    """Saves when told to; restores the newest step that reads back cleanly."""

    def __init__(
        self,
        workdir: epath.PathLike,
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        workdir = paths.workdir_path(workdir)
        self.directory = (
            workdir if paths.is_remote(workdir) else workdir.absolute()
        ) / CHECKPOINT_DIR
        self.read_only = read_only
        if self.directory.exists() and not self.directory.is_dir():
            raise UserError(f"Checkpoint path {self.directory} exists but is not a directory.")
        try:
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep,
                    enable_async_checkpointing=async_save,
                    create=not read_only,
                    read_only=read_only,
                ),
                item_handlers={item: ocp.StandardCheckpointHandler() for item in ITEMS},
            )
        except OSError as e:
            raise UserError(f"Cannot use checkpoint directory {self.directory}: {e}") from None

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def reached_preemption(self, step: int) -> bool:
        """True on every process once a preemption notice arrived (multi-host runs).

        JAX's preemption service exists only under jax.distributed; a single process
        relies on the trainer's SIGTERM handler, so skip the per-step query there.
        """
        return jax.process_count() > 1 and self.manager.reached_preemption(step)

    def save(self, step: int, params, opt_state) -> bool:
        """Starts an async save; every process must call this (never only process 0)."""
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state)
            ),
            force=True,
        )

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def _quarantine(self, step: int) -> epath.Path:
        """Moves an unreadable step aside (kept for inspection) so the step can be redone."""
        target = self.directory.parent / QUARANTINE_DIR / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.rmtree()
            (self.directory / str(step)).rename(target)
        multihost_utils.sync_global_devices(f"charrnn_quarantine_{step}")
        self.manager.reload()
        return target

    def _check_shapes(self, step: int, item: str, target) -> None:
        """Raises a UserError naming both shapes if the checkpoint's differ from the target's."""
        metadata = self.manager.item_metadata(step)[item]
        # Orbax metadata trees turn tuples into lists; compare leaves by their key path.
        saved = {
            jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(metadata)[0]
        }
        for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
            key = jax.tree_util.keystr(path, simple=True, separator="/")
            if key in saved and saved[key] != tuple(leaf.shape):
                raise UserError(
                    f"Checkpoint step {step} in {self.directory} does not match the config: "
                    f"{item}/{key} has shape {saved[key]} in the checkpoint but "
                    f"{tuple(leaf.shape)} in the model. Use another workdir or the old config."
                )

    def restore(self, abstract_items: dict, step: int | None = None):
        """Restores the requested items onto their (sharded) abstract targets.

        Args:
          abstract_items: {'params': tree, 'opt_state': tree} or a subset; leaves are
            jax.ShapeDtypeStruct with shardings.
          step: a specific step, or None for the newest one that reads back cleanly.
            A newest step that is truncated or corrupted is skipped with a warning.

        Returns:
          (step, {item: restored tree}), or (None, None) if there is no checkpoint.
        """
        steps = [step] if step is not None else self.all_steps()[::-1]
        if step is not None and step not in self.all_steps():
            raise UserError(
                f"No checkpoint for step {step} in {self.directory}; have {self.all_steps()}."
            )
        for candidate in steps:
            try:
                for item, target in abstract_items.items():
                    self._check_shapes(candidate, item, target)
                restored = self.manager.restore(
                    candidate,
                    args=ocp.args.Composite(
                        **{
                            item: ocp.args.StandardRestore(target)
                            for item, target in abstract_items.items()
                        }
                    ),
                )
                return candidate, {item: restored[item] for item in abstract_items}
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - any read failure means "corrupt".
                if step is not None:
                    raise UserError(
                        f"Checkpoint step {step} in {self.directory} is "
                        f"unreadable: {type(e).__name__}: {e}"
                    ) from None
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if not self.read_only:
                    reason += f"; moved to {self._quarantine(candidate)}"
                logging.warning(
                    "Checkpoint step %d in %s is unreadable (%s); trying an older one.",
                    candidate,
                    self.directory,
                    reason,
                )
        if steps:
            raise UserError(f"Every checkpoint in {self.directory} is unreadable: steps {steps}.")
        return None, None


def abstract_like(tree, shardings):
    """ShapeDtypeStructs of `tree`'s leaves with the matching `shardings` leaves."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
    )


def load_for_inference(workdir, step: int | None = None):
    """Params only (no optimizer state) plus the run's config, for sampling on one device.

    Returns:
      (config, model, params, step).
    """
    workdir = paths.workdir_path(workdir)
    if not workdir.is_dir():
        raise UserError(f"Workdir {workdir} does not exist.")
    config = config_lib.load(workdir / "config.json")
    model = models.from_config(config.model)
    if not (workdir / CHECKPOINT_DIR).is_dir():
        raise UserError(f"No checkpoints in {workdir}: train first, or check the path.")
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    )
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract
    )
    ckpt = Checkpointer(workdir, read_only=True, async_save=False)
    try:
        restored_step, restored = ckpt.restore({"params": abstract}, step=step)
    finally:
        ckpt.close()
    if restored_step is None:
        raise UserError(f"No checkpoints in {workdir / CHECKPOINT_DIR}: train first.")
    return config, model, restored["params"], restored_step
