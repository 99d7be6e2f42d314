"""The engine pieces of the dataset-level methods (DeepCluster, SeLa): example indices through
the pipeline, sampled epoch orders, the feature pass in dataset-index order, per-example state,
head resets and their optimizer state, the refreshes of DeepCluster and SeLa."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from ssl_jax import parallel, presets
from ssl_jax.data import pipeline, sources
from ssl_jax.methods import build_method
from ssl_jax.methods.dataset_targets import uniform_over_labels
from ssl_jax.methods.sela import label_epochs
from ssl_jax.train import features as features_lib
from ssl_jax.train import optim
from tests.conftest import json_from_module_on_devices


def _demo_data():
    c = presets.base_config("byol")
    presets.use_dataset(c, "demo")
    return c.data


@pytest.mark.parametrize("process_count", [1, 2])
def test_every_index_once_per_epoch_over_all_processes(process_count):
    data = _demo_data()
    spe = pipeline.steps_per_epoch(data, 64, process_count)
    _, labels = sources._digits_split("train")
    seen = []
    for p in range(process_count):
        it = pipeline.pretrain_iterator(data, global_batch_size=64, seed=3, process_index=p,
                                        process_count=process_count)
        batches = [next(it) for _ in range(spe)]
        index = np.concatenate([b["index"] for b in batches])
        np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), labels[index])
        lo = sources.slice_offset("digits", "train", None, p, process_count)
        assert index.min() >= lo and index.max() < lo + sources.slice_sizes("digits", "train", None,
                                                                            process_count)[p]
        seen.append(index)
    seen = np.concatenate(seen)
    assert len(np.unique(seen)) == len(seen)  # no index twice in an epoch


def test_streaming_path_carries_dataset_indices():
    data = _demo_data()
    ds_src, n, info = sources.load_split("digits", "train", None, 1, 2)
    offset = sources.slice_offset("digits", "train", None, 1, 2)
    ds = pipeline.pretrain_dataset(ds_src, info, arrays=None, views=[dict(data.views[0])], image_size=16,
                                   mean=data.mean, std=data.std, local_batch=32, steps_per_epoch=n // 32,
                                   seed=0, process_index=1, shuffle_buffer=100)
    index = np.concatenate([b["index"] for b in ds.take(n // 32).as_numpy_iterator()])
    assert len(np.unique(index)) == len(index) == (n // 32) * 32
    assert index.min() >= offset and index.max() < offset + n


def test_a_sampled_epoch_order_is_followed_and_resumes_exactly():
    data = _demo_data()
    orders = {e: np.random.default_rng(e).choice(1437, 1437) for e in range(3)}  # with repeats
    make = lambda start: pipeline.pretrain_iterator(data, global_batch_size=64, seed=0, start_step=start,
                                                    epoch_order=lambda e: orders[e])
    spe = pipeline.steps_per_epoch(data, 64, 1)
    it = make(0)
    index = np.concatenate([next(it)["index"] for _ in range(spe + 2)])
    np.testing.assert_array_equal(index[:spe * 64], orders[0][:spe * 64])
    np.testing.assert_array_equal(index[spe * 64:], orders[1][:128])
    resumed = next(make(spe + 1))
    np.testing.assert_array_equal(resumed["index"], orders[1][64:128])
    with pytest.raises(Exception, match="epoch_order"):  # raised inside tf.data: its error wraps ours
        next(pipeline.pretrain_iterator(data, global_batch_size=64, seed=0,
                                        epoch_order=lambda e: np.arange(10)))


def test_a_sampled_epoch_on_the_streaming_path_has_the_orders_examples_and_resumes():
    # The streamed slice of process 1 of 2; an order with repeats and left-out examples.
    data = _demo_data()
    ds_src, n, info = sources.load_split("digits", "train", None, 1, 2)
    offset = sources.slice_offset("digits", "train", None, 1, 2)
    orders = {e: np.random.default_rng(e).choice(n, n) for e in range(2)}
    spe = n // 32

    def build(start):
        return pipeline.pretrain_dataset(
            ds_src, info, arrays=None, views=[dict(data.views[0])], image_size=16, mean=data.mean,
            std=data.std, local_batch=32, steps_per_epoch=spe, seed=0, process_index=1, shuffle_buffer=100,
            start_step=start, stream_offset=offset, epoch_order=lambda e: orders[e]).as_numpy_iterator()

    it = build(0)
    batches = [next(it) for _ in range(spe + 2)]
    index = np.concatenate([b["index"] for b in batches[:spe]])
    # Exactly the order's examples, each as often as drawn (as a multiset, not in its order).
    np.testing.assert_array_equal(np.sort(index), np.sort(offset + orders[0][:spe * 32]))
    assert not np.array_equal(index, offset + orders[0][:spe * 32])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches[:spe]]),
                                  sources._digits_split("train")[1][index])
    resumed = next(build(spe + 1))
    np.testing.assert_array_equal(resumed["index"], batches[spe + 1]["index"])
    np.testing.assert_array_equal(resumed["views"][0], batches[spe + 1]["views"][0])


def test_feature_pass_rows_are_in_dataset_index_order():
    data = _demo_data()
    mesh = parallel.make_mesh()
    fn = features_lib.make_feature_fn(lambda p, s, x: x.reshape(len(x), -1)[:, :3], mesh)
    batches = pipeline.eval_iterator(data, "train", global_batch_size=100)  # a padded last batch
    feats, labels = features_lib.extract_features(fn, {}, {}, batches, mesh)
    _, true_labels = sources._digits_split("train")
    assert feats.shape == (1437, 3)
    np.testing.assert_array_equal(labels, true_labels)


def _on_device_pass():
    """extract_features_on_device over hand-made batches whose indices come in a shuffled order
    (as a pass gathered over processes does) with padding rows: (rows, per-device row shapes,
    the rows expected)."""
    rng = np.random.default_rng(0)
    n, num_rows, batch = 53, 64, 16
    images = rng.normal(size=(n, 2, 2, 3)).astype(np.float32)
    order = np.concatenate([rng.permutation(n), -np.ones(11, int)])  # 4 batches, 11 padding rows
    batches = [{"image": np.where(order[i:i + batch, None, None, None] >= 0, images[order[i:i + batch]], 0),
                "index": order[i:i + batch].astype(np.int32), "mask": order[i:i + batch] >= 0}
               for i in range(0, 64, batch)]
    mesh = parallel.make_mesh()
    fn = features_lib.make_feature_fn(lambda p, s, x: {"a": x.reshape(len(x), -1)[:, :5], "b": 2 * x}, mesh)
    rows = features_lib.extract_features_on_device(fn, {}, {}, batches, mesh, num_rows)
    expected = {"a": np.zeros((num_rows, 5), np.float32), "b": np.zeros((num_rows, 2, 2, 3), np.float32)}
    expected["a"][:n], expected["b"][:n] = images.reshape(n, -1)[:, :5], 2 * images
    shards = sorted({tuple(s.data.shape) for s in rows["a"].addressable_shards})
    return jax.tree.map(np.asarray, rows), shards, expected


def test_feature_pass_kept_on_device_is_in_index_order_and_sharded():
    rows, shards, expected = _on_device_pass()
    jax.tree.map(np.testing.assert_array_equal, rows, expected)
    assert shards == [(64, 5)]
    info = json_from_module_on_devices("tests.test_dataset_targets")
    assert info["num_devices"] == 8 and info["shards"] == [[8, 5]]  # 64 rows, 8 per device
    assert info["equal"]


def test_uniform_sampling_over_labels():
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.zeros(900, int), np.ones(90, int), np.full(9, 2), [-1] * 10])
    draws = uniform_over_labels(labels, rng)
    assert len(draws) == len(labels)
    counts = np.bincount(labels[draws] + 1, minlength=4)
    assert counts[0] == 0  # unlabelled rows are never drawn
    # n // 3 + 1 = 337 draws per label before the cut to n: each label ~1/3 of the epoch.
    assert np.all(np.abs(counts[1:] - len(labels) / 3) < 40), counts
    big = draws[labels[draws] == 0]
    assert len(np.unique(big)) == len(big)  # a large cluster is drawn without replacement
    np.testing.assert_array_equal(draws, uniform_over_labels(labels, np.random.default_rng(0)))
    np.testing.assert_array_equal(np.sort(uniform_over_labels(np.full(5, -1), rng)), np.arange(5))


def _sgd_config(**overrides):
    c = presets.base_config("byol").optimizer
    c.update(dict(name="sgd", base_lr=0.1, lr_scaling="none", warmup_epochs=0.0, decay="steps",
                  weight_decay=0.0, momentum=0.9, **overrides))
    return c


def test_no_momentum_params_and_head_reset():
    params = {"encoder": {"w": jnp.ones((3, 2))}, "top": {"w": jnp.ones((2, 4))}}
    grads = {"encoder": {"w": jnp.full((3, 2), 0.5)}, "top": {"w": jnp.full((2, 4), 2.0)}}
    tx, _ = optim.build_optimizer(_sgd_config(no_momentum_params=("top",)), global_batch_size=256,
                                  steps_per_epoch=10, num_epochs=1)
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
    # Second step: momentum 0.9 for the encoder (-0.1 * (0.5 + 0.9 * 0.5)), none for the top layer.
    np.testing.assert_allclose(updates["encoder"]["w"], -0.1 * 0.95, rtol=1e-6)
    np.testing.assert_allclose(updates["top"]["w"], -0.1 * 2.0, rtol=1e-6)

    tx, _ = optim.build_optimizer(_sgd_config(), global_batch_size=256, steps_per_epoch=10, num_epochs=1)
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    reset = optim.reset_state(tx, state, params, ("top",))
    traces = [x for x in jax.tree_util.tree_leaves_with_path(reset) if "trace" in jax.tree_util.keystr(x[0])]
    for path, leaf in traces:
        expected = 0.0 if "top" in jax.tree_util.keystr(path) else 0.5
        np.testing.assert_allclose(leaf, expected)
    counts = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(reset) if "count" in jax.tree_util.keystr(path)]
    assert counts and all(int(c) == 1 for c in counts)  # the LR schedule's step is not reset


def _method(name: str, **section):
    config = importlib.import_module(f"configs.{name}").get_config("demo")
    config[name].update(section)
    return config, build_method(config, total_steps=110, steps_per_epoch=11)


def test_per_example_state_is_padded_to_the_batch_and_sharded_like_it():
    config, method = _method("deepcluster")
    assert method.num_examples == 1437 and method.num_rows == 1536  # 12 batches of 128
    state = method.init_extra_state(jax.random.PRNGKey(0))
    mesh = parallel.make_mesh()
    sharding = parallel.state_sharding(state, mesh)
    assert sharding["per_example"]["labels"].spec == parallel.batch_sharding(mesh).spec
    assert sharding["refreshed_at"].spec == jax.sharding.PartitionSpec()


def test_deepcluster_refresh_finds_blobs_resets_the_top_layer_and_logs_stability():
    config, method = _method("deepcluster", num_clusters=5, pca_dim=8)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 1437)
    centres = rng.normal(size=(5, 16)) * 10
    features = (centres[truth] + rng.normal(size=(1437, 16))).astype(np.float32)
    params, stats, state = jax.tree.map(np.array, method.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3))))
    params["top_layer"]["dense1"]["bias"] += 1.0  # a trained top layer
    new_params, new_state, reset, metrics = method.refresh(params, stats, state, features, epoch=0)
    labels = new_state["per_example"]["labels"]
    assert labels.shape == (1536,) and np.all(labels[1437:] == -1)
    assert normalized_mutual_info_score(truth, labels[:1437]) > 0.99
    assert reset == ("top_layer",)
    np.testing.assert_array_equal(new_params["top_layer"]["dense1"]["bias"], 0.0)
    assert abs(float(np.std(new_params["top_layer"]["dense1"]["kernel"])) - 0.01) < 1e-3
    for a, b in zip(jax.tree.leaves(new_params["encoder"]), jax.tree.leaves(params["encoder"])):
        np.testing.assert_array_equal(a, b)  # the encoder is left as it was
    assert "refresh_nmi_previous" not in metrics  # no previous clustering
    again = method.refresh(new_params, stats, new_state, features, epoch=1)
    assert again[3]["refresh_nmi_previous"] > 0.99  # same features: the same partition, ids permuted
    # Pure in (state, features, epoch): a resumed run recreates the same labels.
    np.testing.assert_array_equal(method.refresh(params, stats, state, features, epoch=0)[1]["per_example"]["labels"],
                                  labels)
    order = method.epoch_order(new_state["per_example"], 0, 0, np.arange(1437))
    np.testing.assert_array_equal(order, method.epoch_order(new_state["per_example"], 0, 0, np.arange(1437)))
    assert np.all(np.abs(np.bincount(labels[order], minlength=5) - 1437 / 5) < 30)


def test_sela_schedule_labels_and_loss():
    assert label_epochs(400, 100) == frozenset(int(t) for t in np.floor(401.0001 * np.linspace(0, 1, 100))
                                               if t < 400)
    assert 0 in label_epochs(10, 3) and label_epochs(10, 3) == {0, 5}
    assert label_epochs(4, 100) == {0, 1, 2, 3}
    config, method = _method("sela", num_heads=2, num_clusters=10)
    params, stats, state = jax.tree.map(np.array, method.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3))))
    initial = state["per_example"]["labels"]
    assert initial.shape == (1536, 2)
    for h in range(2):  # a random equipartition
        counts = np.bincount(initial[:1437, h], minlength=10)
        assert counts.max() - counts.min() <= 1
    log_probs = jax.nn.log_softmax(jnp.asarray(np.random.default_rng(0).normal(size=(1437, 2, 10)) * 3), -1)
    _, new_state, reset, metrics = method.refresh(params, stats, state, np.asarray(log_probs), epoch=0)
    labels = new_state["per_example"]["labels"][:1437]
    assert reset == ()
    for h in range(2):
        counts = np.bincount(labels[:, h], minlength=10)
        assert counts.min() > 0.7 * 143.7 and counts.max() < 1.3 * 143.7, counts
    # The loss: mean over heads of the cross-entropy against each head's label.
    logits = np.random.default_rng(1).normal(size=(1, 8, 20)).astype(np.float32)
    ms = dict(new_state, batch_index=jnp.arange(8))
    loss, _, _ = method.objective({"z": jnp.asarray(logits)}, None, ms, None, 0, params)
    lp = jax.nn.log_softmax(logits[0].reshape(8, 2, 10), -1)
    expected = -np.mean([np.mean(lp[np.arange(8), h, labels[:8, h]]) for h in range(2)])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_a_checkpoint_of_another_training_set_is_refused(tmp_path):
    from ssl_jax.train import refresh
    here = {"dataset": "digits", "split": "train", "num_examples": 1437}
    refresh.check_fingerprint(None, here, "d")
    refresh.check_fingerprint({"step": 3}, here, "d")  # a checkpoint without per-example state
    refresh.check_fingerprint({"dataset_fingerprint": dict(here)}, here, "d")
    with pytest.raises(ValueError, match="cifar10:train .*50000.* new --workdir"):
        refresh.check_fingerprint({"dataset_fingerprint": {"dataset": "cifar10", "split": "train",
                                                           "num_examples": 50000}}, here, "d")


def _deeper(**section):
    return _method("deepercluster", **section)[1]


def _deeper_loss(method, h, z, per_example, index, rotation, params):
    ms = {"per_example": per_example, "batch_index": index, "rotation": rotation}
    return method.objective({"h": h[None], "z": z[None]}, None, ms, None, 0, params)[0]


def test_deepercluster_reduces_to_deepcluster_and_to_rotnet():
    rng = np.random.default_rng(0)
    n, d = 8, 16
    h = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    index = jnp.arange(n)
    # One super-class, no rotation: exactly DeepCluster's cross-entropy over the k sub-clusters.
    m = _deeper(num_super_clusters=1, num_sub_clusters=5, rotations=1)
    params = {"sub_heads": {"kernel": jnp.asarray(rng.normal(size=(1, d, 5)), jnp.float32),
                            "bias": jnp.asarray(rng.normal(size=(1, 5)), jnp.float32)}}
    sub = jnp.asarray(rng.integers(0, 5, n), jnp.int32)
    per_example = {"super": jnp.zeros(n, jnp.int32), "sub": sub}
    loss = _deeper_loss(m, h, jnp.asarray(rng.normal(size=(n, 1)), jnp.float32), per_example, index,
                        jnp.zeros(n, jnp.int32), params)
    logits = h @ params["sub_heads"]["kernel"][0] + params["sub_heads"]["bias"][0]
    np.testing.assert_allclose(loss, _method("deepcluster")[1].objective(
        {"h": h[None], "z": logits[None]}, None, {"per_example": {"labels": sub}, "batch_index": index},
        None, 0, {})[0], rtol=1e-6)
    # One cluster, four rotations: exactly RotNet's 4-way rotation cross-entropy.
    m = _deeper(num_super_clusters=1, num_sub_clusters=1, rotations=4)
    params = {"sub_heads": {"kernel": jnp.ones((4, d, 1)), "bias": jnp.zeros((4, 1))}}
    z = jnp.asarray(rng.normal(size=(n, 4)), jnp.float32)
    rotation = jnp.asarray(rng.integers(0, 4, n), jnp.int32)
    loss = _deeper_loss(m, h, z, {"super": jnp.zeros(n, jnp.int32), "sub": jnp.zeros(n, jnp.int32)}, index,
                        rotation, params)
    lp = jax.nn.log_softmax(z, -1)
    np.testing.assert_allclose(loss, -np.mean(lp[np.arange(n), rotation]), rtol=1e-6)


def test_deepercluster_only_the_true_super_class_sub_head_learns():
    rng = np.random.default_rng(1)
    m = _deeper(num_super_clusters=3, num_sub_clusters=4, rotations=4)  # S = 12 super-classes
    n, d = 6, 8
    h = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    per_example = {"super": jnp.asarray([0, 2, 2, 1, 0, 2], jnp.int32), "sub": jnp.asarray(rng.integers(0, 4, n))}
    rotation = jnp.asarray([0, 0, 3, 1, 0, 2], jnp.int32)
    params = {"sub_heads": {"kernel": jnp.asarray(rng.normal(size=(12, d, 4)), jnp.float32),
                            "bias": jnp.zeros((12, 4))}}
    z = jnp.asarray(rng.normal(size=(n, 12)), jnp.float32)
    grads = jax.grad(lambda p: _deeper_loss(m, h, z, per_example, jnp.arange(n), rotation, p))(params)
    true = set((np.asarray(rotation) * 3 + np.asarray(per_example["super"])).tolist())  # {0, 2, 11, 4, 8}
    norms = np.linalg.norm(np.asarray(grads["sub_heads"]["kernel"]).reshape(12, -1), axis=1)
    assert set(np.flatnonzero(norms > 0).tolist()) == true


def test_deepercluster_rotation_and_hierarchical_refresh():
    from ssl_jax.methods.deepercluster import rotate
    x = jnp.arange(2 * 3 * 3 * 1, dtype=jnp.float32).reshape(2, 3, 3, 1)
    out = rotate(x, jnp.asarray([1, 3]))
    np.testing.assert_array_equal(out[0], np.rot90(np.asarray(x[0]), 1))
    np.testing.assert_array_equal(out[1], np.rot90(np.asarray(x[1]), 3))
    m = _deeper(num_super_clusters=2, num_sub_clusters=3, pca_dim=8)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, 1437)
    features = (rng.normal(size=(6, 16))[truth] * 5 + rng.normal(size=(1437, 16))).astype(np.float32)
    params, stats, state = jax.tree.map(np.array, m.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3))))
    new_params, new_state, reset, _ = m.refresh(params, stats, state, features, epoch=0)
    per_example = new_state["per_example"]
    # Two levels of DeepCluster's clustering: the super-clusters, then each one on its own.
    supers = per_example["super"][:1437]
    np.testing.assert_array_equal(supers, m.cluster(features, 2, m.refresh_seed(0, 0)).assignments)
    for c in range(2):
        members = np.flatnonzero(supers == c)
        np.testing.assert_array_equal(per_example["sub"][members],
                                      m.cluster(features[members], 3, m.refresh_seed(0, 1 + c)).assignments)
    assert np.all(per_example["sub"][1437:] == -1)
    assert reset == ("super_head", "sub_heads") and new_params["sub_heads"]["kernel"].shape == (8, 64, 3)
    # The super-clusters are kept at later refreshes (as the authors' code).
    again = m.refresh(new_params, stats, new_state, features + 5.0, epoch=3)[1]["per_example"]
    np.testing.assert_array_equal(again["super"], per_example["super"])


if __name__ == "__main__":  # on 8 simulated devices, for the test above
    import json
    _rows, _shards, _expected = _on_device_pass()
    print(json.dumps({"num_devices": len(jax.devices()), "shards": [list(x) for x in _shards],
                      "equal": all(np.array_equal(_rows[k], _expected[k]) for k in _rows)}))
