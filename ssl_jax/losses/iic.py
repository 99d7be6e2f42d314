"""Invariant Information Clustering (Ji, Henriques & Vedaldi, ICCV 2019): the mutual information
between the cluster assignments of two views of the same images.

Contract (ssl_jax.losses): a pure function of arrays, math in float32 whatever the input dtype,
safe under jit, grad and vmap. The sum over the batch is a plain jnp contraction, so when the batch
axis is sharded by jax.jit it runs over the global batch (XLA inserts the all-reduce).
"""
import sys

import jax
import jax.numpy as jnp

# IIC's clamp: Python's float epsilon (the authors' EPS=sys.float_info.epsilon), not float32's.
EPS = sys.float_info.epsilon


def iic(p1: jax.Array, p2: jax.Array, eps: float = EPS) -> jax.Array:
    """−I(z, z′), IIC's objective (Ji et al. 2019, Eq. 3 and Eq. 5; SSL++ Eq. 1-2), to minimise.

    p1, p2: [N, C] softmax outputs Φ(x_i), Φ(x′_i) of the two views of N pairs. The joint
    distribution of the two views' clusters is P = Σ_i p1_i p2_iᵀ [C, C], symmetrised
    (P + Pᵀ)/2 (the paper's §3.1: z and z′ are exchangeable) and divided by its sum; the
    marginals Pr (row sums) and Pc (column sums) are taken from that P; then P, Pr and Pc are
    clamped below at `eps` (the authors' guard against log 0: an entry that small contributes
    ~eps·log eps, and the clamp makes its gradient 0, as their in-place assignment does). Returns
    −Σ_cc′ P_cc′ (log P_cc′ − log Pr_c − log Pc_c′) = −I, a float32 scalar with 0 ≤ I ≤ ln C
    (up to the clamp's ~C²·eps). The marginals' exponent is 1 (the authors' `lamb` = 1, their
    default and every script of the paper's results).
    """
    p1 = jnp.asarray(p1).astype(jnp.float32)
    p2 = jnp.asarray(p2).astype(jnp.float32)
    if p1.ndim != 2 or p1.shape != p2.shape:
        raise ValueError(f"iic: p1 and p2 must both be [N, C] softmax outputs of the same shape, got "
                         f"{p1.shape} and {p2.shape}; pass one row per pair (the two views of an image).")
    # HIGHEST: a float32 dot may run in reduced precision on accelerators by default.
    joint = jnp.einsum("nc,nd->cd", p1, p2, precision=jax.lax.Precision.HIGHEST)
    joint = (joint + joint.T) / 2.0
    joint = joint / jnp.sum(joint)
    p_row = jnp.sum(joint, axis=1, keepdims=True)
    p_col = jnp.sum(joint, axis=0, keepdims=True)
    joint, p_row, p_col = (jnp.maximum(x, eps) for x in (joint, p_row, p_col))
    return -jnp.sum(joint * (jnp.log(joint) - jnp.log(p_row) - jnp.log(p_col)))
