"""The README's first command: the demo preset trains, its loss falls, and it beats random init."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_demo_preset_end_to_end(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
    proc = subprocess.run([sys.executable, "-m", "ssl_jax.main", "--config=configs/byol.py:demo",
                           f"--workdir={tmp_path}"], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "random init" in proc.stdout and "kNN top-1" in proc.stdout

    with open(tmp_path / "metrics.jsonl") as f:
        metrics = [json.loads(line) for line in f]
    losses = [m["loss"] for m in metrics]
    n = max(len(losses) // 4, 1)
    assert sum(losses[-n:]) / n < 0.6 * sum(losses[:n]) / n, losses

    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    rand = results["random_init"]
    assert results["knn_top1"] > rand["knn_top1"] + 0.05, results
    assert results["linear_top1"] > rand["linear_top1"], results
    assert results["online_probe_top1"] > 0.5, results
    assert os.listdir(tmp_path / "tensorboard")
