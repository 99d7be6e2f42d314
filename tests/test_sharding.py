"""Every method's train step gives the same loss and updated state on 1 device and on 8
simulated devices: the test that catches gather-and-negatives bugs (global-batch
negatives, global BN and whitening statistics, the queue)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from ssl_jax.methods import METHODS
from tests.conftest import REPO_ROOT, device_env

# DSSL's four-view objective on top of a predictive, a contrastive and a queue method (all
# four Eq. 6 groups for BYOL and SimCLR); DINO with a ViT using stochastic depth; SSL++'s semantic
# head on RotNet (its labels gathered by the sharded dataset indices); BYOL as a 3-block ensemble
# (ssl_jax.methods.ensemble; FSDP over 2 of the 8 devices).
ALL = sorted(METHODS) + ["byol+dssl", "simclr+dssl", "moco_v2+dssl", "dino_vit", "rotnet+sslpp", "byol+ensemble3",
                        "rotnet+coupled", "aet+projective"]


def _run(out_dir, devices: int):
    env = device_env(devices, fast_compile=True)
    os.makedirs(out_dir, exist_ok=True)
    return subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "tests", "step_equivalence.py"),
                             str(out_dir), *ALL], env=env, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("step_equivalence")
    procs = [_run(root / str(d), d) for d in (1, 8)]  # the two processes run side by side
    for p in procs:
        assert p.wait(timeout=1200) == 0
    return root


@pytest.mark.parametrize("method", ALL)
def test_one_device_equals_eight_devices(results, method):
    one, eight = (np.load(results / str(d) / f"{method}.npz") for d in (1, 8))
    assert int(one["num_devices"]) == 1 and int(eight["num_devices"]) == 8
    assert np.all(np.isfinite(one["loss"]))
    np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-5)
    keys = [k for k in one.files if k not in ("loss", "num_devices")]
    assert keys == [k for k in eight.files if k not in ("loss", "num_devices")]
    assert any("probe" in k for k in keys)
    state_keys = {"byol": ["target"], "moco_v2": ["target", "queue"], "moco_v3": ["target"],
                  "dino": ["target", "center"], "swav": ["queue", "prototypes"],
                  # The refresh's sharded feature pass itself, and the per-example state it makes.
                  "deepcluster": ["refresh_features", "per_example"], "sela": ["refresh_features", "per_example"],
                  "deepercluster": ["refresh_features", "per_example"],
                  "deepcluster_v2": ["refresh_features", "per_example", "prototypes"]}
    state_keys.update({"rotnet+coupled": ["semantic_head", "per_example", "refresh_features"],
                       "aet+projective": ["decoder"]})
    for needle in state_keys.get(method if method in state_keys else method.partition("+")[0].replace("_vit", ""), []):
        assert any(needle in k for k in keys), needle
    if method == "aet+projective":  # the 8 parameters of a homography, not affine's 6
        assert one["['params']['decoder']['dense1']['bias']"].shape == (8,)
    for k in keys:
        if method == "wmse" and "projector" in k and "dense" in k and "bias" in k:
            # Zero true gradient (the bias is removed by the BN or the whitening after it):
            # Adam turns the rounding noise of that zero, which depends on the order of the
            # cross-device sums, into steps of size ~LR. Nothing to compare.
            continue
        if method == "fussl_phase2" and "projector" in k and ("dense1" in k or "dense2" in k) and "bias" in k:
            continue  # the same: its 3-layer projector's hidden Dense layers feed a BatchNorm (Adam, LR 1e-3)
        # 8 devices sum gradients and statistics in another order than 1 device.
        np.testing.assert_allclose(one[k], eight[k], rtol=1e-5, atol=2e-6, err_msg=k)
