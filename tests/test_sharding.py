"""The train step gives the same loss and updated state on 1 device and on 8 simulated devices."""
import os
import subprocess
import sys

import numpy as np

from tests.conftest import REPO_ROOT


def _run(tmp_path, devices: int):
    out = tmp_path / f"step_{devices}.npz"
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tests", "step_equivalence.py"), str(out)],
                   check=True, env=env, cwd=REPO_ROOT, timeout=600)
    return np.load(out)


def test_one_device_equals_eight_devices(tmp_path):
    one, eight = _run(tmp_path, 1), _run(tmp_path, 8)
    assert int(one["num_devices"]) == 1 and int(eight["num_devices"]) == 8
    np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-5)
    keys = [k for k in one.files if k not in ("loss", "num_devices")]
    assert keys == [k for k in eight.files if k not in ("loss", "num_devices")]
    assert any("target" in k for k in keys) and any("probe" in k for k in keys)
    for k in keys:
        np.testing.assert_allclose(one[k], eight[k], rtol=1e-5, atol=1e-6, err_msg=k)
