"""Contrastive and redundancy-reduction losses against NumPy references written independently
here (float64), plus gradient, dtype, optimisation and sharding properties."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax import losses
from tests.conftest import REPO_ROOT, device_env

RTOL, ATOL = 1e-5, 1e-6

# Jitted once here: one compilation per shape is much faster than op-by-op dispatch.
_nt_xent = jax.jit(losses.nt_xent)
_info_nce = jax.jit(losses.info_nce)
_barlow_twins = jax.jit(losses.barlow_twins)
_vicreg = jax.jit(losses.vicreg)
_whiten = jax.jit(losses.whiten)
_wmse = jax.jit(losses.wmse, static_argnames=("w_size", "w_iter"))


# ---------------------------------------------------------------- NumPy references (float64)

def _np_normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_logsumexp(a):
    m = a.max()
    return m + np.log(np.exp(a - m).sum())


def _np_nt_xent(z1, z2, t):
    """Full [2N, 2N] similarity matrix, one anchor at a time."""
    z = _np_normalize(np.concatenate([z1, z2]))
    n2 = z.shape[0]
    sim = z @ z.T / t
    total = 0.0
    for i in range(n2):
        partner = (i + n2 // 2) % n2
        others = np.array([sim[i, k] for k in range(n2) if k != i])
        total += _np_logsumexp(others) - sim[i, partner]
    return total / n2


def _np_info_nce(q, k, queue, t):
    q, k = _np_normalize(q), _np_normalize(k)
    total = 0.0
    for i in range(q.shape[0]):
        if queue is None:
            logits, target = q[i] @ k.T / t, i
        else:
            logits, target = np.concatenate([[q[i] @ k[i]], q[i] @ np.asarray(queue, np.float64).T]) / t, 0
        total += _np_logsumexp(logits) - logits[target]
    return total / q.shape[0]


def _np_barlow(z1, z2, lambd):
    def std(z):
        z = np.asarray(z, np.float64)
        return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)  # np.var is biased (ddof=0)
    a, b = std(z1), std(z2)
    n, d = a.shape
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[m, i] * b[m, j] for m in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c ** 2
    return loss


def _np_vicreg(z1, z2, sim_w, var_w, cov_w):
    """VICReg as the loss contract (and the paper's Eq. 6) writes it."""
    x, y = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    d = x.shape[1]
    loss = sim_w * np.mean((x - y) ** 2)
    for z in (x, y):
        std = np.sqrt(z.var(0, ddof=1) + 1e-4)
        cov = np.cov(z, rowvar=False)  # unbiased
        off = cov - np.diag(np.diag(cov))
        loss += var_w * np.mean(np.maximum(0.0, 1 - std)) + cov_w * (off ** 2).sum() / d
    return loss


def _np_whiten(x, eps=0.0):
    x = np.asarray(x, np.float64)
    xn = x - x.mean(0)
    cov = xn.T @ xn / (x.shape[0] - 1)
    cov = (1 - eps) * cov + eps * np.eye(x.shape[1])
    return xn @ np.linalg.inv(np.linalg.cholesky(cov)).T


def _np_wmse(z, key, w_size, w_iter, eps):
    v, n, _ = z.shape
    total = 0.0
    for it_key in jax.random.split(key, w_iter):
        perm = np.asarray(jax.random.permutation(it_key, n))
        w = np.zeros(z.shape)
        for idx in perm.reshape(-1, w_size):
            for view in range(v):
                w[view, idx] = _np_whiten(z[view, idx], eps)
        w = _np_normalize(w)
        for i in range(v):
            for j in range(i + 1, v):
                total += np.mean(2 - 2 * (w[i] * w[j]).sum(-1))
    return total / (w_iter * v * (v - 1) / 2)


def _normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------- values against references

@pytest.mark.parametrize("n,d,t,seed", [(1, 3, 0.1, 0), (6, 5, 0.5, 1), (32, 16, 0.1, 2), (17, 64, 0.07, 3)])
def test_nt_xent_matches_numpy(n, d, t, seed):
    z1, z2 = _normal(seed, n, d), _normal(seed + 100, n, d)
    np.testing.assert_allclose(_nt_xent(z1, z2, t), _np_nt_xent(z1, z2, t), rtol=RTOL, atol=ATOL)


def test_nt_xent_default_temperature_and_symmetry():
    z1, z2 = _normal(4, 8, 6), _normal(5, 8, 6)
    np.testing.assert_allclose(_nt_xent(z1, z2), _np_nt_xent(z1, z2, 0.1), rtol=RTOL)
    np.testing.assert_allclose(_nt_xent(z1, z2), _nt_xent(z2, z1), rtol=RTOL)


@pytest.mark.parametrize("n,k,d,t,seed", [(1, 5, 4, 0.2, 0), (8, 16, 8, 0.2, 1), (16, 64, 32, 0.07, 2)])
def test_info_nce_with_queue_matches_numpy(n, k, d, t, seed):
    q, key = _normal(seed, n, d), _normal(seed + 100, n, d)
    queue = _np_normalize(_normal(seed + 200, k, d)).astype(np.float32)
    np.testing.assert_allclose(_info_nce(q, key, queue, t), _np_info_nce(q, key, queue, t),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("n,d,t,seed", [(1, 4, 0.2, 0), (9, 8, 0.2, 1), (32, 16, 1.0, 2)])
def test_info_nce_without_queue_matches_numpy(n, d, t, seed):
    q, key = _normal(seed, n, d), _normal(seed + 100, n, d)
    np.testing.assert_allclose(_info_nce(q, key, temperature=t), _np_info_nce(q, key, None, t),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("n,d,lambd,seed", [(4, 3, 0.0051, 0), (16, 8, 0.0051, 1), (33, 12, 0.5, 2)])
def test_barlow_twins_matches_numpy(n, d, lambd, seed):
    z1, z2 = 3 * _normal(seed, n, d) + 1, _normal(seed + 100, n, d)
    np.testing.assert_allclose(_barlow_twins(z1, z2, lambd), _np_barlow(z1, z2, lambd),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("n,d,weights,seed", [(2, 3, (25.0, 25.0, 1.0), 0), (16, 8, (25.0, 25.0, 1.0), 1),
                                              (40, 24, (1.0, 3.0, 0.5), 2)])
def test_vicreg_matches_numpy(n, d, weights, seed):
    # Scale 0.3: most stds below 1, so the hinge of the variance term is active.
    z1, z2 = 0.3 * _normal(seed, n, d), 0.3 * _normal(seed + 100, n, d) + 0.5
    np.testing.assert_allclose(_vicreg(z1, z2, *weights), _np_vicreg(z1, z2, *weights),
                               rtol=RTOL, atol=ATOL)


def test_vicreg_variance_term_is_summed_over_views():
    """Constant embeddings: std = sqrt(1e-4) = 0.01, so each view's hinge is 0.99 (contract: no /2)."""
    z = np.ones((8, 4), np.float32)
    np.testing.assert_allclose(losses.vicreg(z, z, 0.0, 1.0, 0.0), 1.98, rtol=RTOL)


@pytest.mark.parametrize("m,d,eps,seed", [(16, 4, 0.0, 0), (64, 16, 0.0, 1), (32, 8, 0.1, 2)])
def test_whiten_matches_numpy_and_has_identity_covariance(m, d, eps, seed):
    # Correlated, shifted input: whitening must remove both. The mixing is kept moderately
    # conditioned: float32 whitening error grows with cond(cov), which is not under test.
    mixing = np.eye(d) + 0.5 * _normal(seed + 1, d, d) / np.sqrt(d)
    x = (_normal(seed, m, d) @ mixing + 2.0).astype(np.float32)
    w = np.asarray(_whiten(x, eps), np.float64)
    np.testing.assert_allclose(w, _np_whiten(x, eps), rtol=1e-4, atol=1e-4)
    if eps == 0.0:
        np.testing.assert_allclose(np.cov(w, rowvar=False), np.eye(d), atol=1e-4)
        np.testing.assert_allclose(w.mean(0), 0.0, atol=1e-5)


@pytest.mark.parametrize("v,n,d,w_size,w_iter,eps,seed", [
    (2, 32, 4, 8, 1, 0.0, 0), (4, 32, 6, 16, 1, 0.0, 1), (2, 48, 8, 24, 3, 0.0, 2), (3, 24, 6, 8, 2, 0.2, 3)])
def test_wmse_matches_numpy(v, n, d, w_size, w_iter, eps, seed):
    z = _normal(seed, v, n, d)
    key = jax.random.PRNGKey(seed)
    np.testing.assert_allclose(_wmse(z, key, w_size=w_size, w_iter=w_iter, eps=eps),
                               _np_wmse(z, key, w_size, w_iter, eps), rtol=RTOL, atol=ATOL)


def test_wmse_rejects_bad_sub_batch_sizes():
    z = _normal(0, 2, 32, 8)
    with pytest.raises(ValueError, match="not divisible by w_size=12"):
        losses.wmse(z, jax.random.PRNGKey(0), w_size=12)
    with pytest.raises(ValueError, match=r"w_size=8 must be larger than the embedding size D=8.*w_size > 8"):
        losses.wmse(z, jax.random.PRNGKey(0), w_size=8, eps=0.1)
    with pytest.raises(ValueError, match="views >= 2"):
        losses.wmse(z[:1], jax.random.PRNGKey(0), w_size=16)


# ---------------------------------------------------------------- gradients and minima

@pytest.mark.parametrize("with_queue", [False, True])
def test_info_nce_no_gradient_reaches_key_or_queue(with_queue):
    q, k = jnp.asarray(_normal(0, 6, 5)), jnp.asarray(_normal(1, 6, 5))
    queue = jnp.asarray(_np_normalize(_normal(2, 10, 5)), jnp.float32) if with_queue else None
    gq, gk, gqueue = jax.jit(jax.grad(losses.info_nce, argnums=(0, 1, 2)))(q, k, queue)
    assert np.all(np.asarray(gk) == 0.0)
    if with_queue:
        assert np.all(np.asarray(gqueue) == 0.0)
    assert np.abs(np.asarray(gq)).sum() > 0


def test_nt_xent_gradient_finite_and_matches_finite_differences():
    # Identical views and a small temperature: the masked self-pairs must not leak inf/NaN.
    z = jnp.asarray(_normal(0, 8, 4))
    for g in jax.jit(jax.grad(losses.nt_xent, argnums=(0, 1)))(z, z, 0.05):
        assert np.all(np.isfinite(np.asarray(g)))
    z1, z2 = _normal(1, 4, 3).astype(np.float64), _normal(2, 4, 3).astype(np.float64)
    g = jax.jit(jax.grad(losses.nt_xent))(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32), 0.5)
    eps, num = 1e-5, np.zeros_like(z1)
    for idx in np.ndindex(z1.shape):
        dz = np.zeros_like(z1)
        dz[idx] = eps
        num[idx] = (_np_nt_xent(z1 + dz, z2, 0.5) - _np_nt_xent(z1 - dz, z2, 0.5)) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=1e-3, atol=1e-5)


def test_barlow_twins_is_zero_at_identical_decorrelated_views():
    n, d = 64, 16
    a = _normal(0, n, d).astype(np.float64)
    q, _ = np.linalg.qr(a - a.mean(0))  # orthonormal columns, each of zero mean
    z = (3.0 * np.sqrt(n) * q + 5.0).astype(np.float32)  # any per-dimension scale and shift
    assert float(losses.barlow_twins(z, z)) < 1e-6
    assert float(losses.barlow_twins(z, _normal(1, n, d))) > 1.0


# ---------------------------------------------------------------- dtype, jit and vmap

_QUEUE = _np_normalize(_normal(7, 64, 8)).astype(np.float32)
_CASES = {
    "nt_xent": lambda a, b: losses.nt_xent(a, b),
    "info_nce": lambda a, b: losses.info_nce(a, b),
    "info_nce_queue": lambda a, b: losses.info_nce(a, b, _QUEUE),
    "barlow_twins": lambda a, b: losses.barlow_twins(a, b),
    "vicreg": lambda a, b: losses.vicreg(a, b),
    "wmse": lambda a, b: losses.wmse(jnp.stack([a, b]), jax.random.PRNGKey(0), w_size=16),
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_bfloat16_inputs_give_float32_and_jit_vmap_agree(name):
    loss = _CASES[name]
    a, b = _normal(0, 3, 32, 8), _normal(1, 3, 32, 8)
    a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    out = jax.jit(jax.vmap(loss))(a16, b16)
    assert out.dtype == jnp.float32
    # Same values as float32 math on the bfloat16-rounded inputs, one batch at a time.
    ref = [loss(jnp.asarray(a16[i], jnp.float32), jnp.asarray(b16[i], jnp.float32)) for i in range(3)]
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    # And close to the loss of the unrounded inputs (bfloat16 keeps ~3 significant digits).
    np.testing.assert_allclose(out, [loss(a[i], b[i]) for i in range(3)], rtol=5e-2, atol=1e-2)


# ---------------------------------------------------------------- optimisation

@pytest.mark.parametrize("name", sorted(_CASES))
def test_loss_decreases_over_20_optimizer_steps(name):
    """A linear map W [16, 8] of fixed inputs; the views are the inputs plus small noise.

    The input dimensions have very different scales, so some projections separate the
    images far better than others (whitening losses are blind to the scale, not to that).
    """
    n, d_in, d = 32, 16, 8
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d_in)) * np.logspace(0.5, -1.5, d_in)
    views = jnp.asarray(x + 0.1 * rng.normal(size=(4, n, d_in)), jnp.float32)

    def loss_fn(w):
        e = views @ w
        if name == "wmse":
            return losses.wmse(e, jax.random.PRNGKey(1), w_size=16)  # W-MSE 4: four views
        return _CASES[name](e[0], e[1])

    opt = optax.adam(1e-2)

    @jax.jit
    def step(w, state):
        value, g = jax.value_and_grad(loss_fn)(w)
        updates, state = opt.update(g, state)
        return optax.apply_updates(w, updates), state, value

    w = jnp.asarray(0.3 * rng.normal(size=(d_in, d)), jnp.float32)
    state = opt.init(w)
    initial = float(loss_fn(w))
    for _ in range(20):
        w, state, _ = step(w, state)
    final = float(loss_fn(w))
    assert final < 0.9 * initial, (initial, final)  # all losses here are positive


# ---------------------------------------------------------------- sharding

def test_nt_xent_sharded_over_8_devices_keeps_rows_local():
    n, d, seed = 64, 32, 0
    env = device_env(8)
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tests", "nt_xent_sharded.py"),
                           str(n), str(d), str(seed)],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["num_devices"] == 8 and info["input_shards"] == [[n // 8, d]] * 8
    rng = np.random.default_rng(seed)
    z1, z2 = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
    np.testing.assert_allclose(info["loss"], _np_nt_xent(z1, z2, 0.1), rtol=1e-5)
    # No device holds a full similarity block: every matmul is local rows [N/8] x all rows [N].
    full = {f"f32[{a},{b}]" for a in (n, 2 * n) for b in (n, 2 * n)}
    assert not full & set(info["f32_shapes"]), info["f32_shapes"]
    assert info["dot_shapes"] and set(info["dot_shapes"]) == {f"f32[{n // 8},{n}]"}, info["dot_shapes"]
    # The other operand is all-gathered, once per view.
    gathers = [c for c in info["collectives"] if "all-gather(" in c]
    assert len(gathers) == 2 and all(f"f32[{d},{n}]" in c for c in gathers), info["collectives"]
