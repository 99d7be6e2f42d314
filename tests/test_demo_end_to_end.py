"""The README's first command: the demo preset trains, its loss falls, and it beats random init."""
import json
import re

import pytest

from ssl_jax import results
from ssl_jax.train.logging import unstamped
from tests.test_tensorboard import scalars


def test_demo_preset_end_to_end(demo_run):
    workdir, proc = demo_run
    assert "random init" in proc.stdout and "kNN top-1" in proc.stdout
    assert f"Results in {workdir}/results.json" in proc.stdout
    assert f"--config=configs/eval/linear.py:demo --workdir={workdir}" in proc.stdout
    # Compilation is announced, and its time said, before the first step's line.
    # Every message starts with its UTC time (ssl_jax.train.logging.stamp); read without it.
    step_lines = [line for line in proc.stdout.splitlines() if re.search(r"\bstep \d+/352 \|", line)]
    assert len(step_lines) == 352 // 20 + 1, step_lines  # every log_every_steps=20 and the last
    assert all(unstamped(line) != line and unstamped(line).startswith("step ") for line in step_lines)
    out = "\n".join(unstamped(line) for line in proc.stdout.splitlines())
    first_step_line = re.search(r"^step \d+/", out, re.M).start()
    assert out.index("Compiling the train step...") < out.index("Compiled the train step and ran its first step in ") < first_step_line

    with open(workdir / "metrics.jsonl") as f:
        metrics = [json.loads(line) for line in f]
    losses = [m["loss"] for m in metrics]
    n = max(len(losses) // 4, 1)
    # The last quarter's mean loss against the first's: 0.501 with XLA's kernel gradients,
    # 0.604 with oneDNN's (the default on one CPU device; measured 2026-11-22). Whether it
    # learned rather than collapsed is checked below (collapse monitor, kNN, probes).
    assert sum(losses[-n:]) / n < 0.7 * sum(losses[:n]) / n, losses
    # The collapse monitor every log step, the periodic kNN every eval.every_steps.
    assert all(0.0 <= m["collapse_std"] <= m["collapse_std_reference"] * 1.5 for m in metrics)
    assert [m["step"] for m in metrics if "knn_top1" in m] == [100, 200, 300, 352]

    records = results.read_records(str(workdir))
    top1 = {(r["protocol"], r["network"]): r["value"] for r in records if r["metric"] == "top1"}
    assert top1[("knn", "online")] > top1[("knn", "random_init")] + 0.05, top1
    assert top1[("linear_cached", "online")] > top1[("linear_cached", "random_init")], top1
    assert top1[("online_probe", "online")] > 0.5, top1
    (train,) = results.select(records, protocol="pretrain", metric="train_seconds")
    assert train["step"] == 352 and train["epochs"] == 32.0 and train["backbone"] == "resnet18_w0.125"
    # TensorBoard: grouped tags, and the end-of-training evaluation next to the curves.
    tags = scalars(workdir / "tensorboard")
    assert {"train/loss", "train/probe_top1", "monitor/collapse_std", "eval/knn_top1",
            "eval/knn/top1/k20_T0.1", "eval/knn/top1/k20_T0.1/random_init", "train/train_seconds"} <= set(tags)
    assert tags["eval/knn/top1/k20_T0.1"] == [(352, pytest.approx(top1[("knn", "online")]))]
