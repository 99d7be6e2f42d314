"""Losses with offline pseudo-labels (DeepCluster-v2) and SeLa's Sinkhorn-Knopp labels.

Contract (ssl_jax.losses): pure functions of arrays, math in float32 whatever the
input dtype, safe under jit, grad and vmap. Batch reductions are plain jnp reductions, so
when the batch axis is sharded by jax.jit they run over the global batch (XLA inserts the
all-reduces); no axis names are used.
"""
import math

import jax
import jax.numpy as jnp


def deepcluster_v2(logits: jax.Array, assignments: jax.Array,
                   temperature: float = 0.1) -> jax.Array:
    """DeepCluster-v2 loss (Caron et al., 2020, SwAV paper, App. A; their main_deepclusterv2).

    logits: [H, V, N, K] prototype scores of V crops for H heads (prototype sets; all heads
    share K here); assignments: [H, N] int, the k-means cluster of image n for head h, −1 for
    an image without a label yet. loss = mean over h of the mean over the V·N rows (v, n)
    with assignments[h, n] >= 0 of −log softmax(logits[h, v, n] / T)[assignments[h, n]].
    A head without any labelled row contributes 0 (not NaN) to the mean over heads. Labels
    must be < K (not checked under jit).
    """
    if logits.ndim != 4 or assignments.ndim != 2 or assignments.shape != (logits.shape[0],
                                                                          logits.shape[2]):
        raise ValueError(f"deepcluster_v2: expected logits [H, V, N, K] and assignments [H, N], "
                         f"got {logits.shape} and {assignments.shape}")
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    labels = jnp.asarray(assignments).astype(jnp.int32)
    labelled = labels >= 0  # [H, N]
    # Gather the label's log-probability (no one-hot product: 0 · −inf would be NaN).
    index = jnp.broadcast_to(jnp.maximum(labels, 0)[:, None, :, None], log_probs.shape[:3] + (1,))
    picked = jnp.take_along_axis(log_probs, index, axis=-1)[..., 0]  # [H, V, N]
    mask = jnp.broadcast_to(labelled[:, None, :], picked.shape)
    total = -jnp.sum(jnp.where(mask, picked, 0.0), axis=(1, 2))
    count = jnp.sum(mask, axis=(1, 2)).astype(jnp.float32)
    return jnp.mean(total / jnp.maximum(count, 1.0))


def self_label_with_info(log_probs: jax.Array, lam: float = 25.0, tol: float = 0.1,
                         max_iters: int = 1000, valid: jax.Array | None = None
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`self_label` with diagnostics: (labels [N] int32, iterations run int32, last err)."""
    if log_probs.ndim != 2:
        raise ValueError(f"self_label: log_probs must be [N, K], got shape {log_probs.shape}")
    n, k = log_probs.shape
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
    # log P = λ·log p; P itself is never formed: at λ = 25 a log-probability of −4 already
    # gives e^−100, below float32's smallest normal (about e^−87). Rows that are not valid
    # have c = 0 (log c = −inf): they add nothing to Pᵀc, whatever their log p.
    log_p = lam * jax.lax.stop_gradient(log_probs.astype(jnp.float32))
    log_inv_k = -math.log(k)
    log_inv_n = -jnp.log(jnp.sum(valid).astype(jnp.float32))

    def not_done(state):
        t, _, _, _, done = state
        return (t < max_iters) & ~done

    def iteration(state):
        t, _, log_c, err, _ = state
        # r ← (1/K) / (Pᵀ c) and c_new ← (1/N) / (P r), as logsumexps.
        log_r = log_inv_k - jax.nn.logsumexp(log_p + log_c[:, None], axis=0)
        log_c_new = jnp.where(valid, log_inv_n - jax.nn.logsumexp(log_p + log_r[None, :], axis=1), -jnp.inf)
        check = t % 10 == 0
        # Σ_n |c_n / c_new,n − 1|; expm1 keeps the small ratios' differences exact.
        new_err = jnp.sum(jnp.where(valid, jnp.abs(jnp.expm1(log_c - log_c_new)), 0.0))
        err = jnp.where(check, new_err, err)
        return t + 1, log_r, log_c_new, err, check & (new_err < tol)

    state = (jnp.int32(0), jnp.full((k,), log_inv_k, jnp.float32),
             jnp.where(valid, log_inv_n, -jnp.inf), jnp.float32(jnp.inf), jnp.bool_(False))
    t, log_r, _, err, _ = jax.lax.while_loop(not_done, iteration, state)
    # argmax_k r_k P_nk c_n: c_n is common to row n.
    labels = jnp.argmax(log_p + log_r[None, :], axis=1).astype(jnp.int32)
    return jnp.where(valid, labels, -1), t, err


def self_label(log_probs: jax.Array, lam: float = 25.0, tol: float = 0.1,
               max_iters: int = 1000, valid: jax.Array | None = None) -> jax.Array:
    """SeLa's pseudo-labels (Asano et al., 2020, "Self-labelling via simultaneous clustering and
    representation learning", Sec. 3.1 and their Sinkhorn-Knopp code).

    log_probs: [N, K] log-softmax outputs. P = exp(λ·log_probs), r = 1/K, c = 1/N; iterations
    t = 0, 1, ...: r ← (1/K)/(Pᵀ c) [K], c_new ← (1/N)/(P r) [N]; at every t divisible by 10,
    err = Σ_n |c_n / c_new,n − 1|; c ← c_new; stop after the first check with err < tol (or
    after max_iters iterations). Returns argmax_k r_k P_nk c_n as int32 [N]: an approximate
    equipartition of the N images over the K labels. No gradient (labels are targets).
    `valid` [N] bool (default all): only those rows take part (c = 0 for the others, whose label
    is −1), so padding rows of a sharded [num_rows, K] array change nothing.

    Choice: the same iterations in the log domain (log r, log c, logsumexp), so λ·log p far
    below float32's exponent range (e.g. λ = 25, log p = −30) neither underflows to 0/0 nor
    changes the result; it is a `lax.while_loop`, jittable, and a sharded N stays sharded.
    """
    return self_label_with_info(log_probs, lam, tol, max_iters, valid)[0]


def hierarchical_cross_entropy(super_logits: jax.Array, super_labels: jax.Array, sub_logits: jax.Array,
                               sub_labels: jax.Array) -> jax.Array:
    """DeeperCluster's hierarchical loss (Caron et al., ICCV 2019, Eq. 3): the mean over the
    batch of CE(super_logits_n, s_n) + CE(sub_logits_n, z_n), with super_logits [N, S] the
    super-class classifier V, sub_logits [N, k] the logits of the sub-class classifier W_{s_n}
    of each image's own super-class (so only that one gets gradient), labels int [N].
    With S = 1 the first term is exactly 0; with k = 1 the second is."""
    def cross_entropy(logits, labels):
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return -jnp.take_along_axis(log_probs, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]

    return jnp.mean(cross_entropy(super_logits, super_labels) + cross_entropy(sub_logits, sub_labels))
