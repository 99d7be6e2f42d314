"""DSSL's directional objective (Bai, Yang, Zhang & Mei, "Directional Self-supervised Learning
for Heavy Image Augmentations", CVPR 2022, Eq. 6).

Four views of each image: two standard views v, v' (SV) and two harder views derived from them,
v̂ = t̂(v), v̂' = t̂'(v') (HV). With D(p, y) = -cos(p, stop_grad(y)) (`neg_cosine`):

    α·L_S(SV↔SV) + β·L_S(HV↔HV) + γ·L_A(SV←HV) + δ·L_A(HV←SV)

    L_A(SV←HV) = s·[D(p(v̂), y(v)) + D(p(v̂'), y(v'))]   (each HV pulled to its own SV)
    L_A(HV←SV) = s·[D(p(v), y(v̂)) + D(p(v'), y(v̂'))]   (the reverse direction)

p(·) is a view's online prediction and y(·) its target representation; DSSL is α = γ = 1,
β = δ = 0. s is the per-term scale: the paper's Algorithm 1 divides each of its four terms by 4,
its released code multiplies each by 1/2 (only the effective learning rate differs).
L_S(a↔b) is the method's symmetric loss between views a and b; by default (SimSiam, BYOL) it
is written in the same units, s·[D(p(a), y(b)) + D(p(b), y(a))], so every term of Algorithm 1
carries the scale s.

The "repro" baseline of the paper (two independent symmetric pairs of standard views, the same
four forward passes) is this objective with α = β = 1, γ = δ = 0 on four standard views.
"""
from typing import Callable, Optional, Sequence

import jax

from ssl_jax.losses.regression import simsiam

SV = (0, 1)  # positions of v, v' in the four-view sequences below
HV = (2, 3)  # positions of v̂ = t̂(v), v̂' = t̂'(v')


def neg_cosine(p: jax.Array, y: jax.Array) -> jax.Array:
    """D(p, y) = mean_i -cos(p_i, stop_grad(y_i)) in [-1, 1]; -1 when p ∥ y (SimSiam's Eq. 1)."""
    return simsiam(p, y)


def directional(preds: Sequence[Optional[jax.Array]], reps: Sequence[Optional[jax.Array]], *,
                alpha: float = 1.0, beta: float = 0.0, gamma: float = 1.0, delta: float = 0.0,
                term_scale: float = 0.25,
                pair_loss: Optional[Callable[[int, int], jax.Array]] = None) -> tuple[jax.Array, dict]:
    """Eq. 6 of DSSL. Returns (loss, terms): terms holds each unweighted group for logging.

    preds, reps: four [N, D] arrays each, in the order (v, v', v̂, v̂'): online predictions and
    target representations (stop-gradient is applied here). A group whose weight is 0 is not
    evaluated, so the views only it needs may be None (e.g. the HVs' target representations
    when β = δ = 0: no term then uses a harder view as a target).
    pair_loss(a, b): L_S between views a and b; default s·[D(p_a, y_b) + D(p_b, y_a)].
    """
    if pair_loss is None:
        pair_loss = lambda a, b: term_scale * (neg_cosine(preds[a], reps[b]) + neg_cosine(preds[b], reps[a]))
    groups = {
        "sv_sv": (alpha, lambda: pair_loss(*SV)),
        "hv_hv": (beta, lambda: pair_loss(*HV)),
        "sv_from_hv": (gamma, lambda: term_scale * sum(neg_cosine(preds[h], reps[s]) for s, h in zip(SV, HV))),
        "hv_from_sv": (delta, lambda: term_scale * sum(neg_cosine(preds[s], reps[h]) for s, h in zip(SV, HV))),
    }
    loss, terms = 0.0, {}
    for name, (weight, term) in groups.items():
        if weight:
            terms[name] = term()
            loss = loss + weight * terms[name]
    return loss, terms
