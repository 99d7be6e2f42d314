"""Losses of the proxy tasks SSL++ builds on: colorization, context encoder, AET.

Contract (ssl_jax.losses): pure functions of arrays, math in float32 whatever the input
dtype, safe under jit, grad and vmap; targets are under stop_grad inside. Means over the batch
are plain jnp reductions, so they run over the global batch when jit shards it.

Each is the proxy loss L_s of SSL++ (Chen et al., Eq. 3) alone; SSL++'s semantic term λ·L_c
(Eq. 4, a classifier V2 on the backbone features against per-image pseudo-labels) is added
next to it by the method, never inside these functions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_encode(ab: jax.Array, bins: jax.Array, num_neighbors: int = 5, sigma: float = 5.0) -> jax.Array:
    """Zhang et al. (2016) Sec. 2.1 soft-encoding: ab [..., 2] -> [..., Q] over the bin centres
    bins [Q, 2]; the `num_neighbors` nearest bins get weights ∝ exp(−d²/(2σ²)) (d: distance to the
    bin centre), the others 0; each row sums to 1."""
    ab = jnp.asarray(ab, jnp.float32)
    bins = jnp.asarray(bins, jnp.float32)
    d2 = jnp.sum((ab[..., None, :] - bins) ** 2, axis=-1)  # [..., Q]
    neg_d2, idx = jax.lax.top_k(-d2, num_neighbors)
    w = jax.nn.softmax(neg_d2 / (2.0 * sigma ** 2), axis=-1)  # normalised Gaussian, overflow-free
    return jnp.einsum("...k,...kq->...q", w, jax.nn.one_hot(idx, bins.shape[0], dtype=jnp.float32))


def rebalance_weights(prior: jax.Array, bins: jax.Array, lam: float = 0.5, sigma: float = 5.0) -> jax.Array:
    """Zhang et al. (2016) Eq. 4 class-rebalancing weights [Q] from an empirical ab-bin prior [Q]
    (counts or probabilities): p̃ = the prior smoothed by a Gaussian of σ over the ab plane (kernel
    exp(−‖c_i − c_j‖²/(2σ²)) between bin centres, renormalised), w ∝ ((1 − λ)·p̃ + λ/Q)^−1,
    scaled so that E_p̃[w] = Σ_q p̃_q·w_q = 1. Under stop_grad."""
    prior = jax.lax.stop_gradient(jnp.asarray(prior, jnp.float32))
    bins = jnp.asarray(bins, jnp.float32)
    q = bins.shape[0]
    kernel = jnp.exp(-jnp.sum((bins[:, None] - bins[None]) ** 2, axis=-1) / (2.0 * sigma ** 2))
    smooth = kernel @ (prior / jnp.maximum(jnp.sum(prior), 1e-12))
    smooth = smooth / jnp.sum(smooth)
    w = 1.0 / ((1.0 - lam) * smooth + lam / q)
    return w / jnp.sum(smooth * w)


def colorization(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Zhang et al. (2016) Eq. 2: logits [..., Q] (per pixel), soft targets [..., Q] (rows sum
    to 1, `soft_encode`), optional rebalancing weights [Q] (`rebalance_weights`); returns the mean
    over pixels of −v(Z)·Σ_q Z_q·log softmax(logits)_q with v(Z) = weights[argmax_q Z_q] (1
    without weights). The paper sums over the pixels of an image; the mean here makes the scale
    independent of the output resolution (= the paper's sum / (H·W), batch-averaged)."""
    targets = jax.lax.stop_gradient(jnp.asarray(targets, jnp.float32))
    ce = -jnp.sum(targets * jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1), axis=-1)
    if weights is not None:
        ce = ce * jax.lax.stop_gradient(jnp.asarray(weights, jnp.float32))[jnp.argmax(targets, axis=-1)]
    return jnp.mean(ce)


def context_encoder(pred: jax.Array, target: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Pathak et al. (2016) Eq. 1, the masked L2 reconstruction loss as a mean: pred, target
    [N, h, w, C] (the predicted and the true central region), weight [h, w] per pixel (Pathak's
    code: 10 on the band where the prediction overlaps the visible context, 1 in the hole; None:
    1); returns mean over n, pixels and channels of weight·(pred − target)²."""
    diff2 = (jnp.asarray(pred, jnp.float32) - jax.lax.stop_gradient(jnp.asarray(target, jnp.float32))) ** 2
    if weight is not None:
        diff2 = diff2 * jnp.asarray(weight, jnp.float32)[..., None]
    return jnp.mean(diff2)


def aet(pred: jax.Array, target: jax.Array) -> jax.Array:
    """AET (Zhang et al., CVPR 2019) Eq. 3 with its matrix loss ℓ = ½‖M(θ) − M(θ̂)‖²: pred, target
    [N, P] (the P free entries of each image's transformation matrix); returns the mean over n of
    ½·Σ_p (pred − target)²."""
    diff = jnp.asarray(pred, jnp.float32) - jax.lax.stop_gradient(jnp.asarray(target, jnp.float32))
    return jnp.mean(0.5 * jnp.sum(diff ** 2, axis=-1))
