"""A real multi-process run on one machine: 2 processes x 4 simulated CPU devices (gloo
collectives over 127.0.0.1) against 1 process x 8 devices on the same global batch."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

METHODS = ("byol", "simclr")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one_process"), tmp_path_factory.mktemp("two_processes")
    script = os.path.join(REPO_ROOT, "tests", "multiprocess_steps.py")
    port = free_port()
    procs = [subprocess.Popen([sys.executable, script, str(two), f"--coordinator_address=127.0.0.1:{port}",
                               "--num_processes=2", f"--process_id={i}"], env=_env(4), cwd=REPO_ROOT)
             for i in range(2)]
    procs.append(subprocess.Popen([sys.executable, script, str(one)], env=_env(8), cwd=REPO_ROOT))
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0, 0]
    return one, two


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_equal_one_process(results, method):
    one, two = (np.load(d / f"{method}.npz") for d in results)
    assert int(one["processes"]) == 1 and int(two["processes"]) == 2
    assert one.files == two.files and any("opt_state" in k for k in one.files)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    for k in one.files:
        if k != "processes":
            np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
