"""The console: the progress line (rates over training time only) and the end-of-run pointers."""
import re

from ssl_jax.train import logging as logging_lib


def _rate(line: str) -> float:
    return float(re.search(r"\| ([0-9.]+) img/s", line).group(1))


def test_rates_need_a_timed_step_and_leave_out_evaluations(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(logging_lib.time, "perf_counter", lambda: clock[0])
    progress = logging_lib.Progress(total_steps=10, global_batch_size=32, start_step=1)
    # The first line comes right after the (compiling) first step: no interval to rate yet.
    assert progress.line(1, {"loss": 1.0}).endswith("-- img/s | ETA --:--:--")
    clock[0] += 2.0  # steps 2 and 3: 64 images in 2 s
    assert _rate(progress.line(3, {"loss": 1.0})) == 32.0
    clock[0] += 1.0  # step 4 in 1 s, then a 5-second evaluation before its line
    clock[0] += 5.0
    progress.exclude(5.0)
    line = progress.line(4, {"loss": 1.0, "lr": 0.1})
    assert _rate(line) == 32.0 and "lr 0.1000" in line
    assert line.endswith("ETA 00:00:06")  # 6 steps left at 1 step/s


def test_the_end_of_run_points_at_results_and_the_next_commands():
    from ssl_jax.evaluate.in_training import next_commands
    text = next_commands("/tmp/run", "digits")
    assert "/tmp/run/results.json" in text and "tensorboard --logdir /tmp/run" in text
    assert "python -m ssl_jax.evaluate --config=configs/eval/linear.py:demo --workdir=/tmp/run" in text
    assert "python -m ssl_jax.export --workdir=/tmp/run --format=torchvision" in text
    assert "python -m ssl_jax.report /tmp/run" in text
    assert "configs/eval/linear.py:cifar10" in next_commands("w", "cifar10")
    assert "configs/eval/linear.py:PRESET" in next_commands("w", "mnist")  # no preset to name
