"""Method-level pieces that are not losses: schedules, state updates, multi-crop grouping, the
registry of methods and their strict config reads."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.methods import METHODS, build_method
from ssl_jax.methods.base import JointEmbeddingMethod, group_by_shape
from ssl_jax.methods.common import enqueue, init_queue
from ssl_jax.schedules import linear_ramp


def test_linear_ramp_endpoints():
    """DINO's teacher-temperature warm-up and CARL's entropy-weight decay."""
    sched = linear_ramp(0.04, 0.07, ramp_steps=30)
    np.testing.assert_allclose(sched(0), 0.04, rtol=1e-6)
    np.testing.assert_allclose(sched(15), 0.055, rtol=1e-6)
    np.testing.assert_allclose(sched(30), 0.07, rtol=1e-6)
    np.testing.assert_allclose(sched(10_000), 0.07, rtol=1e-6)
    np.testing.assert_allclose(linear_ramp(0.04, 0.07, 0)(5), 0.07, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(sched)(jnp.int32(15)), 0.055, rtol=1e-6)


def test_queue_is_a_ring_buffer_of_normalised_keys():
    q = init_queue(jax.random.key(0), size=6, dim=4)
    np.testing.assert_allclose(np.linalg.norm(q["keys"], axis=1), 1.0, rtol=1e-5)
    for i in range(4):  # batch i: two keys along axis i, of length i + 1 (normalised on entry)
        q = enqueue(q, jnp.tile(jnp.eye(4)[i] * (i + 1), (2, 1)))
    # 4 batches of 2 into 6 slots: batch 3 overwrote batch 0; the write position is back at 2.
    expected = np.eye(4)[[3, 3, 1, 1, 2, 2]]
    np.testing.assert_allclose(q["keys"], expected, atol=1e-6)
    assert int(q["ptr"]) == 2


def test_group_by_shape_keeps_view_order():
    views = [jnp.zeros((2, 8, 8, 3)), jnp.ones((2, 8, 8, 3)), jnp.zeros((2, 4, 4, 3)), jnp.ones((2, 4, 4, 3))]
    groups = group_by_shape(views)
    assert [g.shape for g in groups] == [(2, 2, 8, 8, 3), (2, 2, 4, 4, 3)]
    assert float(groups[0][1].mean()) == 1.0 and float(groups[1][0].mean()) == 0.0


def test_every_method_module_registers_its_methods_by_name():
    """METHODS is collected from the modules of ssl_jax/methods (no list to edit)."""
    assert set(METHODS) == {"byol", "simclr", "moco_v2", "moco_v3", "simsiam", "barlow_twins", "vicreg",
                            "wmse", "swav", "dino", "carl", "carp", "deepcluster", "deepcluster_v2", "deepercluster",
                            "sela", "rotnet", "iic", "colorization", "context_encoder", "aet", "fussl_phase2"}
    for name, cls in METHODS.items():
        assert issubclass(cls, JointEmbeddingMethod) and cls.name == name
        assert cls.__module__.startswith("ssl_jax.methods.")
    assert METHODS["dino"].evaluated_network == "target" and METHODS["byol"].evaluated_network == "online"


def test_a_method_reads_its_config_section_strictly():
    """No defaults in the code: a key missing from the method's section is an error naming it."""
    config = importlib.import_module("configs.simclr").get_config("demo")
    del config.simclr["per_view_bn"]
    with pytest.raises(AttributeError, match="per_view_bn"):
        build_method(config, total_steps=10)
