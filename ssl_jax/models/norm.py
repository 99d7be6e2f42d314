"""BatchNorm with its reductions written as matrix products, and per-view statistics.

A drop-in for the subset of ``flax.linen.BatchNorm`` the models use: the same parameter and
statistic names and shapes ('scale', 'bias'; 'mean', 'var'), the same momentum convention
(running = momentum * running + (1 - momentum) * batch), statistics in float32 with the
fast variance E[x²] - E[x]² clipped at 0, and no running-average update while initialising.
Checkpoints of either are interchangeable.

Why not flax's: on the CPU backend XLA's reduction of a [N, H, W, C] activation over N, H and
W (what a BatchNorm does, forward and backward) runs at a tenth of memory bandwidth. Measured
on the 2-core development machine (jax 0.10.2), [64, 32, 32, 64] float32: a sum over N, H, W
takes 8.6-11.8 ms, the same sum as ones[N·H·W] @ x[N·H·W, C] takes 1.3 ms; flax's BatchNorm +
ReLU forward and backward takes 72-79 ms, as long as the 3x3 convolution next to it, and this
one 12 ms. So every per-channel sum here is a product with a 0/1 matrix, and the backward
pass is written by hand (`jax.custom_vjp`) so that its sums are products too instead of the
reductions autodiff would emit. On GPU and TPU the products are as fast as the reductions.

Per-view statistics: a batch holding V views example-major can be normalised view by view in
one call (``BatchNorm(...)(x, views=V)``), with the outputs, running statistics and gradients
of one call per view. Methods use it to run every view through a network in one call, so
each weight gets one gradient (and one all-reduce under data parallelism) per step.

Numerics: the same formulas as flax, summed in a different order; against a float64
reference both are within 1e-5 (relative to the largest gradient), see tests/test_norm.py.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def split_views(x: jax.Array, views: int) -> jax.Array:
    """x [R, ..., C], whose leading axis holds `views` views example-major (row
    n·views + v is view v of example n), as [R / views, views, P, C]: [views, C]
    statistics then broadcast as [views, 1, C]."""
    return x.reshape(x.shape[0] // views, views, -1, x.shape[-1])


def view_sums(*xvs: jax.Array) -> tuple[jax.Array, ...]:
    """Column sums [V, C] of each view v of each xv [N, V, P, C] (see `split_views`; all of
    one shape) over N and P, in float32.

    Computed as S @ xv[N·V·P, C] with S the [V, N·V·P] 0/1 row-selection matrix (built once
    from an iota in the graph, not stored). With one view S gets a second, all-zero row: XLA
    CPU runs a one-row product as a matrix-vector kernel 3x slower than a two-row matrix
    product (measured, [128, 32, 32, 64]: 4.7 ms against 1.4 ms). A contraction over the rows
    keeps a data-parallel split of N: each device sums its rows, then one all-reduce of V·C
    values."""
    _, views, p, c = xvs[0].shape
    rows = xvs[0].size // c
    selector_rows = max(views, 2)
    view_of_row = (jax.lax.broadcasted_iota(jnp.int32, (selector_rows, rows), 1) // p) % views
    selector = (view_of_row == jax.lax.broadcasted_iota(jnp.int32, view_of_row.shape, 0)).astype(jnp.float32)
    return tuple(jnp.dot(selector, xv.reshape(rows, c).astype(jnp.float32))[:views] for xv in xvs)


def batch_moments(x: jax.Array, views: int = 1) -> tuple[jax.Array, jax.Array]:
    """(mean, biased variance) [views, C] of each view of x (see `split_views`) over
    every axis but the last, in float32; the variance is E[x²] - E[x]² clipped at 0
    (flax's `use_fast_variance`)."""
    count = x.size // x.shape[-1] // views
    xv = split_views(x, views).astype(jnp.float32)
    sums, sums_of_squares = view_sums(xv, xv * xv)
    mean = sums / count
    var = jnp.maximum(sums_of_squares / count - mean * mean, 0.0)
    return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, views: int = 1):
    """Training-mode BatchNorm: ((x - mean) / sqrt(var + epsilon) * scale + bias, mean, var)
    with mean and var [views, C] the batch statistics per channel (last axis) of each view
    (`views` > 1: the leading axis holds `views` views example-major, and each view
    is normalised with its own statistics, as if it were a separate call). The output has
    x's dtype.

    The returned statistics are for the running averages and carry no gradient (as if under
    stop_gradient); the gradient of the output is the full BatchNorm gradient, through the
    batch statistics."""
    (y, mean, var), _ = _batch_normalize_fwd(x, scale, bias, epsilon, views)
    return y, mean, var


def _normalize(x, mean, inv, scale, bias):
    """(x - mean) * inv * scale + bias in float32 (inv = 1 / sqrt(var + epsilon))."""
    return (x.astype(jnp.float32) - mean) * (inv * scale) + bias


def _batch_normalize_fwd(x, scale, bias, epsilon, views):
    mean, var = batch_moments(x, views)
    inv = jax.lax.rsqrt(var + epsilon)
    xv = split_views(x, views)
    y = _normalize(xv, mean[:, None], inv[:, None], scale, bias).astype(x.dtype).reshape(x.shape)
    return (y, mean, var), (x, mean, inv, scale)


def _batch_normalize_bwd(epsilon, views, residuals, cotangents):
    del epsilon
    x, mean, inv, scale = residuals
    dy = split_views(cotangents[0].astype(jnp.float32), views)  # the statistics' cotangents are dropped
    count = x.size // x.shape[-1] // views
    mean, inv = mean[:, None], inv[:, None]  # [views, 1, C] against [N, views, P, C]
    x_hat = (split_views(x, views).astype(jnp.float32) - mean) * inv
    d_bias, d_scale = (sums[:, None] for sums in view_sums(dy, dy * x_hat))
    # d/dx of the normalised output, with each view's mean and variance depending on x.
    dx = (scale * inv / count) * (count * dy - d_bias - x_hat * d_scale)
    return (dx.astype(x.dtype).reshape(x.shape), jnp.sum(d_scale, (0, 1)).astype(scale.dtype),
            jnp.sum(d_bias, (0, 1)).astype(scale.dtype))


batch_normalize.defvjp(_batch_normalize_fwd, _batch_normalize_bwd)


class BatchNorm(nn.Module):
    """BatchNorm over every axis but the last (features), as ``flax.linen.BatchNorm`` with
    its default axes; see the module docstring for why it exists.

    Attributes: use_running_average (inference: normalise with the running statistics),
    momentum, epsilon, dtype (of the output; statistics are float32), param_dtype,
    use_bias, use_scale, bias_init, scale_init.

    Call with ``views`` > 1 in training when the batch holds that many views example-major
    (row n·views + v is view v of example n): each view is normalised with its own batch
    statistics, exactly as if each were a separate call, and the running statistics are
    updated once with the views' average statistics (= the average of per-call updates).
    """

    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = nn.initializers.zeros
    scale_init: Any = nn.initializers.ones

    @nn.compact
    def __call__(self, x, views: int = 1):
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (features,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,))
        scale = (self.param("scale", self.scale_init, (features,), self.param_dtype) if self.use_scale
                 else jnp.ones((features,), jnp.float32))
        bias = (self.param("bias", self.bias_init, (features,), self.param_dtype) if self.use_bias
                else jnp.zeros((features,), jnp.float32))
        dtype = self.dtype or jnp.result_type(x, self.param_dtype)
        if self.use_running_average:
            inv = jax.lax.rsqrt(ra_var.value + self.epsilon)
            return _normalize(x, ra_mean.value, inv, scale, bias).astype(dtype)
        if x.shape[0] % views:
            raise ValueError(f"BatchNorm over {views} views needs a batch that is a multiple of "
                             f"{views}, got shape {x.shape}.")
        y, mean, var = batch_normalize(x, scale, bias, self.epsilon, views)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * jnp.mean(mean, 0)
            ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * jnp.mean(var, 0)
        return y.astype(dtype)
