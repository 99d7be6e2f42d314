"""The resumable step loop shared by pretraining (train/loop.py) and classifier training
(evaluate/supervised.py): steps from a restored start, the finite-loss check, the checkpoint
cadence, SIGTERM (train/preemption.py) and the wait/close of the checkpoint manager.

What a loop does per step (its batch, its step function, its log line) is the caller's; when
it saves, when it stops and what it refuses to save are decided here, once.
"""
import math
from typing import Any, Callable

import jax

from ssl_jax import parallel
from ssl_jax.train import checkpoint, preemption


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite, or the state to save is not finite or has exploded."""


def _last_good(manager: Any, step: int | None) -> str:
    """The sentence of a divergence error about the checkpoint a rerun resumes from."""
    if manager is None:
        return "Nothing was saved."
    if step is None:
        return ("Nothing of it was saved, and the run has no checkpoint yet: a rerun starts from "
                "step 0.")
    return (f"Nothing of it was saved; the last good checkpoint is step {step} "
            f"({manager.directory / str(step)}): a rerun resumes from it.")


def run_steps(state: Any, step_fn: Callable[[Any, int], tuple[Any, dict]], *, start: int, total: int,
              log_every: int, on_log: Callable[[int, Any, dict], None],
              nonfinite_message: Callable[[str, int], str],
              manager: Any = None, save_every: int = 0,
              meta: Callable[[int], dict] = lambda done: {"step": done}) -> Any:
    """Run `state, metrics = step_fn(state, step)` for step in range(start, total); the state
    after `total` steps.

    Args:
      on_log: called as on_log(done, state, host_metrics) every `log_every` steps and after
        the last one (done = steps completed).
      nonfinite_message: (what, done) -> the message (cause and fix) of the NonFiniteLossError
        raised when the loss is not finite (what: 'the loss is nan'), checked at every log and
        every save, or when the state about to be saved is not finite or has exploded
        (checkpoint.state_problem); the error adds the last good checkpoint. So no checkpoint
        holds a diverged state.
      manager: a `checkpoint.make_manager` to save to (`checkpoint.save`, meta(done) beside
        the state) every `save_every` steps, after the last one and on SIGTERM; closed on
        return or error (pending writes finished). None: nothing is saved.
    Raises:
      preemption.Preempted on SIGTERM, after the current step (and its checkpoint).
    """
    watcher = preemption.PreemptionWatcher()
    # The checkpoint a rerun would resume from: the one this run started from, then each save
    # (every saved state passed checkpoint.state_problem).
    last_good = start if manager is not None and start in manager.all_steps() else None
    previous = None  # the loss of the step before, still computing perhaps
    try:
        for step in range(start, total):
            state, metrics = step_fn(state, step)
            # At most two steps in flight: wait for the step before this one (the device stays
            # busy with this one meanwhile). Left alone, JAX's asynchronous dispatch lets the host
            # run as far ahead as the input pipeline allows, and a SIGTERM then waits for every
            # queued step: measured, a 3-block FUSSL step of ~20 s on 2 CPU cores had the loop
            # 24 steps ahead, so the preemption checkpoint came ~8 minutes after the signal,
            # far beyond a scheduler's grace period (Kubernetes: 30 s).
            jax.block_until_ready(previous)
            previous = metrics.get("loss")
            done = step + 1
            preempted = watcher.should_stop(done)
            save = manager is not None and (done % save_every == 0 or done == total or preempted)
            log = done % log_every == 0 or done == total
            if log or save:
                metrics = parallel.to_host(metrics)
                loss = float(metrics["loss"])
                if not math.isfinite(loss):
                    raise NonFiniteLossError(f"{nonfinite_message(f'the loss is {loss}', done)} "
                                             f"{_last_good(manager, last_good)}")
                if log:
                    on_log(done, state, metrics)
            if save:
                problem = checkpoint.state_problem(state)
                if problem is not None:
                    message = nonfinite_message(f"the train state {problem}", done)
                    raise NonFiniteLossError(f"{message} {_last_good(manager, last_good)}")
                checkpoint.save(manager, state, meta(done), step=done)
                last_good = done
            if preempted:
                if manager is not None:
                    manager.wait_until_finished()
                raise preemption.Preempted(done)
    finally:  # also on a preemption or an error: SIGTERM handler restored, checkpoint writes finished
        watcher.close()
        if manager is not None:
            manager.close()
    return state
