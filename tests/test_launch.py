"""The launchers in launch/: help texts, dry runs (the exact commands), argument errors, and the
process handling of local_multiprocess.sh and slurm_gpu.sbatch run for real with stand-ins
(tests/fake_worker.py for ssl_jax.main, shell scripts for srun, scontrol and a TPU worker's
python). No JAX, no cloud, no cluster; a few seconds in all."""
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL = "launch/local_multiprocess.sh"
TPU = "launch/tpu_vm.sh"
SLURM = "launch/slurm_gpu.sbatch"
BASH = shutil.which("bash")
# Variables the scripts read; the tests set them explicitly where they matter.
SCRIPT_VARS = ("XLA_FLAGS", "TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "TPU_VERSION", "CONFIG",
               "WORKDIR", "MODE", "PYTHON", "GPUS_PER_NODE", "SRUN_ARGS")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in SCRIPT_VARS and not k.startswith("SLURM_")}
    env.update(extra)
    return env


def run(script, *args, env=None, timeout=60):
    return subprocess.run([BASH, script, *args], cwd=REPO, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def empty_path(tmp_path):
    """An environment whose PATH has no commands at all (no gcloud, no srun)."""
    d = tmp_path / "empty_bin"
    d.mkdir()
    return clean_env(PATH=str(d))


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# --- every script ---------------------------------------------------------------------------

@pytest.mark.parametrize("script", [LOCAL, TPU, SLURM])
def test_help(script):
    assert os.access(REPO / script, os.X_OK), f"{script} is not executable"
    for flag in ("--help", "-h"):
        proc = run(script, flag)
        assert proc.returncode == 0, proc.stderr
        assert "Usage:" in proc.stdout
        assert "--dry_run" in proc.stdout


# --- local_multiprocess.sh ------------------------------------------------------------------

def local_dry_run(*args, env=None):
    proc = run(LOCAL, "--dry_run", f"--python={sys.executable}", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines()]


def test_local_dry_run_prints_one_command_per_process():
    lines = local_dry_run("--num_processes=3", "--devices_per_process=2", "--",
                          "--config=configs/byol.py:demo", "--workdir=/tmp/a run")
    assert len(lines) == 3
    port = lines[0][5].split(":")[-1]
    assert port.isdigit() and 0 < int(port) < 65536
    for i, words in enumerate(lines):
        assert words == [
            "XLA_FLAGS=--xla_force_host_platform_device_count=2", "JAX_PLATFORMS=cpu",
            sys.executable, "-m", "ssl_jax.main", f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=3", f"--process_id={i}",
            "--config=configs/byol.py:demo", "--workdir=/tmp/a run"]


def test_local_dry_run_defaults_port_module_and_existing_xla_flags():
    env = clean_env(XLA_FLAGS="--xla_cpu_foo=1 --xla_force_host_platform_device_count=9")
    lines = local_dry_run("--port=12345", "--module=tests.fake_worker", "--", "--x=1", env=env)
    assert len(lines) == 2  # default --num_processes=2
    for i, words in enumerate(lines):
        assert words[0] == "XLA_FLAGS=--xla_cpu_foo=1 --xla_force_host_platform_device_count=4"
        assert words[3:] == ["-m", "tests.fake_worker", "--coordinator_address=127.0.0.1:12345",
                             "--num_processes=2", f"--process_id={i}", "--x=1"]


@pytest.mark.parametrize("args, message", [
    (["--num_processes=0", "--", "--x"], "--num_processes must be an integer >= 1, got '0'"),
    (["--num_processes=two", "--", "--x"], "--num_processes must be an integer >= 1, got 'two'"),
    (["--devices_per_process=-1", "--", "--x"], "--devices_per_process must be an integer >= 1"),
    (["--port=70000", "--", "--x"], "--port must be an integer in 1..65535"),
    (["--num_processes", "2", "--", "--x"], "--num_processes needs a value: write --num_processes=VALUE"),
    (["--config=configs/byol.py:demo"], "unknown option '--config=configs/byol.py:demo'"),
    ([], "missing the flags for ssl_jax.main: add them after '--'"),
    (["--"], "missing the flags for ssl_jax.main: add them after '--'"),
])
def test_local_bad_arguments(args, message):
    proc = run(LOCAL, *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def _default_sigint():
    """In the launcher's process, before exec: SIGINT at its default action, as in a job a
    terminal starts in the foreground. pytest may itself run with SIGINT ignored (a background
    job of a non-interactive shell, as `.ci/run` can be), and bash can neither trap nor reset a
    signal ignored on entry, so the launcher's Ctrl-C trap would silently never run: that was
    issue 24 item 8, seen only in full CI runs."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_local(tmp_path, *worker_flags, extra=()):
    """local_multiprocess.sh running tests/fake_worker.py; returns (Popen, out_dir, log_dir)."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    out.mkdir()
    proc = subprocess.Popen(
        [BASH, LOCAL, f"--python={sys.executable}", "--module=tests.fake_worker",
         f"--log_dir={logs}", *extra, "--", f"--out_dir={out}", *worker_flags],
        cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_default_sigint)
    return proc, out, logs


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def worker_record(out: Path, i: int) -> dict:
    return json.loads((out / f"process_{i}.json").read_text())


def wait_for_files(paths, timeout=30):
    end = time.time() + timeout
    while not all(p.exists() for p in paths):
        assert time.time() < end, f"not written in {timeout}s: {paths}"
        time.sleep(0.05)


def test_local_failure_stops_the_other_processes(tmp_path):
    start = time.time()
    proc, out, logs = start_local(tmp_path, "--exit=1:3", "--sleep=60", "--sync")
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 3, stderr
    assert time.time() - start < 15
    assert gone(worker_record(out, 0)["pid"]), "process 0 was left running"
    assert "process 1 exited with code 3" in stderr
    # process 0's output on stdout and in its log; the others' in their logs only
    assert "fake worker 0 of 2 started" in stdout
    assert "fake worker 1" not in stdout
    assert "fake worker 0 of 2 started" in (logs / "process_0.log").read_text()
    assert "fake worker 1 of 2 started" in (logs / "process_1.log").read_text()


def test_local_process_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    start = time.time()
    proc, out, _ = start_local(tmp_path, "--exit=2:3", "--sleep=60", "--term_exit=ignore", "--sync",
                               extra=["--num_processes=3", "--grace_period=1"])
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 3, stderr
    assert time.time() - start < 15
    for i in (0, 1):
        assert (out / f"process_{i}.term").exists()  # asked first
        assert gone(worker_record(out, i)["pid"])     # then killed
    assert "grace period over" in stderr


def test_local_processes_get_their_arguments_and_environment(tmp_path):
    proc, out, _ = start_local(tmp_path, "--x=1", extra=["--devices_per_process=3"])
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    coordinator = worker_record(out, 0)["argv"][0]
    assert coordinator.startswith("--coordinator_address=127.0.0.1:")
    for i in (0, 1):
        record = worker_record(out, i)
        assert record["argv"] == [coordinator, "--num_processes=2", f"--process_id={i}",
                                  f"--out_dir={out}", "--x=1"]
        assert record["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
        assert record["JAX_PLATFORMS"] == "cpu"


def test_local_exit_75_is_passed_through(tmp_path):
    proc, out, _ = start_local(tmp_path, "--exit=1:75", "--sleep=60", "--sync")
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 75, stderr
    assert "rerun the same command to resume" in stderr
    assert gone(worker_record(out, 0)["pid"])


@pytest.mark.parametrize("how", ["SIGTERM to the script", "Ctrl-C (SIGINT to the process group)"])
def test_local_signal_is_forwarded_as_sigterm(tmp_path, how):
    proc, out, _ = start_local(tmp_path, "--sleep=60", "--term_exit=75")
    wait_for_files([out / "process_0.json", out / "process_1.json"])
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 75, stderr
    for i in (0, 1):
        assert (out / f"process_{i}.term").exists()  # each process got SIGTERM and handled it
        assert gone(worker_record(out, i)["pid"])


# --- tpu_vm.sh ------------------------------------------------------------------------------

TPU_ARGS = ["--tpu=byol-v4", "--zone=us-central2-b", "--accelerator_type=v4-32",
            "--config=configs/byol.py:imagenet", "--workdir=gs://bucket/byol"]


def gcloud_lines(stdout):
    return [shlex.split(line) for line in stdout.splitlines() if line.startswith("gcloud ")]


def command_of(words):
    return next(w.split("=", 1)[1] for w in words if w.startswith("--command="))


def test_tpu_dry_run_up_prints_every_gcloud_command_in_order(empty_path):
    proc = run(TPU, "up", "--dry_run", *TPU_ARGS, "--", "--config.data.data_dir=gs://bucket/tfds",
               env=empty_path)  # no gcloud needed
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    create, rm, scp, install, start, follow = gcloud_lines(proc.stdout)
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "byol-v4",
                      "--zone=us-central2-b", "--accelerator-type=v4-32",
                      "--version=tpu-ubuntu2204-base"]
    assert rm[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "byol-v4",
                      "--zone=us-central2-b", "--worker=all"]
    assert command_of(rm) == "rm -rf ~/ssl_jax"
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert "--recurse" in scp and "--worker=all" in scp and "byol-v4:ssl_jax" in scp
    assert "--worker=all" in install
    assert command_of(install) == "cd ~/ssl_jax && python3 -m pip install -q -e . 'jax[tpu]'"
    assert "--worker=all" in start
    start_cmd = command_of(start)
    assert "nohup bash -c" in start_cmd and "> ~/ssl_jax_run.log" in start_cmd
    assert ("python3 -m ssl_jax.main --multihost --config=configs/byol.py:imagenet "
            "--workdir=gs://bucket/byol --config.data.data_dir=gs://bucket/tfds") in start_cmd
    assert "--worker=0" in follow and "tail -n +1 -F ~/ssl_jax_run.log" in command_of(follow)


def test_tpu_dry_run_queued_spot_and_environment_variables(empty_path):
    env = dict(empty_path, TPU_NAME="v5e", ZONE="us-west4-a", ACCELERATOR_TYPE="v5litepod-32",
               TPU_VERSION="v2-alpha-tpuv5-lite")
    proc = run(TPU, "create", "--queued", "--spot", "--project=p1", "--dry_run", env=env)
    assert proc.returncode == 0, proc.stderr
    create, describe = gcloud_lines(proc.stdout)
    assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "v5e",
                      "--node-id=v5e", "--zone=us-west4-a", "--accelerator-type=v5litepod-32",
                      "--runtime-version=v2-alpha-tpuv5-lite", "--spot", "--project=p1"]
    assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "v5e"]
    proc = run(TPU, "delete", "--queued", "--dry_run", env=env)
    assert gcloud_lines(proc.stdout) == [[
        "gcloud", "compute", "tpus", "queued-resources", "delete", "v5e", "--zone=us-west4-a",
        "--force", "--quiet"]]
    proc = run(TPU, "delete", "--dry_run", env=env)
    assert gcloud_lines(proc.stdout) == [[
        "gcloud", "compute", "tpus", "tpu-vm", "delete", "v5e", "--zone=us-west4-a", "--quiet"]]


def test_tpu_dry_run_restart_on_preemption_and_stop(empty_path):
    proc = run(TPU, "run", "--restart_on_preemption", "--dry_run", *TPU_ARGS, env=empty_path)
    assert proc.returncode == 0, proc.stderr
    start, follow, describe = gcloud_lines(proc.stdout)
    assert describe == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "byol-v4",
                        "--zone=us-central2-b", "--format=value(state)"]
    proc = run(TPU, "stop", "--dry_run", "--tpu=t", "--zone=z", env=empty_path)
    (stop,) = gcloud_lines(proc.stdout)
    assert "--worker=all" in stop and "kill -TERM" in command_of(stop)


def test_tpu_warns_about_a_workdir_not_on_gcs(empty_path):
    args = [a for a in TPU_ARGS if not a.startswith("--workdir")]
    proc = run(TPU, "run", "--dry_run", *args, "--workdir=/tmp/byol", env=empty_path)
    assert proc.returncode == 0
    assert "warning: --workdir=/tmp/byol is not a gs:// path" in proc.stderr


def test_tpu_without_gcloud_fails_early(empty_path):
    proc = run(TPU, "run", *TPU_ARGS, env=empty_path)
    assert proc.returncode != 0
    assert "gcloud not found on PATH" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["create", "--tpu=t", "--accelerator_type=v4-32"], "needs the zone: --zone=ZONE"),
    (["create", "--tpu=t", "--zone=z"], "needs the slice type: --accelerator_type=TYPE"),
    (["run", "--tpu=t", "--zone=z", "--workdir=gs://b/w"], "needs the config: --config=CONFIG"),
    (["run", "--tpu=t", "--zone=z", "--config=c"], "needs the workdir: --workdir=gs://"),
    (["delete", "--zone=z"], "needs the slice name: --tpu=NAME"),
    (["--tpu=t", "--zone=z"], "missing COMMAND"),
    (["launch", "--tpu=t", "--zone=z"], "unknown command 'launch'"),
    (["delete", "--tpu=t", "--zone=z", "--bogus"], "unknown option '--bogus'"),
])
def test_tpu_bad_arguments(args, message, empty_path):
    proc = run(TPU, *args, "--dry_run", env=empty_path)
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr


def test_tpu_worker_commands_run_in_a_local_shell(tmp_path):
    """The start, stop and follow commands that tpu_vm.sh sends over ssh, run by a local bash
    with HOME standing for a worker's home and a stand-in for python3."""
    home = tmp_path / "home"
    (home / "ssl_jax").mkdir(parents=True)
    fake_python = write_exe(tmp_path / "python3", f"""#!{BASH}
trap 'kill $! 2>/dev/null; echo "got SIGTERM"; exit 75' TERM
echo "args: $*"
touch "$HOME/started"
sleep 30 & wait $!
""")
    args = ["--tpu=t", "--zone=z", f"--python={fake_python}", "--config=c.py:x",
            "--workdir=gs://b/w", "--dry_run"]
    start, follow = map(command_of, gcloud_lines(run(TPU, "run", *args, "--", "--a=it's").stdout))
    (stop,) = map(command_of, gcloud_lines(run(TPU, "stop", *args).stdout))
    worker = dict(clean_env(), HOME=str(home))

    def sh(command):
        return subprocess.run([BASH, "-c", command], env=worker, capture_output=True, text=True,
                              timeout=60)

    first = sh(start)
    assert first.returncode == 0 and "started" in first.stdout, first.stderr
    wait_for_files([home / "started"])
    second = sh(start)
    assert second.returncode == 1 and "a run is already going" in second.stderr
    assert "SIGTERM sent" in sh(stop).stdout
    followed = sh(follow)
    assert followed.returncode == 75, followed.stderr
    assert ("args: -m ssl_jax.main --multihost --config=c.py:x --workdir=gs://b/w --a=it's"
            in followed.stdout)
    assert "got SIGTERM" in followed.stdout
    assert (home / "ssl_jax_run.exit").read_text().strip() == "75"


# --- slurm_gpu.sbatch -----------------------------------------------------------------------

def test_slurm_header_requeues_and_signals():
    text = (REPO / SLURM).read_text()
    for directive in ("#SBATCH --requeue", "#SBATCH --signal=B:TERM@120",
                      "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8"):
        assert directive in text
    assert "scontrol requeue" in text


def test_slurm_dry_run_per_gpu(empty_path):
    proc = run(SLURM, "--dry_run", "configs/byol.py:imagenet", "/shared/runs/byol",
               "--config.data.data_dir=/shared/tfds", env=empty_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "srun python -m ssl_jax.main --multihost --config=configs/byol.py:imagenet "
        "--workdir=/shared/runs/byol --config.data.data_dir=/shared/tfds"]


def test_slurm_dry_run_per_node(empty_path):
    env = dict(empty_path, MODE="per_node", GPUS_PER_NODE="4", SLURM_JOB_NUM_NODES="2",
               PYTHON="/opt/venv/bin/python")
    proc = run(SLURM, "--dry_run", "c.py", "/w", "--a=b c", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "JAX_LOCAL_DEVICE_IDS=0,1,2,3 srun --nodes=2 --ntasks=2 --ntasks-per-node=1 "
        "/opt/venv/bin/python -m ssl_jax.main --multihost --config=c.py --workdir=/w '--a=b c'"]


def test_slurm_without_srun_fails_early(empty_path):
    proc = run(SLURM, "configs/byol.py:imagenet", "/shared/runs/byol", env=empty_path)
    assert proc.returncode != 0
    assert "srun not found on PATH" in proc.stderr


@pytest.mark.parametrize("args, env, message", [
    (["--dry_run"], {}, "missing CONFIG and WORKDIR"),
    (["--dry_run", "c.py"], {}, "missing CONFIG and WORKDIR"),
    (["--bogus", "c.py", "/w"], {}, "unknown option '--bogus'"),
    (["--dry_run", "c.py", "/w"], {"MODE": "per_host"}, "MODE must be per_gpu or per_node"),
])
def test_slurm_bad_arguments(args, env, message, empty_path):
    proc = run(SLURM, *args, env=dict(empty_path, **env))
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr


@pytest.fixture
def fake_slurm(tmp_path):
    """srun and scontrol stand-ins on PATH: srun records its argv and exits FAKE_SRUN_EXIT, or
    (unset) waits, exiting 75 on SIGTERM; scontrol records its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_exe(bin_dir / "srun", f"""#!{BASH}
echo "$*" > "{tmp_path}/srun.args"
[[ -n ${{FAKE_SRUN_EXIT:-}} ]] && exit "$FAKE_SRUN_EXIT"
trap 'kill $! 2>/dev/null; exit 75' TERM
touch "{tmp_path}/srun.ready"
sleep 30 & wait $!
""")
    write_exe(bin_dir / "scontrol", f"""#!{BASH}
echo "$*" > "{tmp_path}/scontrol.args"
""")
    return tmp_path, clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                               SLURM_JOB_ID="4242")


@pytest.mark.parametrize("code", [75, 3, 0])
def test_slurm_requeues_on_exit_75_only(fake_slurm, code):
    tmp, env = fake_slurm
    proc = run(SLURM, "c.py", "/w", "--x=1", env=dict(env, FAKE_SRUN_EXIT=str(code)))
    assert proc.returncode == code, proc.stderr
    assert (tmp / "srun.args").read_text().split() == [
        "python", "-m", "ssl_jax.main", "--multihost", "--config=c.py", "--workdir=/w", "--x=1"]
    if code == 75:
        assert (tmp / "scontrol.args").read_text().split() == ["requeue", "4242"]
    else:
        assert not (tmp / "scontrol.args").exists()


def test_slurm_forwards_sigterm_and_requeues(fake_slurm):
    tmp, env = fake_slurm
    proc = subprocess.Popen([BASH, SLURM, "c.py", "/w"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_files([tmp / "srun.ready"])
    proc.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 sends before the time limit
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 75, stderr
    assert "forwarding to the job step" in stderr
    assert (tmp / "scontrol.args").read_text().split() == ["requeue", "4242"]


def test_tpu_start_claims_the_worker_at_once(tmp_path):
    """A second start right after the first returned (before the run wrote anything), or two
    starts at the same moment: exactly one run (the pid-file check-then-write race)."""
    home = tmp_path / "home"
    (home / "ssl_jax").mkdir(parents=True)
    fake_python = write_exe(tmp_path / "python3", f"""#!{BASH}
trap 'kill $! 2>/dev/null; exit 75' TERM
sleep 30 & wait $!
""")
    args = ["--tpu=t", "--zone=z", f"--python={fake_python}", "--config=c", "--workdir=gs://b/w",
            "--dry_run"]
    start, _ = map(command_of, gcloud_lines(run(TPU, "run", *args).stdout))
    (stop,) = map(command_of, gcloud_lines(run(TPU, "stop", *args).stdout))
    worker = dict(clean_env(), HOME=str(home))
    starts = [subprocess.Popen([BASH, "-c", start], env=worker, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=30), p.stderr.read()) for p in starts]
    assert sorted(rc for rc, _ in results) == [0, 1, 1], results
    assert all("a run is already going" in err for rc, err in results if rc == 1)
    again = subprocess.run([BASH, "-c", start], env=worker, capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "a run is already going" in again.stderr
    wait_for_files([home / "ssl_jax_run.pid"])
    assert "SIGTERM sent" in subprocess.run([BASH, "-c", stop], env=worker, capture_output=True,
                                            text=True, timeout=30).stdout
    wait_for_files([home / "ssl_jax_run.exit"])
    assert (home / "ssl_jax_run.exit").read_text().strip() == "75"
    # the run has ended: the pid file may name a reused pid; stop must not signal it
    assert "no run going" in subprocess.run([BASH, "-c", stop], env=worker, capture_output=True,
                                            text=True, timeout=30).stdout
