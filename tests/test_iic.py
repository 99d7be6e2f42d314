"""IIC: losses.iic against a float64 NumPy reference written here and its properties (bounds, the
closed forms ln C and 0, cluster permutations, symmetry, gradients at saturation); the method's
head schedule, pair layout and sub-head selection; the labelling function on a tiny real run."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import softmax

from ssl_jax import losses


def _reference_iic(p1, p2, eps=np.finfo(np.float64).eps):
    """IIC's −I(P) in float64 with explicit loops over the pairs and the C x C cells."""
    p1, p2 = np.asarray(p1, np.float64), np.asarray(p2, np.float64)
    n, c = p1.shape
    joint = np.zeros((c, c))
    for i in range(n):
        joint += np.outer(p1[i], p2[i])
    joint = (joint + joint.T) / 2
    joint /= joint.sum()
    rows, cols = joint.sum(1), joint.sum(0)
    total = 0.0
    for a in range(c):
        for b in range(c):
            pab, pa, pb = max(joint[a, b], eps), max(rows[a], eps), max(cols[b], eps)
            total += pab * (math.log(pab) - math.log(pa) - math.log(pb))
    return -total


def _softmax_pairs(seed, n=32, c=7, scale=3.0):
    rng = np.random.default_rng(seed)
    return (softmax(scale * rng.normal(size=(n, c)), -1).astype(np.float32),
            softmax(scale * rng.normal(size=(n, c)), -1).astype(np.float32))


def _one_hot(labels, c):
    return np.eye(c, dtype=np.float32)[labels]


@pytest.mark.parametrize("seed,n,c,scale", [(0, 32, 7, 3.0), (1, 5, 3, 1.0), (2, 64, 10, 10.0),
                                            (3, 16, 70, 30.0)])
def test_iic_matches_the_reference(seed, n, c, scale):
    p1, p2 = _softmax_pairs(seed, n, c, scale)
    # Pairs that agree a little, so I is neither ~0 nor at its bound.
    p2 = (0.5 * p1 + 0.5 * p2).astype(np.float32)
    ours = losses.iic(p1, p2)
    assert ours.dtype == jnp.float32 and ours.shape == ()
    np.testing.assert_allclose(float(ours), _reference_iic(p1, p2), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(float(jax.jit(losses.iic)(p1, p2)), float(ours), rtol=1e-6, atol=1e-7)
    # bfloat16 inputs: the math still runs in float32 (the result is the reference of the
    # rounded inputs, not a bfloat16 computation).
    b1, b2 = jnp.asarray(p1, jnp.bfloat16), jnp.asarray(p2, jnp.bfloat16)
    np.testing.assert_allclose(float(losses.iic(b1, b2)),
                               _reference_iic(np.asarray(b1, np.float32), np.asarray(b2, np.float32)),
                               rtol=2e-5, atol=1e-6)


def test_iic_is_bounded_by_zero_and_log_c():
    for seed in range(20):
        c = 2 + seed % 9
        p1, p2 = _softmax_pairs(seed, n=8 + seed, c=c, scale=0.5 + seed)
        if seed % 2:
            p2 = p1[np.random.default_rng(seed).permutation(len(p1))]
        mi = -float(losses.iic(p1, p2))
        assert -1e-6 <= mi <= math.log(c) + 1e-6, (seed, mi)


def test_iic_is_log_c_for_identical_uniform_one_hot_assignments():
    for c in (2, 10, 70):
        labels = np.tile(np.arange(c), 3)  # each cluster equally often
        p = _one_hot(np.random.default_rng(c).permutation(labels), c)
        np.testing.assert_allclose(-float(losses.iic(p, p)), math.log(c), rtol=1e-6)
    # Unbalanced identical assignments reach only the entropy of the cluster frequencies.
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    freq = np.array([0.6, 0.3, 0.1])
    np.testing.assert_allclose(-float(losses.iic(_one_hot(labels, 3), _one_hot(labels, 3))),
                               -np.sum(freq * np.log(freq)), rtol=1e-6)


def test_iic_is_zero_for_independent_assignments():
    # One view's output is the same distribution q for every image and the other view's
    # clusters have frequencies q: P = q qᵀ, a product (symmetrisation keeps it one).
    q = np.array([0.5, 0.3, 0.2], np.float32)
    p1 = np.tile(q, (10, 1))
    p2 = _one_hot(np.array([0] * 5 + [1] * 3 + [2] * 2), 3)
    assert abs(float(losses.iic(p1, p2))) < 1e-6
    # Every pair of clusters equally often: one-hot assignments, independent across views.
    c = 5
    a, b = np.meshgrid(np.arange(c), np.arange(c), indexing="ij")
    assert abs(float(losses.iic(_one_hot(a.ravel(), c), _one_hot(b.ravel(), c)))) < 1e-6


def test_iic_is_invariant_to_permuting_clusters_and_symmetric():
    p1, p2 = _softmax_pairs(5, n=24, c=9)
    base = float(losses.iic(p1, p2))
    perm = np.random.default_rng(5).permutation(9)
    np.testing.assert_allclose(float(losses.iic(p1[:, perm], p2[:, perm])), base, rtol=1e-6)
    np.testing.assert_allclose(float(losses.iic(p2, p1)), base, rtol=1e-6)
    # ... and to the order of the pairs; not to permuting one view's clusters only.
    order = np.random.default_rng(6).permutation(24)
    np.testing.assert_allclose(float(losses.iic(p1[order], p2[order])), base, rtol=1e-6)
    assert abs(float(losses.iic(p1, p1[:, perm])) - float(losses.iic(p1, p1))) > 1e-2


def test_iic_gradients_are_finite_at_saturation():
    # Exact one-hot softmax outputs: most cells of P are exactly 0 (clamped to eps).
    c = 6
    labels = np.array([0, 0, 1, 2, 2, 2, 5, 5])  # clusters 3 and 4 empty: zero marginals too
    p = jnp.asarray(_one_hot(labels, c))
    g1, g2 = jax.grad(losses.iic, argnums=(0, 1))(p, p)
    assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))
    # Through a saturated softmax (logits of +-100) and through vmap over sub-heads.
    logits = jnp.asarray(200.0 * (_one_hot(labels, c) - 0.5))
    loss_of_logits = lambda z1, z2: losses.iic(jax.nn.softmax(z1), jax.nn.softmax(z2))
    g = jax.grad(loss_of_logits)(logits, logits[::-1])
    assert np.all(np.isfinite(g))
    stacked = jnp.stack([logits, logits * 0.01])
    per_head = jax.vmap(loss_of_logits)(stacked, stacked[:, ::-1])
    np.testing.assert_allclose(np.asarray(per_head), [float(loss_of_logits(logits, logits[::-1])),
                                                      float(loss_of_logits(logits * 0.01, logits[::-1] * 0.01))],
                               rtol=1e-6)


def test_iic_gradient_matches_finite_differences():
    p1, p2 = _softmax_pairs(7, n=6, c=4, scale=1.0)
    f = lambda z: losses.iic(jax.nn.softmax(z), jnp.asarray(p2))
    z = jnp.asarray(np.log(p1), jnp.float32)
    g = np.asarray(jax.grad(f)(z))
    h = 1e-3
    zz = np.log(p1).astype(np.float64)
    for i, j in [(0, 0), (2, 3), (5, 1)]:
        up, down = zz.copy(), zz.copy()
        up[i, j] += h
        down[i, j] -= h
        numeric = (_reference_iic(softmax(up, -1), p2) - _reference_iic(softmax(down, -1), p2)) / (2 * h)
        np.testing.assert_allclose(g[i, j], numeric, rtol=1e-2, atol=1e-5)


def test_iic_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        losses.iic(np.ones((4, 3)) / 3, np.ones((4, 5)) / 5)
