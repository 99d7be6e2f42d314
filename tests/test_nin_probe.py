"""The NIN-block probe (evaluate.nin_probe): the pretrained NIN stays frozen (parameters and BN
statistics), only the new block and the linear layer learn, and they learn a separable task."""
import jax
import ml_collections
import numpy as np
import pytest

from ssl_jax import parallel, presets
from ssl_jax.evaluate import nin_probe, supervised
from ssl_jax.models.nin import NIN
from ssl_jax.pretrained import Pretrained


def _stripes(n, rng):
    """Class 0: horizontal stripes, class 1: vertical ones, random phase, plus noise; 16 px."""
    y = rng.integers(0, 2, n)
    phase = rng.integers(0, 8, n)
    grid = (np.arange(16)[None, :] + phase[:, None]) % 8 < 4  # [n, 16]: period 8 survives the pools
    rows = np.where(y[:, None, None] == 0, grid[:, :, None], grid[:, None, :])  # [n, 16, 16]
    x = rows[..., None].repeat(3, axis=-1).astype(np.float32) + 0.3 * rng.normal(size=(n, 16, 16, 3))
    return x.astype(np.float32), y.astype(np.int32)


def test_probe_trains_only_the_new_block_on_a_frozen_nin():
    rng = np.random.default_rng(0)
    x, y = _stripes(256, rng)
    nin = NIN(width_multiplier=0.125)
    variables = jax.device_get(nin.init(jax.random.PRNGKey(1), x[:2], train=False))
    # Non-trivial running statistics, so a BN run in training mode would show.
    variables["batch_stats"] = jax.tree.map(lambda s: s * 1.5 + 0.01, variables["batch_stats"])
    pre = Pretrained(encoder=nin, variables=variables, heads={}, model_config=ml_collections.ConfigDict(
        dict(name="nin")), run={}, network="online")
    probe = nin_probe.probe_pretrained(pre, block=2, image_size=16, seed=0)
    assert set(probe.variables["params"]) == {"backbone", "probe_block"}
    assert probe.encoder.feature_dim == 24

    cfg = presets.eval_base_config("layer_probe").layer_probe.probe_train
    # 64 steps: the new BN's running statistics (momentum 0.9) forget their init before the test.
    cfg.update(dict(epochs=8.0, batch_size=32))
    cfg.optimizer.decay_epochs = ()
    t = nin_probe.probe_train_config(cfg)

    def batches():
        while True:
            for i in range(0, 256, 32):
                yield {"views": (x[i:i + 32],), "label": y[i:i + 32]}

    mesh = parallel.make_mesh()
    out = supervised.train_classifier(probe, lambda start: batches(), steps_per_epoch=8, train_cfg=t, num_classes=2,
                                      mesh=mesh, log=lambda *_: None)
    trained = out["encoder"]
    for a, b in zip(jax.tree.leaves(trained["params"]["backbone"]), jax.tree.leaves(variables["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(trained["batch_stats"]["backbone"]), jax.tree.leaves(variables["batch_stats"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moved = [np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in zip(
        jax.tree.leaves(trained["params"]["probe_block"]), jax.tree.leaves(probe.variables["params"]["probe_block"]))]
    assert min(moved) > 0
    xt, yt = _stripes(128, rng)
    test = [{"image": xt[i:i + 64], "label": yt[i:i + 64], "index": np.arange(i, i + 64),
             "mask": np.ones(64, bool)} for i in (0, 64)]
    acc = supervised.classifier_accuracy(probe.encoder, trained, out["head"], out["head_variables"], test, mesh)
    assert acc["top1"] > 0.9, acc


def test_probe_needs_a_nin():
    pre = Pretrained(encoder=object(), variables={}, heads={}, model_config=ml_collections.ConfigDict(
        dict(name="resnet18")), run={}, network="online")
    with pytest.raises(ValueError, match="NIN encoder"):
        nin_probe.probe_pretrained(pre, block=2, image_size=16, seed=0)


def test_fc_probes_follow_rotnet_layouts():
    """fc1: the map through a BN without affine parameters, flattened (C·H·W features); fc2 / fc3:
    1 / 2 hidden layers of min(20·classes, 2048) = 200 units; nin_block: 192·width."""
    nin = NIN(width_multiplier=0.125)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    variables = jax.device_get(nin.init(jax.random.PRNGKey(1), x, train=False))
    pre = Pretrained(encoder=nin, variables=variables, heads={}, model_config=ml_collections.ConfigDict(
        dict(name="nin")), run={}, network="online")
    dims = {"nin_block": 24, "fc1": 24 * 4 * 4, "fc2": 200, "fc3": 200}
    trainable = {"nin_block": {"probe_block"}, "fc1": set(), "fc2": {"fc1", "fc1_bn"},
                 "fc3": {"fc1", "fc1_bn", "fc2", "fc2_bn"}}  # fc1's BN has no affine parameters
    for head, dim in dims.items():
        probe = nin_probe.probe_pretrained(pre, block=4, image_size=16, seed=0, head=head, num_classes=10)
        assert probe.encoder.feature_dim == dim
        out = probe.encoder.apply(probe.variables, x, train=False)
        assert out.shape == (2, dim) and out.dtype == np.float32
        assert set(probe.variables["params"]) == {"backbone"} | trainable[head], head
    probe = nin_probe.probe_pretrained(pre, block=4, image_size=16, seed=0, head="fc1")
    block4 = np.asarray(nin.apply(variables, x, train=False, return_maps=True)["block4"])
    # Fresh running statistics (mean 0, variance 1): inference-mode BN divides by sqrt(1 + eps).
    np.testing.assert_allclose(probe.encoder.apply(probe.variables, x, train=False),
                               block4.reshape(2, -1) / np.sqrt(1 + 1e-5), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="probe_heads"):
        nin_probe.probe_pretrained(pre, block=4, image_size=16, seed=0, head="fc4")


def test_per_class_subset_takes_n_of_every_class():
    labels = np.repeat(np.arange(4), [30, 5, 12, 50])
    idx = nin_probe.per_class_subset(labels, 10, seed=3)
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(np.bincount(labels[idx]), [10, 5, 10, 10])  # class 1 has only 5
    np.testing.assert_array_equal(idx, nin_probe.per_class_subset(labels, 10, seed=3))
    assert not np.array_equal(idx, nin_probe.per_class_subset(labels, 10, seed=4))
    with pytest.raises(ValueError, match="per_class"):
        nin_probe.per_class_subset(labels, 0, seed=0)
