"""FUSSL's pseudo-labels, block errors and soft-target cross-entropy (ssl_jax.losses.fuzzy) against
a per-example NumPy reference written from the paper's rules (Counter over votes, dicts of classes)."""
import collections

import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import losses
from ssl_jax.losses import fuzzy


def reference_label(outputs_n, mode, membership, temperature):
    """The dense label of one image from its m outputs [m, D], by the module docstring's rules."""
    m, d = outputs_n.shape
    z = outputs_n / np.linalg.norm(outputs_n, axis=1, keepdims=True)
    votes = [int(np.argmax(zk)) for zk in z]
    conf = [float(z[k, votes[k]]) for k in range(m)]
    count = collections.Counter(votes)
    top = max(count.values())
    tied = [c for c in count if count[c] == top]
    pos = {c: sum(max(conf[k], 0.0) for k in range(m) if votes[k] == c) for c in count}
    y = np.zeros(d)
    if mode == "hard" or (mode == "fuzzy" and len(tied) == 1):
        best = max(pos[c] for c in tied)
        winner = next(votes[k] for k in range(m) if votes[k] in tied and pos[votes[k]] == best)
        y[winner] = 1.0
        return y
    if membership == "votes" or (membership == "confidence" and sum(max(c, 0) for c in conf) <= 0):
        for c in count:
            y[c] = count[c] / m
    elif membership == "confidence":
        total = sum(max(c, 0.0) for c in conf)
        for c in count:
            y[c] = pos[c] / total
    else:
        e = np.exp(z / temperature - (z / temperature).max(1, keepdims=True))
        p = (e / e.sum(1, keepdims=True)).mean(0)
        mass = sum(p[c] for c in count)
        for c in count:
            y[c] = p[c] / mass
    return y


def outputs_with_ties(m, n=300, d=5, seed=0):
    """[m, N, D] outputs over few classes (D = 5: agreements, 2-2 ties and all-different votes all
    occur), some rows all negative (every confidence < 0)."""
    rng = np.random.default_rng(seed)
    out = rng.normal(size=(m, n, d)).astype(np.float32)
    out[:, :10] = -np.abs(out[:, :10])
    return out


@pytest.mark.parametrize("m", [1, 3, 4])
@pytest.mark.parametrize("mode", fuzzy.LABEL_MODES)
@pytest.mark.parametrize("membership", fuzzy.MEMBERSHIPS)
def test_labels_match_the_numpy_rules(m, mode, membership):
    out = outputs_with_ties(m)
    classes, weights = fuzzy.fuzzy_labels(jnp.asarray(out), mode, membership, temperature=0.5)
    dense = np.asarray(fuzzy.dense_labels(classes, weights, out.shape[-1]))
    ref = np.stack([reference_label(out[:, i], mode, membership, 0.5) for i in range(out.shape[1])])
    np.testing.assert_allclose(dense, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dense.sum(1), 1.0, rtol=1e-5)
    nonzero = (dense > 0).sum(1)
    assert nonzero.min() >= 1 and nonzero.max() <= m
    if m == 1 or mode == "hard":  # m = 1 reduces to hard labels in every mode
        assert set(np.unique(dense)) <= {0.0, 1.0}
    if m == 3 and mode == "fuzzy":
        # Hard exactly where two blocks agree; all-different votes give three non-zeros (where
        # every block's confidence is positive: the confidence rule gives a negative one 0).
        votes = np.argmax(out, -1).T
        agree = np.array([len(set(v)) < 3 for v in votes])
        positive = (out.max(-1) > 0).all(0) if membership == "confidence" else np.ones(len(votes), bool)
        assert agree.any() and (~agree & positive).any()
        assert np.all(nonzero[agree] == 1) and np.all(nonzero[~agree & positive] == 3)


def test_votes_ignore_the_scale_of_each_block():
    """L2 normalisation does not move a vote: scaling a block's outputs leaves the labels."""
    out = outputs_with_ties(3, n=50)
    a = fuzzy.fuzzy_labels(jnp.asarray(out), "fuzzy", "confidence")
    b = fuzzy.fuzzy_labels(jnp.asarray(out * np.array([1.0, 7.0, 0.3])[:, None, None]), "fuzzy", "confidence")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5)


def test_unknown_mode_and_membership_are_errors():
    with pytest.raises(ValueError, match="label_mode"):
        fuzzy.fuzzy_labels(jnp.ones((3, 2, 4)), "majority")
    with pytest.raises(ValueError, match="membership"):
        fuzzy.fuzzy_labels(jnp.ones((3, 2, 4)), "fuzzy", "uniform")


def numpy_soft_ce(logits, targets, temperature, normalize):
    x = logits / np.linalg.norm(logits, axis=1, keepdims=True) if normalize else logits
    x = x / temperature
    logp = x - x.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return -(targets * logp).sum(1)


@pytest.mark.parametrize("temperature,normalize", [(0.1, True), (1.0, False)])
def test_soft_cross_entropy_and_block_errors_against_numpy(temperature, normalize):
    out = outputs_with_ties(3, n=40, d=6, seed=1)
    classes, weights = fuzzy.fuzzy_labels(jnp.asarray(out))
    y = np.asarray(fuzzy.dense_labels(classes, weights, 6))
    loss = losses.soft_cross_entropy(jnp.asarray(out[0]), jnp.asarray(y), temperature, normalize)
    np.testing.assert_allclose(loss, numpy_soft_ce(out[0], y, temperature, normalize).mean(), rtol=1e-5)
    errors = np.asarray(fuzzy.block_errors(jnp.asarray(out), classes, weights, "cross_entropy",
                                           temperature, normalize))
    ref = np.stack([numpy_soft_ce(out[k], y, temperature, normalize) for k in range(3)], 1)
    np.testing.assert_allclose(errors, ref, rtol=1e-5, atol=1e-6)
    top1 = np.asarray(fuzzy.block_errors(jnp.asarray(out), classes, weights, "top1"))
    np.testing.assert_array_equal(top1, (np.argmax(out, -1) != np.argmax(y, -1)[None]).T.astype(np.float32))
    # On hard labels a block that cast the winning vote has top-1 error 0.
    hard = np.asarray(weights).max(1) == 1.0
    voted = np.asarray(classes) == np.argmax(y, -1)[:, None]
    assert np.all(top1[hard & voted.any(1)][voted[hard & voted.any(1)]] == 0)
