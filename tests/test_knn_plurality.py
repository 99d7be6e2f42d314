"""Plurality-vote kNN (SSL++'s per-block protocol) against an independent NumPy loop."""
import numpy as np
import pytest

from ssl_jax.evaluate.knn import plurality_knn_accuracy, plurality_votes


def _reference_predictions(train, train_labels, test, num_classes, k, metric):
    """float64: distances to every training row, the k nearest, the most frequent label
    (np.bincount's argmax: ties to the lowest label)."""
    train, test = np.asarray(train, np.float64), np.asarray(test, np.float64)
    if metric == "cosine":
        train = train / np.linalg.norm(train, axis=1, keepdims=True)
        test = test / np.linalg.norm(test, axis=1, keepdims=True)
    out = []
    for q in test:
        dist = -(train @ q) if metric == "cosine" else np.sum((train - q) ** 2, axis=1)
        nearest = np.argsort(dist, kind="stable")[:k]
        out.append(np.argmax(np.bincount(train_labels[nearest], minlength=num_classes)))
    return np.array(out)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_matches_numpy_reference_for_every_k(metric):
    rng = np.random.default_rng(0)
    # Clustered data with a per-row scale: cosine and Euclidean neighbours differ.
    centres = rng.normal(size=(4, 8)) * 2
    train_labels = rng.integers(0, 4, 120)
    test_labels = rng.integers(0, 4, 41)
    train = (centres[train_labels] + rng.normal(size=(120, 8))) * rng.uniform(0.3, 3.0, (120, 1))
    test = centres[test_labels] + rng.normal(size=(41, 8))
    ks = (1, 3, 5, 10, 15, 20)
    # chunk_size 16 does not divide 41: the padded last chunk.
    acc = plurality_knn_accuracy(train.astype(np.float32), train_labels, test.astype(np.float32), test_labels,
                                 num_classes=4, ks=ks, metric=metric, chunk_size=16)
    assert sorted(acc) == list(ks)
    for k in ks:
        expected = np.mean(_reference_predictions(train, train_labels, test, 4, k, metric) == test_labels)
        assert acc[k] == pytest.approx(expected, abs=1e-12), k
    assert acc[20] > 0.5  # separable clusters: far above chance (0.25)


def test_vote_is_unweighted_and_ties_go_to_the_lowest_class():
    neighbours = np.array([[2, 1, 1, 2, 0], [3, 0, 0, 3, 3]])
    np.testing.assert_array_equal(plurality_votes(neighbours, 4, 1), [2, 3])
    np.testing.assert_array_equal(plurality_votes(neighbours, 4, 3), [1, 0])  # two far votes beat the nearest
    np.testing.assert_array_equal(plurality_votes(neighbours, 4, 4), [1, 0])  # 2-2 ties: lowest class
    np.testing.assert_array_equal(plurality_votes(neighbours, 4, 5), [1, 3])


def test_padding_rows_never_vote_and_errors_name_the_cause():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01]], np.float32)
    labels = np.array([0, 1, 1])
    valid = np.array([True, True, False])  # the third row (nearest to the query) is padding
    acc = plurality_knn_accuracy(train, labels, np.array([[1.0, 0.0]], np.float32), np.array([0]),
                                 num_classes=2, ks=(1,), train_valid=valid)
    assert acc == {1: 1.0}
    with pytest.raises(ValueError, match="exceeds"):
        plurality_knn_accuracy(train, labels, train, labels, num_classes=2, ks=(4,))
    with pytest.raises(ValueError, match="metric"):
        plurality_knn_accuracy(train, labels, train, labels, num_classes=2, ks=(1,), metric="l1")
