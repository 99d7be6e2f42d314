"""The resumable step loop (ssl_jax.train.resumable) on a toy state: save cadence, the
finite-loss check before any save, SIGTERM, and a resume that ends where an uninterrupted run ends."""
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
