"""A run preempted (SIGTERM) or killed (SIGKILL) mid-training and restarted ends exactly like an
uninterrupted run.

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

from ssl_jax.train.logging import unstamped
from ssl_jax.train.preemption import PREEMPTED_EXIT_CODE

from tests.conftest import REPO_ROOT

STEPS = 12
ARGS = ["--config=configs/moco_v2.py:demo", "--config.moco_v2.queue_size=96",
        f"--config.num_steps={STEPS}", "--config.global_batch_size=32",
        "--config.checkpoint.every_steps=4", "--config.log_every_steps=2", "--config.optimizer.warmup_epochs=0.1",
        "--config.eval.linear_probe=False", "--config.eval.compare_random_init=False",
        # One block per stage: the same kinds of state and layers, ~20% less to compile per run.
        "--config.model.name=resnet10"]


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


def _interrupt(workdir, at_line: str, signum) -> tuple[int, str]:
    """Start the run, send `signum` once it prints a line starting with `at_line`; (exit code, stderr)."""
    proc = subprocess.Popen(_cmd(workdir), env=_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if unstamped(line).startswith(at_line):
            proc.send_signal(signum)
            break
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _start_step(workdir) -> int:
    out = subprocess.run(_cmd(workdir), check=True, env=_env(), cwd=REPO_ROOT, timeout=600,
                         capture_output=True, text=True).stdout
    return int(out.split("starting at step ", 1)[1].split(".")[0])


def test_preemption_and_sigkill_then_resume_match_uninterrupted(tmp_path):
    """SIGTERM (preemption) mid-training: the current step finishes, a checkpoint of it is
    written (off the every-4-steps schedule) and the exit code is 75. The rerun resumes there;
    SIGKILL it later; the next rerun resumes from the last whole checkpoint. The final state
    and metrics.jsonl equal those of an uninterrupted run, bit for bit."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_cmd(ref), check=True, env=_env(), cwd=REPO_ROOT, timeout=600, stdout=subprocess.DEVNULL)

    code, err = _interrupt(run, "step 2/", signal.SIGTERM)
    assert code == PREEMPTED_EXIT_CODE, err[-2000:]
    assert "preempted" in err and not os.path.exists(run / "results.json")
    saved = sorted(int(d) for d in os.listdir(run / "checkpoints") if d.isdigit())
    assert 2 <= saved[-1] < STEPS, saved

    code, _ = _interrupt(run, "step 10/", signal.SIGKILL)
    assert code == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(run / "results.json")

    assert saved[-1] <= _start_step(run) <= 10
    a, b = _final_state(ref), _final_state(run)
    assert a.keys() == b.keys() and any("opt_state" in k for k in a)
    assert any("target" in k for k in a) and any("queue" in k for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ma, mb = _metrics(ref), _metrics(run)
    assert [m["step"] for m in ma] == [m["step"] for m in mb] == list(range(2, STEPS + 1, 2))
    assert ma == mb
