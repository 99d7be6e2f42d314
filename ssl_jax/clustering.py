"""k-means and whitened PCA on feature arrays: the clustering primitives of evaluation and of
DeepCluster-style methods. Pure jitted array code (jax, numpy, ssl_jax.losses only).

k-means: k-means++ seeding (D² sampling; Arthur & Vassilvitskii 2007, "k-means++: The Advantages
of Careful Seeding") or uniform random seeds, then Lloyd iterations (Lloyd 1982, "Least squares
quantization in PCM") inside one jitted `lax.while_loop`. With several local trials per centre
the seeding is the "greedy k-means++" variant that scikit-learn uses; one trial is the original
algorithm. Options for DeepCluster (Caron et al. 2018, "Deep Clustering for Unsupervised Learning
of Visual Features", which runs Faiss k-means) and DeepCluster-v2 (Caron et al. 2020, SwAV paper,
App. A; cosine k-means on unit vectors): spherical (cosine) k-means, row-chunked distances, and
the empty-cluster split rule of Faiss' k-means.

PCA: `pca_whiten` is DeepCluster's feature preprocessing (Faiss PCAMatrix with eigen_power=-0.5,
then row L2 normalisation); `pca_project` the plain (unwhitened) projection, SSL++'s reduction of
raw pixels before k-means (ssl_jax.stages, label source 'kmeans').

Nothing here is device specific: `features` may be a jax.Array sharded over its first axis and
XLA inserts the cross-device reductions (no shard_map, no host round trip inside).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import losses

_HIGHEST = jax.lax.Precision.HIGHEST

# Empty-cluster split: the relative size of the symmetric perturbation. Faiss uses 1/1024
# (multiplicative, per coordinate); here it scales the data's RMS coordinate (see _split_empty).
_SPLIT_EPS = 1.0 / 1024.0


class KMeansResult(NamedTuple):
    """Output of `kmeans`."""
    centroids: jax.Array  # [K, D] float32, in the input space (unit rows if spherical)
    assignments: jax.Array  # [N] int32, index of the nearest centroid (sharded like features)
    inertia: float  # sum of squared distances to the centroids (spherical: sum of 1 − cos)
    num_iters: int  # Lloyd iterations run by the kept restart
    sizes: jax.Array  # [K] int32, points per cluster in `assignments`
    num_empty_splits: int  # empty-cluster splits made by the kept restart (empty='split')


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


def _random_init(x, key, num_clusters: int) -> jax.Array:
    """[K, D] seeds: K distinct rows (indices) of x, uniformly without replacement."""
    idx = jax.random.choice(key, x.shape[0], (num_clusters,), replace=False)
    return x[idx]


class _Points(NamedTuple):
    """The points as the assignment step reads them: flat [N, ...], or (chunked) [M, C, ...]
    with row (j, i) = point i·M + j and `valid` False on the padding."""
    x: jax.Array
    x_sq: jax.Array
    valid: jax.Array | None


def _chunk(x, x_sq, chunk_size: int) -> _Points:
    # Strided chunks: chunk j holds points j, j + M, j + 2M, ..., so its rows stay spread over
    # the devices when x is sharded over N (each scan step then runs on every device).
    n, d = x.shape
    m = -(-n // chunk_size)
    pad = m * chunk_size - n
    valid = jnp.arange(n + pad) < n
    x = jnp.pad(x, ((0, pad), (0, 0))).reshape(chunk_size, m, d).swapaxes(0, 1)
    x_sq = jnp.pad(x_sq, (0, pad)).reshape(chunk_size, m).swapaxes(0, 1)
    return _Points(x, x_sq, valid.reshape(chunk_size, m).swapaxes(0, 1))


def _nearest(x, x_sq, centers, spherical: bool):
    """(assignments [n] int32, cost [n]): squared distance, or 1 − cos for unit rows."""
    if spherical:
        sims = jnp.dot(x, centers.T, precision=_HIGHEST)
        return jnp.argmax(sims, axis=1).astype(jnp.int32), 1.0 - jnp.max(sims, axis=1)
    d2 = _sq_dists(x, x_sq, centers)
    return jnp.argmin(d2, axis=1).astype(jnp.int32), jnp.min(d2, axis=1)


def _assign(points: _Points, centers, spherical: bool):
    """Assignment step: (assignments [N] int32 (chunked: [N + padding]), inertia, sums [K, D],
    counts [K] float32)."""
    num_clusters = centers.shape[0]
    if points.valid is None:
        assign, cost = _nearest(points.x, points.x_sq, centers, spherical)
        # Sums and counts per cluster as a one-hot matmul: a contraction over the (possibly
        # sharded) batch axis, which XLA turns into local partial sums plus one all-reduce.
        one_hot = jax.nn.one_hot(assign, num_clusters, dtype=points.x.dtype)
        sums = jnp.dot(one_hot.T, points.x, precision=_HIGHEST)
        return assign, jnp.sum(cost), sums, jnp.sum(one_hot, axis=0)

    def chunk_step(carry, chunk):
        inertia, sums, counts = carry
        x, x_sq, valid = chunk
        assign, cost = _nearest(x, x_sq, centers, spherical)
        one_hot = jax.nn.one_hot(assign, num_clusters, dtype=x.dtype) * valid[:, None]
        sums = sums + jnp.dot(one_hot.T, x, precision=_HIGHEST)
        inertia = inertia + jnp.sum(jnp.where(valid, cost, 0.0))
        return (inertia, sums, counts + jnp.sum(one_hot, axis=0)), assign

    init = (jnp.float32(0.0), jnp.zeros_like(centers), jnp.zeros(num_clusters, jnp.float32))
    (inertia, sums, counts), assign = jax.lax.scan(chunk_step, init,
                                                   (points.x, points.x_sq, points.valid))
    # Back to point order; the padding's entries are at the end (the caller drops them).
    return assign.swapaxes(0, 1).reshape(-1), inertia, sums, counts


def _split_empty(centers, counts, key, scale, spherical: bool):
    """Faiss' empty-cluster rule, in order over the empty clusters: cluster e takes a donor d
    drawn with P(d) ∝ max(size_d − 1, 0) (singletons are never split), c_e = c_d + δ and
    c_d ← c_d − δ with δ = scale·s, s a random ±1 vector; the donor's size is halved between
    them so a later draw in the same step sees it. The next assignment splits the donor's
    points by the hyperplane through c_d normal to s. Returns (centers, counts, splits)."""
    num_clusters, dim = centers.shape
    empty = counts == 0
    num_empty = jnp.sum(empty)
    order = jnp.nonzero(empty, size=num_clusters, fill_value=0)[0]

    def body(state):
        j, centers, counts, splits = state
        weights = jnp.maximum(counts - 1.0, 0.0)
        can = jnp.sum(weights) > 0
        key_donor, key_sign = jax.random.split(jax.random.fold_in(key, j))
        donor = jax.random.categorical(key_donor, jnp.log(weights))
        delta = scale * jax.random.rademacher(key_sign, (dim,), jnp.float32)
        base = centers[donor]
        new_empty, new_donor = base + delta, base - delta
        if spherical:
            new_empty, new_donor = losses.l2_normalize(new_empty), losses.l2_normalize(new_donor)
        target = order[j]
        half = jnp.floor(counts[donor] / 2.0)
        centers = jnp.where(can, centers.at[target].set(new_empty).at[donor].set(new_donor),
                            centers)
        counts = jnp.where(can, counts.at[target].set(half).at[donor].add(-half), counts)
        return j + 1, centers, counts, splits + can.astype(jnp.int32)

    state = (jnp.int32(0), centers, counts, jnp.int32(0))
    _, centers, counts, splits = jax.lax.while_loop(lambda s: s[0] < num_empty, body, state)
    return centers, counts, splits


def _update(sums, counts, old, spherical: bool):
    """Centroids from the per-cluster sums; an empty cluster keeps its previous centroid (it may
    win points back later; this never increases the inertia, unlike re-seeding at random)."""
    if spherical:
        norm = jnp.sqrt(jnp.sum(sums * sums, axis=1, keepdims=True))
        # A cluster whose unit vectors sum to 0 has no direction: it keeps its centroid too.
        return jnp.where((counts[:, None] > 0) & (norm > 0), sums / jnp.maximum(norm, 1e-30), old)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], old)


def _lloyd(points: _Points, centers, key, scale, tol, max_iters: int, spherical: bool,
           split: bool):
    """Lloyd iterations from `centers`; returns (centres after the last update, iterations,
    empty-cluster splits)."""

    def not_done(state):
        it, _, prev, cur, splits_before, splits_last, _ = state
        # prev is inf until two inertias exist (inf <= inf would read as converged). A split
        # changes the centroids after the inertia was measured: the next inertia is that of the
        # split centroids, only the one after it measures their update, so a split in either
        # of the last two steps means "not converged".
        converged = jnp.isfinite(prev) & (jnp.abs(prev - cur) <= tol * prev)
        converged &= (splits_before + splits_last) == 0
        return (it < max_iters) & ~converged

    def step(state):
        it, c, _, cur, _, splits_last, total = state
        _, inertia, sums, counts = _assign(points, c, spherical)
        new_c = _update(sums, counts, c, spherical)
        splits = jnp.int32(0)
        if split:
            new_c, _, splits = _split_empty(new_c, counts, jax.random.fold_in(key, it), scale,
                                            spherical)
        return it + 1, new_c, cur, inertia, splits_last, splits, total + splits

    inf = jnp.array(jnp.inf, jnp.float32)
    zero = jnp.int32(0)
    it, centers, _, _, _, _, total = jax.lax.while_loop(
        not_done, step, (zero, centers, inf, inf, zero, zero, zero))
    return centers, it, total


@functools.partial(jax.jit, static_argnames=(
    "num_clusters", "num_iters", "num_restarts", "init_trials", "l2_normalize", "init",
    "spherical", "chunk_size", "empty"))
def _kmeans(features, key, tol, *, num_clusters, num_iters, num_restarts, init_trials,
            l2_normalize, init, spherical, chunk_size, empty):
    x = features.astype(jnp.float32)
    n, dim = x.shape
    if l2_normalize or spherical:
        x = losses.l2_normalize(x)
    if spherical:
        mean = jnp.zeros((dim,), jnp.float32)  # cosine is not translation invariant
    else:
        # k-means is translation invariant; centring removes the common offset that would make
        # the expansion ||x||² − 2x·c + ||c||² lose float32 precision (scikit-learn centres too).
        mean = jnp.mean(x, axis=0)
        x = x - mean
    x_sq = jnp.sum(x * x, axis=1)
    points = _Points(x, x_sq, None) if chunk_size is None else _chunk(x, x_sq, chunk_size)
    # The split perturbation's size: _SPLIT_EPS times the RMS coordinate of the (centred) data,
    # so it is scale free and far above float32 rounding of the distances.
    scale = _SPLIT_EPS * jnp.sqrt(jnp.sum(x_sq) / (n * dim))

    def run(key):
        if init == "random":
            centers = _random_init(x, key, num_clusters)
        else:
            centers = _kmeans_plus_plus(x, x_sq, key, num_clusters, init_trials)
        split_key = jax.random.fold_in(key, 0x5EED)  # k-means++ draws from split(key)
        centers, iters, splits = _lloyd(points, centers, split_key, scale, tol, num_iters,
                                        spherical, empty == "split")
        # A final assignment step, so assignments are the nearest of the returned centroids and
        # the inertia is exactly theirs.
        assign, inertia, _, counts = _assign(points, centers, spherical)
        return centers, assign[:n], inertia, iters, counts.astype(jnp.int32), splits

    # Sequential over restarts: peak memory is one restart's [N, K] (or [chunk, K]) distances.
    centers, assign, inertia, iters, sizes, splits = jax.lax.map(
        run, jax.random.split(key, num_restarts))
    best = jnp.argmin(inertia)  # ties: the first restart
    return (centers[best] + mean, assign[best], inertia[best], iters[best], sizes[best],
            splits[best])


def kmeans(features, num_clusters: int, *, num_iters: int = 100, num_restarts: int = 1,
           seed: int = 0, tol: float = 1e-6, l2_normalize: bool = False,
           init_trials: int | None = None, init: str = "k-means++", spherical: bool = False,
           chunk_size: int | None = None, empty: str = "keep") -> KMeansResult:
    """k-means (seeding then Lloyd iterations) in float32, in one jitted program.

    Args:
      features: [N, D] numpy or jax array; a jax.Array sharded over N stays sharded (the
        assignments come back with the same sharding).
      num_clusters: K, 1 <= K <= N.
      num_iters: maximum Lloyd iterations per restart (0 returns the seeds).
      num_restarts: independent seedings + Lloyd runs; the lowest inertia is kept.
      seed: PRNG seed; the result is deterministic given it.
      tol: stop when |inertia_prev − inertia| <= tol * inertia_prev (and, with empty='split',
        no split happened in the last two steps). tol=0 runs until the inertia stops changing,
        i.e. until the assignments are a fixed point.
      l2_normalize: L2-normalise the features first (common on SSL features, whose scale
        carries little information). Centroids are then means of unit vectors and are not
        renormalised (see `spherical` for cosine k-means).
      init_trials: k-means++ only: D²-sampled candidates per seed, the best kept (greedy
        k-means++). None means 2 + int(log K), scikit-learn's default; 1 is the original.
      init: 'k-means++', or 'random': K distinct data points drawn uniformly (Faiss' and
        DeepCluster's seeding).
      spherical: cosine k-means (DeepCluster-v2): rows L2-normalised, each point assigned to
        the centroid of largest dot product, centroids renormalised to unit norm after every
        update; the inertia is the sum of 1 − cos. Seeding treats the unit rows as points.
      chunk_size: None computes the [N, K] distances at once; an int C computes them over
        chunks of C rows in a `lax.scan` (N padded up to a multiple of C), so the peak is
        [C, K]. Same assignments; sums are accumulated per chunk, so centroids and inertia may
        differ from the unchunked ones by float32 rounding.
      empty: what an empty cluster does after an assignment step. 'keep': it keeps its
        centroid. 'split' (DeepCluster, as Faiss' k-means): it takes a donor cluster drawn with
        probability ∝ (size − 1), so singletons are never split; the two centroids become
        c ± δ, δ a random ±1 vector times 1/1024 of the data's RMS coordinate (Faiss multiplies
        each coordinate by 1 ± 1/1024 instead, which cannot separate a zero coordinate), and
        the next assignment divides the donor's points between them. Splits are drawn from
        keys derived from the seed, the restart and the iteration, inside the jitted program.

    Returns:
      KMeansResult(centroids [K, D] float32, assignments [N] int32, inertia float,
      num_iters int, sizes [K] int32, num_empty_splits int).
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
    if init not in ("k-means++", "random"):
        raise ValueError(f"kmeans: init must be 'k-means++' or 'random'; got {init!r}.")
    if empty not in ("keep", "split"):
        raise ValueError(f"kmeans: empty must be 'keep' or 'split'; got {empty!r}.")
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"kmeans: chunk_size must be None or an int >= 1; got {chunk_size!r}.")
    if init_trials is None:
        init_trials = 2 + int(np.log(num_clusters))
    if init_trials < 1:
        raise ValueError(f"kmeans: init_trials must be >= 1 (or None); got {init_trials}.")
    centroids, assignments, inertia, iters, sizes, splits = _kmeans(
        jnp.asarray(features), jax.random.PRNGKey(seed), jnp.float32(tol),
        num_clusters=int(num_clusters), num_iters=int(num_iters),
        num_restarts=int(num_restarts), init_trials=int(init_trials),
        l2_normalize=bool(l2_normalize), init=init, spherical=bool(spherical),
        chunk_size=None if chunk_size is None else int(chunk_size), empty=empty)
    return KMeansResult(centroids, assignments, float(inertia), int(iters), sizes, int(splits))


# ---------------------------------------------------------------- whitened PCA

def _pca_basis(features, dim: int):
    """(mean [D], eigenvalues [dim] descending, eigenvectors [D, dim]) of the biased covariance,
    each eigenvector signed so that its largest-|value| entry is positive."""
    x = features.astype(jnp.float32)
    mean = jnp.mean(x, axis=0)
    x = x - mean
    cov = jnp.dot(x.T, x, precision=_HIGHEST) / x.shape[0]
    evals, evecs = jnp.linalg.eigh(cov)  # ascending
    evals, evecs = evals[::-1][:dim], evecs[:, ::-1][:, :dim]
    # Eigenvectors are defined up to sign: make each one's largest-|value| entry positive.
    pivot = jnp.take_along_axis(evecs, jnp.argmax(jnp.abs(evecs), axis=0)[None], axis=0)[0]
    return mean, evals, evecs * jnp.where(pivot < 0, -1.0, 1.0)[None]


@functools.partial(jax.jit, static_argnames=("dim",))
def _pca_projection(features, *, dim):
    mean, _, evecs = _pca_basis(features, dim)
    return jnp.dot(features.astype(jnp.float32) - mean, evecs, precision=_HIGHEST)


def pca_project(features, dim: int) -> jax.Array:
    """[N, dim] float32: the rows' coordinates on the top `dim` principal components of
    `features` (fitted on them; not whitened, so squared distances are those of the rows
    projected on the principal subspace), components ordered and signed as in `pca_whitening`."""
    shape = features.shape if hasattr(features, "shape") else np.shape(features)
    if len(shape) != 2:
        raise ValueError(f"pca_project: features must be 2-D [N, D]; got shape {tuple(shape)}.")
    if not 1 <= dim <= shape[1]:
        raise ValueError(f"pca_project: dim must be in [1, D={shape[1]}]; got {dim}.")
    return _pca_projection(jnp.asarray(features), dim=int(dim))


@functools.partial(jax.jit, static_argnames=("dim",))
def _pca_whitening(features, eps, *, dim):
    mean, evals, evecs = _pca_basis(features, dim)
    # Clamp below at eps times the largest eigenvalue (and the smallest normal float32, for
    # constant input): a null direction of rank-deficient features would otherwise divide
    # noise by ~0.
    floor = jnp.maximum(eps * evals[0], jnp.finfo(jnp.float32).tiny)
    return mean, evecs * jax.lax.rsqrt(jnp.maximum(evals, floor))[None]


def pca_whitening(features, dim: int, eps: float = 1e-5) -> tuple[jax.Array, jax.Array]:
    """Fit whitened PCA: (mean [D], projection [D, dim]) float32 with
    whitened = (x − mean) @ projection.

    projection = V_dim · diag(max(λ, eps·λ_max))^(−1/2): the top `dim` eigenvectors of the
    biased covariance (1/N) Σ (x − mean)(x − mean)ᵀ (jnp.linalg.eigh, float32, HIGHEST
    precision matmuls), in descending eigenvalue order, each signed so its largest-|value|
    entry is positive; so the whitened training rows have identity covariance in every
    direction whose eigenvalue is above the floor. (Faiss' PCAMatrix with eigen_power = −0.5;
    the floor, relative so it is scale free, is this module's choice.)
    """
    shape = features.shape if hasattr(features, "shape") else np.shape(features)
    if len(shape) != 2:
        raise ValueError(f"pca_whitening: features must be 2-D [N, D]; got shape {tuple(shape)}.")
    if not 1 <= dim <= shape[1]:
        raise ValueError(f"pca_whitening: dim must be in [1, D={shape[1]}]; got {dim}.")
    if not eps > 0:
        raise ValueError(f"pca_whitening: eps must be > 0; got {eps}.")
    return _pca_whitening(jnp.asarray(features), jnp.float32(eps), dim=int(dim))


@jax.jit
def apply_pca_whitening(features, mean, projection) -> jax.Array:
    """[N, dim] rows L2_normalise((x − mean) @ projection), float32 (DeepCluster's features)."""
    x = features.astype(jnp.float32) - mean
    return losses.l2_normalize(jnp.dot(x, projection, precision=_HIGHEST))


def pca_whiten(features, dim: int, eps: float = 1e-5) -> jax.Array:
    """DeepCluster's preprocessing (Caron et al. 2018, Sec. 3.2 / their code: Faiss PCA to
    `dim` with whitening, then L2 normalisation): `pca_whitening` fitted on `features` and
    applied to them. Returns [N, dim] float32 unit rows."""
    mean, projection = pca_whitening(features, dim, eps)
    return apply_pca_whitening(features, mean, projection)
