"""Representation monitors against NumPy references written here (float64), plus the values
they must take on collapsed, spread-out and known-rank embeddings."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.monitors import (alignment, collapse_std, effective_rank,
                                       representation_monitors, uniformity)

# Jitted once here: checks the monitors are jit-safe and avoids op-by-op dispatch.
_collapse_std = jax.jit(collapse_std)
_effective_rank = jax.jit(effective_rank)
_alignment = jax.jit(alignment, static_argnames="alpha")
_uniformity = jax.jit(uniformity, static_argnames="t")
_monitors = jax.jit(representation_monitors)


def _np_normalize(z):
    z = np.asarray(z, np.float64)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _np_collapse_std(z):
    return np.mean(np.std(_np_normalize(z), axis=0))


def _np_effective_rank(z, eps=1e-7):
    s = np.linalg.svd(np.asarray(z, np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return np.exp(-np.sum(p * np.log(p)))


def _np_alignment(z1, z2, alpha):
    a, b = _np_normalize(z1), _np_normalize(z2)
    return np.mean([np.linalg.norm(a[i] - b[i]) ** alpha for i in range(len(a))])


def _np_uniformity(z, t):
    z = _np_normalize(z)
    terms = [np.exp(-t * np.sum((z[i] - z[j]) ** 2))
             for i, j in itertools.combinations(range(len(z)), 2)]
    return np.log(np.mean(terms))


def _views(seed, n=24, d=16):
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(0.2, 5.0, (n, 1))
    z2 = (z1 + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    return z1, z2


@pytest.mark.parametrize("seed", [0, 1])
def test_monitors_match_numpy_references(seed):
    z1, z2 = _views(seed)
    np.testing.assert_allclose(_collapse_std(z1), _np_collapse_std(z1), rtol=1e-5)
    np.testing.assert_allclose(_effective_rank(z1), _np_effective_rank(z1), rtol=1e-5)
    for alpha in (1.0, 2.0, 3.0):
        np.testing.assert_allclose(_alignment(z1, z2, alpha=alpha), _np_alignment(z1, z2, alpha),
                                   rtol=1e-5)
    for t in (0.5, 2.0, 5.0):
        np.testing.assert_allclose(_uniformity(z1, t=t), _np_uniformity(z1, t), rtol=1e-5)


def test_representation_monitors_combines_the_four():
    z1, z2 = _views(2)
    out = _monitors(z1, z2)
    assert set(out) == {"collapse_std", "effective_rank", "alignment", "uniformity"}
    assert all(v.shape == () and v.dtype == jnp.float32 for v in out.values())
    np.testing.assert_allclose(out["collapse_std"], _np_collapse_std(z1), rtol=1e-5)
    np.testing.assert_allclose(out["effective_rank"], _np_effective_rank(z1), rtol=1e-5)
    np.testing.assert_allclose(out["alignment"], _np_alignment(z1, z2, 2), rtol=1e-5)
    np.testing.assert_allclose(out["uniformity"],
                               (_np_uniformity(z1, 2) + _np_uniformity(z2, 2)) / 2, rtol=1e-5)


def test_collapse_std_is_zero_when_collapsed_and_one_over_sqrt_d_when_spread():
    rng = np.random.default_rng(0)
    row = rng.normal(size=(1, 64)).astype(np.float32)
    # Same direction, different norms: complete collapse after normalisation.
    collapsed = row * rng.uniform(0.5, 2.0, (32, 1)).astype(np.float32)
    assert float(collapse_std(collapsed)) < 1e-6
    d = 256
    spread = rng.normal(size=(4096, d)).astype(np.float32)
    np.testing.assert_allclose(float(collapse_std(spread)), 1 / np.sqrt(d), rtol=0.02)


@pytest.mark.parametrize("r", [1, 3, 10])
def test_effective_rank_of_equal_singular_values_is_the_rank(r):
    rng = np.random.default_rng(r)
    n, d = 64, 32
    u, _ = np.linalg.qr(rng.normal(size=(n, r)))
    v, _ = np.linalg.qr(rng.normal(size=(d, r)))
    z = (3.0 * u @ v.T).astype(np.float32)  # rank r, all nonzero singular values equal to 3
    np.testing.assert_allclose(float(effective_rank(z)), r, rtol=1e-3)


def test_alignment_and_uniformity_on_extreme_cases():
    z1, _ = _views(3)
    assert float(alignment(z1, z1)) == 0.0
    # Scaling a view does not change its direction: still perfectly aligned.
    assert float(alignment(z1, 7.0 * z1)) < 1e-10
    # Antipodal views: ||a - b||² = 4 for every pair.
    np.testing.assert_allclose(float(alignment(z1, -z1)), 4.0, rtol=1e-6)
    # A collapsed batch has the largest uniformity loss, 0 (every pair at distance 0).
    collapsed = np.tile(z1[:1], (10, 1))
    assert abs(float(uniformity(collapsed))) < 1e-6
    assert float(uniformity(z1)) < -0.5


def test_monitors_compute_in_float32_and_validate_shapes():
    z1, z2 = _views(4)
    out = representation_monitors(jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16))
    assert all(v.dtype == jnp.float32 for v in out.values())
    with pytest.raises(ValueError, match="2-D"):
        collapse_std(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="same shape"):
        alignment(z1, z2[:-1])
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(z1[:1])


def test_collapse_reason_flags_complete_and_dimensional_collapse_only():
    from ssl_jax.monitors import collapse_reason

    ref = 1.0 / np.sqrt(256)
    healthy = dict(collapse_std=0.8 * ref, collapse_std_reference=ref, z_std=ref, z_std_reference=ref,
                   z_effective_rank=40.0)
    assert collapse_reason(healthy) is None
    assert collapse_reason({}) is None
    complete = collapse_reason(dict(healthy, collapse_std=0.05 * ref))
    assert complete and "encoder features" in complete
    assert "projector outputs: per-dimension std" in collapse_reason(dict(healthy, z_std=1e-5))
    # A BatchNorm-ended projector keeps std 1/sqrt(D) while its outputs span one direction.
    dimensional = collapse_reason(dict(healthy, z_effective_rank=1.2))
    assert dimensional and "effective rank 1.20" in dimensional
    # The verdict's inputs as the train step computes them: a batch of one repeated vector.
    z = np.tile(np.random.default_rng(0).normal(size=(1, 256)), (64, 1)) + 1e-6
    measured = dict(z_std=float(collapse_std(z)), z_std_reference=ref, z_effective_rank=float(effective_rank(z)))
    assert collapse_reason(measured) is not None
