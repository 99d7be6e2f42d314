"""deepcluster_v2 and self_label (ssl_jax.losses.pseudo_labels) against float64 NumPy references
written here, with ignored rows, several heads and crops, underflowing inputs, jit, vmap, grad,
and 8 simulated devices."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from ssl_jax import losses
from ssl_jax.losses.pseudo_labels import self_label_with_info
from tests.conftest import json_from_module_on_devices


# ---------------------------------------------------------------- deepcluster_v2

def _reference_deepcluster_v2(logits, assignments, temperature):
    """Loops over heads, crops and images in float64."""
    logits = np.asarray(logits, np.float64)
    heads = []
    for h in range(logits.shape[0]):
        terms = [-np.log(softmax(logits[h, v, n] / temperature)[assignments[h, n]])
                 for v in range(logits.shape[1]) for n in range(logits.shape[2])
                 if assignments[h, n] >= 0]
        heads.append(np.mean(terms) if terms else 0.0)
    return np.mean(heads)


def _inputs(seed, h=2, v=3, n=8, k=5, missing=0.3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(h, v, n, k)).astype(np.float32)
    assignments = np.where(rng.random((h, n)) < missing, -1, rng.integers(0, k, (h, n)))
    return logits, assignments.astype(np.int32)


@pytest.mark.parametrize("seed,shape,temperature", [
    (0, (2, 3, 8, 5), 0.1), (1, (1, 1, 6, 4), 0.1), (2, (3, 2, 5, 7), 0.5), (3, (2, 4, 3, 3), 1.0)])
def test_deepcluster_v2_matches_the_reference(seed, shape, temperature):
    logits, assignments = _inputs(seed, *shape)
    ours = losses.deepcluster_v2(logits, assignments, temperature)
    assert ours.dtype == jnp.float32 and ours.shape == ()
    np.testing.assert_allclose(float(ours), _reference_deepcluster_v2(logits, assignments,
                                                                      temperature), rtol=1e-5)
    jitted = jax.jit(losses.deepcluster_v2)(logits, assignments, temperature)
    np.testing.assert_allclose(float(jitted), float(ours), rtol=1e-6)


def test_deepcluster_v2_ignores_unlabelled_rows_and_empty_heads():
    logits, assignments = _inputs(4, h=3, v=2, n=6, k=4)
    assignments[1] = -1  # head 1: nothing labelled yet, contributes 0
    ours = float(losses.deepcluster_v2(logits, assignments))
    assert np.isfinite(ours)
    np.testing.assert_allclose(ours, _reference_deepcluster_v2(logits, assignments, 0.1),
                               rtol=1e-5)
    # The logits of unlabelled rows and of an unlabelled head do not matter.
    unlabelled = assignments[0] < 0
    masked = np.where(unlabelled[None], -1, assignments)
    changed = logits.copy()
    changed[:, :, unlabelled] = 100.0 * np.random.default_rng(0).normal(
        size=changed[:, :, unlabelled].shape)
    changed[1] = -changed[1]
    np.testing.assert_allclose(float(losses.deepcluster_v2(changed, masked)),
                               float(losses.deepcluster_v2(logits, masked)), rtol=1e-6)
    assert float(losses.deepcluster_v2(logits, np.full_like(assignments, -1))) == 0.0


def test_deepcluster_v2_gradient_is_softmax_minus_one_hot():
    logits, assignments = _inputs(5)
    temperature = 0.2
    grad = np.asarray(jax.grad(losses.deepcluster_v2)(logits, assignments, temperature))
    assert np.all(np.isfinite(grad))
    h, v, n, k = logits.shape
    expected = np.zeros((h, v, n, k))
    for head in range(h):
        count = v * np.sum(assignments[head] >= 0)
        for crop in range(v):
            for i in np.flatnonzero(assignments[head] >= 0):
                p = softmax(logits[head, crop, i].astype(np.float64) / temperature)
                expected[head, crop, i] = (p - np.eye(k)[assignments[head, i]]) / (
                    temperature * count * h)
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_deepcluster_v2_computes_in_float32():
    logits, assignments = _inputs(6)
    low = jnp.asarray(logits, jnp.bfloat16)
    ours = losses.deepcluster_v2(low, assignments)
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(float(ours), _reference_deepcluster_v2(
        np.asarray(low, np.float64), assignments, 0.1), rtol=1e-5)


def test_deepcluster_v2_rejects_bad_shapes():
    logits, assignments = _inputs(7)
    with pytest.raises(ValueError, match="deepcluster_v2"):
        losses.deepcluster_v2(logits[0], assignments)
    with pytest.raises(ValueError, match="deepcluster_v2"):
        losses.deepcluster_v2(logits, assignments[:, :-1])


# ---------------------------------------------------------------- self_label

def _reference_self_label(log_probs, lam=25.0, tol=0.1, max_iters=1000):
    """SeLa's Sinkhorn-Knopp as written (P, r, c themselves), float64: (labels, iterations)."""
    p = np.exp(lam * np.asarray(log_probs, np.float64))
    n, k = p.shape
    r, c, t = np.full(k, 1.0 / k), np.full(n, 1.0 / n), 0
    while t < max_iters:
        r = (1.0 / k) / (p.T @ c)
        c_new = (1.0 / n) / (p @ r)
        err = np.sum(np.abs(c / c_new - 1.0)) if t % 10 == 0 else None
        c, t = c_new, t + 1
        if err is not None and err < tol:
            break
    return np.argmax(r[None] * p * c[:, None], axis=1), t


def _reference_self_label_log(log_probs, lam=25.0, tol=0.1, max_iters=1000):
    """The same in the log domain (float64 logsumexp), for inputs that underflow float64 too."""
    log_p = lam * np.asarray(log_probs, np.float64)
    n, k = log_p.shape
    log_r, log_c, t = np.full(k, -np.log(k)), np.full(n, -np.log(n)), 0
    while t < max_iters:
        log_r = -np.log(k) - logsumexp(log_p + log_c[:, None], axis=0)
        log_c_new = -np.log(n) - logsumexp(log_p + log_r[None], axis=1)
        err = np.sum(np.abs(np.exp(log_c - log_c_new) - 1.0)) if t % 10 == 0 else None
        log_c, t = log_c_new, t + 1
        if err is not None and err < tol:
            break
    return np.argmax(log_p + log_r[None], axis=1), t


def _log_probs(seed, n, k, scale):
    rng = np.random.default_rng(seed)
    logits = scale * rng.normal(size=(n, k)) + rng.normal(size=(1, k))  # unbalanced classes
    return np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)))


_self_label = jax.jit(self_label_with_info, static_argnames="max_iters")


@pytest.mark.parametrize("seed,scale", [(0, 0.5), (1, 1.0), (2, 2.0), (3, 2.0)])
def test_self_label_matches_the_plain_float64_algorithm(seed, scale):
    log_probs = _log_probs(seed, 300, 7, scale)
    expected, iterations = _reference_self_label(log_probs)
    labels, t, err = _self_label(log_probs)
    assert labels.dtype == jnp.int32 and labels.shape == (300,)
    assert int(t) == iterations and float(err) < 0.1
    np.testing.assert_array_equal(np.asarray(labels), expected)
    np.testing.assert_array_equal(np.asarray(losses.self_label(log_probs)), expected)
    if scale == 2.0:  # the case the log domain is for: P underflows in float32
        assert np.any(np.exp(25.0 * log_probs) == 0.0)


def test_self_label_is_stable_and_balanced_far_below_float32s_range():
    log_probs = _log_probs(0, 1000, 10, 5.0)
    assert log_probs.min() < -30.0  # λ·log p < −750: P underflows even in float64
    labels, t, err = _self_label(log_probs)
    labels = np.asarray(labels)
    assert np.isfinite(float(err)) and float(err) < 0.1 and int(t) < 1000
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 1000 and counts.min() >= 97 and counts.max() <= 103, counts
    expected, iterations = _reference_self_label_log(log_probs)
    assert int(t) == iterations
    np.testing.assert_array_equal(labels, expected)


def test_self_label_is_equivariant_to_permuting_the_rows():
    log_probs = _log_probs(4, 1000, 10, 3.0)
    perm = np.random.default_rng(0).permutation(1000)
    labels, t, _ = _self_label(log_probs)
    permuted, t_permuted, _ = _self_label(log_probs[perm])
    assert int(t) == int(t_permuted)
    np.testing.assert_array_equal(np.asarray(permuted), np.asarray(labels)[perm])


def test_self_label_under_vmap_grad_and_max_iters():
    batch = np.stack([_log_probs(5, 64, 4, 1.0), _log_probs(6, 64, 4, 1.0)])
    stacked = jax.jit(jax.vmap(losses.self_label))(batch)
    for one, labels in zip(batch, stacked):
        np.testing.assert_array_equal(np.asarray(labels), np.asarray(_self_label(one)[0]))
    # SeLa's step: label with the network's own log-probabilities, then a cross-entropy with
    # those labels; the labels carry no gradient.
    logits = jnp.asarray(np.random.default_rng(7).normal(size=(64, 4)), jnp.float32)

    def step(logits):
        labels = losses.self_label(jax.nn.log_softmax(logits))
        return losses.deepcluster_v2(logits[None, None], labels[None], 1.0)

    grad = jax.jit(jax.grad(step))(logits)
    assert np.all(np.isfinite(np.asarray(grad))) and np.any(np.asarray(grad) != 0)
    _, t, _ = _self_label(batch[0], tol=0.0, max_iters=5)
    assert int(t) == 5
    with pytest.raises(ValueError, match="self_label"):
        losses.self_label(batch)


def test_self_label_ignores_rows_that_are_not_valid():
    # Padding rows (a sharded [num_rows, K] pass rounded up to the batch) with confident, skewed
    # log-probabilities: masked out, the labels of the real rows are those of the unpadded solve.
    log_probs = _log_probs(11, 300, 10, 4.0)
    garbage = np.full((84, 10), -50.0, np.float32)
    garbage[:, 3] = 0.0
    padded = np.concatenate([log_probs, garbage])
    valid = np.arange(384) < 300
    labels, t, _ = _self_label(padded, valid=valid)
    expected, t_expected, _ = _self_label(log_probs)
    np.testing.assert_array_equal(np.asarray(labels)[:300], np.asarray(expected))
    assert np.all(np.asarray(labels)[300:] == -1) and int(t) == int(t_expected)
    # Without the mask the padding rows take part and shift the partition.
    unmasked, _, _ = _self_label(padded)
    assert not np.array_equal(np.asarray(unmasked)[:300], np.asarray(expected))


# ---------------------------------------------------------------- 8 devices

def _sharded_main():
    """In a subprocess with 8 CPU devices: both functions on sharded and unsharded inputs."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    mesh = Mesh(np.array(jax.devices()), ("data",))
    log_probs = _log_probs(8, 256, 10, 5.0)
    logits, assignments = _inputs(9, h=2, v=2, n=64, k=6)
    sharded = (jax.device_put(log_probs, NamedSharding(mesh, PartitionSpec("data"))),
               jax.device_put(logits, NamedSharding(mesh, PartitionSpec(None, None, "data"))),
               jax.device_put(assignments, NamedSharding(mesh, PartitionSpec(None, "data"))))
    out = {"num_devices": len(jax.devices()),
           "input_shards": [[list(s.data.shape) for s in a.addressable_shards] for a in sharded]}
    # SeLa's padded rows: 256 real + 64 padding rows, sharded 40 per device.
    padded = np.concatenate([log_probs, np.zeros((64, 10), np.float32)])
    valid = np.arange(320) < 256
    padded_8 = jax.device_put(padded, NamedSharding(mesh, PartitionSpec("data")))
    out["self_label_padded_8"] = np.asarray(_self_label(padded_8, valid=valid)[0]).tolist()
    for name, (lp, lg, asg) in (("8", sharded), ("1", (log_probs, logits, assignments))):
        labels, t, _ = _self_label(lp)
        out[f"self_label_{name}"] = [np.asarray(labels).tolist(), int(t)]
        out[f"deepcluster_v2_{name}"] = float(jax.jit(losses.deepcluster_v2)(lg, asg))
    print(json.dumps(out))


def test_sharded_over_8_devices_equals_one_device():
    info = json_from_module_on_devices("tests.test_pseudo_label_losses")
    assert info["num_devices"] == 8
    assert info["input_shards"] == [[[32, 10]] * 8, [[2, 2, 8, 6]] * 8, [[2, 8]] * 8]
    assert info["self_label_8"] == info["self_label_1"]
    assert info["self_label_padded_8"] == info["self_label_1"][0] + [-1] * 64
    np.testing.assert_allclose(info["deepcluster_v2_8"], info["deepcluster_v2_1"], rtol=1e-6)


if __name__ == "__main__":
    _sharded_main()
