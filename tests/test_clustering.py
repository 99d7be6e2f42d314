"""k-means and clustering metrics: metrics against NumPy formulas written here, closed forms and
brute force, k-means against NumPy recomputations, its own fixed-point conditions, scikit-learn's
inertia, and 8 devices."""
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.cluster import KMeans

from ssl_jax.evaluate.clustering import (clustering_scores, hungarian_accuracy, kmeans, label_scores,
                                         many_to_one_accuracy)
from tests.clustering_sharded import inputs as sharded_inputs
from tests.conftest import REPO_ROOT, device_env


def _random_labels(seed, n, n_classes, n_clusters, relabel=False):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, n_classes, n)
    # Correlated with the truth, so the scores are not all near 0.
    pred = np.where(rng.random(n) < 0.6, true % n_clusters, rng.integers(0, n_clusters, n))
    if relabel:  # arbitrary, non-contiguous non-negative ids
        true = rng.choice(10_000, n_classes, replace=False)[true]
        pred = rng.choice(10_000, n_clusters, replace=False)[pred]
    return true, pred


_RANDOM_CASES = [(0, 200, 3, 3, False), (1, 150, 5, 2, False), (2, 97, 2, 7, True),
                 (3, 300, 10, 10, True), (4, 50, 4, 40, False), (5, 31, 6, 6, True)]

_DEGENERATE_CASES = {
    "both_single_cluster": ([0] * 6, [5] * 6),
    "true_single_cluster": ([3] * 6, [0, 0, 1, 1, 2, 2]),
    "pred_single_cluster": ([0, 1, 2, 0, 1, 2], [7] * 6),
    "both_all_singletons": ([0, 1, 2, 3, 4], [9, 8, 7, 6, 5]),
    "singletons_vs_single": ([0, 1, 2, 3, 4], [1] * 5),
    "one_sample": ([4], [2]),
    "two_samples_split": ([0, 0], [0, 1]),
    "same_partition_renamed": ([0, 0, 1, 1, 2], [20, 20, 3, 3, 11]),
    "independent": ([0, 0, 1, 1], [0, 1, 0, 1]),
    "empty": ([], []),
}


def _reference_table(true, pred):
    """Contingency counts by a loop over the sorted unique labels."""
    classes, clusters = np.unique(true), np.unique(pred)
    table = [[np.sum((true == c) & (pred == k)) for k in clusters] for c in classes]
    return np.array(table, np.int64).reshape(len(classes), len(clusters))


def _reference_nmi(true, pred):
    """I(Y; C) / ((H(Y) + H(C)) / 2) (Strehl & Ghosh 2002, arithmetic mean); 1 when both
    labelings are one cluster (or empty), 0 when the mutual information is 0 up to rounding."""
    table = _reference_table(true, pred).astype(np.float64)
    if table.size == 0 or table.shape == (1, 1):
        return 1.0
    n = table.sum()
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    i, j = np.nonzero(table)
    mi = np.sum(table[i, j] / n * (np.log(table[i, j]) + np.log(n) - np.log(rows[i]) - np.log(cols[j])))
    if mi < 1e-15:
        return 0.0
    entropy = lambda c: -np.sum(c[c > 0] / n * np.log(c[c > 0] / n))
    return mi / ((entropy(rows) + entropy(cols)) / 2.0)


def _reference_ari(true, pred):
    """Hubert & Arabie's ARI from exact integer pair counts; 1 where it is 0/0 (equal partitions)."""
    table = _reference_table(true, pred)
    pairs = lambda counts: sum(int(c) * (int(c) - 1) // 2 for c in np.ravel(counts))
    n = int(table.sum())
    index, a, b, total = pairs(table), pairs(table.sum(axis=1)), pairs(table.sum(axis=0)), n * (n - 1) // 2
    num, den = 2 * (index * total - a * b), (a + b) * total - 2 * a * b
    return 1.0 if den == 0 else num / den


@pytest.mark.parametrize("seed,n,n_classes,n_clusters,relabel", _RANDOM_CASES)
def test_nmi_ari_match_the_formulas_on_random_labels(seed, n, n_classes, n_clusters, relabel):
    true, pred = _random_labels(seed, n, n_classes, n_clusters, relabel)
    scores = label_scores(true, pred)
    np.testing.assert_allclose(scores["nmi"], _reference_nmi(true, pred), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scores["ari"], _reference_ari(true, pred), rtol=1e-10, atol=1e-12)
    assert scores["acc"] == hungarian_accuracy(true, pred)
    assert scores["acc_many_to_one"] == many_to_one_accuracy(true, pred)
    assert all(type(v) is float for v in scores.values())


@pytest.mark.parametrize("name", sorted(_DEGENERATE_CASES))
def test_nmi_ari_match_the_formulas_on_degenerate_labels(name):
    true, pred = (np.asarray(a, np.int64) for a in _DEGENERATE_CASES[name])
    for a, b in ((true, pred), (pred, true)):
        scores = label_scores(a, b)
        assert scores["nmi"] == pytest.approx(_reference_nmi(a, b), abs=1e-12)
        assert scores["ari"] == pytest.approx(_reference_ari(a, b), abs=1e-12)


def test_nmi_ari_closed_forms():
    """Equal partitions (renamed): 1 and 1. [0,0,1,1] vs [0,1,0,1]: independent, NMI 0; pair
    counts index 0, a = b = 2 of 6 pairs, ARI (0 - 4/6) / (2 - 4/6) = -1/2. [0,0,1,1] vs
    [0,0,0,1]: NMI from the joint distribution written out; ARI (1 - 1) / (5/2 - 1) = 0."""
    same = label_scores([0, 0, 1, 1, 2], [7, 7, 3, 3, 1])
    assert same["nmi"] == pytest.approx(1.0, abs=1e-12) and same["ari"] == 1.0
    independent = label_scores([0, 0, 1, 1], [0, 1, 0, 1])
    assert independent["nmi"] == pytest.approx(0.0, abs=1e-12) and independent["ari"] == pytest.approx(-0.5)
    # Y = [0,0,1,1], C = [0,0,0,1]: p(y,c) = {(0,0): 1/2, (1,0): 1/4, (1,1): 1/4}.
    mi = 0.5 * np.log(0.5 / (0.5 * 0.75)) + 0.25 * np.log(0.25 / (0.5 * 0.75)) + 0.25 * np.log(0.25 / (0.5 * 0.25))
    h_y, h_c = np.log(2), -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    # Pairs: index 1 (samples 0, 1 together in both), a = 2, b = 3, total 6: E[index] = 1.
    scores = label_scores([0, 0, 1, 1], [0, 0, 0, 1])
    assert scores["nmi"] == pytest.approx(mi / ((h_y + h_c) / 2), rel=1e-12)
    assert scores["ari"] == pytest.approx(0.0, abs=1e-12)


def _brute_force_accuracy(true, pred):
    """Best one-to-one matching by trying every injective map of the smaller side."""
    classes, clusters = np.unique(true), np.unique(pred)
    best = 0
    if len(classes) <= len(clusters):
        for image in itertools.permutations(clusters, len(classes)):
            best = max(best, sum(np.sum((true == c) & (pred == k)) for c, k in zip(classes, image)))
    else:
        for image in itertools.permutations(classes, len(clusters)):
            best = max(best, sum(np.sum((pred == k) & (true == c)) for k, c in zip(clusters, image)))
    return best / len(true)


def _loop_many_to_one(true, pred):
    correct = 0
    for k in np.unique(pred):
        _, counts = np.unique(true[pred == k], return_counts=True)
        correct += counts.max()
    return correct / len(true)


@pytest.mark.parametrize("seed,n_classes,n_clusters", [(0, 3, 3), (1, 4, 4), (2, 3, 5),
                                                       (3, 5, 2), (4, 2, 6), (5, 5, 5)])
def test_hungarian_and_many_to_one_accuracy_match_brute_force(seed, n_classes, n_clusters):
    true, pred = _random_labels(seed, 60, n_classes, n_clusters, relabel=True)
    acc = hungarian_accuracy(true, pred)
    assert acc == pytest.approx(_brute_force_accuracy(true, pred), abs=1e-12)
    m2o = many_to_one_accuracy(true, pred)
    assert m2o == pytest.approx(_loop_many_to_one(true, pred), abs=1e-12)
    assert m2o >= acc  # a one-to-one map is one of the many-to-one maps


def test_accuracies_on_known_partitions():
    true = np.array([0, 0, 0, 1, 1, 1])
    # 3 clusters for 2 classes: one-to-one leaves the smallest cluster unmatched (wrong).
    pred = np.array([5, 5, 9, 2, 2, 2])
    assert hungarian_accuracy(true, pred) == pytest.approx(5 / 6)
    assert many_to_one_accuracy(true, pred) == 1.0
    assert hungarian_accuracy(true, 1 - true) == 1.0  # names do not matter
    assert np.isnan(hungarian_accuracy([], [])) and np.isnan(many_to_one_accuracy([], []))


def test_metrics_reject_mismatched_labels():
    with pytest.raises(ValueError, match="same length"):
        label_scores([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="1-D"):
        label_scores(np.zeros((2, 2), int), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="same length"):
        hungarian_accuracy([0, 1, 2], [0, 1])


# ---------------------------------------------------------------- k-means

def _blobs(seed, n, d, k, spread):
    """(features [n, d] float32, labels [n]): unit-variance Gaussians around spread·N(0, I)."""
    rng = np.random.default_rng(seed)
    centers = spread * rng.normal(size=(k, d))
    labels = rng.integers(0, k, n)
    return (centers[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def _sq_dists64(x, c):
    return ((np.asarray(x, np.float64)[:, None, :] - np.asarray(c, np.float64)[None]) ** 2).sum(-1)


def test_kmeans_recovers_well_separated_blobs():
    x, labels = _blobs(0, 300, 8, 5, spread=20.0)
    res = kmeans(x, 5, seed=0)
    assert res.centroids.shape == (5, 8) and res.assignments.shape == (300,)
    assert res.assignments.dtype == np.int32
    assert isinstance(res.inertia, float) and isinstance(res.num_iters, int)
    assert _reference_ari(labels, np.asarray(res.assignments)) == 1.0
    # The centroids are then the blob means; the inertia their within-blob scatter.
    scatter = sum(((x[labels == c] - x[labels == c].mean(0)) ** 2).sum() for c in range(5))
    assert res.inertia == pytest.approx(scatter, rel=1e-5)


def test_kmeans_result_is_a_lloyd_fixed_point():
    x, _ = _blobs(1, 400, 6, 10, spread=2.0)  # overlapping: Lloyd needs many iterations
    res = kmeans(x, 10, num_iters=300, tol=0.0, seed=1)
    assert 1 < res.num_iters < 300  # stopped because it converged, not at the cap
    assign, centroids = np.asarray(res.assignments), np.asarray(res.centroids, np.float64)
    d2 = _sq_dists64(x, centroids)
    # The inertia is that of the returned assignments and centroids.
    np.testing.assert_allclose(res.inertia, d2[np.arange(len(x)), assign].sum(), rtol=1e-5)
    # Every point is assigned to its nearest centroid (up to float32 near-ties) ...
    nearest = d2.min(axis=1)
    assert np.all(d2[np.arange(len(x)), assign] <= nearest + 1e-4 * (1 + nearest))
    assert np.mean(assign == d2.argmin(axis=1)) > 0.99
    # ... and every centroid is the mean of its members.
    for c in range(10):
        assert np.any(assign == c)
        np.testing.assert_allclose(centroids[c], x[assign == c].astype(np.float64).mean(0),
                                   atol=1e-5)


def test_kmeans_plus_plus_seeding_is_deterministic_and_picks_data_points():
    x, _ = _blobs(2, 200, 4, 6, spread=3.0)
    seeds = kmeans(x, 6, num_iters=0, seed=3)  # num_iters=0: the k-means++ seeds themselves
    assert seeds.num_iters == 0
    again = kmeans(x, 6, num_iters=0, seed=3)
    np.testing.assert_array_equal(np.asarray(seeds.centroids), np.asarray(again.centroids))
    other = kmeans(x, 6, num_iters=0, seed=4)
    assert not np.array_equal(np.asarray(seeds.centroids), np.asarray(other.centroids))
    # Each seed is a distinct data point (up to the centring round trip).
    d2 = _sq_dists64(np.asarray(seeds.centroids), x)
    picked = d2.argmin(axis=1)
    assert len(set(picked.tolist())) == 6 and d2.min(axis=1).max() < 1e-8
    # Full runs are deterministic too.
    a, b = kmeans(x, 6, seed=3), kmeans(x, 6, seed=3)
    np.testing.assert_array_equal(np.asarray(a.assignments), np.asarray(b.assignments))
    assert a.inertia == b.inertia


@pytest.mark.parametrize("data_seed", [0, 3])
def test_kmeans_inertia_matches_sklearn(data_seed):
    # A wrong update, a missing seeding step or stopping early lands several % above
    # scikit-learn on this overlapping data; a correct k-means with 4 restarts is within 0.1%.
    x, _ = _blobs(data_seed, 400, 6, 10, spread=2.0)
    reference = KMeans(10, n_init=10, random_state=0).fit(x).inertia_
    ours = kmeans(x, 10, num_restarts=4, seed=data_seed)
    assert ours.inertia <= 1.01 * reference, (ours.inertia, reference)
    # The best restart is kept: never worse than a single restart with the same first key.
    assert ours.inertia <= kmeans(x, 10, num_restarts=1, seed=data_seed).inertia * (1 + 1e-6)


def test_kmeans_l2_normalize_equals_normalizing_first():
    x, _ = _blobs(4, 120, 5, 3, spread=3.0)
    x = x * np.random.default_rng(0).uniform(0.1, 10.0, (len(x), 1)).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    a, b = kmeans(x, 3, l2_normalize=True), kmeans(unit, 3)
    np.testing.assert_array_equal(np.asarray(a.assignments), np.asarray(b.assignments))
    np.testing.assert_allclose(np.asarray(a.centroids), np.asarray(b.centroids), atol=1e-6)


def test_kmeans_more_clusters_than_distinct_points_keeps_empty_centroids_finite():
    x = np.repeat(np.eye(3, 4, dtype=np.float32), 10, axis=0)  # 3 distinct points, K=5
    res = kmeans(x, 5, seed=0)
    assert np.all(np.isfinite(np.asarray(res.centroids)))
    assert res.inertia == pytest.approx(0.0, abs=1e-5)
    assert _reference_ari(np.repeat(np.arange(3), 10), np.asarray(res.assignments)) == 1.0


@pytest.mark.parametrize("features,k,kwargs,match", [
    (np.zeros((5, 2)), 6, {}, "exceeds the number of samples"),
    (np.zeros((5, 2)), 0, {}, "num_clusters must be >= 1"),
    (np.zeros(5), 2, {}, "must be 2-D"),
    (np.zeros((5, 2, 2)), 2, {}, "must be 2-D"),
    (np.zeros((5, 2)), 2, {"num_restarts": 0}, "num_restarts >= 1"),
    (np.zeros((5, 2)), 2, {"tol": -1.0}, "tol must be >= 0"),
])
def test_kmeans_rejects_bad_inputs(features, k, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kmeans(features, k, **kwargs)


def test_clustering_scores_on_separated_blobs():
    x, labels = _blobs(0, 300, 8, 5, spread=20.0)  # same shapes as above: no new compile
    labels = np.array([3, 11, 40, 41, 1000])[labels]  # non-contiguous class ids
    scores = clustering_scores(x, labels)
    assert set(scores) == {"nmi", "ari", "acc", "acc_many_to_one", "inertia"}
    assert all(type(v) is float for v in scores.values())
    assert scores["ari"] == 1.0 and scores["acc"] == 1.0 and scores["acc_many_to_one"] == 1.0
    assert scores["nmi"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not match"):
        clustering_scores(x, labels[:-1])


def test_kmeans_sharded_over_8_devices_equals_one_device():
    n, d, k, seed = 256, 8, 5, 0
    env = device_env(8)
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tests", "clustering_sharded.py"),
                           str(n), str(d), str(k), str(seed)],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["num_devices"] == 8 and info["input_shards"] == [[n // 8, d]] * 8
    assert info["assignment_shards_8"] == [[n // 8]] * 8  # the assignments stay sharded
    assert info["assignments_8"] == info["assignments_1"]
    assert info["num_iters_8"] == info["num_iters_1"] > 1
    np.testing.assert_allclose(info["centroids_8"], info["centroids_1"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(info["inertia_8"], info["inertia_1"], rtol=1e-5)
    # And the sharded result is a correct one: its inertia is that of its own assignments.
    x = sharded_inputs(n, d, k, seed)
    assign, centroids = np.array(info["assignments_8"]), np.array(info["centroids_8"])
    np.testing.assert_allclose(info["inertia_8"],
                               _sq_dists64(x, centroids)[np.arange(n), assign].sum(), rtol=1e-5)
