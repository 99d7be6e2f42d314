"""Shared test fixtures: paths of the repository and of the offline TFDS data."""
import json
import os
import subprocess
import sys
import tempfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_TFDS = os.path.abspath(os.path.join(REPO_ROOT, "..", "shared", "tfds"))

# One persistent XLA compilation cache for the test session and every subprocess it starts
# (they inherit the environment): several tests compile the same train step and evaluation
# programs, and on 2 CPU cores compilation is most of their time. Set before JAX is
# imported; a user's own setting wins.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"ssl_jax_tests_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# CPU tests: with libtpu installed (the `tpu` extra, for tests/test_tpu_compile.py) JAX would
# otherwise look for a TPU in every test process and print five lines of warnings on stderr
# (checked by the one-line-error tests). Compiling for a TPU topology works without that backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The tests run under the commands' XLA CPU flags (YNNPACK fusion off: faster, less memory), as
# they did when `import ssl_jax` set them; importing the package no longer changes the environment.
from ssl_jax import xla_flags  # noqa: E402  (os only: no JAX yet)

xla_flags.set_cpu_defaults()


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ holds scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def device_env(devices: int, fast_compile: bool = False) -> dict:
    """The environment of a test subprocess on `devices` simulated CPU devices (XLA_FLAGS must
    be set before JAX is imported, hence a subprocess), importing this checkout.

    `fast_compile`: XLA's backend optimisation level 0, for equivalence tests whose two sides
    both run with it and whose time is mostly compilation (a step-equivalence run of two
    methods: 26.5 against 36.5 s)."""
    flags = f"--xla_force_host_platform_device_count={devices}"
    if fast_compile:
        flags += " --xla_backend_optimization_level=0"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
    xla_flags.set_cpu_defaults(env)
    return env


def json_from_module_on_devices(module: str, devices: int = 8, timeout: int = 300) -> dict:
    """Run `python -m module` on `devices` simulated CPU devices; the JSON object on the last
    line of its output (a test module's `__main__` part prints what the test compares)."""
    proc = subprocess.run([sys.executable, "-m", module], env=device_env(devices), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def shared_tfds_dir():
    """../shared/tfds, or skip: the offline CIFAR-10/MNIST copy is not shipped with the repo."""
    if not os.path.isdir(os.path.join(SHARED_TFDS, "cifar10")):
        pytest.skip(f"offline TFDS data not found at {SHARED_TFDS} (../shared/tfds beside the repo)")
    return SHARED_TFDS


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run the tests marked slow")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: many minutes on 2 cores, beyond the CI budget; run with --run-slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow (beyond the CI budget); run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The README's first command, run once per test session: (workdir, completed process).

    Tests of the demo's outcome, of evaluation protocols and of export all read this run.
    Under pytest-xdist (`-n 2 --dist loadfile`, the README's test command) the workers share
    one run: the first to need it trains it in the session's shared temporary directory while
    holding a lock, the others wait for the lock and read what it left."""
    import fcntl
    import json
    import subprocess
    import sys

    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    root = tmp_path_factory.getbasetemp().parent if shared else tmp_path_factory.getbasetemp()
    workdir, record = root / "byol_demo", root / "byol_demo.json"
    with open(root / "byol_demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
            proc = subprocess.run([sys.executable, "-m", "ssl_jax.main", "--config=configs/byol.py:demo",
                                   f"--workdir={workdir}"], env=env, cwd=REPO_ROOT, capture_output=True,
                                  text=True, timeout=900)
            record.write_text(json.dumps(dict(args=proc.args, returncode=proc.returncode,
                                              stdout=proc.stdout, stderr=proc.stderr)))
        proc = subprocess.CompletedProcess(**json.loads(record.read_text()))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc
