"""k-means on frozen features and the clustering metrics used to score it against class labels.

k-means itself lives in `ssl_jax.clustering` (shared with DeepCluster-style methods);
`kmeans` and `KMeansResult` are re-exported here.

Metrics (NumPy, against integer class labels; labels need not be contiguous):
  * normalized mutual information with arithmetic-mean normalisation (Strehl & Ghosh 2002,
    "Cluster Ensembles"): scikit-learn's `normalized_mutual_info_score`;
  * adjusted Rand index (Hubert & Arabie 1985, "Comparing partitions"): scikit-learn's
    `adjusted_rand_score`;
  * unsupervised clustering accuracy: the best one-to-one cluster -> class matching found by the
    Hungarian algorithm (the protocol of e.g. IIC, Ji et al. 2019, and of DeepCluster-style
    evaluations), and many-to-one accuracy, where every cluster takes its majority class (the
    usual score when there are more clusters than classes).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from ssl_jax.clustering import KMeansResult, kmeans

__all__ = ["KMeansResult", "kmeans", "hungarian_accuracy", "many_to_one_accuracy", "label_scores",
           "clustering_scores"]


# ---------------------------------------------------------------- metrics (NumPy)

def _check_labels(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
    labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
    if labels_true.ndim != 1 or labels_pred.shape != labels_true.shape:
        raise ValueError("clustering metrics: labels_true and labels_pred must be 1-D arrays "
                         f"of the same length; got shapes {labels_true.shape} and "
                         f"{labels_pred.shape}. Flatten them, e.g. np.ravel(labels).")
    return labels_true, labels_pred


def _contingency(labels_true, labels_pred) -> np.ndarray:
    """[n_classes, n_clusters] int64 counts (rows/columns: the sorted unique labels)."""
    return contingency_matrix(*_check_labels(labels_true, labels_pred))


def hungarian_accuracy(labels_true, labels_pred) -> float:
    """Unsupervised clustering accuracy: fraction correct under the best one-to-one matching.

    The matching maximises the matched counts of the contingency matrix (Hungarian algorithm,
    scipy's linear_sum_assignment, rectangular allowed). With more clusters than classes the
    unmatched clusters' points count as wrong, with fewer the unmatched classes' points do.
    NaN for empty labels.
    """
    table = _contingency(labels_true, labels_pred)
    if table.size == 0:
        return float("nan")
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def many_to_one_accuracy(labels_true, labels_pred) -> float:
    """Fraction correct when each cluster predicts its majority class (ties: any of them).

    Several clusters may map to the same class, so it never decreases as clusters are split;
    compare it only between runs with the same number of clusters. NaN for empty labels.
    """
    table = _contingency(labels_true, labels_pred)
    if table.size == 0:
        return float("nan")
    return float(table.max(axis=0).sum() / table.sum())


def label_scores(labels_true, labels_pred) -> dict:
    """Scores of a clustering `labels_pred` against class labels `labels_true` (1-D, same length,
    any integer ids): {'nmi' (scikit-learn's normalized_mutual_info_score, arithmetic mean),
    'ari' (adjusted_rand_score), 'acc' (Hungarian), 'acc_many_to_one'} as Python floats."""
    labels_true, labels_pred = _check_labels(labels_true, labels_pred)
    return {
        "nmi": float(normalized_mutual_info_score(labels_true, labels_pred, average_method="arithmetic")),
        "ari": float(adjusted_rand_score(labels_true, labels_pred)),
        "acc": hungarian_accuracy(labels_true, labels_pred),
        "acc_many_to_one": many_to_one_accuracy(labels_true, labels_pred),
    }


def clustering_scores(features, labels, num_clusters: int | None = None, *, seed: int = 0,
                      num_iters: int = 100, num_restarts: int = 1, tol: float = 1e-6,
                      l2_normalize: bool = False) -> dict:
    """k-means on `features` scored against `labels`.

    num_clusters defaults to the number of distinct labels; the other keywords go to `kmeans`.
    The assignments are fetched to the host, so `features` must be fully addressable (one
    process, or features already gathered as `extract_features` returns them).

    Returns:
      {'nmi', 'ari', 'acc' (Hungarian), 'acc_many_to_one', 'inertia'} as Python floats.
    """
    labels = np.asarray(labels)
    n = features.shape[0] if hasattr(features, "shape") else len(features)
    if labels.shape != (n,):
        raise ValueError(f"clustering_scores: labels shape {labels.shape} does not match the "
                         f"{n} features; pass one label per feature row.")
    if num_clusters is None:
        num_clusters = len(np.unique(labels))
    result = kmeans(features, num_clusters, num_iters=num_iters, num_restarts=num_restarts,
                    seed=seed, tol=tol, l2_normalize=l2_normalize)
    return {**label_scores(labels, np.asarray(result.assignments)), "inertia": result.inertia}
