"""The resumable step loop (ssl_jax.train.resumable) on a toy state: save cadence, the
finite-loss check before any save, SIGTERM, a resume that ends where an uninterrupted run ends,
and at most two steps in flight (a SIGTERM is answered within two steps)."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.train import checkpoint, preemption, resumable


def _step(state, step):
    """A toy step: the counter advances; when poisoned, the loss is NaN from step index 8 on
    (done 9: a save step, not a log step)."""
    loss = jnp.nan if state["poison"] and step >= 8 else 1.0 / (step + 1)
    return dict(state, count=state["count"] + 1), {"loss": jnp.float32(loss)}


def _run(tmp_path, state, start, total, logged=None):
    manager = checkpoint.make_manager(str(tmp_path), keep=10, async_save=False)
    return resumable.run_steps(
        state, _step, start=start, total=total, log_every=4,
        on_log=lambda done, s, m: (logged if logged is not None else []).append(done),
        nonfinite_message=lambda what, done: f"{what} at {done}.", manager=manager, save_every=3)


def _saved(tmp_path):
    return sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())


def test_cadence_logs_and_saves(tmp_path):
    logged = []
    out = _run(tmp_path, {"count": jnp.int32(0), "poison": False}, 0, 10, logged)
    assert int(out["count"]) == 10 and logged == [4, 8, 10]
    assert _saved(tmp_path) == [3, 6, 9, 10]


def test_nonfinite_loss_is_never_saved(tmp_path):
    with pytest.raises(resumable.NonFiniteLossError, match=r"the loss is nan at 9\. .*last good checkpoint is step 6"):
        _run(tmp_path, {"count": jnp.int32(0), "poison": True}, 0, 10)
    assert _saved(tmp_path) == [3, 6]  # checked at the save of step 9, not only at log steps


def test_sigterm_saves_and_a_rerun_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(preemption.PreemptionWatcher, "should_stop", lambda self, step: step == 5)
    with pytest.raises(preemption.Preempted):
        _run(tmp_path, {"count": jnp.int32(0), "poison": False}, 0, 10)
    assert _saved(tmp_path) == [3, 5]
    monkeypatch.undo()
    manager = checkpoint.make_manager(str(tmp_path), keep=10, async_save=False)
    state, meta = checkpoint.restore_latest(manager, {"count": np.zeros((), np.int32), "poison": False})
    manager.close()
    assert meta == {"step": 5} and int(state["count"]) == 5
    assert int(_run(tmp_path, state, 5, 10)["count"]) == 10


def test_the_host_runs_at_most_one_step_ahead():
    """A compiled step of ~0.1 s of matrix products: when the loop dispatches step k, step k - 2
    has finished (its loss is ready). With JAX's asynchronous dispatch alone the loop dispatches
    every step at once, and a SIGTERM would wait for all the queued ones."""
    outputs = []

    @jax.jit
    def compiled(state):
        x = state["x"]
        for _ in range(8):
            x = jnp.tanh(x @ x) / 8.0
        return {"x": x}, {"loss": jnp.sum(x)}

    def step_fn(state, step):
        if step >= 2:
            assert outputs[step - 2]["loss"].is_ready(), f"step {step} dispatched before step {step - 2} finished"
        state, metrics = compiled(state)
        outputs.append(metrics)
        return state, metrics

    start = {"x": jnp.ones((1024, 1024), jnp.float32)}
    jax.block_until_ready(compiled(start))  # compiled before the loop
    resumable.run_steps(start, step_fn, start=0, total=6, log_every=100, on_log=lambda *a: None,
                        nonfinite_message=lambda what, done: what)
