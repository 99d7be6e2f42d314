"""Linear probe on frozen features: agreement with sklearn, accuracy, l2 selection hygiene."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ssl_jax.evaluate.linear import (linear_probe_accuracy, predict_logits, regularized_loss,
                                     standardization_stats, train_linear_classifier)


def _blobs(seed, n_per_class, num_classes, dim, spread):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim)) * spread
    labels = np.repeat(np.arange(num_classes), n_per_class)
    feats = centres[labels] + rng.normal(size=(len(labels), dim))
    # An offset and per-dimension scales that standardisation must undo.
    feats = feats * rng.uniform(0.1, 10.0, dim) + 5.0
    perm = rng.permutation(len(labels))
    return feats[perm].astype(np.float32), labels[perm]


@pytest.mark.parametrize("l2", [1e-2, 1e-1])
def test_matches_sklearn_multinomial_logistic_regression(l2):
    x, y = _blobs(0, 40, 4, 12, spread=0.7)  # overlapping classes: a non-trivial optimum
    n = len(y)
    clf = train_linear_classifier(x, y, num_classes=4, l2=l2, num_steps=2000, tol=1e-7)

    # sklearn minimises sum_i CE + ||W||^2 / (2C) = N * (mean CE + ||W||^2 / (2 C N)), so
    # C = 1 / (l2 * N); with lbfgs the intercept is not penalised, like ours. sklearn >= 1.5
    # fits a multinomial model for multiclass lbfgs without a `multi_class` argument.
    mean, std = standardization_stats(x)
    xs = (np.asarray(x, np.float64) - np.asarray(mean)) / np.asarray(std)
    ref = LogisticRegression(C=1.0 / (l2 * n), tol=1e-10, max_iter=10000).fit(xs, y)

    probs = np.asarray(jax.nn.softmax(predict_logits(clf, x)))
    np.testing.assert_allclose(probs, ref.predict_proba(xs), atol=1e-3)

    # Same objective value, and same standardised-space weights (both are the unique
    # minimiser; W columns sum to zero for both).
    w_std = np.asarray(clf.w) * np.asarray(std)[:, None]
    b_std = np.asarray(clf.b) + np.asarray(mean) @ np.asarray(clf.w)
    xs32 = jnp.asarray(xs, jnp.float32)
    ours = float(regularized_loss(jnp.asarray(w_std), jnp.asarray(b_std), xs32, y, l2))
    theirs = float(regularized_loss(jnp.asarray(ref.coef_.T, jnp.float32),
                                    jnp.asarray(ref.intercept_, jnp.float32), xs32, y, l2))
    assert ours == pytest.approx(theirs, rel=1e-4)
    np.testing.assert_allclose(w_std, ref.coef_.T, atol=2e-3)


def test_separable_blobs_high_accuracy():
    x, y = _blobs(1, 60, 3, 20, spread=4.0)
    train_x, train_y, test_x, test_y = x[:120], y[:120], x[120:], y[120:]
    result = linear_probe_accuracy(train_x, train_y, test_x, test_y, num_classes=3,
                                   l2_grid=(1e-4, 1e-2), num_steps=300)
    assert result["top1"] >= 0.95
    assert result["top5"] == 1.0  # 3 classes: every class is in the top 5
    assert result["l2"] in (1e-4, 1e-2)
    assert set(result["holdout_top1"]) == {1e-4, 1e-2}


def test_l2_chosen_on_train_holdout_only():
    x, y = _blobs(2, 30, 8, 24, spread=0.5)  # hard enough that l2 matters
    train_x, train_y, test_x, test_y = x[:180], y[:180], x[180:], y[180:]
    grid = (1e-4, 1e-2, 1.0)
    kwargs = dict(num_classes=8, l2_grid=grid, num_steps=200, seed=3)
    a = linear_probe_accuracy(train_x, train_y, test_x, test_y, **kwargs)
    shuffled = np.random.default_rng(0).permutation(test_y)
    b = linear_probe_accuracy(train_x, train_y, test_x, shuffled, **kwargs)
    assert a["l2"] == b["l2"]
    assert a["holdout_top1"] == b["holdout_top1"]
    assert a["l2"] == max(l2 for l2 in grid
                          if a["holdout_top1"][l2] == max(a["holdout_top1"].values()))
    assert 0.0 <= a["top1"] <= a["top5"] <= 1.0
    # Nor are the test features: replacing them by noise leaves the selection unchanged.
    noise = np.random.default_rng(1).normal(size=test_x.shape).astype(np.float32)
    c = linear_probe_accuracy(train_x, train_y, noise, test_y, **kwargs)
    assert c["l2"] == a["l2"] and c["holdout_top1"] == a["holdout_top1"]
