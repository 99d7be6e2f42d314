"""Prototype losses (Sinkhorn, SwAV, DINO, CARL, CARP) against NumPy references written
independently here (float64), plus gradient, degenerate-value, dtype, optimisation and
sharding properties."""
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
_sinkhorn = jax.jit(losses.sinkhorn, static_argnames="num_iters")
_swav = jax.jit(losses.swav)
_dino = jax.jit(losses.dino)
_carl = jax.jit(losses.carl)
_carp = jax.jit(losses.carp, static_argnames="num_blocks")


# ---------------------------------------------------------------- NumPy references (float64)

def _np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_sinkhorn(scores, eps, iters):
    """Line by line the SwAV code's distributed_sinkhorn (one process)."""
    q = np.exp(np.asarray(scores, np.float64) / eps).T  # [K, B]
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    q *= b
    return q.T


def _np_swapped_ce(targets, probs):
    """Loop over pairs (a, v), v != a, and samples: mean of -sum_k target log prob."""
    terms = []
    for a in range(targets.shape[0]):
        for v in range(probs.shape[0]):
            if v != a:
                terms.append(np.mean([-(targets[a, i] * np.log(probs[v, i])).sum()
                                      for i in range(probs.shape[1])]))
    return np.mean(terms)


def _np_swav(logits, codes, t):
    return _np_swapped_ce(np.asarray(codes, np.float64), _np_softmax(np.asarray(logits, np.float64) / t))


def _np_dino(student, teacher, center, ts, tt):
    targets = _np_softmax((np.asarray(teacher, np.float64) - np.asarray(center, np.float64)) / tt)
    return _np_swapped_ce(targets, _np_softmax(np.asarray(student, np.float64) / ts))


def _np_kl_uniform(p):
    q = p.mean(0)
    return float((q * np.log(q)).sum() + np.log(len(q)))


def _np_carl(la, lb, w):
    pa, pb = _np_softmax(la), _np_softmax(lb)
    cons = -np.mean(np.log((pa * pb).sum(1)))
    kl = _np_kl_uniform(pa) + _np_kl_uniform(pb)
    return cons + w * kl, cons, kl


def _np_carp(la, lb, perm, num_blocks, w):
    """One block at a time: CARL's terms on the block's columns, averaged over blocks."""
    size = len(perm) // num_blocks
    cons, kl = [], []
    for j in range(num_blocks):
        cols = np.asarray(perm)[j * size:(j + 1) * size]
        _, c, k = _np_carl(np.asarray(la, np.float64)[:, cols], np.asarray(lb, np.float64)[:, cols], 0.0)
        cons.append(c)
        kl.append(k)
    return np.mean(cons) + w * np.mean(kl), np.mean(cons), np.mean(kl)


def _normal(seed, *shape, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _np_sinkhorn_codes(logits, eps=0.05, iters=3):
    return np.stack([_np_sinkhorn(x, eps, iters) for x in logits]).astype(np.float32)


# ---------------------------------------------------------------- sinkhorn

@pytest.mark.parametrize("b,k,eps,iters,seed", [(8, 4, 0.05, 3, 0), (17, 40, 0.1, 5, 2), (64, 16, 0.5, 1, 3)])
def test_sinkhorn_matches_numpy_and_rows_sum_to_one(b, k, eps, iters, seed):
    s = _normal(seed, b, k, scale=0.5)
    q = np.asarray(_sinkhorn(s, eps, iters))
    assert q.dtype == np.float32 and q.shape == (b, k)
    np.testing.assert_allclose(q, _np_sinkhorn(s, eps, iters), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=RTOL)


def test_sinkhorn_converges_to_equal_prototype_mass():
    b, k = 48, 12
    q = np.asarray(_sinkhorn(_normal(0, b, k, scale=0.5), 0.5, num_iters=50))
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=RTOL)
    np.testing.assert_allclose(q.sum(0), b / k, rtol=1e-4)
    # Three iterations (the default) are still far from balanced at epsilon = 0.05: the
    # test above is about the fixed point, not the default.
    assert np.ptp(np.asarray(_sinkhorn(_normal(0, b, k, scale=0.5), 0.05, 3)).sum(0)) > 1e-3


def test_sinkhorn_shift_invariant_and_stable_far_from_the_max():
    s = _normal(1, 16, 8, scale=0.5)
    for shift in (3.7, -50.0, 100.0):  # exp((s + 100) / 0.05) overflows, even in float64
        shifted = s + np.float32(shift)
        # The reference sees the same float32-rounded scores, shifted back in float64.
        ref = _np_sinkhorn(shifted.astype(np.float64) - shift, 0.05, 3)
        # |scores / epsilon| ~ 2000 has a float32 ulp of 1.2e-4, a relative error of the
        # codes that no algorithm avoids: the large shifts get a tolerance to match.
        rtol = RTOL if abs(shift) < 10 else 1e-3
        np.testing.assert_allclose(_sinkhorn(shifted, 0.05, 3), ref, rtol=rtol, atol=ATOL)
    # One sample 8 below all others: exp(-160) underflows in float32, so the multiplicative
    # updates would divide 0 by 0 in that row; the float64 reference does not underflow.
    s[3] -= 8.0
    q = np.asarray(_sinkhorn(s, 0.05, 3))
    assert np.all(np.isfinite(q))
    np.testing.assert_allclose(q, _np_sinkhorn(s, 0.05, 3), rtol=1e-4, atol=ATOL)


def test_sinkhorn_blocks_are_the_concatenated_rows_split_back():
    # SwAV's queue (here 24 rows) before the batch (8): the same codes as one Sinkhorn over the
    # 32 rows, against the NumPy reference, without concatenating the blocks.
    queue, batch = _normal(4, 24, 6, scale=0.5), _normal(5, 8, 6, scale=0.5)
    ref = _np_sinkhorn(np.concatenate([queue, batch]), 0.05, 3)
    got = jax.jit(lambda a, b: losses.sinkhorn_blocks([a, b], 0.05, 3))(queue, batch)
    assert [g.shape for g in got] == [(24, 6), (8, 6)]
    np.testing.assert_allclose(np.concatenate(got), ref, rtol=RTOL, atol=ATOL)
    # Rows are normalised over all 32: the batch block alone is not its own Sinkhorn.
    assert not np.allclose(got[1], _np_sinkhorn(batch, 0.05, 3), rtol=1e-3)


def test_sinkhorn_has_no_gradient():
    s = jnp.asarray(_normal(2, 8, 5))
    w = jnp.asarray(_normal(3, 8, 5))
    g = jax.jit(jax.grad(lambda s: jnp.sum(losses.sinkhorn(s) * w)))(s)
    assert np.all(np.asarray(g) == 0.0)


# ---------------------------------------------------------------- swav and dino

@pytest.mark.parametrize("v,a,n,k,t,seed", [(2, 2, 8, 5, 0.1, 0), (8, 2, 6, 7, 0.1, 1),
                                            (4, 3, 16, 12, 0.5, 3)])
def test_swav_matches_numpy(v, a, n, k, t, seed):
    logits = _normal(seed, v, n, k)
    codes = _np_sinkhorn_codes(logits[:a])
    np.testing.assert_allclose(_swav(logits, codes, t), _np_swav(logits, codes, t), rtol=RTOL, atol=ATOL)


def test_swav_no_gradient_reaches_codes_and_bad_shapes_raise():
    logits = jnp.asarray(_normal(0, 4, 6, 5))
    codes = jnp.asarray(_np_sinkhorn_codes(np.asarray(logits[:2])))
    gl, gc = jax.jit(jax.grad(losses.swav, argnums=(0, 1)))(logits, codes)
    assert np.all(np.asarray(gc) == 0.0) and np.abs(np.asarray(gl)).sum() > 0
    with pytest.raises(ValueError, match="same N and K"):
        losses.swav(logits, codes[:, :, :4])
    with pytest.raises(ValueError, match="3 codes crops but only 2"):
        losses.swav(logits[:2], jnp.concatenate([codes, codes[:1]]))
    with pytest.raises(ValueError, match="at least 2 crops"):
        losses.swav(logits[:1], codes[:1])


@pytest.mark.parametrize("vs,vt,n,k,center_shape,seed", [(2, 2, 8, 5, (5,), 0), (6, 2, 6, 9, (1, 9), 1),
                                                         (3, 1, 10, 4, (4,), 2)])
def test_dino_matches_numpy(vs, vt, n, k, center_shape, seed):
    student, teacher = _normal(seed, vs, n, k, scale=2.0), _normal(seed + 100, vt, n, k)
    center = _normal(seed + 200, *center_shape, scale=0.1)
    np.testing.assert_allclose(_dino(student, teacher, center), _np_dino(student, teacher, center, 0.1, 0.04),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(_dino(student, teacher, center, 0.2, 0.07),
                               _np_dino(student, teacher, center, 0.2, 0.07), rtol=RTOL, atol=ATOL)


def test_dino_traced_teacher_temp_and_no_gradient_to_teacher_or_center():
    student, teacher = jnp.asarray(_normal(0, 6, 8, 7)), jnp.asarray(_normal(1, 2, 8, 7))
    center = jnp.asarray(_normal(2, 7, scale=0.1))

    @jax.jit
    def fn(student, teacher, center, teacher_temp):  # teacher_temp traced, as a schedule gives it
        return jax.value_and_grad(losses.dino, argnums=(0, 1, 2))(student, teacher, center, 0.1, teacher_temp)

    for tt in (0.04, 0.07):
        value, (gs, gt, gc) = fn(student, teacher, center, jnp.float32(tt))
        np.testing.assert_allclose(value, _np_dino(student, teacher, center, 0.1, tt), rtol=RTOL)
        assert np.all(np.asarray(gt) == 0.0) and np.all(np.asarray(gc) == 0.0)
        assert np.abs(np.asarray(gs)).sum() > 0
    assert fn._cache_size() == 1  # one program for every temperature


# ---------------------------------------------------------------- carl and carp

@pytest.mark.parametrize("n,k,w,scale,seed", [(1, 3, 1.0, 1.0, 0), (33, 20, 0.15, 3.0, 2),
                                              (64, 100, 1.0, 10.0, 3)])
def test_carl_matches_numpy(n, k, w, scale, seed):
    la, lb = _normal(seed, n, k, scale=scale), _normal(seed + 100, n, k, scale=scale)
    loss, parts = _carl(la, lb, w)
    ref = _np_carl(la, lb, w)
    np.testing.assert_allclose([loss, parts["consistency"], parts["kl"]], ref, rtol=RTOL, atol=ATOL)


def _one_hot_logits(n, k, hot, big=1000.0):
    """Every sample's logits put all their mass (exactly, in float32) on prototypes `hot`."""
    x = np.zeros((n, k), np.float32)
    x[:, hot] = big
    return x


def test_carl_degenerate_values():
    n, k = 16, 10
    collapsed = _one_hot_logits(n, k, 3)
    loss, parts = _carl(collapsed, collapsed, 0.5)
    np.testing.assert_allclose(parts["consistency"], 0.0, atol=ATOL)
    np.testing.assert_allclose(parts["kl"], 2 * np.log(k), rtol=RTOL)  # log K per view, summed
    np.testing.assert_allclose(loss, np.log(k), rtol=RTOL)
    # The gradient at exact collapse (probabilities underflowing to 0) stays finite.
    g = jax.jit(jax.grad(lambda a, b: losses.carl(a, b, 0.5)[0], argnums=(0, 1)))(collapsed, collapsed)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g)
    uniform = np.full((n, k), 2.5, np.float32)
    _, parts = _carl(uniform, uniform, 0.5)
    np.testing.assert_allclose(parts["consistency"], np.log(k), rtol=RTOL)
    np.testing.assert_allclose(parts["kl"], 0.0, atol=ATOL)
    # Confident, balanced and consistent (sample i on prototype i mod K): both terms ~0.
    balanced = 1000.0 * np.eye(k, dtype=np.float32)[np.arange(4 * k) % k]
    loss, _ = _carl(balanced, balanced, 1.0)
    np.testing.assert_allclose(loss, 0.0, atol=1e-5)


@pytest.mark.parametrize("n,k,blocks,w,seed", [(8, 4, 2, 1.0, 0), (32, 60, 5, 0.15, 2), (5, 24, 12, 1.0, 3)])
def test_carp_matches_numpy(n, k, blocks, w, seed):
    la, lb = _normal(seed, n, k, scale=2.0), _normal(seed + 100, n, k, scale=2.0)
    perm = losses.carp_permutation(jax.random.PRNGKey(seed), k)
    loss, parts = _carp(la, lb, perm, blocks, w)
    ref = _np_carp(la, lb, np.asarray(perm), blocks, w)
    np.testing.assert_allclose([loss, parts["consistency"], parts["kl"]], ref, rtol=RTOL, atol=ATOL)


def test_carp_with_one_block_is_carl():
    la, lb = _normal(0, 16, 12), _normal(1, 16, 12)
    perm = losses.carp_permutation(jax.random.PRNGKey(5), 12)
    carp_loss, carp_parts = _carp(la, lb, perm, 1, 0.3)
    carl_loss, carl_parts = _carl(la, lb, 0.3)
    np.testing.assert_allclose([carp_loss, carp_parts["consistency"], carp_parts["kl"]],
                               [carl_loss, carl_parts["consistency"], carl_parts["kl"]], rtol=RTOL)


def test_carp_degenerate_values():
    n, k, blocks = 16, 24, 4
    perm = np.asarray(losses.carp_permutation(jax.random.PRNGKey(0), k))
    block_size = k // blocks
    # Full collapse: every sample, both views, all of each block's mass on the block's first prototype.
    collapsed = _one_hot_logits(n, k, perm[::block_size])
    loss, parts = _carp(collapsed, collapsed, perm, blocks, 0.5)
    np.testing.assert_allclose(parts["consistency"], 0.0, atol=ATOL)
    # log N_B per block and view; mean over blocks, sum over the two views.
    np.testing.assert_allclose(parts["kl"], 2 * np.log(block_size), rtol=RTOL)
    np.testing.assert_allclose(loss, np.log(block_size), rtol=RTOL)
    uniform = np.full((n, k), -1.5, np.float32)
    _, parts = _carp(uniform, uniform, perm, blocks, 0.5)
    np.testing.assert_allclose(parts["consistency"], np.log(block_size), rtol=RTOL)
    np.testing.assert_allclose(parts["kl"], 0.0, atol=ATOL)


def test_carp_batch_order_permutation_and_errors():
    n, k, blocks = 16, 12, 3
    la, lb = _normal(0, n, k, scale=2.0), _normal(1, n, k, scale=2.0)
    perm = losses.carp_permutation(jax.random.PRNGKey(0), k)
    assert sorted(np.asarray(perm).tolist()) == list(range(k))
    np.testing.assert_array_equal(perm, losses.carp_permutation(jax.random.PRNGKey(0), k))
    loss, _ = _carp(la, lb, perm, blocks, 1.0)
    order = np.random.default_rng(2).permutation(n)
    np.testing.assert_allclose(_carp(la[order], lb[order], perm, blocks, 1.0)[0], loss, rtol=RTOL)
    # Another partition of the prototypes is another loss (the softmax blocks differ).
    other = losses.carp_permutation(jax.random.PRNGKey(1), k)
    assert abs(float(_carp(la, lb, other, blocks, 1.0)[0]) - float(loss)) > 1e-3
    # Reordering prototypes within each block does not change the partition, nor the loss.
    within = np.asarray(perm).reshape(blocks, -1)[:, ::-1].ravel()
    np.testing.assert_allclose(_carp(la, lb, within, blocks, 1.0)[0], loss, rtol=RTOL)
    with pytest.raises(ValueError, match="K=12 prototypes are not divisible into num_blocks=5"):
        losses.carp(la, lb, perm, 5, 1.0)
    with pytest.raises(ValueError, match="blocks of 1 prototype"):
        losses.carp(la, lb, perm, 12, 1.0)
    with pytest.raises(ValueError, match="one shape"):
        losses.carp(la, lb[:, :6], perm, 3, 1.0)


# ---------------------------------------------------------------- dtype

_PERM = np.asarray(jax.random.permutation(jax.random.PRNGKey(0), 16))
_CASES = {  # each: [V, N, K] -> float32 array
    "sinkhorn": lambda x: losses.sinkhorn(x[0]),
    "swav": lambda x: losses.swav(x, losses.sinkhorn(x[0])[None]),
    "dino": lambda x: losses.dino(x, x[:2] * 0.5, jnp.zeros(x.shape[-1])),
    "carl": lambda x: losses.carl(x[0], x[1], 1.0)[0],
    "carp": lambda x: losses.carp(x[0], x[1], _PERM, 4, 1.0)[0],
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_bfloat16_inputs_give_float32_close_to_float32(name):
    x = _normal(0, 3, 24, 16)
    x16 = x.astype(jnp.bfloat16)
    fn = jax.jit(_CASES[name])
    out = fn(x16)
    assert out.dtype == jnp.float32
    # Same values as float32 math on the bfloat16-rounded inputs...
    np.testing.assert_allclose(out, fn(jnp.asarray(x16, jnp.float32)), rtol=RTOL, atol=ATOL)
    # ...and close to those of the unrounded inputs (bfloat16 keeps ~3 significant digits;
    # sinkhorn divides by epsilon = 0.05, which amplifies the rounding 20 times).
    np.testing.assert_allclose(out, fn(x), rtol=5e-2, atol=5e-2 if name == "sinkhorn" else 1e-2)


# ---------------------------------------------------------------- optimisation

def _losses_of(name):
    """loss(W, views) for a linear map W [16, K]; views [4, N, 16]."""
    teacher_map = jnp.asarray(_normal(9, 16, 16, scale=0.5))
    perm = losses.carp_permutation(jax.random.PRNGKey(3), 16)
    if name == "swav":
        def fn(w, views):
            logits = views @ w
            return losses.swav(logits, jax.vmap(losses.sinkhorn)(logits[:2]))
    elif name == "dino":
        def fn(w, views):
            teacher = views[:2] @ teacher_map
            return losses.dino(views @ w, teacher, jnp.mean(teacher, axis=(0, 1)))
    elif name == "carl":
        def fn(w, views):
            return losses.carl(views[0] @ w, views[1] @ w, 1.0)[0]
    else:
        def fn(w, views):
            return losses.carp(views[0] @ w, views[1] @ w, perm, 4, 1.0)[0]
    return fn


@pytest.mark.parametrize("name", ["swav", "dino", "carl", "carp"])
def test_loss_decreases_over_20_optimizer_steps(name):
    """A linear map W [16, K=16] of fixed inputs; the views are the inputs plus small noise."""
    n, d_in, k = 32, 16, 16
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d_in)) * np.logspace(0.5, -1.5, d_in)
    views = jnp.asarray(x + 0.1 * rng.normal(size=(4, n, d_in)), jnp.float32)
    loss_fn = _losses_of(name)
    opt = optax.adam(1e-2)

    @jax.jit
    def step(w, state):
        value, g = jax.value_and_grad(loss_fn)(w, views)
        updates, state = opt.update(g, state)
        return optax.apply_updates(w, updates), state, value

    w = jnp.asarray(0.3 * rng.normal(size=(d_in, k)), jnp.float32)
    state = opt.init(w)
    values = []
    for _ in range(21):
        w, state, value = step(w, state)
        values.append(float(value))  # values[-1] is the loss after 20 steps
    assert values[-1] < 0.9 * values[0], values  # all these losses are positive


# ---------------------------------------------------------------- sharding

def test_sinkhorn_and_carp_sharded_over_8_devices_equal_one_device():
    n, k, blocks, seed = 64, 24, 4, 0
    env = device_env(8)
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tests", "prototypes_sharded.py"),
                           str(n), str(k), str(blocks), str(seed)],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["num_devices"] == 8 and info["input_shards"] == [[n // 8, k]] * 8
    assert info["codes_shards"] == [[n // 8, k]] * 8  # the codes stay sharded like the batch
    # Sums over the global batch, not per shard: 8 devices equal 1 device.
    np.testing.assert_allclose(info["codes_8"], info["codes_1"], rtol=1e-5, atol=1e-7)
    for name in ("carp", "consistency", "kl"):
        np.testing.assert_allclose(info[f"{name}_8"], info[f"{name}_1"], rtol=1e-5, err_msg=name)
    assert info["perm_8"] == info["perm_1"]
    # And both equal the references.
    rng = np.random.default_rng(seed)
    scores, la, lb = (rng.normal(size=(n, k)).astype(np.float32) for _ in range(3))
    np.testing.assert_allclose(info["codes_8"], _np_sinkhorn(scores, 0.05, 3), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([info["carp_8"], info["consistency_8"], info["kl_8"]],
                               _np_carp(la, lb, info["perm_8"], blocks, 0.7), rtol=1e-5)


def test_swav_assignment_metrics_read_the_uniform_fixed_point():
    """SwAV logs how informative its assignments are: at the uniform fixed point (every
    prototype scores the same) both entropies are 1 (of log K); with scores that single out one
    prototype per image, identical in both crops, the entropies fall and the crops agree."""
    import importlib

    from ssl_jax.methods import build_method

    config = importlib.import_module("configs.swav").get_config("demo")
    method = build_method(config, total_steps=10)
    k, n = 30, 64
    uniform = jnp.zeros((2, n, k))
    codes = jnp.stack([losses.sinkhorn(uniform[i]) for i in range(2)])
    m = method._assignment_metrics(uniform, codes)
    np.testing.assert_allclose([m["codes_entropy"], m["predictions_entropy"]], [1.0, 1.0], rtol=1e-5)
    peaked = jnp.broadcast_to(jax.nn.one_hot(jnp.arange(n) % k, k) * 0.9, (2, n, k))
    codes = jnp.stack([losses.sinkhorn(peaked[i]) for i in range(2)])
    m = method._assignment_metrics(peaked, codes)
    assert float(m["codes_entropy"]) < 0.1 and float(m["predictions_entropy"]) < 0.5
    assert float(m["codes_agreement"]) == 1.0
