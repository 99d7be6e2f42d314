"""The method state of SwAV (queue, normalised prototypes, the prototypes' freeze count), DINO
(teacher, centre, last-layer freeze) and DeepCluster-v2 (memory bank, assignments, centroid
prototypes) survives a checkpoint round trip exactly.

The end-to-end SIGKILL-and-resume test (test_resume.py, MoCo v2) covers the loop; this one
covers the state that only these methods carry, after real steps have filled it."""
import importlib

import jax
import numpy as np
import pytest

from ssl_jax import parallel
from ssl_jax.train import checkpoint
from tests.tiny_run import train_steps


def _config(name):
    config = importlib.import_module(f"configs.{name}").get_config("demo")
    config.global_batch_size = 16
    config.num_epochs = 2
    config.optimizer.warmup_epochs = 0.2
    if name == "swav":
        config.swav.update(dict(queue_length=16, queue_start_epoch=0.0))
    return config


@pytest.mark.parametrize("name,needles", [("swav", ["queue", "prototypes"]), ("dino", ["target", "center"]),
                                          ("deepcluster_v2", ["bank", "assignments", "prototypes"])])
def test_method_state_round_trips_through_a_checkpoint(tmp_path, name, needles):
    state, _ = train_steps(_config(name), image_size=16, steps=3, steps_per_epoch=5)
    leaves = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state)}
    for needle in needles:
        assert any(needle in k for k in leaves), needle
    if name == "swav":
        # The queue holds the embeddings of the last step, and the freeze count has advanced.
        assert np.abs(leaves[".method_state['queue']['embeddings']"]).sum() > 0
        assert int(leaves[".method_state['queue']['count']"]) == 16
    elif name == "dino":
        assert np.abs(leaves[".method_state['center']"]).sum() > 0
    else:  # the memory bank (sharded per-example state) and the k-means assignments of the refresh
        assert np.abs(leaves[".method_state['per_example']['bank']"]).sum() > 0
        assert np.all(leaves[".method_state['per_example']['assignments']"][:1437] >= 0)

    manager = checkpoint.make_manager(str(tmp_path), keep=2, async_save=False)
    checkpoint.save(manager, state, {"step": 3})
    mesh = parallel.make_mesh()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated(mesh)),
                            state)
    restored, meta = checkpoint.restore_latest(manager, abstract)
    manager.close()
    assert meta == {"step": 3}
    again = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(restored)}
    assert again.keys() == leaves.keys()
    for k in leaves:
        np.testing.assert_array_equal(again[k], leaves[k], err_msg=k)
