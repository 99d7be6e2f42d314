"""DeepCluster-v2 (ssl_jax.methods.deepcluster_v2): the loss of `objective` against NumPy, the
memory bank's writes, the refresh (spherical k-means per head on the bank, prototypes = the
centroids, pure in (state, epoch)), when the feature pass is needed, the frozen prototypes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from configs import deepcluster_v2 as dcv2_config
from ssl_jax.methods import build_method
from ssl_jax.train import optim

N_EXAMPLES, N_ROWS = 1437, 1536  # digits' training split, padded to 12 batches of 128


def _method(**section):
    config = dcv2_config.get_config("demo")
    config.deepcluster_v2.update(section)
    return config, build_method(config, total_steps=110, steps_per_epoch=11)


def _init(method):
    return jax.tree.map(np.array, method.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3))))


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_objective_loss_matches_numpy_and_writes_only_the_batch_rows_of_the_bank():
    config, method = _method(num_prototypes=7)
    h_, v_, k_, d_ = 3, 4, 7, 64
    params, _, state = _init(method)
    rng = np.random.default_rng(0)
    per_example = state["per_example"]
    per_example["bank"] = rng.normal(size=per_example["bank"].shape).astype(np.float32)
    assignments = rng.integers(0, k_, size=(N_ROWS, h_)).astype(np.int32)
    assignments[[3, 10], :] = -1          # images without a label yet
    assignments[5, 1] = -1                # unlabelled for one head only
    per_example["assignments"] = assignments
    index = np.array([3, 5, 10, 200, 1436, 17])
    n_ = len(index)
    z = rng.normal(size=(v_, n_, d_)).astype(np.float32) * 3.0
    p = method.heads["prototypes"].apply({"params": params["prototypes"]}, jnp.asarray(z), train=False)
    assert p.shape == (v_, n_, h_, k_)
    ms = dict(state, batch_index=jnp.asarray(index))
    loss, metrics, updates = method.objective({"z": jnp.asarray(z), "p": p}, None, ms, None, 0, params)

    protos = params["prototypes"]["kernel"].astype(np.float64)  # [H, K, D], unit rows
    np.testing.assert_allclose(np.linalg.norm(protos, axis=-1), 1.0, rtol=1e-5)
    logits = np.einsum("vnd,hkd->hvnk", _unit(z.astype(np.float64)), protos) / 0.1
    lp = _log_softmax(logits)
    per_head = []
    for h in range(h_):
        rows = [-lp[h, v, i, assignments[j, h]] for v in range(v_) for i, j in enumerate(index)
                if assignments[j, h] >= 0]
        per_head.append(np.mean(rows))
    np.testing.assert_allclose(float(loss), np.mean(per_head), rtol=1e-5)
    assert 0.0 <= float(metrics["cluster_top1"]) <= 1.0

    bank = np.asarray(updates["per_example"]["bank"])
    assert bank.shape == (N_ROWS, 2, d_)
    expected = np.swapaxes(_unit(z[:2]), 0, 1)  # the two global crops, normalised
    np.testing.assert_allclose(bank[index], expected, rtol=1e-5, atol=1e-6)
    others = np.setdiff1d(np.arange(N_ROWS), index)
    np.testing.assert_array_equal(bank[others], per_example["bank"][others])
    np.testing.assert_array_equal(updates["per_example"]["assignments"], assignments)


def test_the_prototypes_get_no_gradient_and_the_optimizer_never_moves_them():
    config, method = _method(num_prototypes=7)
    params, _, state = _init(method)
    z = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 64)), jnp.float32)
    ms = dict(state, batch_index=jnp.arange(8))
    ms["per_example"]["assignments"][:8] = np.arange(8)[:, None] % 7

    def loss_of(protos):
        p = method.heads["prototypes"].apply({"params": protos}, z, train=False)
        return method.objective({"z": z, "p": p}, None, ms, None, 0, params)[0]

    grads = jax.grad(loss_of)(params["prototypes"])
    np.testing.assert_array_equal(grads["kernel"], 0.0)
    tx, _ = optim.build_optimizer(config.optimizer, global_batch_size=128, steps_per_epoch=11, num_epochs=10)
    ones = jax.tree.map(jnp.ones_like, params)
    opt_state = tx.init(params)
    for _ in range(2):  # the first step's warm-up LR is 0
        updates, opt_state = tx.update(ones, opt_state, params)  # weight decay would move them too
    np.testing.assert_array_equal(updates["prototypes"]["kernel"], 0.0)
    assert np.abs(updates["projector"]["dense1"]["kernel"]).sum() > 0

    config.optimizer.frozen_params = ()
    with pytest.raises(ValueError, match="frozen_params.*prototypes"):
        build_method(config, total_steps=110, steps_per_epoch=11)


def test_more_prototypes_than_examples_is_a_clear_error():
    with pytest.raises(ValueError, match="num_prototypes=2000 exceeds the 1437 training examples of digits:train"):
        _method(num_prototypes=2000)


def _blobs(rng, d=64, noise=0.05):
    """Per-crop truths [2, N] and a bank [N_ROWS, 2, d] of unit vectors: global crop c of image n
    lies around one of two random unit centres, truth[c, n] (independent for the two crops, so
    a head that clusters the wrong crop shows); padding rows zero. Two blobs because the seeding
    is the authors' (K random rows): with three or more, two seeds can fall in one blob, which
    Lloyd iterations never undo (about 1 in 3 seeds for 3 blobs); with two, an unseeded blob's
    points all join one of the two seeds in the other, whose centroid then moves to them."""
    truth = rng.integers(0, 2, (2, N_EXAMPLES))
    bank = np.zeros((N_ROWS, 2, d), np.float32)
    for c in range(2):
        centres = _unit(rng.normal(size=(2, d)))
        bank[:N_EXAMPLES, c] = _unit(centres[truth[c]] + noise * rng.normal(size=(N_EXAMPLES, d)))
    return truth, bank


def test_refresh_recovers_blobs_sets_the_prototypes_to_the_centroids_and_is_pure():
    config, method = _method(num_prototypes=2)
    params, stats, state = _init(method)
    truth, bank = _blobs(np.random.default_rng(0))
    state["per_example"]["bank"] = bank
    assert method.refresh_due(0) and method.refresh_due(5)
    assert not method.refresh_pass_due(3)
    new_params, new_state, reset, metrics = method.refresh(params, stats, state, None, epoch=3)
    assert reset == ()
    labels = new_state["per_example"]["assignments"]
    assert labels.shape == (N_ROWS, 3) and labels.dtype == np.int32
    assert np.all(labels[N_EXAMPLES:] == -1)
    protos = np.asarray(new_params["prototypes"]["kernel"])
    assert protos.shape == (3, 2, 64)
    np.testing.assert_allclose(np.linalg.norm(protos, axis=-1), 1.0, rtol=1e-5)
    for h in range(3):
        assert normalized_mutual_info_score(truth[h % 2], labels[:N_EXAMPLES, h]) > 0.99, h
        assert metrics[f"refresh_nonempty_fraction_{h}"] == 1.0
        x = bank[:N_EXAMPLES, h % 2]  # head h clusters global crop h mod 2
        for k in range(2):  # the spherical centroid: the normalised mean of its members
            np.testing.assert_allclose(protos[h, k], _unit(x[labels[:N_EXAMPLES, h] == k].mean(0)), atol=1e-5)
    np.testing.assert_array_equal(new_state["per_example"]["bank"], bank)  # later refreshes read the bank only
    assert "refresh_nmi_previous" not in metrics  # no previous clustering
    for a, b in zip(jax.tree.leaves(new_params["encoder"]), jax.tree.leaves(params["encoder"])):
        np.testing.assert_array_equal(a, b)

    # Pure in (state, epoch): a resumed run recreates the same labels and prototypes.
    again_params, again_state, _, _ = method.refresh(params, stats, state, None, epoch=3)
    np.testing.assert_array_equal(again_state["per_example"]["assignments"], labels)
    np.testing.assert_array_equal(again_params["prototypes"]["kernel"], protos)
    # The next refresh on the same bank: the same partitions (ids permuted), logged as the NMI.
    _, _, _, metrics = method.refresh(new_params, stats, new_state, None, epoch=4)
    assert metrics["refresh_nmi_previous"] > 0.99


def test_the_first_refresh_fills_the_bank_from_the_feature_pass():
    config, method = _method(num_prototypes=2)
    params, stats, state = _init(method)
    assert method.refresh_pass_due(0) and not method.refresh_pass_due(1)
    truth, bank = _blobs(np.random.default_rng(1))
    features = bank[:N_EXAMPLES, 0]  # the pass's normalised projections [N, D]
    _, new_state, _, _ = method.refresh(params, stats, state, features, epoch=0)
    filled = new_state["per_example"]["bank"]
    np.testing.assert_array_equal(filled[:N_EXAMPLES, 0], features)
    np.testing.assert_array_equal(filled[:N_EXAMPLES, 1], features)  # every global-crop slot
    np.testing.assert_array_equal(filled[N_EXAMPLES:], 0.0)          # padding rows untouched
    labels = new_state["per_example"]["assignments"][:N_EXAMPLES]
    for h in range(3):
        assert normalized_mutual_info_score(truth[0], labels[:, h]) > 0.99  # every head: the features
    with pytest.raises(ValueError, match="epoch 0 needs the feature pass"):
        method.refresh(params, stats, state, None, epoch=0)
