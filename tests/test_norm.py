"""ssl_jax.models.norm.BatchNorm against flax.linen.BatchNorm and a float64 NumPy reference."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.models.norm import BatchNorm, batch_moments, batch_normalize, split_views, view_sums


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


def _numpy_grouped(x, ct, scale, bias, eps, views):
    """The float64 reference applied to each view (rows g, g + views, ...) on its own, put
    back in place; the parameter gradients summed over views."""
    y, dx = np.zeros(x.shape), np.zeros(x.shape)
    means, variances, d_scale, d_bias = [], [], 0.0, 0.0
    for g in range(views):
        yg, mg, vg, dxg, dsg, dbg = _numpy_bn_and_grads(x[g::views], ct[g::views], scale, bias, eps)
        y[g::views], dx[g::views] = yg.reshape(x[g::views].shape), dxg.reshape(x[g::views].shape)
        means.append(mg)
        variances.append(vg)
        d_scale, d_bias = d_scale + dsg, d_bias + dbg
    return y, np.stack(means), np.stack(variances), dx, d_scale, d_bias


@pytest.mark.parametrize("shape,views", [((16, 8, 8, 12), 1), ((64, 20), 1), ((3, 5, 7, 4), 1),
                                          ((16, 8, 8, 12), 2), ((12, 20), 3), ((8, 3, 5, 4), 4)])
def test_matches_float64_reference(shape, views):
    """Forward, statistics and gradients against float64 NumPy; with `views` > 1 against the
    reference run on each view separately (views interleaved example-major)."""
    x, ct, scale, bias = _inputs(shape)
    eps = 1e-5
    ref_y, ref_mean, ref_var, ref_dx, ref_ds, ref_db = _numpy_grouped(x, ct, scale, bias, eps, views)
    (y, mean, var) = batch_normalize(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias), eps, views)
    assert y.shape == x.shape and mean.shape == var.shape == (views, shape[-1])
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var, ref_var, rtol=1e-5)
    loss = lambda x, s, b: jnp.sum(batch_normalize(x, s, b, eps, views)[0] * ct)
    dx, ds, db = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias))
    for got, want in ((dx, ref_dx), (ds, ref_ds), (db, ref_db)):
        got = np.asarray(got).reshape(want.shape)
        assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want)) + 1e-7


def test_view_sums_selects_rows_of_each_view():
    x = np.arange(6 * 2 * 3, dtype=np.float32).reshape(6, 2, 3)  # 3 examples x 2 views, P=2, C=3
    want = np.stack([x[g::2].sum((0, 1)) for g in range(2)])
    np.testing.assert_array_equal(view_sums(split_views(jnp.asarray(x), 2))[0], want)
    np.testing.assert_array_equal(view_sums(split_views(jnp.asarray(x), 1))[0], x.sum((0, 1))[None])


def test_module_with_views_equals_one_call_per_view():
    """BatchNorm(x, views=2) on example-major views: the outputs of one call per view, the
    running statistics of the average update, the gradients of the two calls summed."""
    x, ct, _, _ = _inputs((12, 3, 3, 5), seed=4)
    bn = BatchNorm(momentum=0.9)
    v = jax.tree.map(lambda a: a * 1.3 + 0.2, bn.init(jax.random.PRNGKey(0), x))
    y, s = bn.apply(v, x, views=2, mutable=["batch_stats"])
    outs, stats = zip(*(bn.apply(v, x[g::2], mutable=["batch_stats"]) for g in range(2)))
    np.testing.assert_allclose(y[0::2], outs[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[1::2], outs[1], rtol=1e-5, atol=1e-5)
    for got, a, b in zip(jax.tree.leaves(s), *map(jax.tree.leaves, stats)):
        np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-5, atol=1e-6)
    joint = lambda p: jnp.sum(bn.apply({**v, "params": p}, x, views=2, mutable=["batch_stats"])[0] * ct)
    split = lambda p: sum(jnp.sum(bn.apply({**v, "params": p}, x[g::2], mutable=["batch_stats"])[0] * ct[g::2])
                          for g in range(2))
    for a, b in zip(jax.tree.leaves(jax.grad(joint)(v["params"])), jax.tree.leaves(jax.grad(split)(v["params"]))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 5"):
        bn.apply(v, x, views=5, mutable=["batch_stats"])


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
    np.testing.assert_allclose(mean, x_rounded.reshape(-1, 3).mean(0)[None], rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda x: jnp.sum(batch_normalize(x, jnp.asarray(scale), jnp.asarray(bias), 1e-5)[0]
                                       .astype(jnp.float32)))(jnp.asarray(x, jnp.bfloat16))
    assert grads.dtype == jnp.bfloat16


def test_constant_channel_has_zero_variance_not_nan():
    x = np.ones((4, 3, 3, 2), np.float32) * 5.0
    mean, var = batch_moments(jnp.asarray(x))
    np.testing.assert_allclose(mean, [[5.0, 5.0]])
    assert np.all(np.asarray(var) == 0.0)
    np.testing.assert_allclose(view_sums(split_views(jnp.asarray(x), 1))[0], [[180.0, 180.0]])
    g = jax.grad(lambda x: jnp.sum(batch_normalize(x, jnp.ones(2), jnp.zeros(2), 1e-5)[0]))(jnp.asarray(x))
    assert np.all(np.isfinite(g))
