"""Preemption: on SIGTERM (Cloud TPU maintenance or spot preemption, SLURM requeue or
time limit, Kubernetes eviction) finish the current step, write a checkpoint and exit
with PREEMPTED_EXIT_CODE; rerunning the same command resumes from that checkpoint.

Every process of a multi-process run must stop after the same step, although each gets the
signal at its own moment: JAX's preemption sync manager (started by
jax.distributed.initialize, which handles SIGTERM itself) agrees on that step through the
coordination service, without a device collective. A single process handles SIGTERM here.
Periodic checkpoints stay the guarantee against a hard kill (SIGKILL, a lost host).

The passes outside training stop the same way (exit code 75), within `sigterm_stops`: the
evaluation after training (PreemptedAfterTraining), the evaluation command's passes, a staged
run's labelling pass (PreemptedPass); a single process at once from its SIGTERM handler, a
multi-process run at the next batch of the pass (`poll_pass`), through the same sync point as
training's steps. Such a pass saves nothing midway, so its rerun redoes it.
"""
import contextlib
import itertools
import signal
from typing import Callable

import jax
from jax.experimental import multihost_utils

# EX_TEMPFAIL from sysexits.h: "temporary failure, the user is invited to retry". The
# launchers in launch/ rerun (or requeue) the command when they see it.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """Training stopped early on SIGTERM after checkpointing `step`."""

    def __init__(self, step: int):
        super().__init__(f"preempted (SIGTERM): stopped after step {step} and saved a checkpoint "
                         "there; rerun the same command to resume.")
        self.step = step


class PreemptedAfterTraining(Preempted):
    """SIGTERM after the last training step (during the final evaluation): training is complete
    and its final checkpoint saved; the rerun only evaluates."""

    def __init__(self, step: int):
        Exception.__init__(self, f"preempted (SIGTERM) during the evaluation after training: training is "
                           f"complete and its checkpoint at step {step} saved; rerun the same command "
                           "to evaluate it.")
        self.step = step


class PreemptedPass(Preempted):
    """SIGTERM during a pass that saves nothing midway (the evaluation command's feature passes and
    fits, a staged run's labelling pass): what came before it is saved; the rerun redoes it."""

    def __init__(self, what: str):
        Exception.__init__(self, f"preempted (SIGTERM) during {what}: the pass saves nothing midway and "
                           "what came before it is saved; rerun the same command to redo the pass.")
        self.step = None


# The polls of JAX's preemption sync point by this process, numbered 1, 2, ... for its whole
# life: training steps and evaluation batches alike. On a notice, JAX's sync manager (XLA's
# tsl PreemptionSyncManager) sets the sync point to 1 + the largest number any process had
# passed and answers True to the poll with exactly that number, so the numbers must only grow
# (a loop or pass restarting its own count at 1 would never reach it) and must agree between
# processes, which they do: every process polls at the same training steps and evaluation
# batches (the batches of a pass are padded to the same count on every process).
_polls = itertools.count(1)


def _all_processes_reached_sync_point() -> bool:
    """Multi-process: True at the poll where every process stops after a SIGTERM to any of them."""
    return multihost_utils.reached_preemption_sync_point(next(_polls))


# The error that the enclosing multi-process `sigterm_stops` block raises at a SIGTERM (a callable
# making it); None outside one (then `poll_pass` does nothing).
_stop_error = None


@contextlib.contextmanager
def sigterm_stops(error: Callable[[], Preempted]):
    """Within the block, SIGTERM stops the work with the exception `error()` (a Preempted, which the
    commands turn into one line and exit code 75). For passes whose work left is redone by the rerun,
    so nothing needs saving. A single process raises at once, from its SIGTERM handler; in a
    multi-process run JAX's preemption service owns SIGTERM, and every process raises at the same
    `poll_pass` (feature batches, classifier fits and kNN settings call it). Blocks nest: the inner
    one's error wins while it lasts (a training loop inside one installs its own handler, which
    checkpoints, and gives this one back when it ends)."""
    global _stop_error
    if jax.process_count() > 1:
        previous, _stop_error = _stop_error, error
        try:
            yield
        finally:
            _stop_error = previous
        return

    def stop(signum, frame):
        del signum, frame
        raise error()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sigterm_stops_evaluation(step: int):
    """`sigterm_stops` for the evaluation of a trained run at its last step: the rerun only evaluates."""
    return sigterm_stops(lambda: PreemptedAfterTraining(step))


def poll_pass() -> None:
    """Call after each unit of a pass's work that every process does alike (a feature batch, a
    classifier fit). Within a multi-process `sigterm_stops`: raises its error once a SIGTERM reached
    any process (at the same call on all of them). Elsewhere (one process, passes during training)
    nothing."""
    if _stop_error is not None and _all_processes_reached_sync_point():
        raise _stop_error()


class PreemptionWatcher:
    """`should_stop(step)`: True once a SIGTERM was received (by any process), at a step that
    every process reaches; every process calls it after every train step (`step`, the step
    just done, is for the callers' tests; the processes agree through `_polls`)."""

    def __init__(self):
        self._multiprocess = jax.process_count() > 1
        self._received = False
        self._previous = None
        if not self._multiprocess:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        del signum, frame
        self._received = True

    def should_stop(self, step: int) -> bool:
        del step
        if self._multiprocess:
            return _all_processes_reached_sync_point()
        return self._received

    def close(self) -> None:
        """Give SIGTERM its previous handler back."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
