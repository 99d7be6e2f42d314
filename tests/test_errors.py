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


def test_print_config_shows_the_resolved_config_and_writes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ssl_jax.main", "--config=configs/byol.py:demo",
                           "--config.optimizer.base_lr=0.3", "--print_config"], env=device_env(1), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2  # configs/byol.py is relative to the repository: one clear line
    assert "configs/byol.py does not exist" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ssl_jax.main", f"--config={REPO_ROOT}/configs/byol.py:demo",
                           "--config.optimizer.base_lr=0.3", "--print_config"], env=device_env(1), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json
    config = json.loads(proc.stdout)
    assert config["optimizer"]["base_lr"] == 0.3 and config["method"] == "byol"
    assert config["data"]["dataset"] == "digits" and "momentum" in config["byol"]
    assert os.listdir(tmp_path) == []  # no workdir needed, nothing written


@pytest.mark.parametrize("override,needles", [
    ("--config.optimizer.base_lrr=1", ["optimizer.base_lrr", "Did you mean optimizer.base_lr?", "ssl_jax/presets.py"]),
    ("--config.optimzer.base_lr=1", ["optimzer.base_lr", "Did you mean optimizer?"]),
    ("--config.byol.zzz=1", ["byol.zzz", "--print_config"]),
])
def test_an_unknown_field_names_the_closest_one_and_where_fields_live(tmp_path, override, needles):
    message = _error_line(_main(DEMO + [override], tmp_path))
    for needle in needles:
        assert needle in message, message
    if "zzz" in override:  # nothing close to suggest
        assert "Did you mean" not in message, message


def test_a_missing_workdir_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ssl_jax.main", *DEMO], env=device_env(1), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert "--workdir is required" in _error_line(proc) and proc.returncode == 2
