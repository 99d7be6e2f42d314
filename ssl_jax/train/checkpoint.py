"""Orbax checkpoints of the whole TrainState under <workdir>/checkpoints, with resume.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so
a run killed at any moment (SIGKILL included) leaves only whole checkpoints behind; the
next run restores the latest one. Saving is asynchronous: training continues while the
previous step's arrays are written.
"""
from typing import Any

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


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[TrainState, dict] | None:
    """(state, meta) of the latest checkpoint, placed with abstract_state's shardings; None if none."""
    step = manager.latest_step()
    if step is None:
        return None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]
