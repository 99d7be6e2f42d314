"""ssl_jax.models.norm.BatchNorm against flax.linen.BatchNorm and a float64 NumPy reference."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.models.norm import BatchNorm, batch_moments, batch_normalize, column_sums


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 3.0 + 1.5).astype(np.float32)
    cotangent = rng.normal(size=shape).astype(np.float32)
    c = shape[-1]
    scale = rng.normal(size=c).astype(np.float32)
    bias = rng.normal(size=c).astype(np.float32)
    return x, cotangent, scale, bias


def _numpy_bn_and_grads(x, cotangent, scale, bias, eps):
    """Training-mode BN in float64 and the gradients of sum(y * cotangent), by hand."""
    x = x.astype(np.float64).reshape(-1, x.shape[-1])
    g = cotangent.astype(np.float64).reshape(x.shape)
    m = x.shape[0]
    mean = x.mean(0)
    var = x.var(0)
    x_hat = (x - mean) / np.sqrt(var + eps)
    y = x_hat * scale + bias
    d_bias = g.sum(0)
    d_scale = (g * x_hat).sum(0)
    dx_hat = g * scale
    dx = (m * dx_hat - dx_hat.sum(0) - x_hat * (dx_hat * x_hat).sum(0)) / (m * np.sqrt(var + eps))
    return y, mean, var, dx, d_scale, d_bias


@pytest.mark.parametrize("shape", [(16, 8, 8, 12), (64, 20), (3, 5, 7, 4)])
def test_matches_float64_reference(shape):
    x, ct, scale, bias = _inputs(shape)
    eps = 1e-5
    ref_y, ref_mean, ref_var, ref_dx, ref_ds, ref_db = _numpy_bn_and_grads(x, ct, scale, bias, eps)
    (y, mean, var) = batch_normalize(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias), eps)
    np.testing.assert_allclose(np.asarray(y).reshape(ref_y.shape), ref_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var, ref_var, rtol=1e-5)
    loss = lambda x, s, b: jnp.sum(batch_normalize(x, s, b, eps)[0] * ct)
    dx, ds, db = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias))
    for got, want in ((dx, ref_dx), (ds, ref_ds), (db, ref_db)):
        got = np.asarray(got).reshape(want.shape)
        assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want)) + 1e-7


def test_gradient_is_autodiff_of_the_plain_formula():
    """The hand-written backward equals jax.grad of the same BN written without custom_vjp."""
    x, ct, scale, bias = _inputs((8, 6, 6, 5), seed=3)

    def plain(x, s, b):
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
        return jnp.sum(((x - mean) * jax.lax.rsqrt(var + 1e-5) * s + b) * ct)

    mine = lambda x, s, b: jnp.sum(batch_normalize(x, s, b, 1e-5)[0] * ct)
    args = tuple(map(jnp.asarray, (x, scale, bias)))
    for a, b in zip(jax.grad(mine, (0, 1, 2))(*args), jax.grad(plain, (0, 1, 2))(*args)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("use_scale,use_bias", [(True, True), (True, False), (False, False)])
def test_module_is_a_drop_in_for_flax(use_scale, use_bias):
    """Same variables (names, shapes, init), same outputs and running-stat updates in training,
    same inference output, same gradients (to float32 rounding) as flax.linen.BatchNorm."""
    x, ct, _, _ = _inputs((16, 4, 4, 6), seed=1)
    kw = dict(momentum=0.9, epsilon=1e-5, use_scale=use_scale, use_bias=use_bias)
    ours, theirs = BatchNorm(use_running_average=False, **kw), nn.BatchNorm(use_running_average=False, **kw)
    v_ours = ours.init(jax.random.PRNGKey(0), x)
    v_theirs = theirs.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, v_ours) == jax.tree.map(jnp.shape, v_theirs)
    for a, b in zip(jax.tree.leaves(v_ours), jax.tree.leaves(v_theirs)):
        np.testing.assert_array_equal(a, b)  # init did not touch the running statistics
    # Non-trivial affine parameters and running statistics.
    v = jax.tree.map(lambda a: a * 1.7 + 0.3, v_theirs)
    y1, s1 = ours.apply(v, x, mutable=["batch_stats"])
    y2, s2 = theirs.apply(v, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y1, y2, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    e1 = BatchNorm(use_running_average=True, **kw).apply(v, x)
    e2 = nn.BatchNorm(use_running_average=True, **kw).apply(v, x)
    np.testing.assert_allclose(e1, e2, rtol=1e-5, atol=1e-5)

    def loss(module):
        return lambda p, x: jnp.sum(module.apply({**v, "params": p}, x, mutable=["batch_stats"])[0] * ct)

    params = v.get("params", {})
    g1 = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    g2 = jax.grad(loss(theirs), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_bfloat16_keeps_float32_statistics():
    x, _, scale, bias = _inputs((8, 4, 4, 3), seed=2)
    y, mean, var = batch_normalize(jnp.asarray(x, jnp.bfloat16), jnp.asarray(scale), jnp.asarray(bias), 1e-5)
    assert y.dtype == jnp.bfloat16 and mean.dtype == jnp.float32 and var.dtype == jnp.float32
    x_rounded = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(mean, x_rounded.reshape(-1, 3).mean(0), rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda x: jnp.sum(batch_normalize(x, jnp.asarray(scale), jnp.asarray(bias), 1e-5)[0]
                                       .astype(jnp.float32)))(jnp.asarray(x, jnp.bfloat16))
    assert grads.dtype == jnp.bfloat16


def test_constant_channel_has_zero_variance_not_nan():
    x = np.ones((4, 3, 3, 2), np.float32) * 5.0
    mean, var = batch_moments(jnp.asarray(x))
    np.testing.assert_allclose(mean, [5.0, 5.0])
    assert np.all(np.asarray(var) == 0.0)
    np.testing.assert_allclose(column_sums(jnp.asarray(x)), [180.0, 180.0])
    g = jax.grad(lambda x: jnp.sum(batch_normalize(x, jnp.ones(2), jnp.zeros(2), 1e-5)[0]))(jnp.asarray(x))
    assert np.all(np.isfinite(g))
