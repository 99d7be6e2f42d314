"""Metrics out of a run: DIR/metrics.jsonl, TensorBoard event files, and the console: the
timestamped lines (`console`) and the progress of every long loop (`Progress`: pretraining,
linear / fine-tuning classifiers, the feature passes of evaluation)."""
import json
import re
import sys
import time

import numpy as np

from ssl_jax import storage
from ssl_jax.train import tensorboard


def _to_python(value):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:
    """Writes one JSON object per logging step to metrics.jsonl and the same scalars to TensorBoard.

    On resume from step k, lines with step > k (logged after the checkpoint the run resumed
    from) are dropped, so the file reads as one uninterrupted run.
    """

    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = storage.join(workdir, "metrics.jsonl")
        self._tb = None
        self._lines = []  # the file's content (a gs:// file is rewritten whole on every write)
        if not enabled:
            return
        if storage.exists(self.path):
            self._lines = [line + "\n" for line in storage.read_text(self.path).splitlines()
                           if line.strip() and json.loads(line)["step"] <= resume_step]
        storage.write_file(self.path, "".join(self._lines))
        self._tb = tensorboard.Writer(workdir, step=resume_step)  # grouped tags, config as text

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _to_python(v) for k, v in metrics.items()}}
        line = json.dumps(record) + "\n"
        self._lines.append(line)
        storage.append_text(self.path, line, "".join(self._lines))
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                self._tb.add_scalar(k, v, global_step=int(step))
        self._tb.flush()

    def last(self) -> dict:
        """The metrics of the last line written or kept from an earlier segment ({} if none)."""
        if not self._lines:
            return {}
        record = json.loads(self._lines[-1])
        record.pop("step", None)
        return record

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


# Every console line of a run starts with the UTC time, e.g. "[2026-12-06 14:03:12 UTC] step
# 100/352 | ...": UTC so that the lines of the processes of a multi-host run, and a log read on
# another machine, compare without knowing the hosts' time zones.
_STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\] ")


def stamp(message: str) -> str:
    """`message` prefixed with the current UTC time (continuation lines of a multi-line message
    are left as they are, as the logging module does: a results table stays a table)."""
    return time.strftime("[%Y-%m-%d %H:%M:%S UTC] ", time.gmtime(time.time())) + message


def unstamped(line: str) -> str:
    """A console line without its timestamp (for reading a run's output back)."""
    return _STAMP.sub("", line, count=1)


def console(*parts, sep: str = " ", file=None, flush: bool = True) -> None:
    """print(), timestamped: the one way a run's commands speak on the console."""
    print(stamp(sep.join(str(p) for p in parts)), file=sys.stdout if file is None else file, flush=flush)


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress of a loop of `total_steps` steps of `global_batch_size` images: images/s between
    two lines, elapsed time and ETA, over the loop's own time only (`exclude` takes out, e.g., an
    evaluation run in between). Elapsed counts from the Progress's creation, i.e. after the
    first, compiling step when created after it (pretraining)."""

    def __init__(self, total_steps: int, global_batch_size: int, start_step: int):
        self.total_steps = total_steps
        self.batch = global_batch_size
        self._t, self._step = time.perf_counter(), start_step
        self._t0 = self._t
        self._last_line = self._t

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (e.g. a periodic kNN evaluation) out of the current interval."""
        self._t += seconds
        self._t0 += seconds

    def due(self, every_seconds: float) -> bool:
        """Whether `every_seconds` have passed since the last line (`timing`): for loops whose
        steps are too short, or too many, to report each one."""
        return time.perf_counter() - self._last_line >= every_seconds

    def timing(self, step: int) -> str:
        """'elapsed HH:MM:SS | R img/s | ETA HH:MM:SS', the rate over the steps since the last
        call; '-- img/s' and no ETA until a step has been timed."""
        now = time.perf_counter()
        self._last_line = now
        elapsed = _hms(now - self._t0)
        if step <= self._step:  # no step timed yet (the first, compiling step is not): no rate
            self._t = now
            return f"elapsed {elapsed} | -- img/s | ETA --:--:--"
        rate = (step - self._step) * self.batch / max(now - self._t, 1e-9)
        eta = (self.total_steps - step) * self.batch / max(rate, 1e-9)
        self._t, self._step = now, step
        return f"elapsed {elapsed} | {rate:.1f} img/s | ETA {_hms(eta)}"

    def line(self, step: int, metrics: dict) -> str:
        """The pretraining line: step, loss, the online probe and LR, then `timing`."""
        extras = " ".join(f"{k} {float(metrics[k]):.4f}" for k in ("probe_top1", "lr") if k in metrics)
        head = f"step {step}/{self.total_steps} | loss {float(metrics['loss']):.4f} | {extras} | "
        return head + self.timing(step)


def pass_reporter(what: str, total_batches: int, global_batch_size: int, log=console,
                  every_seconds: float = 30.0):
    """report(done_batches) for a pass over a split (the feature passes of evaluation): a line
    "`what`: batch done/total | elapsed | images/s | ETA" every `every_seconds`, and a last one
    at the end when it printed any (a pass shorter than that stays silent)."""
    progress, printed = Progress(total_batches, global_batch_size, 0), [False]

    def report(done: int) -> None:
        nonlocal progress
        if done == 1:  # timed from the second batch: the first one compiles the network
            progress = Progress(total_batches, global_batch_size, 1)
        if progress.due(every_seconds) or (done >= total_batches and printed[0]):
            printed[0] = True
            log(f"  {what}: batch {done}/{total_batches} | {progress.timing(done)}")

    return report
