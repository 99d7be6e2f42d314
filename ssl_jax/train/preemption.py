"""Preemption: on SIGTERM (Cloud TPU maintenance or spot preemption, SLURM requeue or
time limit, Kubernetes eviction) finish the current step, write a checkpoint and exit
with PREEMPTED_EXIT_CODE; rerunning the same command resumes from that checkpoint.

Every process of a multi-process run must stop after the same step, although each gets the
signal at its own moment: JAX's preemption sync manager (started by
jax.distributed.initialize, which handles SIGTERM itself) agrees on that step through the
coordination service, without a device collective. A single process handles SIGTERM here.
Periodic checkpoints stay the guarantee against a hard kill (SIGKILL, a lost host).
"""
import contextlib
import signal

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


@contextlib.contextmanager
def sigterm_stops_evaluation(step: int):
    """Within the block, SIGTERM raises PreemptedAfterTraining(step) at once: the work left
    (evaluating the final checkpoint) is redone by the rerun, so nothing needs saving. One
    process only: in a multi-process run JAX's preemption service owns SIGTERM."""
    if jax.process_count() > 1:
        yield
        return

    def stop(signum, frame):
        del signum, frame
        raise PreemptedAfterTraining(step)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class PreemptionWatcher:
    """`should_stop(step)`: True once a SIGTERM was received (by any process), at a step that
    every process reaches; call it after every train step with the same step numbers."""

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
        if self._multiprocess:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._received

    def close(self) -> None:
        """Give SIGTERM its previous handler back."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
