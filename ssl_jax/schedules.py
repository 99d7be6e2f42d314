"""Schedules: pure functions of the integer step, built from optax's own.

Every schedule the library uses (learning rate, EMA rate of a momentum target, weight decay,
DINO's teacher temperature, CARL's entropy weight) is made here, so it is evaluated inside the
jitted step from `state.step` and a resumed run sees exactly the values it would have seen.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import optax


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int, end: float = 0.0) -> optax.Schedule:
    """Linear warm-up from 0 (step 0) to `peak` (step `warmup_steps`), then a half cosine to
    `end` at `total_steps`; flat at `end` after (optax.warmup_cosine_decay_schedule)."""
    if warmup_steps < 0 or total_steps < warmup_steps:
        raise ValueError(f"Need 0 <= warmup_steps <= total_steps, got warmup_steps="
                         f"{warmup_steps}, total_steps={total_steps}.")
    # optax counts the decay from step 0; at least one decay step so that a run made only
    # of warm-up is still a valid schedule.
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=float(peak), warmup_steps=int(warmup_steps),
        decay_steps=max(int(total_steps), int(warmup_steps) + 1), end_value=float(end))


def warmup_step_decay(peak: float, warmup_steps: int, boundaries: Sequence[int],
                      factor: float) -> optax.Schedule:
    """Linear warm-up to `peak`, then ×`factor` from each step in `boundaries` on (MoCo's
    linear evaluation: ×0.1 at epochs 60 and 80; W-MSE: ×0.2 50 and 25 epochs before the end)."""
    peak, warmup_steps = float(peak), int(warmup_steps)
    decay = optax.piecewise_constant_schedule(
        peak, {int(b) - warmup_steps: float(factor) for b in sorted(int(b) for b in boundaries)})
    if warmup_steps == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup_steps), decay], [warmup_steps])


def linear_ramp(start: float, end: float, ramp_steps: int) -> optax.Schedule:
    """Linear from `start` (step 0) to `end` (step `ramp_steps`), then `end`: DINO's teacher
    temperature warm-up and CARL's entropy-weight decay (Eq. 5.8). No ramp if ramp_steps <= 0."""
    if ramp_steps <= 0:
        return lambda step: jnp.asarray(end, jnp.float32)
    return optax.linear_schedule(float(start), float(end), int(ramp_steps))


def cosine_between(start: float, end: float, total_steps: int) -> optax.Schedule:
    """`start` -> `end` on a half cosine over total_steps, `end` after (DINO's weight decay
    0.04 -> 0.4). Written out rather than optax.cosine_decay_schedule(start, alpha=end/start),
    which cannot start from 0."""
    total = max(int(total_steps), 1)
    start, end = float(start), float(end)

    def schedule(step):
        t = jnp.clip(jnp.asarray(step, jnp.float32) / total, 0.0, 1.0)
        return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))

    return schedule


def momentum(base: float, total_steps: int, kind: str = "cosine") -> optax.Schedule:
    """EMA rate of a momentum target: 'cosine' is BYOL's τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2
    (τ_0 = τ_base, τ_K = 1; MoCo v3, DINO), 'constant' is MoCo v2's m = base throughout."""
    if kind == "cosine":
        return cosine_between(base, 1.0, total_steps)
    if kind == "constant":
        # A float32 array, not optax.constant_schedule's Python float: the EMA then computes
        # in float32 exactly as before (a weakly typed float changes MoCo v2's rounding).
        return lambda step: jnp.asarray(base, jnp.float32)
    raise ValueError(f"Unknown momentum schedule {kind!r}; valid: 'cosine', 'constant'.")
