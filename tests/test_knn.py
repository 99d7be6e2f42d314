"""Weighted kNN evaluation against an independent NumPy reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.evaluate.knn import knn_accuracy, weighted_knn_predict


def _reference_scores(train, train_labels, test, num_classes, k, temperature):
    """Dense float64 loop: cosine similarities, top-k, exp(s/T) votes per class."""
    train = np.asarray(train, np.float64)
    test = np.asarray(test, np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    k = min(k, len(train))
    scores = np.zeros((len(test), num_classes))
    for i, q in enumerate(test):
        sims = train @ q
        nearest = np.argsort(-sims)[:k]
        for j in nearest:
            scores[i, train_labels[j]] += np.exp(sims[j] / temperature)
    return scores


def _random_problem(seed, n_train=103, n_test=37, dim=16, num_classes=5):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(n_train, dim)).astype(np.float32) * rng.uniform(0.5, 3.0, (n_train, 1))
    test = rng.normal(size=(n_test, dim)).astype(np.float32)
    train_labels = rng.integers(0, num_classes, n_train)
    test_labels = rng.integers(0, num_classes, n_test)
    return train, train_labels, test, test_labels


@pytest.mark.parametrize("k,temperature", [(1, 0.1), (7, 0.07), (23, 0.5), (103, 0.1)])
def test_matches_numpy_reference(k, temperature):
    train, train_labels, test, _ = _random_problem(0)
    # chunk_size 10 does not divide n_test = 37: exercises the padded last chunk.
    preds, scores = weighted_knn_predict(train, train_labels, test, num_classes=5, k=k,
                                         temperature=temperature, chunk_size=10)
    ref = _reference_scores(train, train_labels, test, 5, k, temperature)
    assert preds.shape == (37,) and preds.dtype == jnp.int32
    assert scores.shape == (37, 5)
    np.testing.assert_allclose(np.asarray(scores), ref, rtol=2e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(preds), ref.argmax(axis=1))


def test_chunk_size_does_not_change_result():
    train, train_labels, test, _ = _random_problem(1)
    results = [weighted_knn_predict(train, train_labels, test, num_classes=5, k=9, chunk_size=c)
               for c in (1, 8, 37, 256)]
    for preds, scores in results[1:]:
        np.testing.assert_array_equal(np.asarray(preds), np.asarray(results[0][0]))
        np.testing.assert_allclose(np.asarray(scores), np.asarray(results[0][1]), rtol=1e-5)


def test_k_larger_than_memory_is_clamped():
    train, train_labels, test, _ = _random_problem(2, n_train=20)
    _, scores_big = weighted_knn_predict(train, train_labels, test, num_classes=5, k=1000,
                                         chunk_size=16)
    _, scores_n = weighted_knn_predict(train, train_labels, test, num_classes=5, k=20,
                                       chunk_size=16)
    np.testing.assert_allclose(np.asarray(scores_big), np.asarray(scores_n), rtol=1e-6)
    ref = _reference_scores(train, train_labels, test, 5, 20, 0.1)
    np.testing.assert_allclose(np.asarray(scores_big), ref, rtol=2e-4)


def test_perfect_accuracy_on_separated_clusters():
    rng = np.random.default_rng(3)
    num_classes, dim = 6, 32
    centres = np.eye(dim)[:num_classes] * 10.0
    train_labels = np.repeat(np.arange(num_classes), 40)
    test_labels = np.tile(np.arange(num_classes), 9)
    train = centres[train_labels] + rng.normal(size=(len(train_labels), dim))
    test = centres[test_labels] + rng.normal(size=(len(test_labels), dim))
    # k = 20 < 40 examples per class; jax inputs are accepted as well as numpy ones.
    acc = knn_accuracy(jnp.asarray(train), jnp.asarray(train_labels), test, test_labels,
                       num_classes=num_classes, k=20, temperature=0.1, chunk_size=16)
    assert acc == {"top1": 1.0, "top5": 1.0}


def test_accuracy_against_reference_and_top5_at_least_top1():
    train, train_labels, test, test_labels = _random_problem(4, n_train=150, n_test=61,
                                                             num_classes=10)
    acc = knn_accuracy(train, train_labels, test, test_labels, num_classes=10, k=11,
                       temperature=0.1, chunk_size=16)
    ref = _reference_scores(train, train_labels, test, 10, 11, 0.1)
    top1 = np.mean(ref.argmax(axis=1) == test_labels)
    true = ref[np.arange(len(test_labels)), test_labels]
    top5 = np.mean((true > 0) & ((ref > true[:, None]).sum(axis=1) < 5))
    assert acc["top1"] == pytest.approx(top1)
    assert acc["top5"] == pytest.approx(top5)
    assert 0.0 <= acc["top1"] <= acc["top5"] <= 1.0
    assert acc["top5"] > acc["top1"]  # non-trivial on random labels with 10 classes
