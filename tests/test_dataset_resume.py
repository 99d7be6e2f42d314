"""DeepCluster killed (SIGKILL) right after a refresh, before any checkpoint holds it, resumes
from the checkpoint before it, recreates the same pseudo-labels, top layer and sampled epoch
order, and ends bit-identical to an uninterrupted run; a checkpoint of another training set is
refused before anything is restored."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from ssl_jax.train.logging import unstamped
from tests.conftest import REPO_ROOT

STEPS = 25  # 11 steps per epoch at batch 128: refreshes open steps 0, 11 and 22
ARGS = ["--config=configs/deepcluster.py:demo", f"--config.num_steps={STEPS}",
        "--config.checkpoint.every_steps=4", "--config.log_every_steps=1", "--config.eval.every_steps=0",
        "--config.eval.linear_probe=False", "--config.eval.compare_random_init=False",
        "--config.deepcluster.num_clusters=20", "--config.deepcluster.reassign_epochs=1",
        "--config.model.name=resnet10"]  # one block per stage: ~20% less to compile per run


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "ssl_jax.main", *ARGS, *extra, f"--workdir={workdir}"]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)


def _final_state(workdir):
    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(STEPS), "state"))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state)}


def test_sigkill_after_a_refresh_then_resume_matches_uninterrupted(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_cmd(ref), check=True, env=_env(), cwd=REPO_ROOT, timeout=600, stdout=subprocess.DEVNULL)

    proc = subprocess.Popen(_cmd(run), env=_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if unstamped(line).startswith("Refresh at epoch 1"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert max(int(d) for d in os.listdir(run / "checkpoints") if d.isdigit()) == 8

    out = subprocess.run(_cmd(run), check=True, env=_env(), cwd=REPO_ROOT, timeout=600, capture_output=True,
                         text=True).stdout
    assert "starting at step 8" in out and "Refresh at epoch 1" in out and "Refresh at epoch 0" not in out
    a, b = _final_state(ref), _final_state(run)
    assert a.keys() == b.keys() and any("per_example" in k for k in a)
    labels = next(v for k, v in a.items() if "labels" in k)
    assert labels.shape == (1536,) and len(np.unique(labels[:1437])) > 1
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with open(ref / "metrics.jsonl") as f, open(run / "metrics.jsonl") as g:
        ma, mb = [json.loads(x) for x in f], [json.loads(x) for x in g]
    assert [m["step"] for m in ma] == list(range(1, STEPS + 1))
    for x, y in zip(ma, mb):  # the same numbers, the refresh's wall time aside
        assert {k: v for k, v in x.items() if k != "refresh_seconds"} == \
            {k: v for k, v in y.items() if k != "refresh_seconds"}
    assert "refresh_nmi_previous" in ma[11] and "refresh_nmi_previous" not in ma[0]

    # The same workdir on another split of its dataset (another dataset is refused earlier, as
    # another run's workdir: tests/test_faults.py): one clear line, before anything is restored.
    proc = subprocess.run(_cmd(run, "--config.data.train_split=test"),
                          env=_env(), cwd=REPO_ROOT, timeout=600, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "per-example state" in proc.stderr and "digits:test (360 examples)" in proc.stderr and \
        "new --workdir" in proc.stderr, proc.stderr[-2000:]
