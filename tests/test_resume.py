"""A run killed with SIGKILL mid-training and restarted ends exactly like an uninterrupted run.

MoCo v2 is the method here because its state has everything a method can carry: the EMA
key encoder and a queue (small, so its write position wraps around during the run)."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ssl_jax.train.preemption import PREEMPTED_EXIT_CODE

from tests.conftest import REPO_ROOT

STEPS = 12
ARGS = ["--config=configs/moco_v2.py:demo", "--config.moco_v2.queue_size=96",
        f"--config.num_steps={STEPS}", "--config.global_batch_size=32",
        "--config.checkpoint.every_steps=4", "--config.log_every_steps=2", "--config.optimizer.warmup_epochs=0.1",
        "--config.eval.linear_probe=False", "--config.eval.compare_random_init=False"]


def _cmd(workdir):
    return [sys.executable, "-m", "ssl_jax.main", *ARGS, f"--workdir={workdir}"]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)


def _final_state(workdir):
    path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
    state = ocp.StandardCheckpointer().restore(path)
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state)}


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    ref = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_cmd(ref), check=True, env=_env(), cwd=REPO_ROOT, timeout=600,
                   stdout=subprocess.DEVNULL)
    return ref


def _assert_same_run(ref, resumed):
    a, b = _final_state(ref), _final_state(resumed)
    assert a.keys() == b.keys() and any("opt_state" in k for k in a)
    assert any("target" in k for k in a) and any("queue" in k for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ma, mb = _metrics(ref), _metrics(resumed)
    assert [m["step"] for m in ma] == [m["step"] for m in mb] == list(range(2, STEPS + 1, 2))
    assert ma == mb


def test_sigkill_and_resume_matches_uninterrupted(reference, tmp_path):
    ref, killed = reference, tmp_path / "killed"

    proc = subprocess.Popen(_cmd(killed), env=_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 10/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(killed / "results.json")

    out = subprocess.run(_cmd(killed), check=True, env=_env(), cwd=REPO_ROOT, timeout=600,
                         capture_output=True, text=True).stdout
    assert "starting at step 8" in out or "starting at step 4" in out, out

    _assert_same_run(ref, killed)


def test_sigterm_checkpoints_exits_75_and_resumes(reference, tmp_path):
    """Preemption: SIGTERM mid-training -> the current step finishes, a checkpoint of it is
    written (off the every-4-steps schedule), exit code 75; the rerun resumes from it."""
    workdir = tmp_path / "preempted"
    proc = subprocess.Popen(_cmd(workdir), env=_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 6/"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    assert "preempted" in err and not os.path.exists(workdir / "results.json")
    saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert 6 <= saved[-1] < STEPS, saved

    out = subprocess.run(_cmd(workdir), check=True, env=_env(), cwd=REPO_ROOT, timeout=600,
                         capture_output=True, text=True).stdout
    assert f"starting at step {saved[-1]}" in out, out
    _assert_same_run(reference, workdir)
