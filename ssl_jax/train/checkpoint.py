"""Orbax checkpoints of the whole TrainState under <workdir>/checkpoints, with resume.

Every orbax call of the package is here: the run's manager, save, resume, and the raw restore
that reads a checkpoint without rebuilding its run (ssl_jax.pretrained, classifier export).

Orbax writes each checkpoint into a temporary directory and renames it when complete, so
a run killed at any moment (SIGKILL included) leaves only whole checkpoints behind; the
next run restores the latest one. Saving is asynchronous: training continues while the
previous step's arrays are written.

What a kill cannot cause, a disk or a copy can: a checkpoint whose files are truncated or
missing. `restore_latest` then warns in one line and falls back to the newest checkpoint that
restores, moving the unreadable ones to WORKDIR/bad_checkpoints/ (never deleted; orbax could
not save the same step again while they stay). `restore_raw` (evaluation, export) never moves
anything: its error names the checkpoint and the step to pass instead. `state_problem` is the
check a state passes before it is saved, and a restored one before it is used.
"""
import dataclasses
import logging
import sys
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
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


# A global L2 norm above this, over the parameters or over the optimizer state, is a diverging
# run, not a trained one: healthy networks of every size here sit between 1 and ~1e3 (weights of
# unit scale, norm ~ sqrt(number of layers x width)), optimizer statistics (momenta, Adam moments)
# far below. Float32 overflows soon after: a state above it is refused like a NaN.
NORM_BOUND = 1e6


@jax.jit
def _health(params, opt_state, rest):
    """(every float leaf finite, global L2 norm of params, of opt_state), on device."""
    floats = lambda tree: [x.astype(jnp.float32) for x in jax.tree.leaves(tree)
                           if jnp.issubdtype(x.dtype, jnp.inexact)]
    finite = jnp.array(True)
    for x in floats((params, opt_state, rest)):
        finite &= jnp.all(jnp.isfinite(x))

    def norm(tree):  # scaled by the largest magnitude: the sum of squares of 1e28s overflows float32
        leaves = floats(tree)
        if not leaves:
            return jnp.float32(0)
        scale = jnp.max(jnp.stack([jnp.max(jnp.abs(x), initial=0.0) for x in leaves]))
        safe = jnp.where(scale > 0, scale, 1.0)
        return safe * jnp.sqrt(sum(jnp.sum(jnp.square(x / safe)) for x in leaves))

    return finite, norm(params), norm(opt_state)


def state_problem(state: Any) -> str | None:
    """Why `state` must not be a checkpoint (a non-finite value, or the global norm of its
    parameters or optimizer state above NORM_BOUND), or None. One small jitted reduction: the
    state stays on its devices. Works on a TrainState and on a classifier's state dict
    ('trainable', 'opt_state')."""
    fields = (state if isinstance(state, dict) else
              {f.name: getattr(state, f.name) for f in dataclasses.fields(state)})
    params = fields.get("params", fields.get("trainable"))
    opt_state = fields.get("opt_state")
    rest = {k: v for k, v in fields.items() if k not in ("params", "trainable", "opt_state")}
    finite, p_norm, o_norm = (float(v) for v in parallel.to_host(_health(params, opt_state, rest)))
    if not finite:
        return "holds NaN or infinite values"
    for name, value in (("parameters", p_norm), ("optimizer state", o_norm)):
        if not value <= NORM_BOUND:
            return (f"has exploded (global norm of its {name} {value:.3g} > {NORM_BOUND:.0e}, the bound "
                    "of a healthy run)")
    return None


def _quiet_aborted_reads() -> None:
    """After a failed restore, orbax's other pending reads complete on their own threads into an
    event loop already closed: each prints a traceback through sys.unraisablehook ('Event loop
    is closed') or asyncio's 'Task exception was never retrieved', hundreds of lines around
    the one-line warning or error. Those two, and only those, are dropped from then on."""
    if getattr(sys.unraisablehook, "_ssl_jax_quiet", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
            return
        previous(unraisable)

    hook._ssl_jax_quiet = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(
        lambda record: not str(record.msg).startswith("Task exception was never retrieved"))


def _why(e: BaseException) -> str:
    """One line of why a restore failed."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def set_aside_directory(manager: ocp.CheckpointManager):
    """WORKDIR/bad_checkpoints: where unreadable checkpoints are kept out of orbax's way."""
    return manager.directory.parent / "bad_checkpoints"


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> list[str]:
    """Move the checkpoints of `steps` to WORKDIR/bad_checkpoints/<step>[.N] (process 0; every
    process then waits for it and reloads the step list); their new paths."""
    target_dir, moved = set_aside_directory(manager), []
    if jax.process_index() == 0:
        target_dir.mkdir(parents=True, exist_ok=True)
        for step in steps:
            target, n = target_dir / str(step), 1
            while target.exists():  # the same step may go bad twice: keep both
                target, n = target_dir / f"{step}.{n}", n + 1
            (manager.directory / str(step)).rename(target)
            moved.append(str(target))
    parallel.barrier("checkpoints set aside")
    manager.reload()
    return moved


def _restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"] or {})


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   validate: Callable[[Any], str | None] | None = None,
                   warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
                   ) -> tuple[Any, dict] | None:
    """(state, meta) of the newest checkpoint that restores (and that `validate(state)` finds
    no problem with), placed with abstract_state's shardings; None if there is no checkpoint.

    A newer checkpoint that fails is one `warn` line (its step, why) and is moved to
    WORKDIR/bad_checkpoints/; if none restores, an error naming them (nothing is moved)."""
    failed = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state, meta = _restore(manager, step, abstract_state)
            problem = validate(state) if validate is not None else None
            problem = problem and f"its state {problem}"
        except Exception as e:  # any read failure: an older checkpoint may be whole
            _quiet_aborted_reads()
            state, problem = None, _why(e)
        if problem is None:
            if failed:
                moved = _set_aside(manager, [s for s, _ in failed])
                warn(f"ssl_jax: warning: resuming from step {step} instead; the unreadable checkpoint(s) "
                     f"were moved to {', '.join(moved)} (kept for inspection, delete them when done).")
            return state, meta
        warn(f"ssl_jax: warning: checkpoint {manager.directory / str(step)} cannot be restored "
             f"({problem}); trying the previous one.")
        failed.append((step, problem))
    if failed:
        raise CheckpointError(
            f"No checkpoint in {manager.directory} can be restored (steps "
            f"{', '.join(str(s) for s, _ in failed)}; step {failed[0][0]}: {failed[0][1]}). Nothing was "
            "moved or deleted. Move the checkpoints/ directory away to train from scratch.")
    return None


class CheckpointError(ValueError):
    """No usable checkpoint where one was asked for; the message names it and the fix."""


def latest_meta(manager: ocp.CheckpointManager) -> dict | None:
    """The JSON meta of the newest checkpoint whose meta reads (no arrays read); None if none."""
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] or {})
        except Exception:  # an unreadable checkpoint: restore_latest reports it
            continue
    return None


def _restore_numpy(manager: ocp.CheckpointManager, step: int) -> tuple[dict, dict]:
    meta_tree = manager.item_metadata(step)["state"]
    if meta_tree is None:
        raise FileNotFoundError("its state/_METADATA file is missing")
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta_tree)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(restore_args=restore_args), meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"] or {})


def restore_raw(workdir: str, step: int | None = None) -> tuple[dict, int, dict]:
    """(state as nested dicts of NumPy arrays, step, meta) of the latest or given checkpoint
    under WORKDIR/checkpoints, restored as saved: no abstract state, so neither the model nor
    the dataset is needed, and the saving run's sharding is irrelevant.

    An unreadable checkpoint is a CheckpointError naming it, why, and the newest step that does
    restore (to pass as --step to export, --config.step to evaluate); nothing is moved."""
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
        try:
            state, meta = _restore_numpy(manager, step)
        except Exception as e:  # a truncated or incomplete checkpoint: name it and the way out
            _quiet_aborted_reads()
            why = _why(e)
            good = None
            for older in sorted((s for s in steps if s < step), reverse=True):
                try:
                    _restore_numpy(manager, older)
                    good = older
                    break
                except Exception:
                    continue
            fix = (f"the newest readable one is step {good}: pass --step={good} (export) or "
                   f"--config.step={good} (evaluate)" if good is not None else
                   "no older checkpoint restores either")
            raise CheckpointError(f"Checkpoint {directory / str(step)} cannot be restored ({why}); {fix}. "
                                  "Nothing was moved or deleted.") from None
    return state, step, meta
