"""Losses against NumPy references written independently here, plus gradient properties."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax import losses


def _np_cos(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("n,d", [(1, 3), (7, 16), (64, 256)])
def test_byol_matches_numpy(n, d):
    rng = np.random.default_rng(n * d)
    p, z = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
    expected = np.mean(2 - 2 * _np_cos(p, z))
    np.testing.assert_allclose(losses.byol(p, z), expected, rtol=1e-5, atol=1e-6)
    # BYOL's loss is the squared distance of the normalised vectors.
    pn, zn = p / np.linalg.norm(p, axis=1, keepdims=True), z / np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(losses.byol(p, z), np.mean(np.sum((pn - zn) ** 2, 1)), rtol=1e-5, atol=1e-6)


def test_simsiam_matches_numpy():
    rng = np.random.default_rng(0)
    p, z = rng.normal(size=(9, 12)).astype(np.float32), rng.normal(size=(9, 12)).astype(np.float32)
    np.testing.assert_allclose(losses.simsiam(p, z), -np.mean(_np_cos(p, z)), rtol=1e-5)


@pytest.mark.parametrize("loss", [losses.byol, losses.simsiam])
def test_no_gradient_reaches_target(loss):
    rng = np.random.default_rng(1)
    p, z = jnp.asarray(rng.normal(size=(5, 8))), jnp.asarray(rng.normal(size=(5, 8)))
    gp, gz = jax.grad(loss, argnums=(0, 1))(p, z)
    assert np.all(np.asarray(gz) == 0.0)
    assert np.abs(np.asarray(gp)).sum() > 0


def test_byol_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    p = rng.normal(size=(4, 6))
    z = rng.normal(size=(4, 6))
    g = np.asarray(jax.grad(losses.byol)(jnp.asarray(p, jnp.float32), jnp.asarray(z, jnp.float32)))
    f = lambda q: np.mean(2 - 2 * _np_cos(q, z))  # float64 central differences
    eps, num = 1e-5, np.zeros_like(p)
    for idx in np.ndindex(p.shape):
        d = np.zeros_like(p)
        d[idx] = eps
        num[idx] = (f(p + d) - f(p - d)) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=1e-4, atol=1e-6)


def test_float32_math_for_bfloat16_inputs_and_jit_vmap():
    rng = np.random.default_rng(3)
    p, z = rng.normal(size=(3, 16, 32)).astype(np.float32), rng.normal(size=(3, 16, 32)).astype(np.float32)
    out = jax.jit(jax.vmap(losses.byol))(p.astype(jnp.bfloat16), z.astype(jnp.bfloat16))
    assert out.dtype == jnp.float32
    ref = [np.mean(2 - 2 * _np_cos(p[i].astype(jnp.bfloat16).astype(np.float32),
                                   z[i].astype(jnp.bfloat16).astype(np.float32))) for i in range(3)]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_byol_loss_decreases_under_optimizer():
    rng = np.random.default_rng(4)
    p0, z = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32), jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)
    opt = optax.adam(0.05)
    p, state = p0, opt.init(p0)
    for _ in range(20):
        g = jax.grad(losses.byol)(p, z)
        u, state = opt.update(g, state)
        p = optax.apply_updates(p, u)
    assert float(losses.byol(p, z)) < 0.5 * float(losses.byol(p0, z))
