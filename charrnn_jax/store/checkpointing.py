"""Orbax checkpoints in `<workdir>/checkpoints`: async save, verified restore onto sharded targets.

A checkpoint holds the train state's items (params, optimizer state, the metric window
since the last metrics row and, in stream mode, the carried recurrent state) and a CRC-32
of every saved array; once Orbax has committed a step, a manifest of every file's CRC-32
is sealed into it (FILE_MANIFEST), so a flipped bit anywhere in the step, even in bytes
no array read touches, is caught. The data position needs nothing more, because every
batch is a pure function of the step. Orbax writes each step to a temporary directory
and renames it when complete, so a kill at any moment leaves the previous checkpoints
intact.

On restore, three kinds of failure are kept apart:
- the checkpoint's tree or shapes differ from the model: the config's fault, one error
  naming the difference, nothing moved;
- the file system refuses (permissions, I/O): an error, nothing moved;
- the data does not read back or does not match its checksums: real corruption, the step
  is moved to `checkpoints_unreadable/` (kept) and the previous step is tried.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from charrnn_jax.errors import UserError
from charrnn_jax.store import integrity
from charrnn_jax.store.workdir import Workdir

# carry: data.mode='stream' only; ema: train.ema_decay > 0 only.
ITEMS = ("params", "opt_state", "window", "carry", "ema")
OPTIONAL_ITEMS = ("window",)  # Absent from checkpoints written before it existed.
# Flat dicts whose keys the code may add or drop between versions (a new metric in the
# window): a key only the code has starts at zero, a key only the checkpoint has is read
# and dropped; both with a line saying so. Every other item must match exactly.
GROWING_ITEMS = ("window",)
META = "meta"  # JSON beside the arrays: the metrics row at the step, the best's val loss.
JSON_ITEMS = (integrity.CHECKSUMS, META)


class Checkpointer:
    """Saves when told to; restores the newest step that reads back and verifies."""

    def __init__(
        self,
        workdir,
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
        best: bool = False,
    ):
        """best=True: the workdir's best-by-val checkpoint (params only, one step kept)."""
        self.workdir = Workdir(workdir)
        self.directory = self.workdir.best_checkpoint_dir if best else self.workdir.checkpoint_dir
        self.read_only = read_only
        if self.directory.exists() and not self.directory.is_dir():
            raise UserError(f"Checkpoint path {self.directory} exists but is not a directory.")
        handlers = {item: ocp.StandardCheckpointHandler() for item in ITEMS}
        handlers.update({item: ocp.JsonCheckpointHandler() for item in JSON_ITEMS})
        try:
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep,
                    enable_async_checkpointing=async_save,
                    create=not read_only,
                    read_only=read_only,
                    # Two managers (latest and best) save the same step numbers; without
                    # their own barrier names, processes can pair one's barrier with the
                    # other's and hang (seen in 2-process runs).
                    multiprocessing_options=ocp.options.MultiprocessingOptions(
                        barrier_sync_key_prefix="best" if best else "latest"
                    ),
                ),
                item_handlers=handlers,
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

    def save(self, step: int, items: dict, meta: dict | None = None) -> None:
        """Starts an async save of `items` (see ITEMS) with their checksums, and `meta`
        (JSON: the metrics row written at this step, or the best's val loss) beside them.

        Every process must call this (never only process 0). A failed write (a full disk,
        say) becomes a UserError naming the step; the steps already on disk stay valid.
        """
        sums = {item: integrity.checksums(tree) for item, tree in items.items()}
        args = {item: ocp.args.StandardSave(tree) for item, tree in items.items()}
        args[integrity.CHECKSUMS] = ocp.args.JsonSave(sums)
        if meta:
            args[META] = ocp.args.JsonSave(meta)
        if step in self.all_steps():  # A resumed run redoing a step it had saved (best/).
            self.manager.delete(step)
        # Orbax's save first waits for the previous one, which is then committed: seal it.
        self._guarded(
            step, lambda: self.manager.save(step, args=ocp.args.Composite(**args), force=True)
        )
        self._seal_committed()

    def read_meta(self, step: int) -> dict:
        """The step's `meta` JSON, or {} where it has none (older steps) or it is unreadable."""
        if not (self.directory / str(step) / META).exists():
            return {}
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
        except Exception as e:  # noqa: BLE001 - meta is a convenience: never fatal.
            logging.warning(
                "Checkpoint step %d's %s is unreadable (%s); ignoring it.", step, META, e
            )
            return {}
        return dict(restored[META] or {})

    def wait_until_finished(self, step: int | None = None) -> None:
        self._guarded(step, self.manager.wait_until_finished)
        self._seal_committed()

    def _seal_committed(self) -> None:
        """Writes the file manifest of every committed step that has none (process 0)."""
        if self.read_only or jax.process_index() != 0 or self.workdir.is_remote:
            return
        for step in self.all_steps():
            step_dir = pathlib.Path(self.directory / str(step))
            # Orbax writes commit_success.txt last: before it, the step is still in flight.
            committed = (step_dir / "commit_success.txt").exists()
            if step_dir.is_dir() and committed and not integrity.is_sealed(step_dir):
                integrity.seal(step_dir)

    def _guarded(self, step, write) -> None:
        try:
            write()
        except Exception as e:  # noqa: BLE001 - any failed write ends the run with one line.
            cause = "no space left on device" if integrity.no_space(e) else str(e).splitlines()[0]
            raise UserError(
                f"Could not write checkpoint{'' if step is None else f' step {step}'} in "
                f"{self.directory}: {cause}. Checkpoints on disk: {self.all_steps()} "
                f"(intact); fix the cause and rerun the same command to resume."
            ) from None

    def close(self) -> None:
        self.manager.close()

    def _quarantine(self, step: int):
        """Moves a corrupt step aside (kept for inspection) so the step can be redone."""
        target = self.workdir.quarantine_dir / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.rmtree()
            (self.directory / str(step)).rename(target)
        multihost_utils.sync_global_devices(f"charrnn_quarantine_{step}")
        self.manager.reload()
        return target

    def items_at(self, step: int) -> set[str]:
        """The array items a step holds (empty if its metadata does not read)."""
        try:
            return set(self._saved_items(step)) - set(JSON_ITEMS)
        except integrity.CorruptCheckpoint:
            return set()

    def _saved_items(self, step: int) -> dict:
        try:
            metadata = self.manager.item_metadata(step)
        except Exception as e:  # noqa: BLE001 - unreadable metadata is corruption.
            raise integrity.CorruptCheckpoint(f"metadata: {type(e).__name__}: {e}") from None
        return {item: tree for item, tree in metadata.items() if tree is not None}

    def _check_items(self, step: int, saved: set, wanted: set, exact: bool) -> None:
        """A checkpoint with other items than the config needs (a carry, say, saved in
        stream mode) belongs to another config: an error naming them, never corruption.
        Inference asks for a subset (params), so only a trainer's restore is `exact`."""
        if not wanted <= saved or (exact and saved != wanted):
            raise UserError(
                f"Checkpoint step {step} in {self.directory} does not match the config: it "
                f"holds {sorted(saved)}, the config needs {sorted(wanted)} (data.mode="
                f"'stream' saves the carry). Use the run's own config, another workdir, or "
                f"--restart."
            )

    def _check_matches(self, step: int, item: str, saved, target) -> None:
        """Raises a UserError naming the difference if the checkpoint's tree is not the model's."""
        saved, wanted = _by_key(saved), _by_key(target)
        where = (
            f"Checkpoint step {step} in {self.directory} does not match what this code builds "
            "from the config: "
        )
        hint = (
            " (If the config is the run's own, the code changed what it builds: use the code "
            "that wrote the checkpoint.) Use another workdir, the run's own config, or --restart."
        )
        missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
        if missing or extra:
            raise UserError(
                f"{where}{item} has {len(saved)} arrays in the checkpoint and {len(wanted)} in "
                f"the model (only in the checkpoint: {extra[:3] or 'none'}; only in the model: "
                f"{missing[:3] or 'none'}).{hint}"
            )
        for key, leaf in wanted.items():
            if tuple(saved[key].shape) != tuple(leaf.shape):
                raise UserError(
                    f"{where}{item}/{key} has shape {tuple(saved[key].shape)} in the checkpoint "
                    f"but {tuple(leaf.shape)} in the model.{hint}"
                )

    def _verify_files(self, step: int) -> None:
        """Every file of the step against its sealed manifest (local workdirs)."""
        if not self.workdir.is_remote:
            integrity.verify_files(pathlib.Path(self.directory / str(step)))

    def _read(self, step: int, abstract_items: dict, exact: bool) -> dict:
        """One step's items, checked against the model and verified against its checksums."""
        self._verify_files(step)
        saved = self._saved_items(step)
        wanted = {
            item: target
            for item, target in abstract_items.items()
            if item in saved or item not in OPTIONAL_ITEMS
        }
        self._check_items(step, set(saved) - set(JSON_ITEMS), set(wanted), exact)
        full_targets = dict(wanted)
        for item in GROWING_ITEMS:
            if item in wanted:
                wanted[item] = _as_saved(step, item, saved[item], wanted[item])
        for item, target in wanted.items():
            self._check_matches(step, item, saved[item], target)
        args = {item: ocp.args.StandardRestore(target) for item, target in wanted.items()}
        verified = (self.directory / str(step) / integrity.CHECKSUMS).exists()
        if verified:
            args[integrity.CHECKSUMS] = ocp.args.JsonRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # noqa: BLE001 - sorted below: refused access or corruption.
            reason = integrity.refused_by_file_system(e)
            if reason:
                raise UserError(
                    f"Cannot read checkpoint step {step} in {self.directory}: {reason}."
                ) from None
            first_line = str(e).splitlines()[0] if str(e) else ""
            raise integrity.CorruptCheckpoint(f"{type(e).__name__}: {first_line}") from None
        items = {item: restored[item] for item in wanted}
        if verified:
            for item, tree in items.items():
                expected = restored[integrity.CHECKSUMS].get(item, {})
                bad = [k for k, crc in integrity.checksums(tree).items() if expected.get(k) != crc]
                if bad:
                    raise integrity.CorruptCheckpoint(f"checksum mismatch in {item}/{bad[0]}")
        else:
            logging.warning("Checkpoint step %d has no checksums (older format).", step)
        for item in GROWING_ITEMS:
            if item in items:
                items[item] = _as_wanted(items[item], full_targets[item])
        return items

    def restore(self, abstract_items: dict, step: int | None = None, *, exact: bool = False):
        """Restores the requested items onto their (sharded) abstract targets.

        Args:
          abstract_items: {item: tree} for items of ITEMS; leaves are jax.ShapeDtypeStruct
            with shardings. An optional item missing from an older checkpoint is left out
            of the result.
          step: a specific step, or None for the newest one that reads back and verifies.
            A newer corrupt step is moved aside with a warning.
          exact: the step must hold exactly these items (a trainer's restore): one saved
            with another data mode is a config error, not corruption.

        Returns:
          (step, {item: restored tree}), or (None, None) if there is no checkpoint.

        Raises:
          UserError: the checkpoint does not match the model, cannot be read, or (for
            step=None) every checkpoint is corrupt.
        """
        if step is not None and step not in self.all_steps():
            raise UserError(
                f"No checkpoint for step {step} in {self.directory}; have {self.all_steps()}."
            )
        candidates = [step] if step is not None else self.all_steps()[::-1]
        for candidate in candidates:
            try:
                return candidate, self._read(candidate, abstract_items, exact)
            except integrity.CorruptCheckpoint as e:
                if step is not None:
                    raise UserError(
                        f"Checkpoint step {step} in {self.directory} is corrupt: {e}"
                    ) from None
                reason = str(e)
                if not self.read_only:
                    reason += f"; moved to {self._quarantine(candidate)}"
                logging.warning(
                    "Checkpoint step %d in %s is corrupt (%s); trying an older one.",
                    candidate,
                    self.directory,
                    reason,
                )
        if candidates:
            raise UserError(
                f"Every checkpoint in {self.directory} is corrupt (steps {candidates}, now in "
                f"{self.workdir.quarantine_dir}). Pass --restart to train from step 0."
            )
        return None, None


def _as_saved(step: int, item: str, saved: dict, target: dict) -> dict:
    """A growing item's restore target with the checkpoint's keys: the code's target for
    keys both have, the saved shape and dtype for keys only the checkpoint has."""
    sharding = next(iter(target.values())).sharding
    added, dropped = sorted(set(target) - set(saved)), sorted(set(saved) - set(target))
    if added:
        logging.warning(
            "Checkpoint step %d was written before %s/%s existed (this code adds it); it "
            "starts at zero.",
            step,
            item,
            ",".join(added),
        )
    if dropped:
        logging.warning(
            "Checkpoint step %d holds %s/%s, which this code no longer has; dropped.",
            step,
            item,
            ",".join(dropped),
        )
    return {
        key: target[key]
        if key in target
        else jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=sharding)
        for key, meta in saved.items()
    }


def _as_wanted(restored: dict, target: dict) -> dict:
    """A restored growing item with the code's keys: zeros for keys the checkpoint lacked."""

    def zeros(abstract):
        return jax.make_array_from_callback(
            abstract.shape,
            abstract.sharding,
            lambda index: np.zeros(abstract.shape, abstract.dtype)[index],
        )

    return {key: restored[key] if key in restored else zeros(t) for key, t in target.items()}


def newest_meta(workdir: Workdir, key: str) -> tuple[int, dict] | None:
    """(step, meta[key]) of the newest checkpoint whose meta holds `key`, read straight
    from its JSON file without opening Orbax (no collective: every process of a
    multi-process run may call it on its own, before the trainer's checkpointer opens)."""
    directory = workdir.checkpoint_dir
    if not directory.is_dir():
        return None
    steps = sorted((int(d.name) for d in directory.iterdir() if d.name.isdigit()), reverse=True)
    for step in steps:
        path = directory / str(step) / META / "metadata"
        try:
            value = json.loads(path.read_text()).get(key) if path.is_file() else None
        except (OSError, ValueError, AttributeError):
            value = None
        if value:
            return step, value
    return None


def _by_key(tree) -> dict:
    """{key path: leaf} of a tree."""
    return {integrity.key_of(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def abstract_like(tree, shardings):
    """ShapeDtypeStructs of `tree`'s leaves with the matching `shardings` leaves."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
    )


def parse_step(text: str | None) -> int | str | None:
    """A --step flag: None (latest), 'best' (lowest val loss) or a step number."""
    if text in (None, "", "latest"):
        return None
    if text == "best":
        return "best"
    if not text.isdigit():
        raise UserError(f"--step must be a step number, 'latest' or 'best', got {text!r}.")
    return int(text)


def load_params(source: str, abstract_params):
    """Params of `WORKDIR[:STEP]` (STEP: a number or 'best'; default the latest) restored
    onto `abstract_params`, the model's own shapes; a mismatch names the difference."""
    workdir, step = source, None
    head, _, tail = source.rpartition(":")
    if head and (tail.isdigit() or tail in ("best", "latest")):
        workdir, step = head, parse_step(tail)
    workdir = Workdir(workdir)
    found, params = restore_params(workdir, abstract_params, step)
    logging.info("Initialised params from step %d of %s.", found, workdir.path)
    return params


def restore_params(workdir: Workdir, abstract_params, step):
    """(step, params) of a step number, the latest (None) or the best ('best') checkpoint.

    A run with train.ema_decay serves its averaged weights (the 'ema' item; the best
    checkpoint holds them as its params already).
    """
    best = step == "best"
    directory = workdir.best_checkpoint_dir if best else workdir.checkpoint_dir
    if not directory.is_dir():
        raise UserError(f"No {'best ' if best else ''}checkpoints in {workdir.path}: train first.")
    ckpt = Checkpointer(workdir, read_only=True, async_save=False, best=best)
    try:
        wanted = ckpt.latest_step() if best or step is None else step
        item = "ema" if wanted is not None and "ema" in ckpt.items_at(wanted) else "params"
        found, items = ckpt.restore(
            {item: abstract_params}, step=ckpt.latest_step() if best else step
        )
    finally:
        ckpt.close()
    if found is None:
        raise UserError(f"No checkpoints in {directory}: train first.")
    return found, items[item]
