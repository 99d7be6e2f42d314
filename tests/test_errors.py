"""Errors a user can cause stop with one clear message and leave the workdir's checkpoints intact."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, device_env

DEMO = ["--config=configs/byol.py:demo", "--config.global_batch_size=16", "--config.log_every_steps=2",
        "--config.optimizer.warmup_epochs=0.05", "--config.eval.linear_probe=False",
        "--config.eval.compare_random_init=False"]


def _main(args, workdir, devices=1):
    env = device_env(devices)
    return subprocess.run([sys.executable, "-m", "ssl_jax.main", *args, f"--workdir={workdir}"],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def _error_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ssl_jax: error:")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("args,needles", [
    (["--config.optimizer.no_such_field=1"], ["optimizer.no_such_field", "not a field"]),
    (["--config.data.dataset=no_such_dataset"], ["no_such_dataset"]),
    (["--config.data.dataset=cifar10", "--config.data.data_dir=/nonexistent/tfds"], ["/nonexistent/tfds", "data_dir"]),
])
def test_bad_input_is_one_clear_message(tmp_path, args, needles):
    message = _error_line(_main(DEMO + args, tmp_path))
    for needle in needles:
        assert needle in message, message


def test_batch_not_divisible_by_devices(tmp_path):
    message = _error_line(_main(DEMO + ["--config.global_batch_size=12"], tmp_path, devices=8))
    assert "global_batch_size=12" in message and "8 devices" in message


def test_nan_loss_stops_and_keeps_checkpoints(tmp_path):
    ok = _main(DEMO + ["--config.num_steps=4", "--config.checkpoint.every_steps=4"], tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    assert before == ["4"]
    bad = _main(DEMO + ["--config.num_steps=8", "--config.checkpoint.every_steps=2",
                        "--config.optimizer.base_lr=inf"], tmp_path)
    message = _error_line(bad)
    assert "loss is nan" in message.lower() and "base_lr" in message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    assert "last good checkpoint is step 4" in message
    # That the intact checkpoint resumes after a failed run is tests/test_faults.py's
    # (test_truncated_latest_checkpoint trains on from it): not a third run here.
