"""Orbax checkpoints of the whole TrainState under <workdir>/checkpoints, with resume.

Every orbax call of the package is here: the run's manager, save, resume, and the raw restore
that reads a checkpoint without rebuilding its run (ssl_jax.pretrained, classifier export).

Orbax writes each checkpoint into a temporary directory and renames it when complete, so
a run killed at any moment (SIGKILL included) leaves only whole checkpoints behind; the
next run restores the latest one. Saving is asynchronous: training continues while the
previous step's arrays are written.
"""
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ssl_jax import parallel, storage
from ssl_jax.train.state import TrainState


def make_manager(workdir: str, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
    """The run's checkpoint manager; the loop decides when to save (every N steps and at the end)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save,
        # Leftover temporaries of a killed run are removed at start; whole checkpoints stay.
        cleanup_tmp_directories=True)
    return ocp.CheckpointManager(storage.join(workdir, "checkpoints"),
                                 options=options, item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, state: TrainState, meta: dict, step: int | None = None) -> None:
    """Start saving `state` and JSON `meta` (e.g. the input position) at `step` (default state.step)."""
    step = int(parallel.to_host(state.step)) if step is None else int(step)
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)), force=True)


def abstract(state: Any, sharding: Any) -> Any:
    """ShapeDtypeStructs of `state` placed with `sharding` (one sharding, or a pytree of them
    matching `state`): the target `restore_latest` restores into."""
    if not isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, sharding)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[TrainState, dict] | None:
    """(state, meta) of the latest checkpoint, placed with abstract_state's shardings; None if none."""
    step = manager.latest_step()
    if step is None:
        return None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]


def latest_meta(manager: ocp.CheckpointManager) -> dict | None:
    """The JSON meta of the latest checkpoint alone (no arrays read); None if there is none."""
    step = manager.latest_step()
    if step is None:
        return None
    return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] or {})


def restore_raw(workdir: str, step: int | None = None) -> tuple[dict, int, dict]:
    """(state as nested dicts of NumPy arrays, step, meta) of the latest or given checkpoint
    under WORKDIR/checkpoints, restored as saved: no abstract state, so neither the model nor
    the dataset is needed, and the saving run's sharding is irrelevant."""
    directory = storage.join(workdir, "checkpoints")
    if not directory.is_dir():
        raise FileNotFoundError(f"{workdir} has no checkpoints/ directory: the run saved no "
                                "checkpoint yet (it saves every config.checkpoint.every_steps and "
                                "at the end).")
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(directory, item_handlers=handlers) as manager, warnings.catch_warnings():
        # Restoring as NumPy needs no sharding; orbax still warns that none was given.
        warnings.filterwarnings("ignore", message="Sharding info not provided")
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"{directory} holds no complete checkpoint.")
        step = max(steps) if step is None else int(step)
        if step not in steps:
            raise ValueError(f"No checkpoint at step {step} in {directory}; saved steps: {sorted(steps)}.")
        meta_tree = manager.item_metadata(step)["state"]
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta_tree)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(restore_args=restore_args), meta=ocp.args.JsonRestore()))
    return restored["state"], step, dict(restored["meta"] or {})
