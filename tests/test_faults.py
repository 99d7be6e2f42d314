"""Fault injection: each fault a user or a machine can cause to a training workdir ends with one
clear line, and nothing in the workdir is lost.

One tiny BYOL run (the demo preset at batch 16, 4 steps, checkpoints at 2 and 4: the settings
of test_errors.py, so the compiled step is shared) is trained once for the module; each test
breaks a copy of it. Training is called in-process (the command line would add ~15 s of imports
per case); the command line is run only where the check happens before its heavy imports.
"""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from ssl_jax import cli, presets
from ssl_jax.train import workdir as workdir_lib
from tests.conftest import REPO_ROOT, device_env

STEPS = 4


def _config(method: str = "byol", **overrides):
    """The smallest demo run: <method>:demo at batch 16 for 4 steps, a checkpoint every 2."""
    c = presets.load_config_file(os.path.join(REPO_ROOT, "configs", f"{method}.py") + ":demo")
    c.global_batch_size, c.num_steps, c.log_every_steps = 16, STEPS, 2
    c.checkpoint.every_steps = 2
    c.optimizer.warmup_epochs = 0.05
    c.eval.linear_probe, c.eval.compare_random_init = False, False
    for key, value in overrides.items():
        node, *path = key.split(".")
        target = c
        for part in [node, *path][:-1]:
            target = target[part]
        target[[node, *path][-1]] = value
    return c


def _snapshot(workdir) -> dict:
    """{relative path: sha1} of every file under workdir."""
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = hashlib.sha1(f.read()).hexdigest()
    return out


def _one_line(capsys, fn) -> str:
    """Run fn under the command line's error handler; its single 'ssl_jax: error:' line."""
    with pytest.raises(SystemExit) as exit_info:
        with cli.user_errors():
            fn()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ssl_jax: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, records) of the tiny run, trained once for the module; never modified."""
    from ssl_jax.train import loop

    workdir = tmp_path_factory.mktemp("faults") / "byol"
    records = loop.run(_config(), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    assert not os.path.exists(workdir / workdir_lib.LOCK_NAME)  # released on return
    return workdir, records


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the trained workdir for one test to break."""
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    return copy


# ------------------------------------------------------------------------------------- the lock

HOLDER = """
import sys, time
from ssl_jax.train import workdir as w
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # both processes try at the same moment
try:
    lock = w.acquire(sys.argv[1])
except w.WorkdirInUse as e:
    print("REFUSED " + str(e), flush=True)
    sys.exit(3)
print("OWNER", flush=True)
sys.stdin.read()  # hold the lock until the test closes stdin (or kills this process)
lock.release()
"""


def _holder(workdir, start: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir), str(start)], cwd=REPO_ROOT,
                            env=dict(os.environ, PYTHONPATH=REPO_ROOT), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_racing_for_one_workdir(run_copy, capsys):
    """Two processes start on one workdir at the same moment: exactly one owns it, the other
    stops at once with one line naming the owner's host and pid. Training in the workdir is
    then refused the same way while the owner lives, by the command line before it imports JAX
    or TensorFlow; nothing in the workdir changes."""
    from ssl_jax.train import loop

    before = _snapshot(run_copy)
    start = time.time() + 1.5  # both interpreters are up by then
    procs = [_holder(run_copy, start) for _ in range(2)]
    first = [p.stdout.readline().strip() for p in procs]
    assert sorted(line.split(" ")[0] for line in first) == ["OWNER", "REFUSED"], [
        (line, p.poll() is not None and p.stderr.read()[-2000:]) for line, p in zip(first, procs)]
    owner = procs[first.index("OWNER")]
    loser = procs[1 - first.index("OWNER")]
    assert loser.wait(timeout=30) == 3
    refusal = first[1 - first.index("OWNER")]
    assert f"pid {owner.pid} on host {socket.gethostname()}" in refusal and "another --workdir" in refusal
    try:
        line = _one_line(capsys, lambda: loop.run(_config(), str(run_copy)))
        assert f"pid {owner.pid} on host {socket.gethostname()}" in line, line
        # The command line refuses it before its heavy imports (workdir.check_before_start).
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "ssl_jax.main",
                               "--config=configs/byol.py:demo", f"--workdir={run_copy}"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT))
        errors = [x for x in proc.stderr.splitlines() if x.startswith("ssl_jax: error: ")]
        assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
        assert f"pid {owner.pid} on host {socket.gethostname()}" in errors[0], errors
        imported = [x.split("|")[-1].strip() for x in proc.stderr.splitlines() if x.startswith("import time:")]
        assert "ml_collections" in imported and "jax" not in imported and "tensorflow" not in imported
    finally:
        owner.stdin.close()
        owner.wait(timeout=30)
    assert _snapshot(run_copy) == before  # the released lock file is gone too


def test_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    """SIGKILL leaves run.lock behind with the dead owner's record: the next run takes it over,
    saying whose it was, and holds it against a third."""
    holder = _holder(tmp_path, 0.0)
    assert holder.stdout.readline().strip() == "OWNER", holder.stderr.read()[-2000:]
    holder.kill()
    holder.wait(timeout=30)
    assert os.path.exists(tmp_path / workdir_lib.LOCK_NAME)
    with workdir_lib.acquire(tmp_path) as lock:
        assert lock.previous["pid"] == holder.pid
        assert f"taking over the lock of pid {holder.pid}" in capsys.readouterr().err
        with pytest.raises(workdir_lib.WorkdirInUse, match=f"pid {os.getpid()} on host"):
            workdir_lib.acquire(tmp_path)  # another open file description: refused like a process
    assert not os.path.exists(tmp_path / workdir_lib.LOCK_NAME)


def test_advisory_lock_for_cloud_storage(tmp_path, capsys):
    """The gs:// protocol (run on a local path): a fresh record of another host is refused; one
    without a heartbeat for STALE_SECONDS, or of a dead pid on this host, is taken over."""
    path = tmp_path / workdir_lib.LOCK_NAME
    fresh = {"host": "other-host", "pid": 1, "started": "earlier", "heartbeat": time.time()}
    path.write_text(json.dumps(fresh))
    with pytest.raises(workdir_lib.WorkdirInUse, match="pid 1 on host other-host.*delete"):
        workdir_lib.acquire(tmp_path, advisory=True, verify_seconds=0.01)
    for stale in (dict(fresh, heartbeat=time.time() - workdir_lib.STALE_SECONDS - 1),
                  dict(fresh, host=socket.gethostname(), pid=_dead_pid())):
        path.write_text(json.dumps(stale))
        with workdir_lib.acquire(tmp_path, advisory=True, verify_seconds=0.01) as lock:
            assert lock.previous == stale
            assert json.loads(path.read_text())["pid"] == os.getpid()
        err = capsys.readouterr().err
        assert "advisory" in err and "taking over" in err
        assert not path.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------ corrupt checkpoints

def _truncate_largest_array_file(checkpoint_dir) -> str:
    files = [os.path.join(root, f) for root, _, names in os.walk(checkpoint_dir / "state") for f in names]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(1000)  # a partial copy, a full disk
    return largest


def test_truncated_latest_checkpoint(run_copy, trained, capsys):
    """checkpoints/4 truncated: export and evaluation stop with one line naming it and
    --step=2; training warns in one line, resumes from 2 and finishes, the bad checkpoint kept
    under bad_checkpoints/. train_seconds and examples_seen count both segments."""
    from ssl_jax import export, pretrained
    from ssl_jax.train import loop

    truncated = _truncate_largest_array_file(run_copy / "checkpoints" / "4")
    bad = _snapshot(run_copy / "checkpoints" / "4")
    line = _one_line(capsys, lambda: export.export(str(run_copy), "flax", str(run_copy.parent / "x.msgpack")))
    assert "checkpoints/4 cannot be restored" in line and "--step=2" in line and "--config.step=2" in line
    assert pretrained.load(str(run_copy), step=2).run["step"] == 2  # what the message says works

    seconds_at_2 = json.loads((run_copy / "checkpoints" / "2" / "meta" / "metadata").read_text())["train_seconds"]
    t0 = time.perf_counter()
    records = loop.run(_config(), str(run_copy))
    wall = time.perf_counter() - t0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 2, warnings  # which step and why; what was done with it
    assert "checkpoints/4 cannot be restored (" in warnings[0] and "previous one" in warnings[0]
    assert "resuming from step 2" in warnings[1] and "bad_checkpoints/4" in warnings[1]
    assert _snapshot(run_copy / "bad_checkpoints" / "4") == bad  # moved, byte for byte, not deleted
    assert os.path.getsize(truncated.replace("/checkpoints/", "/bad_checkpoints/")) == 1000
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["2", "4"]
    assert pretrained.load(str(run_copy)).run["step"] == STEPS  # the new step 4 is whole
    value = {r["metric"]: r["value"] for r in records}
    assert seconds_at_2 < value["train_seconds"] <= seconds_at_2 + wall
    assert value["examples_seen"] == STEPS * 16


def test_deleted_metadata_of_latest_checkpoint(run_copy, capsys):
    """checkpoints/4/state/_METADATA deleted: evaluation's and export's loader stops with one
    line naming the checkpoint and the step to pass; the checkpoint is left where it is."""
    from ssl_jax import pretrained

    os.remove(run_copy / "checkpoints" / "4" / "state" / "_METADATA")
    before = _snapshot(run_copy)
    line = _one_line(capsys, lambda: pretrained.load(str(run_copy)))
    assert "checkpoints/4 cannot be restored" in line and "_METADATA" in line and "--step=2" in line
    line = _one_line(capsys, lambda: pretrained.load(str(run_copy), step=4))
    assert "checkpoints/4" in line and "--step=2" in line
    assert _snapshot(run_copy) == before


# --------------------------------------------------------------------------- exploding state

def test_exploding_learning_rate_is_never_saved(run_copy, capsys):
    """An update whose learning rate explodes (SGD at lr 1e30 on the weight-decay gradient:
    the loss before it is finite, the parameters after it ~1e29, as in the issue): the state
    is refused before it is saved, the error names step 4 as the last good checkpoint, and the
    checkpoints are untouched. A poisoned checkpoint an older version saved is skipped on resume."""
    import jax
    import numpy as np

    from ssl_jax.train import checkpoint, loop, resumable

    state = checkpoint.restore_raw(str(run_copy), 4)[0]  # NumPy: the update below needs no compiling

    def exploding_step(state, step):
        params = jax.tree.map(lambda p: p - np.float32(1e30) * p, state["params"])  # lr * d(|p|^2/2)/dp
        return dict(state, params=params, step=state["step"] + 1), {"loss": 3.7}

    before = _snapshot(run_copy)
    manager = checkpoint.make_manager(str(run_copy), keep=3)
    run = lambda: resumable.run_steps(state, exploding_step, start=4, total=6, log_every=1,
                                      on_log=lambda *a: None, nonfinite_message=loop._nonfinite_message,
                                      manager=manager, save_every=1)
    line = _one_line(capsys, run)
    assert "global norm of its parameters" in line and "exploded" in line and "At step 5" in line
    assert "last good checkpoint is step 4" in line and "base_lr" in line
    assert _snapshot(run_copy) == before

    # What a version without this check wrote: step 6 saved exploded. Resuming skips it for 4.
    manager = checkpoint.make_manager(str(run_copy), keep=3, async_save=False)
    checkpoint.save(manager, exploding_step(state, 4)[0], {"step": 6}, step=6)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)
    restored, meta = checkpoint.restore_latest(manager, abstract, validate=checkpoint.state_problem)
    manager.close()
    assert meta["step"] == 4
    err = capsys.readouterr().err
    assert "checkpoints/6 cannot be restored (its state has exploded" in err and "bad_checkpoints/6" in err
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["2", "4"]


def test_nan_loss_stops_and_keeps_checkpoints(run_copy, capsys):
    """Resuming the run at base_lr=inf: the first step's loss is NaN; training stops with one
    line naming the cause, base_lr and the last good checkpoint, and no checkpoint changes. In-process
    on the module's run (one new step program to compile), not two command-line runs."""
    from ssl_jax.train import loop

    before = _snapshot(run_copy / "checkpoints")
    config = _config(num_steps=8, **{"optimizer.base_lr": float("inf")})
    line = _one_line(capsys, lambda: loop.run(config, str(run_copy)))
    assert "loss is nan" in line.lower() and "base_lr" in line, line
    assert "last good checkpoint is step 4" in line, line
    assert _snapshot(run_copy / "checkpoints") == before


@pytest.mark.slow
def test_exploding_learning_rate_end_to_end(run_copy, capsys):
    """The same through the real train step at base_lr 1e10 (LARS scales each update to
    lr x 0.02 x the layer's norm) with a checkpoint every step: a new step program to compile
    (~40 s on 2 cores), hence slow."""
    from ssl_jax.train import loop

    before = sorted(os.listdir(run_copy / "checkpoints"))
    config = _config(num_steps=8, **{"optimizer.base_lr": 1e10, "checkpoint.every_steps": 1})
    line = _one_line(capsys, lambda: loop.run(config, str(run_copy)))
    assert "At step 5, the train state" in line and "last good checkpoint is step 4" in line and "base_lr" in line
    assert sorted(os.listdir(run_copy / "checkpoints")) == before


# ------------------------------------------------------------------ SIGTERM during evaluation

def _sigterm_self():
    """Stand-in for a pass's work: the SIGTERM arrives in the middle of it."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises before this ends
    raise AssertionError("SIGTERM did not stop the pass")


def test_sigterm_during_final_evaluation(run_copy, capsys):
    """SIGTERM while the trained run is evaluated (here: the rerun of the finished run, which
    trains no step and says so): one line and exit code 75, not a silent death; nothing lost."""
    from ssl_jax.train import loop

    def after(run, state):
        _sigterm_self()

    before, handler = _snapshot(run_copy / "checkpoints"), signal.getsignal(signal.SIGTERM)
    evaluator = loop.Evaluator(during=lambda run, state, step: {}, after=after)
    with pytest.raises(SystemExit) as exit_info:
        with cli.user_errors():
            loop.run(_config(), str(run_copy), evaluator=evaluator)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 75
    assert f"Training is complete ({STEPS} of {STEPS} steps" in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "during the evaluation after training" in lines[0], err
    assert f"checkpoint at step {STEPS} saved" in lines[0] and "rerun the same command" in lines[0]
    assert signal.getsignal(signal.SIGTERM) == handler  # given back
    assert _snapshot(run_copy / "checkpoints") == before


def test_sigterm_during_the_evaluation_command(run_copy, capsys, monkeypatch):
    """`python -m ssl_jax.evaluate` (its body, under the command line's handler) gets SIGTERM in its
    feature pass: one line and exit code 75, results.json untouched, SIGTERM's handler given back;
    the rerun evaluates."""
    from ssl_jax.evaluate import run as eval_run
    from ssl_jax.train import features

    config = presets.load_config_file(os.path.join(REPO_ROOT, "configs", "eval", "knn.py") + ":demo")
    config.knn.ks, config.knn.temperatures = (20,), (0.1,)
    before, handler = _snapshot(run_copy), signal.getsignal(signal.SIGTERM)
    real_extract = features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda *args, **kwargs: _sigterm_self())
    with pytest.raises(SystemExit) as exit_info:
        with cli.user_errors("ssl_jax.evaluate"):
            eval_run.run(config, str(run_copy))
    assert exit_info.value.code == 75
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["ssl_jax.evaluate: preempted (SIGTERM) during the knn evaluation: the pass saves nothing "
                     "midway and what came before it is saved; rerun the same command to redo the pass."]
    assert signal.getsignal(signal.SIGTERM) == handler
    assert _snapshot(run_copy) == before
    monkeypatch.setattr(features, "extract_features", real_extract)
    records = eval_run.run(config, str(run_copy))
    assert {(r["protocol"], r["setting"], r["metric"]) for r in records} == {("knn", "k=20,T=0.1", "top1"),
                                                                           ("knn", "k=20,T=0.1", "top5")}
    stored = json.loads((run_copy / "results.json").read_text())
    assert any(r["protocol"] == "knn" and r["setting"] == "k=20,T=0.1" for r in stored["records"])


def test_sigterm_during_sslpp_stage_b(tmp_path, monkeypatch):
    """SSL++'s stage B (here its k-means source) gets SIGTERM while it reads the pixels: PreemptedPass
    (exit code 75 on the command line), no labels file, SIGTERM's handler given back; the rerun labels."""
    from configs import sslpp as sslpp_config
    from ssl_jax import stages
    from ssl_jax.train import preemption

    config = sslpp_config.get_config("demo_kmeans")
    config.stage_b.update(dict(pca_dim=16, kmeans_iters=20))
    path = str(tmp_path / "labels.npz")
    handler = signal.getsignal(signal.SIGTERM)
    real_pixels = stages.training_pixels
    monkeypatch.setattr(stages, "training_pixels", lambda *args: _sigterm_self())
    with pytest.raises(preemption.PreemptedPass, match=r"during stage B \(labelling\).*rerun the same command"):
        stages.stage_b(config, None, path)
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == handler
    monkeypatch.setattr(stages, "training_pixels", real_pixels)
    assert stages.stage_b(config, None, path) == 50
    assert os.listdir(tmp_path) == ["labels.npz"]


# --------------------------------------------------------------------- another run's workdir

def test_foreign_config_is_refused_before_anything_is_written(run_copy, capsys):
    """simclr:demo into the BYOL workdir: one line naming what differs; config.json, the
    checkpoints and the metrics stay as they were."""
    from ssl_jax.train import loop

    before = _snapshot(run_copy)
    line = _one_line(capsys, lambda: loop.run(_config("simclr"), str(run_copy)))
    assert "method 'byol' -> 'simclr'" in line and "another --workdir" in line
    line = _one_line(capsys, lambda: loop.run(_config(**{"model.width": 0.25}), str(run_copy)))
    assert "model.width 0.125 -> 0.25" in line
    assert _snapshot(run_copy) == before


# ---------------------------------------------------------------------------- OS-level errors

def _main(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssl_jax.main", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT))


def _cli_line(proc, code: int) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("ssl_jax: error: ")
    return lines[0]


def test_workdir_that_is_a_file_and_missing_config_file(tmp_path):
    """Both answered by the command line before JAX and TensorFlow are imported (~1 s, was
    ~17 s and a 26- / 40-line traceback); the file is left as it was."""
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    t0 = time.perf_counter()
    line = _cli_line(_main("--config=configs/byol.py:demo", f"--workdir={path}"), 1)
    assert f"--workdir={path} is a file" in line
    line = _cli_line(_main("--config=configs/no_such_method.py:demo", f"--workdir={tmp_path / 'w'}"), 2)
    assert "configs/no_such_method.py does not exist" in line
    assert time.perf_counter() - t0 < 20  # no heavy imports (about 2 x 1 s unloaded)
    assert path.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


def _make_read_only(path):
    """chmod a-w; as root (whom modes do not stop) the immutable attribute; skip if neither works.
    Returns the undo function."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        return lambda: os.chmod(path, 0o755)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)],
                                                         capture_output=True).returncode != 0:
        pytest.skip("running as root, whom chmod does not stop, on a filesystem without chattr +i")
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_workdir(run_copy, capsys):
    """A workdir this user cannot write: one line with the cause and the fix, from the command
    line's early check and from training itself; nothing in it changes."""
    from ssl_jax.train import loop

    before = _snapshot(run_copy)
    undo = _make_read_only(run_copy)
    try:
        line = _cli_line(_main("--config=configs/byol.py:demo", f"--workdir={run_copy}"), 1)
        assert "is not writable" in line and "chmod" in line
        line = _one_line(capsys, lambda: loop.run(_config(), str(run_copy)))
        assert "is not writable" in line
    finally:
        undo()
    assert _snapshot(run_copy) == before


def test_bare_os_errors_are_one_line():
    """An OS error without a message of ssl_jax's own (from a library, deep in a write) still
    names the cause, the path and the fix."""
    import errno

    message = cli.error_message(PermissionError(errno.EACCES, "Permission denied", "/data/run/metrics.jsonl"))
    assert message == ("Permission denied: /data/run/metrics.jsonl (PermissionError); make it accessible "
                       "to this user or pass another path.")
    assert "read-only" in cli.error_message(OSError(errno.EROFS, "Read-only file system", "/mnt/x"))
    assert "disk is full" in cli.error_message(OSError(errno.ENOSPC, "No space left on device"))


def test_unknown_dataset_is_named_as_unknown(monkeypatch):
    """A misspelt dataset without a data_dir is an unknown dataset, not a missing data_dir."""
    from ssl_jax.data import sources

    monkeypatch.setenv("TFDS_DATA_DIR", "/nonexistent/tfds")  # the default data_dir, missing
    with pytest.raises(ValueError, match="Unknown dataset 'cifar_10'.*--config.data.dataset"):
        sources.dataset_info("cifar_10", "train")
    with pytest.raises(FileNotFoundError, match="data_dir"):  # a real name: the data_dir is the problem
        sources.dataset_info("cifar10", "train", "/nonexistent/tfds")


# ------------------------------------------------ SIGTERM during the evaluation of 2 processes

# The evaluation batch of the 2-process case: ~57 feature batches (digits' 1437 + 360 examples),
# so a signal sent when the evaluation starts lands well inside it.
EVAL_BATCH = 32


def _cli_flags() -> list[str]:
    """_config(eval.batch_size=EVAL_BATCH) as command-line flags."""
    return ["--config=configs/byol.py:demo", "--config.global_batch_size=16", f"--config.num_steps={STEPS}",
            "--config.log_every_steps=2", "--config.checkpoint.every_steps=2",
            "--config.optimizer.warmup_epochs=0.05", "--config.eval.linear_probe=False",
            "--config.eval.compare_random_init=False", f"--config.eval.batch_size={EVAL_BATCH}"]


def _two_processes(workdir, logs) -> list[subprocess.Popen]:
    """python -m ssl_jax.main in 2 processes x 1 CPU device joined by jax.distributed (the
    commands launch/local_multiprocess.sh runs); process 0's stdout piped, stderr into logs/."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.makedirs(logs, exist_ok=True)
    procs = []
    for i in range(2):
        with open(os.path.join(logs, f"process_{i}.err"), "w") as err:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "ssl_jax.main", f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}", *_cli_flags(), f"--workdir={workdir}"],
                cwd=REPO_ROOT, env=device_env(1), stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
                stderr=err, text=True))
    return procs


def test_sigterm_during_final_evaluation_of_two_processes(trained, run_copy, tmp_path, capsys):
    """The finished run evaluated by 2 processes, where JAX's preemption service owns SIGTERM:
    a SIGTERM to process 1 alone, once process 0 says the evaluation started, stops both at the
    same evaluation batch with the line and exit code 75 (before: nothing polled the service
    during evaluation, and a launcher's grace period killed the processes silently). Nothing in
    the workdir is lost and no results.json is written; the rerun only evaluates, and its
    results equal those of an uninterrupted evaluation of the same checkpoint."""
    from ssl_jax import results as results_lib
    from ssl_jax.evaluate import in_training

    before = _snapshot(run_copy / "checkpoints")
    procs = _two_processes(run_copy, tmp_path / "logs")
    try:
        out = []
        for line in procs[0].stdout:
            out.append(line)
            if "Evaluating the trained network" in line:
                procs[1].send_signal(signal.SIGTERM)
                break
        out.append(procs[0].communicate(timeout=300)[0])
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    out = "".join(out)
    errs = [(tmp_path / "logs" / f"process_{i}.err").read_text() for i in range(2)]
    assert "Evaluating the trained network" in out and "in 2 process(es)" in out, out
    assert f"Training is complete ({STEPS} of {STEPS} steps" in out, out
    assert codes == [75, 75], (codes, errs[0][-2000:], errs[1][-2000:])
    for err in errs:
        line = f"ssl_jax: preempted (SIGTERM) during the evaluation after training: training is complete and " \
               f"its checkpoint at step {STEPS} saved; rerun the same command to evaluate it."
        assert line in err.splitlines(), err[-2000:]
    assert not os.path.exists(run_copy / "results.json")
    assert _snapshot(run_copy / "checkpoints") == before

    # The rerun (one process, in this one: no second start of the heavy imports) and an
    # uninterrupted evaluation of another copy of the finished run.
    config = _config(**{"eval.batch_size": EVAL_BATCH})
    reference = tmp_path / "reference"
    shutil.copytree(trained[0], reference)
    # Equal but for the clocks: wall times, and train_seconds, which a rerun that trains no step
    # still moves by the microseconds of its empty step loop.
    strip = lambda records: sorted(json.dumps({k: v for k, v in r.items() if k not in ("wall_seconds", "time")},
                                              sort_keys=True) for r in records if r["metric"] != "train_seconds")
    capsys.readouterr()
    rerun = in_training.pretrain_and_evaluate(config, str(run_copy))
    assert f"Training is complete ({STEPS} of {STEPS} steps" in capsys.readouterr().out
    assert strip(results_lib.read_records(str(run_copy))) == strip(rerun)
    assert strip(rerun) == strip(in_training.pretrain_and_evaluate(config, str(reference)))
    assert {r["protocol"] for r in rerun} >= {"pretrain", "knn", "online_probe"}
    assert _snapshot(run_copy / "checkpoints") == before


def test_training_and_evaluation_polls_share_one_count(monkeypatch):
    """The sync point of JAX's preemption service (XLA's PreemptionSyncManager, emulated: on a
    notice it is 1 + the number the process last polled with, and only that number answers
    True) is reached by the first evaluation poll after training's last step: the evaluation
    continues training's count (restarting at 1 it would be reached only after as many batches
    as training had steps). Polls outside an evaluation block do not count."""
    from jax.experimental import multihost_utils
    from ssl_jax.train import preemption

    class SyncManager:
        last, sync_point = 0, None

        def reached(self, number):
            self.last = number
            return number == self.sync_point

    manager = SyncManager()
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", manager.reached)
    monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
    watcher = preemption.PreemptionWatcher()
    assert not any(watcher.should_stop(step) for step in range(1, 6))
    trained = manager.last
    preemption.poll_pass()  # outside a block: not a poll
    assert manager.last == trained
    manager.sync_point = manager.last + 1  # the notice, right after the last training step
    with pytest.raises(preemption.PreemptedAfterTraining, match="checkpoint at step 5 saved"):
        with preemption.sigterm_stops_evaluation(5):
            preemption.poll_pass()
            raise AssertionError("the first evaluation poll did not stop")
    assert manager.last == trained + 1
    preemption.poll_pass()  # the block is closed
    assert manager.last == trained + 1
