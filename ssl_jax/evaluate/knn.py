"""k-nearest-neighbour evaluation of frozen features: weighted (InstDisc / DINO protocol) and
plurality vote (RotNet / AET / SSL++ per-block protocol, `plurality_knn_accuracy`).

Every query is compared by cosine similarity with every memory (train) feature; its k most
similar neighbours vote for their class with weight exp(similarity / temperature) and the class
with the largest summed weight is the prediction (Wu et al. 2018, "Unsupervised Feature Learning
via Non-Parametric Instance Discrimination"; Caron et al. 2021, DINO, k=20 or 200, T=0.07 or 0.1).

Queries are processed in fixed-size chunks with `jax.lax.map` inside one jitted function, so the
similarity matrix held at any time is [chunk_size, N_train] rather than [N_test, N_train], and the
function compiles once per (shapes, k, num_classes, chunk_size). Nothing here is device specific:
the memory may be a plain array or a jax.Array sharded over the data axis.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import parallel
from ssl_jax.losses import l2_normalize


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "chunk_size"))
def _knn_scores(train_features, train_labels, train_valid, test_features, temperature, *,
                num_classes, k, chunk_size):
    memory = l2_normalize(train_features)
    labels = train_labels.astype(jnp.int32)
    queries = l2_normalize(test_features)
    n_test, dim = queries.shape
    num_chunks = -(-n_test // chunk_size)
    # Zero rows pad the last chunk to the static chunk size; their scores are dropped below.
    queries = jnp.pad(queries, ((0, num_chunks * chunk_size - n_test), (0, 0)))
    queries = queries.reshape(num_chunks, chunk_size, dim)

    def chunk_scores(q):
        # HIGHEST precision: on TPU/GPU the default may use bf16/tf32 passes, which reorders
        # near-tied neighbours.
        sims = jnp.dot(q, memory.T, precision=jax.lax.Precision.HIGHEST)  # [chunk, N]
        # Padding rows of a sharded memory can never be neighbours (weight exp(-inf) = 0).
        sims = jnp.where(train_valid[None, :], sims, -jnp.inf)
        top_sims, top_idx = jax.lax.top_k(sims, k)  # [chunk, k]
        weights = jnp.exp(top_sims / temperature)
        neighbour_labels = labels[top_idx]
        rows = jnp.broadcast_to(jnp.arange(chunk_size)[:, None], neighbour_labels.shape)
        # Scatter-add keeps memory at O(chunk * (k + C)) instead of a [chunk, k, C] one-hot.
        return jnp.zeros((chunk_size, num_classes), jnp.float32).at[rows, neighbour_labels].add(
            weights)

    scores = jax.lax.map(chunk_scores, queries).reshape(num_chunks * chunk_size, num_classes)
    scores = scores[:n_test]
    return jnp.argmax(scores, axis=-1).astype(jnp.int32), scores


def weighted_knn_predict(train_features, train_labels, test_features, *, num_classes: int,
                         k: int = 200, temperature: float = 0.1, chunk_size: int = 256,
                         train_valid=None):
    """Weighted kNN classification of `test_features` against a memory of labelled features.

    Args:
      train_features: [N, D] memory features (numpy or jax; L2-normalised inside).
      train_labels: [N] integer labels in [0, num_classes).
      test_features: [Nt, D] query features (L2-normalised inside).
      num_classes: number of classes C.
      k: number of neighbours. If k > N it is clamped to N (every memory item votes).
      temperature: T in the neighbour weight exp(cos / T). Weights are not shifted, so in
        float32 T below ~0.012 can overflow; the protocol uses T in [0.05, 0.1].
      chunk_size: queries per chunk; peak memory is O(chunk_size * N). The last chunk is
        zero-padded to this size so the computation compiles once.
      train_valid: optional bool [N]; False marks padding rows of the memory (e.g. added to
        shard it evenly over devices, see `shard_memory`), which never vote.

    Returns:
      (predictions [Nt] int32, class scores [Nt, C] float32) where score[i, c] is the sum of
      exp(s/T) over the k nearest neighbours of query i that have label c, and predictions is
      its argmax (ties go to the lowest class index).
    """
    train_features = jnp.asarray(train_features)
    train_labels = jnp.asarray(train_labels)
    test_features = jnp.asarray(test_features)
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError("weighted_knn_predict: features must be 2-D [N, D]; got train "
                         f"{train_features.shape} and test {test_features.shape}.")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError("weighted_knn_predict: train and test feature dimensions differ: "
                         f"{train_features.shape[1]} vs {test_features.shape[1]}.")
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"weighted_knn_predict: train_labels shape {train_labels.shape} does "
                         f"not match {train_features.shape[0]} train features.")
    if k < 1 or chunk_size < 1:
        raise ValueError(f"weighted_knn_predict: k and chunk_size must be >= 1; got k={k}, "
                         f"chunk_size={chunk_size}.")
    n_train, n_test = train_features.shape[0], test_features.shape[0]
    if train_valid is None:
        train_valid = jnp.ones((n_train,), bool)
    else:
        n_train = int(np.sum(parallel.to_host(train_valid)))  # may span processes
    if n_train == 0:
        raise ValueError("weighted_knn_predict: the memory (train_features) is empty.")
    if n_test == 0:
        return jnp.zeros((0,), jnp.int32), jnp.zeros((0, num_classes), jnp.float32)
    return _knn_scores(train_features, train_labels, train_valid, test_features, jnp.float32(temperature),
                       num_classes=int(num_classes), k=int(min(k, n_train)),
                       chunk_size=int(min(chunk_size, n_test)))


def topk_hits(scores, labels, topk: int) -> np.ndarray:
    """Boolean [N]: label is among the top-`topk` classes by score.

    A class counts only if it scored > 0 (received a vote, for kNN) and fewer than `topk`
    classes scored strictly higher; so classes without any vote never fill the top-k by
    arbitrary tie-breaking, and with fewer than `topk` classes the hit rate can be below 1.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    true = scores[np.arange(len(labels)), labels]
    rank = np.sum(scores > true[:, None], axis=1)
    return (rank < topk) & (true > 0)


def knn_accuracy(train_features, train_labels, test_features, test_labels, *, num_classes: int,
                 k: int = 200, temperature: float = 0.1, chunk_size: int = 256,
                 train_valid=None) -> dict:
    """Weighted kNN top-1 / top-5 accuracy (fractions in [0, 1]).

    top1 compares the argmax prediction with the label. top5 counts a hit when the label is
    among the 5 best-scoring classes that received at least one neighbour vote (see
    `topk_hits`); with num_classes <= 5 that means "the label got a vote". top5 >= top1.
    Accepts numpy or jax arrays; see `weighted_knn_predict` for the arguments.
    """
    preds, scores = weighted_knn_predict(train_features, train_labels, test_features,
                                         num_classes=num_classes, k=k, temperature=temperature,
                                         chunk_size=chunk_size, train_valid=train_valid)
    preds, scores = parallel.to_host((preds, scores))
    test_labels = np.asarray(test_labels).astype(np.int64)
    if test_labels.shape != (scores.shape[0],):
        raise ValueError(f"knn_accuracy: test_labels shape {test_labels.shape} does not match "
                         f"{scores.shape[0]} test features.")
    if test_labels.size == 0:
        return {"top1": float("nan"), "top5": float("nan")}
    top1 = np.asarray(preds) == test_labels
    top5 = topk_hits(scores, test_labels, 5) | top1
    return {"top1": float(np.mean(top1)), "top5": float(np.mean(top5))}


def shard_memory(features, labels, mesh):
    """(features, labels, valid) of a kNN memory placed on `mesh`, rows split over the batch axes.

    Rows are zero-padded to a multiple of the axis size; `valid` marks the real ones. Each device
    then holds 1/n of the memory, and the [chunk, N] similarities are computed where it lives.
    """
    features, labels = np.asarray(features, np.float32), np.asarray(labels, np.int32)
    n, devices = features.shape[0], parallel.batch_shards(mesh)
    pad = -n % devices
    valid = np.arange(n + pad) < n
    features = np.pad(features, ((0, pad), (0, 0)))
    labels = np.pad(labels, (0, pad))
    sharding = parallel.batch_sharding(mesh)
    # Every process holds the whole memory; each device takes its rows (works across hosts).
    return tuple(jax.make_array_from_callback(x.shape, sharding, lambda idx, x=x: x[idx])
                 for x in (features, labels, valid))


KNN_METRICS = ("cosine", "euclidean")


@functools.partial(jax.jit, static_argnames=("k", "chunk_size", "metric"))
def _knn_neighbours(train_features, train_labels, train_valid, test_features, *, k, chunk_size, metric):
    """Labels [Nt, k] of every query's k nearest memory rows, nearest first (ties: lower index)."""
    memory = jnp.asarray(train_features, jnp.float32)
    queries = jnp.asarray(test_features, jnp.float32)
    if metric == "cosine":
        memory, queries = l2_normalize(memory), l2_normalize(queries)
    n_test, dim = queries.shape
    num_chunks = -(-n_test // chunk_size)
    queries = jnp.pad(queries, ((0, num_chunks * chunk_size - n_test), (0, 0))).reshape(num_chunks, chunk_size, dim)
    sq_norms = jnp.sum(memory * memory, axis=1)

    def chunk_neighbours(q):
        dots = jnp.dot(q, memory.T, precision=jax.lax.Precision.HIGHEST)
        # Euclidean: -|q - m|² up to the query's own |q|², which does not change the order.
        score = dots if metric == "cosine" else 2.0 * dots - sq_norms[None, :]
        score = jnp.where(train_valid[None, :], score, -jnp.inf)
        return train_labels.astype(jnp.int32)[jax.lax.top_k(score, k)[1]]

    return jax.lax.map(chunk_neighbours, queries).reshape(num_chunks * chunk_size, k)[:n_test]


def plurality_votes(neighbour_labels, num_classes: int, k: int) -> np.ndarray:
    """Predictions [Nt] of a plurality vote of the first k of `neighbour_labels` [Nt, >= k]
    (nearest first): the class most of them have; a tie goes to the lowest class index, as
    scikit-learn's KNeighborsClassifier with uniform weights."""
    votes = np.asarray(neighbour_labels)[:, :k].astype(np.int64)
    counts = np.zeros((votes.shape[0], num_classes), np.int64)
    np.add.at(counts, (np.arange(votes.shape[0])[:, None], votes), 1)
    return np.argmax(counts, axis=1)


def plurality_knn_accuracy(train_features, train_labels, test_features, test_labels, *, num_classes: int,
                           ks=(1, 3, 5, 10, 15, 20), metric: str = "cosine", chunk_size: int = 256,
                           train_valid=None) -> dict:
    """{k: top-1 accuracy} of a plurality-vote kNN for every k in `ks`: each query takes the
    class most of its k nearest training features have (unweighted; ties to the lowest class
    index), the classifier SSL++ (Tables V, VI: K in {1, 3, 5, 10, 15, 20}) and RotNet / AET
    use on average-pooled block features. One neighbour search (the largest k) serves every k.

    metric: 'cosine' (the library's kNN, and SSL++'s retrieval; the paper does not name its
    kNN metric) or 'euclidean'. train_valid: optional bool [N], False for padding rows of a
    sharded memory (`shard_memory`), which are never neighbours."""
    if metric not in KNN_METRICS:
        raise ValueError(f"plurality_knn_accuracy: metric={metric!r}; valid: {KNN_METRICS}.")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"plurality_knn_accuracy: ks must be non-empty and >= 1; got {ks}.")
    train_features, test_features = jnp.asarray(train_features), jnp.asarray(test_features)
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError("plurality_knn_accuracy: features must be [N, D] and [Nt, D] with one D; got "
                         f"{train_features.shape} and {test_features.shape}.")
    if train_valid is None:
        train_valid = jnp.ones((train_features.shape[0],), bool)
        n_train = int(train_features.shape[0])
    else:
        n_train = int(np.sum(parallel.to_host(train_valid)))
    if max(ks) > n_train:
        raise ValueError(f"plurality_knn_accuracy: k={max(ks)} exceeds the {n_train} training features.")
    test_labels = np.asarray(test_labels).astype(np.int64)
    if test_labels.shape != (test_features.shape[0],):
        raise ValueError(f"plurality_knn_accuracy: test_labels shape {test_labels.shape} does not match "
                         f"{test_features.shape[0]} test features.")
    if test_labels.size == 0:
        return {k: float("nan") for k in ks}
    neighbours = parallel.to_host(_knn_neighbours(
        train_features, jnp.asarray(train_labels), train_valid, test_features, k=max(ks),
        chunk_size=int(min(chunk_size, test_features.shape[0])), metric=metric))
    return {k: float(np.mean(plurality_votes(neighbours, num_classes, k) == test_labels)) for k in ks}
