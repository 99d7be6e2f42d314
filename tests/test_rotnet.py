"""RotNet (methods.rotnet, rotation_cross_entropy): exact rotated copies, the translation,
the loss against NumPy, and a few demo steps that lower the loss."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.losses.rotation import rotation_cross_entropy
from ssl_jax.methods.rotnet import pad_crop, rotate_copies, rotation_objective


def test_rotate_copies_are_numpy_rot90_per_copy():
    """Copy r of image n is np.rot90(image n, r) (counter-clockwise, RotNet's rotate_img), and
    the label of copy r is r: a non-symmetric image tells the four apart."""
    x = np.random.default_rng(0).normal(size=(3, 5, 5, 2)).astype(np.float32)
    copies = np.asarray(jax.jit(rotate_copies)(jnp.asarray(x)))
    assert copies.shape == (4, 3, 5, 5, 2)
    for r in range(4):
        for n in range(3):
            np.testing.assert_array_equal(copies[r, n], np.rot90(x[n], r))
    # 90° counter-clockwise: the top row becomes the left column, read bottom-up.
    np.testing.assert_array_equal(copies[1, 0][::-1, 0], x[0][0, :])
    with pytest.raises(ValueError, match="square"):
        rotate_copies(jnp.zeros((1, 4, 5, 3)))


def test_pad_crop_is_a_window_of_the_padded_image():
    """Every output is an H x W window of the image padded by p with `fill`, at an offset in
    {0..2p}²; the offsets vary over the batch; padding 0 is the identity."""
    n, h, p = 64, 6, 2
    x = jax.random.normal(jax.random.PRNGKey(0), (n, h, h, 3))
    fill = jnp.array([-1.0, -2.0, -3.0])
    out = np.asarray(pad_crop(x, jax.random.PRNGKey(1), p, fill))
    padded = np.pad(np.asarray(x) - np.asarray(fill), ((0, 0), (p, p), (p, p), (0, 0))) + np.asarray(fill)
    offsets = set()
    for i in range(n):
        found = [(a, b) for a in range(2 * p + 1) for b in range(2 * p + 1)
                 if np.allclose(padded[i, a:a + h, b:b + h], out[i])]
        assert found, i
        offsets.add(found[0])
    assert len(offsets) > 10
    assert pad_crop(x, jax.random.PRNGKey(1), 0, fill) is x


def _numpy_ce(logits):
    """Cross-entropy of copy r against class r, in float64: -log(e^{l_r} / Σ_c e^{l_c})."""
    logits = np.asarray(logits, np.float64)
    r = logits.shape[0]
    total = 0.0
    for k in range(r):
        for row in logits[k]:
            total += np.log(np.sum(np.exp(row - row.max()))) + row.max() - row[k]
    return total / (r * logits.shape[1])


def test_loss_equals_numpy_cross_entropy():
    logits = np.random.default_rng(1).normal(scale=3.0, size=(4, 7, 4)).astype(np.float32)
    np.testing.assert_allclose(float(rotation_cross_entropy(logits)), _numpy_ce(logits), rtol=1e-6)
    # bfloat16 input: the math is float32 on the rounded logits.
    as_bf16 = jnp.asarray(logits, jnp.bfloat16)
    np.testing.assert_allclose(float(rotation_cross_entropy(as_bf16)),
                               _numpy_ce(np.asarray(as_bf16, np.float32)), rtol=1e-5)
    # The target is the copy's index: logits pointing at it give ~0 loss and top-1 = 1.
    perfect = 50.0 * np.tile(np.eye(4)[:, None, :], (1, 5, 1))
    loss, metrics = rotation_objective(jnp.asarray(perfect))
    assert float(loss) < 1e-6 and float(metrics["rotation_top1"]) == 1.0
    shifted = np.roll(perfect, 1, axis=-1)  # every copy predicted as the next rotation
    assert float(rotation_objective(jnp.asarray(shifted))[1]["rotation_top1"]) == 0.0
    np.testing.assert_allclose(float(rotation_objective(jnp.asarray(shifted))[0]), 50.0, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[R, N, R\]"):
        rotation_cross_entropy(np.zeros((4, 3, 5)))


def test_demo_steps_lower_the_loss():
    """The demo preset (NIN at width 1/8) at batch 16 on one fixed batch of real upright digits:
    a few SGD steps lower the rotation loss from about ln 4."""
    from sklearn.datasets import load_digits

    from ssl_jax.methods import build_method
    from ssl_jax.train import step as step_lib
    from ssl_jax.train.optim import build_optimizer

    config = importlib.import_module("configs.rotnet").get_config("demo")
    config.global_batch_size = 16
    config.model.conv_backend = "xla"
    method = build_method(config, total_steps=100, steps_per_epoch=10)
    optimizer, lr = build_optimizer(config.optimizer, global_batch_size=16, steps_per_epoch=10,
                                    num_epochs=config.num_epochs)
    digits = load_digits().images[:16] / 16.0  # [16, 8, 8] in [0, 1]
    images = np.repeat(np.repeat(digits, 2, axis=1), 2, axis=2)[..., None].repeat(3, axis=-1)
    images = ((images - np.asarray(config.data.mean)) / np.asarray(config.data.std)).astype(np.float32)
    state = step_lib.create_state(method, optimizer, jax.random.PRNGKey(0), images[:2], num_classes=10)
    train_step = jax.jit(step_lib.make_train_step(method, optimizer, lr, num_classes=10))
    batch = {"views": (jnp.asarray(images),), "label": jnp.zeros(16, jnp.int32), "index": jnp.arange(16)}
    step_losses = []
    for _ in range(8):
        state, metrics = train_step(state, batch)
        step_losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(step_losses)) and abs(step_losses[0] - np.log(4)) < 0.3, step_losses
    assert step_losses[-1] < step_losses[0] - 0.2, step_losses
    assert "rotation_top1" in metrics


def test_config_errors_name_the_fix():
    from ssl_jax.methods import build_method

    config = importlib.import_module("configs.rotnet").get_config("demo")
    config.rotnet.num_views = 2
    with pytest.raises(ValueError, match="num_views=1"):
        build_method(config, total_steps=10)
