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
    assert "| elapsed 00:00:03 |" in line  # 8 s since the start, 5 of them evaluating
    clock[0] += 1.0
    assert progress.line(5, {"loss": 1.0}).endswith("ETA 00:00:05")
    # ETAs past a day are hours, not wrapped (time.gmtime would print 02:00:00 for 26 h).
    slow = logging_lib.Progress(total_steps=10 ** 6, global_batch_size=1, start_step=0)
    clock[0] += 10.0
    assert slow.timing(100).endswith("ETA 27:46:30")  # 999,900 images at 10 img/s


def test_console_lines_start_with_the_utc_time(monkeypatch, capsys):
    monkeypatch.setattr(logging_lib.time, "time", lambda: 1796565792.0)  # 2026-12-06 14:03:12 UTC
    logging_lib.console("step 1/10 | loss 1.0000", "x")
    logging_lib.console("Results after 10 steps:\n  kNN top-1 0.5", file=__import__("sys").stderr)
    out, err = capsys.readouterr()
    assert out == "[2026-12-06 14:03:12 UTC] step 1/10 | loss 1.0000 x\n"
    # A multi-line message is stamped once, on its first line (a table stays a table).
    assert err == "[2026-12-06 14:03:12 UTC] Results after 10 steps:\n  kNN top-1 0.5\n"
    assert logging_lib.unstamped(out.splitlines()[0]) == "step 1/10 | loss 1.0000 x"
    assert logging_lib.unstamped("step 1/10") == "step 1/10"


def test_a_pass_reports_every_interval_and_its_end_only_if_it_spoke(monkeypatch):
    clock, lines = [0.0], []
    monkeypatch.setattr(logging_lib.time, "perf_counter", lambda: clock[0])
    report = logging_lib.pass_reporter("features of digits:train", 10, 100, log=lines.append, every_seconds=30.0)
    clock[0] += 50.0
    report(1)  # the first batch compiles: not timed, and no line on its own account
    for done in range(2, 11):
        clock[0] += 10.0
        report(done)
    # A line every 30 s from the first timed batch (300 images each), the last one at the end.
    assert lines == ["  features of digits:train: batch 4/10 | elapsed 00:00:30 | 10.0 img/s | ETA 00:01:00",
                     "  features of digits:train: batch 7/10 | elapsed 00:01:00 | 10.0 img/s | ETA 00:00:30",
                     "  features of digits:train: batch 10/10 | elapsed 00:01:30 | 10.0 img/s | ETA 00:00:00"]
    quiet = logging_lib.pass_reporter("short", 3, 100, log=lines.append, every_seconds=30.0)
    for done in (1, 2, 3):
        clock[0] += 1.0
        quiet(done)
    assert len(lines) == 3  # a pass shorter than the interval says nothing


def test_the_end_of_run_points_at_results_and_the_next_commands():
    from ssl_jax.evaluate.in_training import next_commands
    text = next_commands("/tmp/run", "digits")
    assert "/tmp/run/results.json" in text and "tensorboard --logdir /tmp/run" in text
    assert "python -m ssl_jax.evaluate --config=configs/eval/linear.py:demo --workdir=/tmp/run" in text
    assert "python -m ssl_jax.export --workdir=/tmp/run --format=torchvision" in text
    assert "python -m ssl_jax.report /tmp/run" in text
    assert "configs/eval/linear.py:cifar10" in next_commands("w", "cifar10")
    assert "configs/eval/linear.py:PRESET" in next_commands("w", "mnist")  # no preset to name
