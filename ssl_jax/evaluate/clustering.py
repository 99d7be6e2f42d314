"""k-means on frozen features and the clustering metrics used to score it against class labels.

k-means: k-means++ seeding (D² sampling; Arthur & Vassilvitskii 2007, "k-means++: The Advantages
of Careful Seeding"), then Lloyd iterations (Lloyd 1982, "Least squares quantization in PCM")
inside one jitted `lax.while_loop`. With several local trials per centre the seeding is the
"greedy k-means++" variant that scikit-learn uses; one trial is the original algorithm.
Nothing here is device specific: `features` may be a jax.Array sharded over its batch axis and
XLA inserts the cross-device reductions (no shard_map, no host round trip inside).

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

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from ssl_jax import losses

_HIGHEST = jax.lax.Precision.HIGHEST


class KMeansResult(NamedTuple):
    """Output of `kmeans`."""
    centroids: jax.Array  # [K, D] float32, in the input space (after L2 normalisation if asked)
    assignments: jax.Array  # [N] int32, index of the nearest centroid (sharded like features)
    inertia: float  # sum over points of the squared distance to their centroid
    num_iters: int  # Lloyd iterations run by the kept restart


def _sq_dists(x: jax.Array, x_sq: jax.Array, centers: jax.Array) -> jax.Array:
    """[N, K] squared Euclidean distances as ||x||² − 2x·c + ||c||² (one matmul, no [N, K, D])."""
    c_sq = jnp.sum(centers * centers, axis=1)
    # HIGHEST: the default precision on TPU/GPU (bf16/tf32 passes) moves near-tied points.
    cross = jnp.dot(x, centers.T, precision=_HIGHEST)
    # The expansion can go slightly negative by cancellation; a distance cannot.
    return jnp.maximum(x_sq[:, None] - 2.0 * cross + c_sq[None, :], 0.0)


def _kmeans_plus_plus(x, x_sq, key, num_clusters: int, trials: int) -> jax.Array:
    """[K, D] seeds: each new centre is D²-sampled; of `trials` candidates the best is kept."""
    n, d = x.shape
    key_first, key_rest = jax.random.split(key)
    first = jax.random.randint(key_first, (), 0, n)
    centers = jnp.zeros((num_clusters, d), x.dtype).at[0].set(x[first])
    min_d2 = _sq_dists(x, x_sq, x[first][None])[:, 0]

    def add_center(i, carry):
        centers, min_d2 = carry
        total = jnp.sum(min_d2)
        # P(pick x) ∝ D(x)²; log(0) = -inf, so points already at a centre are never picked.
        # If every point sits on a centre (fewer distinct points than K) sample uniformly.
        logits = jnp.where(total > 0, jnp.log(min_d2), 0.0)
        cand = jax.random.categorical(jax.random.fold_in(key_rest, i), logits, shape=(trials,))
        cand_d2 = jnp.minimum(min_d2[:, None], _sq_dists(x, x_sq, x[cand]))  # [N, trials]
        best = jnp.argmin(jnp.sum(cand_d2, axis=0))  # greedy: the lowest resulting potential
        return centers.at[i].set(x[cand[best]]), cand_d2[:, best]

    centers, _ = jax.lax.fori_loop(1, num_clusters, add_center, (centers, min_d2))
    return centers


def _lloyd(x, x_sq, centers, tol, max_iters: int):
    """Lloyd iterations from `centers`; returns (centres after the last update, iterations)."""
    num_clusters = centers.shape[0]

    def not_done(state):
        it, _, prev, cur = state
        # prev is inf until two inertias exist (inf <= inf would read as converged).
        converged = jnp.isfinite(prev) & (jnp.abs(prev - cur) <= tol * prev)
        return (it < max_iters) & ~converged

    def step(state):
        it, c, _, cur = state
        d2 = _sq_dists(x, x_sq, c)
        assign = jnp.argmin(d2, axis=1)
        inertia = jnp.sum(jnp.min(d2, axis=1))
        # Sums and counts per cluster as a one-hot matmul: a contraction over the (possibly
        # sharded) batch axis, which XLA turns into local partial sums plus one all-reduce.
        one_hot = jax.nn.one_hot(assign, num_clusters, dtype=x.dtype)
        sums = jnp.dot(one_hot.T, x, precision=_HIGHEST)
        counts = jnp.sum(one_hot, axis=0)
        # An empty cluster keeps its previous centroid (it may win points back later); this
        # never increases the inertia, unlike re-seeding it at random.
        new_c = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c)
        return it + 1, new_c, cur, inertia

    inf = jnp.array(jnp.inf, jnp.float32)
    it, centers, _, _ = jax.lax.while_loop(not_done, step, (jnp.int32(0), centers, inf, inf))
    return centers, it


@functools.partial(jax.jit, static_argnames=("num_clusters", "num_iters", "num_restarts",
                                             "init_trials", "l2_normalize"))
def _kmeans(features, key, tol, *, num_clusters, num_iters, num_restarts, init_trials,
            l2_normalize):
    x = features.astype(jnp.float32)
    if l2_normalize:
        x = losses.l2_normalize(x)
    # k-means is translation invariant; centring removes the common offset that would make the
    # expansion ||x||² − 2x·c + ||c||² lose float32 precision (scikit-learn centres too).
    mean = jnp.mean(x, axis=0)
    x = x - mean
    x_sq = jnp.sum(x * x, axis=1)

    def run(key):
        centers = _kmeans_plus_plus(x, x_sq, key, num_clusters, init_trials)
        centers, iters = _lloyd(x, x_sq, centers, tol, num_iters)
        # A final assignment step, so assignments are the nearest of the returned centroids and
        # the inertia is exactly theirs.
        d2 = _sq_dists(x, x_sq, centers)
        return centers, jnp.argmin(d2, axis=1).astype(jnp.int32), jnp.sum(jnp.min(d2, axis=1)), iters

    # Sequential over restarts: peak memory is one restart's [N, K] distances.
    centers, assign, inertia, iters = jax.lax.map(run, jax.random.split(key, num_restarts))
    best = jnp.argmin(inertia)  # ties: the first restart
    return centers[best] + mean, assign[best], inertia[best], iters[best]


def kmeans(features, num_clusters: int, *, num_iters: int = 100, num_restarts: int = 1,
           seed: int = 0, tol: float = 1e-6, l2_normalize: bool = False,
           init_trials: int | None = None) -> KMeansResult:
    """k-means++ seeding then Lloyd iterations, in float32, in one jitted program.

    Args:
      features: [N, D] numpy or jax array; a jax.Array sharded over N stays sharded (the
        assignments come back with the same sharding).
      num_clusters: K, 1 <= K <= N.
      num_iters: maximum Lloyd iterations per restart (0 returns the k-means++ seeds).
      num_restarts: independent seedings + Lloyd runs; the lowest inertia is kept.
      seed: PRNG seed; the result is deterministic given it.
      tol: stop when |inertia_prev − inertia| <= tol * inertia_prev. tol=0 runs until the
        inertia stops changing, i.e. until the assignments are a fixed point.
      l2_normalize: L2-normalise the features first (spherical use, common on SSL features,
        whose scale carries little information). Centroids are then means of unit vectors and
        are not renormalised.
      init_trials: D²-sampled candidates per seed, the best kept (greedy k-means++). None means
        2 + int(log K), scikit-learn's default; 1 is the original k-means++.

    Empty clusters keep their previous centroid. Memory is O(N * K) for the distances.

    Returns:
      KMeansResult(centroids [K, D] float32, assignments [N] int32, inertia float,
      num_iters int).
    """
    shape = features.shape if hasattr(features, "shape") else np.shape(features)
    if len(shape) != 2:
        raise ValueError(f"kmeans: features must be 2-D [N, D]; got shape {tuple(shape)}. "
                         "Flatten them first, e.g. features.reshape(len(features), -1).")
    n = shape[0]
    if num_clusters < 1:
        raise ValueError(f"kmeans: num_clusters must be >= 1; got {num_clusters}.")
    if num_clusters > n:
        raise ValueError(f"kmeans: num_clusters={num_clusters} exceeds the number of samples "
                         f"N={n}; pass num_clusters <= {n} or cluster more samples.")
    if num_iters < 0 or num_restarts < 1:
        raise ValueError(f"kmeans: need num_iters >= 0 and num_restarts >= 1; got "
                         f"num_iters={num_iters}, num_restarts={num_restarts}.")
    if not tol >= 0:
        raise ValueError(f"kmeans: tol must be >= 0; got {tol}.")
    if init_trials is None:
        init_trials = 2 + int(np.log(num_clusters))
    if init_trials < 1:
        raise ValueError(f"kmeans: init_trials must be >= 1 (or None); got {init_trials}.")
    centroids, assignments, inertia, iters = _kmeans(
        jnp.asarray(features), jax.random.PRNGKey(seed), jnp.float32(tol),
        num_clusters=int(num_clusters), num_iters=int(num_iters),
        num_restarts=int(num_restarts), init_trials=int(init_trials),
        l2_normalize=bool(l2_normalize))
    return KMeansResult(centroids, assignments, float(inertia), int(iters))


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
