"""A group of variants trained in one program: a plain run is a group of one.

`Single` runs the plain jitted step; `Stacked` runs K variants (differing only in
steps.VMAPPABLE_KEYS) through jax.vmap over stacked states. Both answer the questions
of the VariantGroup protocol (keys, batches, restore, compiled steps, variant i's slice),
so the loop has no branches on which it is; they share one implementation (_Group) over
the few hooks where they differ.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from charrnn_jax import config_lib
from charrnn_jax.errors import UserError
from charrnn_jax.inference import scoring
from charrnn_jax.runtime import parallel
from charrnn_jax.store import checkpointing
from charrnn_jax.training import steps


class Programs(NamedTuple):
    """A group's jitted programs (compiled on first use, or ahead by the loop)."""

    train: Callable  # (state, batch, dropout keys) -> state; donates the state.
    eval: Callable  # (params, batch) -> sums of one stand-alone eval batch.
    eval_segment: Callable  # (params, segment, carry) -> (sums, carry); donates the carry.
    zero_carry: Callable  # (params, segment) -> the carry the first segment starts from.
    reset: Callable  # state -> state with an empty metric window; donates the state.


def check_vmappable(configs) -> None:
    """Variants trained in one vmapped program may differ only in VMAPPABLE_KEYS."""
    flat = [config_lib.flatten(c) for c in configs]
    for key in flat[0]:
        if key in steps.VMAPPABLE_KEYS:
            continue
        values = {repr(f.get(key)) for f in flat}
        if len(values) > 1:
            raise UserError(
                f"A vmapped sweep's variants may differ only in "
                f"{', '.join(steps.VMAPPABLE_KEYS)}; {key} takes the values {sorted(values)}. "
                f"Run those as separate sweeps."
            )
    if len({c.train.grad_clip_norm > 0 for c in configs}) > 1:
        raise UserError("A vmapped sweep needs train.grad_clip_norm > 0 in all variants or none.")


class VariantGroup(Protocol):
    """What the loop asks of a group of variants (a plain run is a group of one): its
    configs and mesh, per-variant keys and batches, the restored or fresh state, the
    compiled programs, and variant i's slice of any group value."""

    configs: list
    size: int
    stacked: bool

    def keys(self, fold: int): ...
    def global_batch(self, local_batches): ...
    def restore_or_init(self, checkpointers, init): ...
    def compile(self, model, schedule, state_sharding, *, chunk: int) -> Programs: ...
    def select(self, tree, i: int): ...
    def host_row(self, tree, i: int): ...


class _Group:
    """What Single and Stacked share: keys, compiled programs, shardings and restore,
    written once over the hooks each defines (lift, stack, select, host_row,
    global_batch, train_fn)."""

    stacked: bool

    def __init__(self, configs, mesh):
        self.configs = list(configs)
        self.size = len(self.configs)
        self.mesh = mesh
        self.repl = parallel.replicated(mesh)
        self.data_sharding = parallel.data_sharded(mesh, variant_axis=self.stacked)

    def keys(self, fold: int):
        """fold_in(key(seed), fold) per variant, as a global (replicated) array."""
        seeds = jnp.array([c.seed for c in self.configs], jnp.int32)  # As jit sees an int.
        make = self.lift(lambda seed: jax.random.fold_in(jax.random.key(seed), fold))
        return jax.jit(lambda s: make(s if self.stacked else s[0]), out_shardings=self.repl)(seeds)

    def compile(self, model, schedule, state_sharding, *, chunk: int) -> Programs:
        """The jitted train step (donating the state), eval steps and window reset."""
        params_sharding = state_sharding.params
        score = functools.partial(scoring.eval_step, apply_fn=model.apply, chunk=chunk)
        segment = functools.partial(scoring.eval_segment, apply_fn=model.apply, chunk=chunk)
        zero = functools.partial(scoring.zero_carry, apply_fn=model.apply, chunk=chunk)
        data = self.data_sharding
        return Programs(
            train=parallel.model_jit(
                model,
                self.train_fn(schedule),
                in_shardings=(state_sharding, data, self.repl),
                out_shardings=state_sharding,
                donate_argnums=0,
            ),
            eval=parallel.model_jit(
                model,
                self.lift(score),
                in_shardings=(params_sharding, data),
                out_shardings=self.repl,
            ),
            eval_segment=parallel.model_jit(
                model,
                self.lift(segment),
                in_shardings=(params_sharding, data, data),
                out_shardings=(self.repl, data),
                donate_argnums=2,
            ),
            zero_carry=parallel.model_jit(
                model, self.lift(zero), in_shardings=(params_sharding, data), out_shardings=data
            ),
            reset=jax.jit(
                steps.reset_window,
                in_shardings=(state_sharding,),
                out_shardings=state_sharding,
                donate_argnums=0,
            ),
        )

    def sharding(self, abstract_state, field: str):
        """Shardings of one state field: the carry split like the batch, the rest replicated."""
        value = getattr(abstract_state, field)
        sharding = self.data_sharding if field == "carry" else self.repl
        return jax.tree.map(lambda _: sharding, value)

    def restore_or_init(self, checkpointers, init):
        """The (stacked) state at the runs' common checkpoint step, or freshly initialised.

        Returns (state, state_sharding, start_step or None).
        """
        init_keys = self.keys(0)
        abstract_one = jax.eval_shape(init, jax.random.key(0))
        one_variant = Single(self.configs[:1], self.mesh)
        abstract_items = {
            item: checkpointing.abstract_like(
                getattr(abstract_one, item), one_variant.sharding(abstract_one, item)
            )
            for item in checkpointing.ITEMS
            if getattr(abstract_one, item) is not None
        }
        init_fn = self.lift(init)
        abstract_state = jax.eval_shape(init_fn, init_keys)
        state_sharding = abstract_state.replace(
            **{f: self.sharding(abstract_state, f) for f in ("step", *checkpointing.ITEMS)}
        )
        start_step, restored = _restore_all(checkpointers, abstract_items)
        if start_step is None:
            one_sharding = abstract_one.replace(
                **{f: one_variant.sharding(abstract_one, f) for f in ("step", *checkpointing.ITEMS)}
            )
            state = self.init_each(init, init_keys, one_sharding, state_sharding)
            init_from = self.configs[0].train.init_from
            if init_from:  # Fine-tuning: another run's params, a fresh optimizer.
                params = checkpointing.load_params(init_from, abstract_items["params"])
                state = state.replace(
                    params=self.stack([params] * self.size, state_sharding.params)
                )
            return state, state_sharding, None
        logging.info("Resumed from checkpoint step %d.", start_step)
        items = {}
        for item in abstract_items:
            sharding = getattr(state_sharding, item)
            if all(item in r for r in restored):
                items[item] = self.stack([r[item] for r in restored], sharding)
            else:  # An older checkpoint without a metric window: start an empty one.
                logging.warning(
                    "Checkpoint step %d has no %s; starting it empty.", start_step, item
                )
                items[item] = _zeros_like(getattr(abstract_state, item), sharding)
        step_array = jax.jit(
            lambda: jnp.full(abstract_state.step.shape, start_step, jnp.int32),
            out_shardings=self.repl,
        )()
        return abstract_state.replace(step=step_array, **items), state_sharding, start_step


class Single(_Group):
    """One run, stepped by the plain jitted train step: every hook is the identity."""

    stacked = False

    def lift(self, fn):
        """fn over one variant -> fn over the group's (stacked) values."""
        return fn

    def stack(self, trees, sharding):
        """Per-variant trees -> the group's value (stacked on a leading axis for K > 1)."""
        return trees[0]  # Restored onto this sharding already.

    def select(self, tree, i: int):
        """Variant i's slice of a (stacked) device tree."""
        return tree

    def host_row(self, tree, i: int):
        """Variant i of fetched (numpy) values."""
        return tree

    def global_batch(self, local_batches):
        """One batch per variant (process-local) -> one global array."""
        return parallel.global_batch(local_batches[0], self.mesh)

    def init_each(self, init, keys, one_sharding, sharding):
        """The fresh state of the run from its key."""
        del one_sharding
        return jax.jit(init, out_shardings=sharding)(keys)

    def train_fn(self, schedule):
        return functools.partial(steps.windowed_train_step, schedule=schedule)


class Stacked(_Group):
    """K variants in one program: jax.vmap over states stacked on a leading axis."""

    stacked = True

    def __init__(self, configs, mesh):
        super().__init__(configs, mesh)
        # One program for every i (traced), not one per variant.
        self._select = jax.jit(
            lambda tree, i: jax.tree.map(lambda x: x[i], tree), out_shardings=self.repl
        )

    def lift(self, fn):
        return jax.vmap(fn)

    def stack(self, trees, sharding):
        return jax.jit(
            lambda *t: jax.tree.map(lambda *x: jnp.stack(x), *t), out_shardings=sharding
        )(*trees)

    def select(self, tree, i: int):
        return self._select(tree, i)

    def host_row(self, tree, i: int):
        return jax.tree.map(lambda x: x[i], tree)

    def global_batch(self, local_batches):
        stacked = jax.tree.map(lambda *x: np.stack(x), *local_batches)
        return parallel.global_batch(stacked, self.mesh, variant_axis=True)

    def init_each(self, init, keys, one_sharding, sharding):
        """Each variant initialised by the plain run's program, then stacked.

        Not jax.vmap(init): on XLA:CPU (jax 0.10.2) the vmapped init of a stacked
        recurrent model (two or more layers, K >= 2: batched QR for the orthogonal
        kernels) never completes under the default YNNPACK fusions, so every vmapped
        sweep of such a config hung before its first step. The plain program is also the
        one a plain run of each variant starts from.
        """
        one = jax.jit(init, out_shardings=one_sharding)
        return self.stack([one(keys[i]) for i in range(self.size)], sharding)

    def train_fn(self, schedule):
        hparams = jax.device_put(
            {
                key: jnp.array([getattr(c.train, key) for c in self.configs], jnp.float32)
                for key in steps.VMAPPED_HPARAMS
            },
            self.repl,
        )
        return functools.partial(
            steps.vmapped_train_step, hparams=hparams, train_config=self.configs[0].train
        )


def _zeros_like(abstract_tree, sharding):
    """Zeros of an abstract tree's shapes and dtypes, as global (replicated) arrays."""
    return jax.jit(
        lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract_tree),
        out_shardings=sharding,
    )()


def _restore_all(checkpointers, abstract_items):
    """Every run restored at one common step: (step or None, [restored items per run])."""
    restored = [ckpt.restore(abstract_items, exact=True) for ckpt in checkpointers]
    found = [step for step, _ in restored]
    if len(set(found)) == 1:
        return found[0], [items for _, items in restored]
    if None in found:
        raise UserError(
            "The variants' workdirs hold checkpoints at different steps ("
            + ", ".join(f"{c.workdir.name}: {s}" for c, s in zip(checkpointers, found, strict=True))
            + "); resume them with the same variants, or move the odd ones away."
        )
    common = min(found)
    logging.warning("Variants are at different steps %s; resuming all from %d.", found, common)
    return common, [
        items if step == common else ckpt.restore(abstract_items, step=common, exact=True)[1]
        for ckpt, (step, items) in zip(checkpointers, restored, strict=True)
    ]
