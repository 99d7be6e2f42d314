"""Contrastive losses with in-batch or queued negatives (SimCLR NT-Xent, MoCo InfoNCE).

Contract (ssl_jax.losses): pure functions of arrays, math in float32 whatever the
input dtype, safe under jit, grad and vmap.
"""
import jax
import jax.numpy as jnp

from ssl_jax.losses.regression import l2_normalize

# Logit given to an excluded self-pair. Finite (not -inf) so that no inf - inf appears in
# the forward or backward pass; exp(-1e9 - max) underflows to exactly 0 in float32, so the
# result equals excluding the pair.
_MASKED_LOGIT = -1e9


def _cross_entropy_from_lse(lse: jax.Array, positive: jax.Array) -> jax.Array:
    """-log softmax at the positive: logsumexp(logits) - logit_positive, mean over rows."""
    return jnp.mean(lse - positive)


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float = 0.1) -> jax.Array:
    """SimCLR NT-Xent (Chen et al., 2020, Eq. 1) over the 2N embeddings of a batch.

    l(i, j) = -log exp(sim(z_i, z_j)/T) / sum_{k != i} exp(sim(z_i, z_k)/T), with sim the
    cosine similarity and j the other view of image i; the loss is the mean of l over all
    2N anchors. z1, z2: [N, D], row i of each is a view of image i.

    The [2N, 2N] similarity matrix is never built: each view's rows are compared with both
    views in two [N, N] blocks, so when the batch axis is sharded XLA's SPMD partitioner
    keeps the anchor rows sharded and only all-gathers the other operand (each device holds
    [N/devices, N] blocks, as in the SimCLR TPU code: local rows against all rows).
    """
    z1, z2 = l2_normalize(z1), l2_normalize(z2)
    n = z1.shape[0]
    inv_t = 1.0 / temperature
    self_pair = jnp.arange(n)[:, None] == jnp.arange(n)[None, :]
    # Each transpose is taken once and shared by the blocks that use it: the partitioner
    # then all-gathers each view once instead of once per block.
    z1t, z2t = z1.T, z2.T

    def anchor_loss(anchors, others, anchors_t, others_t):
        # sim(z_i, z_i) = 1 would otherwise dominate every denominator.
        same_view = jnp.where(self_pair, _MASKED_LOGIT, anchors @ anchors_t * inv_t)
        other_view = anchors @ others_t * inv_t
        # logsumexp over the row [same_view | other_view] without concatenating the blocks.
        lse = jnp.logaddexp(jax.nn.logsumexp(same_view, axis=1),
                            jax.nn.logsumexp(other_view, axis=1))
        # The positive is the diagonal of other_view; a row-wise dot product avoids
        # gathering a diagonal out of a sharded matrix.
        positive = jnp.sum(anchors * others, axis=1) * inv_t
        return _cross_entropy_from_lse(lse, positive)

    # Both halves have N anchors, so the mean over 2N is the average of the two means.
    return 0.5 * (anchor_loss(z1, z2, z1t, z2t) + anchor_loss(z2, z1, z2t, z1t))


def info_nce(query: jax.Array, key: jax.Array, queue: jax.Array | None = None,
             temperature: float = 0.2) -> jax.Array:
    """MoCo InfoNCE (He et al., 2020, Eq. 1): mean_i -log softmax(logits_i)[target_i].

    query, key: [N, D], both L2-normalised here; no gradient reaches key (it comes from
    the momentum encoder). queue: [K, D] negatives, assumed already normalised (MoCo stores
    normalised keys), also without gradient.
    - With queue (MoCo v2): logits_i = [q_i.k_i, q_i.queue^T] / T, target 0.
    - Without (MoCo v3, Chen et al., 2021): logits = q.k^T / T [N, N], target i; the
      other keys of the batch are the negatives. The reference code's extra 2T factor is
      not applied (contract), so scale the loss outside if that convention is wanted.
    """
    q = l2_normalize(query)
    k = jax.lax.stop_gradient(l2_normalize(key))
    inv_t = 1.0 / temperature
    positive = jnp.sum(q * k, axis=1) * inv_t
    if queue is None:
        lse = jax.nn.logsumexp(q @ k.T * inv_t, axis=1)
    else:
        negatives = q @ jax.lax.stop_gradient(queue.astype(jnp.float32)).T * inv_t
        # logsumexp of [positive | negatives] without concatenating along the class axis.
        lse = jnp.logaddexp(positive, jax.nn.logsumexp(negatives, axis=1))
    return _cross_entropy_from_lse(lse, positive)
