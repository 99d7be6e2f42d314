"""FSDP from config alone: on 8 simulated devices the train step under data parallelism,
FSDP and both gives the same state, and under FSDP every large leaf is split 8 ways."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from ssl_jax import parallel
from tests.conftest import REPO_ROOT, device_env

METHODS = ("byol", "simclr")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    env = device_env(8, fast_compile=True)
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tests", "fsdp_equivalence.py"), str(out)],
                   env=env, cwd=REPO_ROOT, check=True, timeout=900)
    return out


@pytest.mark.parametrize("method,mesh", [("byol", "fsdp"), ("byol", "dp2_fsdp4"), ("simclr", "fsdp")])
def test_fsdp_step_equals_data_parallel(results, method, mesh):
    dp, other = (np.load(results / f"{method}_{m}.npz") for m in ("dp", mesh))
    assert dp.files == other.files
    assert any("opt_state" in k for k in dp.files)
    for k in dp.files:
        np.testing.assert_allclose(other[k], dp[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("method", METHODS)
def test_fsdp_shards_hold_one_eighth(results, method):
    shards = json.loads((results / "shards.json").read_text())[method]
    full = held = replicated = 0
    for key, (shape, local) in shards.items():
        size, local_size = math.prod(shape), math.prod(local)
        full += size
        held += local_size
        if size >= parallel.FSDP_MIN_SIZE and any(d % 8 == 0 for d in shape):
            # One dimension split 8 ways, the others whole.
            assert local_size * 8 == size, (key, shape, local)
            assert sum(a != b for a, b in zip(shape, local)) == 1, (key, shape, local)
        else:
            assert local == shape, (key, shape, local)
            replicated += size
    assert held == (full - replicated) / 8 + replicated
    # Only the small leaves (biases, BN, the first 16-channel convs) stay whole on every device.
    assert replicated < 0.05 * full, (replicated, full)

def test_fsdp_spec_rules():
    assert parallel.fsdp_spec((3, 3, 64, 128), 8) == parallel.P(None, None, None, "fsdp")
    assert parallel.fsdp_spec((4096, 256), 8) == parallel.P("fsdp", None)
    assert parallel.fsdp_spec((512,), 8) == parallel.P()  # small: replicated
    assert parallel.fsdp_spec((4099, 7), 8) == parallel.P()  # nothing divisible
    assert parallel.fsdp_spec((4096, 256), 1) == parallel.P()
