"""Shared test fixtures: paths of the repository and of the offline TFDS data."""
import os
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


def device_env(devices: int) -> dict:
    """The environment of a test subprocess on `devices` simulated CPU devices (XLA_FLAGS must
    be set before JAX is imported, hence a subprocess), importing this checkout."""
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)


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

    Tests of the demo's outcome, of evaluation protocols and of export all read this run."""
    import subprocess
    import sys

    workdir = tmp_path_factory.mktemp("byol_demo")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
    proc = subprocess.run([sys.executable, "-m", "ssl_jax.main", "--config=configs/byol.py:demo",
                           f"--workdir={workdir}"], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc
