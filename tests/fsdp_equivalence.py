"""Train steps of BYOL and SimCLR under three meshes of the same 8 devices: pure data
parallel (data=8), pure FSDP (fsdp=8) and both (data=2, fsdp=4). Saves the final state of
each and, for FSDP, the shape of every leaf's shard on device 0.

Used by tests/test_fsdp.py in a subprocess with 8 simulated CPU devices.
Usage: python tests/fsdp_equivalence.py OUT_DIR   (writes OUT_DIR/<method>_<mesh>.npz, shards.json)
"""
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from tests.step_equivalence import tiny_config  # noqa: E402
from tests.tiny_run import train_steps  # noqa: E402

MESHES = {"dp": dict(data=8, fsdp=1), "fsdp": dict(data=1, fsdp=8), "dp2_fsdp4": dict(data=2, fsdp=4)}
METHODS = ("byol", "simclr")
SKIP = {("simclr", "dp2_fsdp4")}  # BYOL covers the mixed mesh; one compile less in CI


def run(method: str, mesh: dict):
    config = tiny_config(method)
    config.model.width = 0.25  # conv kernels of 16-128 channels: large enough to be sharded
    config.mesh.update(mesh)
    state, losses = train_steps(config, image_size=16, steps=3, steps_per_epoch=5)
    return state, losses


if __name__ == "__main__":
    out_dir = sys.argv[1]
    assert len(jax.devices()) == 8, jax.devices()
    shards = {}
    for method in METHODS:
        for name, mesh in MESHES.items():
            if (method, name) in SKIP:
                continue
            state, losses = run(method, mesh)
            tree = {"params": state.params, "batch_stats": state.batch_stats,
                    "opt_state": state.opt_state, "method_state": state.method_state}
            leaves = jax.tree_util.tree_leaves_with_path(tree)
            if name == "fsdp":
                shards[method] = {jax.tree_util.keystr(k): [list(v.shape), list(v.addressable_shards[0].data.shape)]
                                  for k, v in leaves if hasattr(v, "addressable_shards")}
            arrays = {jax.tree_util.keystr(k): np.asarray(jax.device_get(v)) for k, v in leaves}
            np.savez(os.path.join(out_dir, f"{method}_{name}.npz"), loss=np.asarray(losses), **arrays)
    with open(os.path.join(out_dir, "shards.json"), "w") as f:
        json.dump(shards, f)
