"""Tests for ssl_jax.train.optim: LARS, SGD and schedules against NumPy."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax.train import optim as optim_lib
from ssl_jax import presets
from ssl_jax.schedules import momentum as momentum_schedule, warmup_cosine
from ssl_jax.train.optim import build_optimizer, lars, scaled_lr


def _opt(keys: dict):
    """A complete config.optimizer (base_config's) with no warm-up, no weight decay, then `keys`."""
    c = presets.base_config("test").optimizer
    c.update(dict(warmup_epochs=0.0, weight_decay=0.0))
    c.update(keys)
    return c


def _params_and_grads():
    rng = np.random.default_rng(0)
    params = {
        "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
        "dense": {"kernel": rng.normal(size=(5, 3)).astype(np.float32),
                  "bias": rng.normal(size=(3,)).astype(np.float32)},
        "bn": {"scale": rng.normal(size=(4,)).astype(np.float32)},
    }
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
             for _ in range(3)]
    return params, grads


def _run(tx, params, grads):
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    history = []
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history


def _numpy_lars(params, grads, lr_fn, wd, momentum, eta):
    params = jax.tree.map(lambda p: p.astype(np.float64), params)
    flat, treedef = jax.tree.flatten(params)
    bufs = [np.zeros_like(p) for p in flat]
    history = []
    for step, g_tree in enumerate(grads):
        new = []
        for i, (p, g) in enumerate(zip(flat, jax.tree.leaves(g_tree))):
            g = g.astype(np.float64)
            if p.ndim > 1:
                g = g + wd * p
                pn, gn = np.linalg.norm(p), np.linalg.norm(g)
                g = g * (eta * pn / gn if pn > 0 and gn > 0 else 1.0)
            bufs[i] = momentum * bufs[i] + g
            new.append(p - lr_fn(step) * bufs[i])
        flat = new
        history.append(jax.tree.unflatten(treedef, flat))
    return history


def test_lars_matches_numpy():
    params, grads = _params_and_grads()
    lr_fn = lambda step: 0.5 * (step + 1)  # a schedule: checks the step count too
    wd, momentum, eta = 1e-2, 0.9, 1e-3
    got = _run(lars(lr_fn, wd, momentum=momentum, trust_coefficient=eta), params, grads)
    want = _numpy_lars(params, grads, lr_fn, wd, momentum, eta)
    for g, w in zip(got, want):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), g, w)
    # Excluded params moved by exactly -lr*v of the raw gradients (no decay, no ratio).
    np.testing.assert_allclose(got[0]["bn"]["scale"],
                               params["bn"]["scale"] - 0.5 * grads[0]["bn"]["scale"],
                               rtol=1e-6)


def test_lars_zero_param_norm_gives_unit_ratio():
    params = {"k": jnp.zeros((2, 2))}
    grads = {"k": jnp.ones((2, 2))}
    tx = lars(1.0, 0.0, momentum=0.0)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["k"], -1.0)


def test_sgd_coupled_weight_decay_matches_numpy():
    params, grads = _params_and_grads()
    grads = grads[:2]
    cfg = {"name": "sgd", "base_lr": 0.1, "lr_scaling": "none", "weight_decay": 5e-4,
           "momentum": 0.9, "nesterov": False}
    tx, sched = build_optimizer(_opt(cfg), global_batch_size=256, steps_per_epoch=10,
                                num_epochs=1)
    got = _run(tx, params, grads)

    flat, treedef = jax.tree.flatten(jax.tree.map(lambda p: p.astype(np.float64), params))
    bufs = [np.zeros_like(p) for p in flat]
    for step, g_tree in enumerate(grads):
        lr = 0.1 * 0.5 * (1 + math.cos(math.pi * step / 10))
        for i, g in enumerate(jax.tree.leaves(g_tree)):
            g = g + (5e-4 * flat[i] if flat[i].ndim > 1 else 0.0)
            bufs[i] = 0.9 * bufs[i] + g
            flat[i] = flat[i] - lr * bufs[i]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                     got[step], jax.tree.unflatten(treedef, flat))
        np.testing.assert_allclose(sched(step), lr, rtol=1e-6)


def test_adamw_and_lars_build():
    for name in ("adam", "adamw", "lars"):
        tx, _ = build_optimizer(_opt({"name": name, "base_lr": 1e-3, "weight_decay": 0.05}),
                                global_batch_size=64, steps_per_epoch=4, num_epochs=2)
        params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
        updates, _ = tx.update(params, tx.init(params), params)
        assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_warmup_cosine_endpoints():
    peak, end = 2.0, 0.1
    sched = warmup_cosine(peak, warmup_steps=10, total_steps=110, end=end)
    np.testing.assert_allclose(sched(0), 0.0)
    np.testing.assert_allclose(sched(5), peak / 2, rtol=1e-6)
    np.testing.assert_allclose(sched(10), peak, rtol=1e-6)
    np.testing.assert_allclose(sched(60), (peak + end) / 2, rtol=1e-6)
    np.testing.assert_allclose(sched(110), end, rtol=1e-6)
    np.testing.assert_allclose(sched(500), end, rtol=1e-6)
    # Pure function of the step, usable under jit.
    np.testing.assert_allclose(jax.jit(sched)(jnp.int32(60)), (peak + end) / 2, rtol=1e-6)


def test_build_optimizer_warmup_steps_and_scaling():
    _, sched = build_optimizer(
        _opt({"name": "lars", "base_lr": 0.2, "lr_scaling": "linear", "warmup_epochs": 1.5}),
        global_batch_size=512, steps_per_epoch=10, num_epochs=10)
    np.testing.assert_allclose(sched(15), 0.4, rtol=1e-6)
    np.testing.assert_allclose(sched(100), 0.0, atol=1e-7)
    # Fractional epochs (runs given in steps): 25 total steps, not 20.
    _, sched = build_optimizer(_opt({"name": "sgd", "base_lr": 0.1, "lr_scaling": "none"}),
                               global_batch_size=256, steps_per_epoch=10, num_epochs=2.5)
    assert float(sched(24)) > 0.0
    np.testing.assert_allclose(sched(25), 0.0, atol=1e-7)


def test_ema_tau_schedule():
    tau = momentum_schedule(0.996, total_steps=100)
    np.testing.assert_allclose(tau(0), 0.996, rtol=1e-7)
    np.testing.assert_allclose(tau(50), 1 - 0.004 / 2, rtol=1e-7)
    np.testing.assert_allclose(tau(100), 1.0, rtol=1e-7)


def test_scaled_lr():
    assert scaled_lr(0.2, 4096, "linear") == pytest.approx(3.2)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_lr(0.3, 4096, "none") == pytest.approx(0.3)
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_lr(0.1, 256, "cubic")


def test_build_optimizer_unknown_name():
    with pytest.raises(ValueError, match=r"rmsprop'.*lars, sgd, adam, adamw"):
        build_optimizer(_opt({"name": "rmsprop", "base_lr": 0.1}), global_batch_size=256,
                        steps_per_epoch=1, num_epochs=1)


def test_build_optimizer_warmup_longer_than_training():
    with pytest.raises(ValueError, match="warmup_epochs"):
        build_optimizer(_opt({"name": "sgd", "base_lr": 0.1, "warmup_epochs": 3}),
                        global_batch_size=256, steps_per_epoch=10, num_epochs=2)


def test_per_parameter_learning_rates_match_numpy():
    """SimSiam's constant-LR predictor and Barlow Twins' bias/BN LR factor, plain SGD."""
    params = {"encoder": {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))},
              "predictor": {"w": jnp.ones((2, 2))}}
    grads = jax.tree.map(jnp.ones_like, params)
    cfg = {"name": "sgd", "base_lr": 0.4, "lr_scaling": "none", "momentum": 0.0,
           "warmup_epochs": 0, "constant_lr_modules": ("predictor",),
           "bias_and_bn_lr_factor": 0.024}
    tx, sched = build_optimizer(_opt(cfg), global_batch_size=256, steps_per_epoch=10, num_epochs=1)
    state = tx.init(params)
    for step in range(3):
        updates, state = tx.update(grads, state, params)
        lr = 0.4 * 0.5 * (1 + math.cos(math.pi * step / 10))
        np.testing.assert_allclose(updates["encoder"]["w"], -lr, rtol=1e-6)
        np.testing.assert_allclose(updates["encoder"]["b"], -lr * 0.024, rtol=1e-6)
        np.testing.assert_allclose(updates["predictor"]["w"], -0.4, rtol=1e-6)  # never decays
        np.testing.assert_allclose(sched(step), lr, rtol=1e-6)


def test_adam_coupled_l2_matches_numpy():
    """'adam' adds wd*p to the gradient before the moments (PyTorch Adam, used by W-MSE)."""
    p0 = np.array([[1.0, -2.0], [0.5, 3.0]])
    g = np.array([[0.1, 0.2], [-0.3, 0.4]])
    cfg = {"name": "adam", "base_lr": 1e-2, "lr_scaling": "none", "weight_decay": 0.1}
    tx, _ = build_optimizer(_opt(cfg), global_batch_size=256, steps_per_epoch=100, num_epochs=1)
    params = {"w": jnp.asarray(p0, jnp.float32)}
    state = tx.init(params)
    m = v = np.zeros_like(p0)
    p = p0.copy()
    for step in range(1, 4):
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
        gg = g + 0.1 * p
        m, v = 0.9 * m + 0.1 * gg, 0.999 * v + 0.001 * gg ** 2
        lr = 1e-2 * 0.5 * (1 + math.cos(math.pi * (step - 1) / 100))
        p = p - lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
        np.testing.assert_allclose(params["w"], p, rtol=1e-5)


def test_step_decay_schedule_from_config():
    """decay='steps': x0.2 at 50 and 25 epochs before the end (W-MSE), after warm-up."""
    cfg = {"name": "sgd", "base_lr": 1.0, "lr_scaling": "none", "warmup_epochs": 1,
           "decay": "steps", "decay_epochs": (-50, -25), "decay_factor": 0.2}
    _, sched = build_optimizer(_opt(cfg), global_batch_size=256, steps_per_epoch=2, num_epochs=100)
    np.testing.assert_allclose(sched(1), 0.5, rtol=1e-6)
    np.testing.assert_allclose(sched(99), 1.0, rtol=1e-6)
    np.testing.assert_allclose(sched(100), 0.2, rtol=1e-6)
    np.testing.assert_allclose(sched(149), 0.2, rtol=1e-6)
    np.testing.assert_allclose(sched(150), 0.04, rtol=1e-6)


def test_frozen_params_never_change():
    """frozen_params: no step and no weight decay for the named subtree (MoCo v3's patch projection)."""
    params = {"encoder": {"patch_embed": {"kernel": jnp.ones((2, 2))}, "block": {"kernel": jnp.ones((2, 2))}}}
    grads = jax.tree.map(jnp.ones_like, params)
    cfg = {"name": "adamw", "base_lr": 0.1, "lr_scaling": "none", "weight_decay": 0.1,
           "frozen_params": ("encoder/patch_embed",)}
    tx, _ = build_optimizer(_opt(cfg), global_batch_size=256, steps_per_epoch=10, num_epochs=1)
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(params["encoder"]["patch_embed"]["kernel"], 1.0)
    assert np.all(np.asarray(params["encoder"]["block"]["kernel"]) < 1.0)


def test_dino_style_adamw_weight_decay_schedule_and_per_param_clipping():
    """weight_decay_end: cosine 0.04 -> 0.4; clip_grad_per_param: each tensor's gradient
    clipped to norm 3 on its own. One AdamW step vs NumPy."""
    cfg = {"name": "adamw", "base_lr": 0.1, "lr_scaling": "none", "weight_decay": 0.04,
           "weight_decay_end": 0.4, "clip_grad_per_param": 3.0}
    tx, _ = build_optimizer(_opt(cfg), global_batch_size=256, steps_per_epoch=10, num_epochs=1)
    p = {"w": jnp.full((2, 2), 2.0), "v": jnp.full((3, 3), -1.0)}
    g = {"w": jnp.full((2, 2), 10.0), "v": jnp.full((3, 3), 0.1)}  # norms 20 (clipped), 0.3
    state = tx.init(p)
    for step in range(3):
        updates, state = tx.update(g, state, p)
        wd = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * step / 10))
        lr = 0.1 * 0.5 * (1 + math.cos(math.pi * step / 10))
        # Constant gradients: Adam's bias-corrected m/sqrt(v) is sign(g) at every step.
        np.testing.assert_allclose(updates["w"], -lr * (1.0 + wd * 2.0), rtol=1e-4)
        np.testing.assert_allclose(updates["v"], -lr * (1.0 + wd * -1.0), rtol=1e-4)
    clip = optim_lib.clip_by_param_norm(3.0)
    clipped, _ = clip.update(g, clip.init(p))
    np.testing.assert_allclose(np.linalg.norm(clipped["w"]), 3.0, rtol=1e-5)
    np.testing.assert_allclose(clipped["v"], g["v"], rtol=1e-6)


def test_freeze_epochs_holds_a_subtree_for_its_first_steps():
    """freeze_epochs={'prototypes': 1}: no update (nor momentum) for 1 epoch, then SGD as usual."""
    params = {"prototypes": {"kernel": jnp.ones((2, 2))}, "encoder": {"kernel": jnp.ones((2, 2))}}
    grads = jax.tree.map(jnp.ones_like, params)
    cfg = {"name": "sgd", "base_lr": 0.1, "lr_scaling": "none", "momentum": 0.9,
           "decay": "steps", "decay_epochs": (), "decay_factor": 1.0, "freeze_epochs": {"prototypes": 1}}
    tx, _ = build_optimizer(_opt(cfg), global_batch_size=256, steps_per_epoch=3, num_epochs=3)
    state = tx.init(params)
    seen = []
    for _ in range(5):
        updates, state = tx.update(grads, state, params)
        seen.append((float(updates["prototypes"]["kernel"][0, 0]), float(updates["encoder"]["kernel"][0, 0])))
    assert [s[0] for s in seen[:3]] == [0.0, 0.0, 0.0]
    np.testing.assert_allclose([s[0] for s in seen[3:]], [-0.1, -0.19], rtol=1e-6)  # fresh momentum
    np.testing.assert_allclose([s[1] for s in seen], [-0.1, -0.19, -0.271, -0.3439, -0.40951], rtol=1e-5)


@pytest.mark.parametrize("warmup,total,end", [(0, 20, 0.0), (5, 20, 0.3), (20, 20, 0.0), (3, 7, 0.1)])
def test_warmup_cosine_matches_the_closed_form_at_every_step(warmup, total, end):
    """ssl_jax.schedules.warmup_cosine (optax's) against the formula, edge cases included:
    no warm-up, a run that is only warm-up."""
    peak = 1.5
    sched = warmup_cosine(peak, warmup, total, end)
    for step in range(total + 3):
        if step < warmup:
            expected = peak * step / warmup
        else:
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            expected = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * progress))
        np.testing.assert_allclose(float(sched(step)), expected, rtol=1e-5, atol=1e-7)
