"""Metrics out of a run: DIR/metrics.jsonl, TensorBoard event files, a progress line."""
import json
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


class Progress:
    """The stdout progress line: step, loss, images/s and ETA, measured between log steps over
    training time only (`exclude` takes out an evaluation run in between)."""

    def __init__(self, total_steps: int, global_batch_size: int, start_step: int):
        self.total_steps = total_steps
        self.batch = global_batch_size
        self._t, self._step = time.perf_counter(), start_step

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (e.g. a periodic kNN evaluation) out of the current interval."""
        self._t += seconds

    def line(self, step: int, metrics: dict) -> str:
        now = time.perf_counter()
        extras = " ".join(f"{k} {float(metrics[k]):.4f}" for k in ("probe_top1", "lr") if k in metrics)
        head = f"step {step}/{self.total_steps} | loss {float(metrics['loss']):.4f} | {extras} | "
        if step <= self._step:  # no step timed yet (the first, compiling step is not): no rate
            self._t = now
            return head + "-- img/s | ETA --:--:--"
        rate = (step - self._step) * self.batch / max(now - self._t, 1e-9)
        eta = (self.total_steps - step) * self.batch / max(rate, 1e-9)
        self._t, self._step = now, step
        return head + f"{rate:.1f} img/s | ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"
