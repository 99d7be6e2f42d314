"""AlexNet-BN (DeepCluster / SeLa backbone) and its fixed Sobel input layer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import presets
from ssl_jax.methods import common
from ssl_jax.models import ALEXNET_FIELDS, build_encoder
from ssl_jax.models.alexnet import AlexNet, adaptive_avg_pool
from ssl_jax.models.sobel import SOBEL_X, SOBEL_Y, sobel_filter
from ssl_jax.models.vit import DROP_PATH_RNG

BASE_CHANNELS = {"conv1": 96, "conv2": 256, "conv3": 384, "conv4": 384, "conv5": 256}


def _images(n, size, seed=0, channels=3):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, size, size, channels), jnp.float32)


def _init(model, x, seed=0):
    return model.init(jax.random.PRNGKey(seed), x, train=False)


@pytest.mark.parametrize("width", [0.125, 1.0])
@pytest.mark.parametrize("size,cifar_stem", [(16, True), (32, True), (64, True), (224, True),
                                             (64, False), (224, False)])
def test_output_and_stage_shapes(size, cifar_stem, width):
    """Shapes only (jax.eval_shape: nothing is computed), for every layout and width."""
    model = AlexNet(width_multiplier=width, cifar_stem=cifar_stem)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    init = lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False, return_stages=True)
    stages, variables = jax.eval_shape(init, x)
    d = int(round(4096 * width))
    assert model.feature_dim == d
    expected = {name: (2, int(round(c * width))) for name, c in BASE_CHANNELS.items()}
    expected.update(fc6=(2, d), fc7_pre_relu=(2, d), pooled=(2, d))
    assert {k: v.shape for k, v in stages.items()} == expected
    assert all(v.dtype == jnp.float32 for v in stages.values())
    grid = 2 if cifar_stem else 6
    assert variables["params"]["fc6"]["kernel"].shape == (int(round(256 * width)) * grid * grid, d)
    h = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert h.shape == (2, d) and h.dtype == jnp.float32


def test_parameter_count_matches_deepcluster_without_conv_biases():
    """224 px, width 1: DeepCluster's AlexNet-BN (top layer excluded), less its five conv biases
    (each is followed by a BN, which cancels a bias)."""
    for sobel, in_ch in ((False, 3), (True, 2)):
        model = AlexNet(sobel=sobel)
        shapes = jax.eval_shape(lambda x: _init(model, x), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
        count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))
        convs = [(11, in_ch, 96), (5, 96, 256), (3, 256, 384), (3, 384, 384), (3, 384, 256)]
        expected = sum(k * k * i * o + 2 * o for k, i, o in convs)  # kernel + BN scale and bias
        expected += 256 * 6 * 6 * 4096 + 4096 + 4096 * 4096 + 4096
        assert count == expected
        assert set(shapes["params"]) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"}


def test_forward_small_input_is_finite():
    model = AlexNet(width_multiplier=0.125, cifar_stem=True)
    x = _images(4, 32)
    variables = _init(model, x)
    out = model.apply(variables, x, train=False)
    assert out.shape == (4, 512) and bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(out >= 0))


def test_imagenet_layout_rejects_small_inputs():
    model = AlexNet(width_multiplier=0.125)
    with pytest.raises(ValueError, match="at least 63 px.*cifar_stem=True"):
        jax.eval_shape(lambda x: _init(model, x), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))


def _sobel_reference(images):
    """Grayscale = mean of the channels; then cross-correlation with the Sobel kernels, zero
    padding 1, written as loops over the output pixels in float64."""
    gray = images.astype(np.float64).mean(-1)
    n, h, w = gray.shape
    padded = np.pad(gray, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, h, w, 2))
    for i in range(h):
        for j in range(w):
            patch = padded[:, i:i + 3, j:j + 3]
            out[:, i, j, 0] = (patch * SOBEL_X).sum((1, 2))
            out[:, i, j, 1] = (patch * SOBEL_Y).sum((1, 2))
    return out


def test_sobel_matches_numpy_reference():
    images = np.random.default_rng(0).normal(size=(2, 9, 11, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(sobel_filter(jnp.asarray(images))), _sobel_reference(images),
                               atol=1e-5, rtol=1e-5)
    # A vertical edge (intensity falling left to right) excites the x filter only, inside.
    step = np.zeros((1, 5, 5, 3), np.float32)
    step[:, :, :2] = 1.0
    out = np.asarray(sobel_filter(jnp.asarray(step)))[0, 1:-1, 1:-1]
    assert np.all(out[:, 0, 0] == 4.0) and np.all(out[..., 1] == 0.0)


def test_sobel_has_no_parameters_and_is_applied_first():
    """The Sobel layer adds no parameters (only conv1 sees 2 input channels), and the network
    with it is the plain network on sobel_filter(x)."""
    x = _images(4, 16)
    with_sobel = AlexNet(width_multiplier=0.125, cifar_stem=True, sobel=True)
    variables = _init(with_sobel, x)
    assert variables["params"]["conv1"]["conv"]["kernel"].shape == (3, 3, 2, 12)
    plain = AlexNet(width_multiplier=0.125, cifar_stem=True)
    plain_vars = _init(plain, x)
    count = lambda v: sum(p.size for p in jax.tree.leaves(v["params"]))
    assert count(plain_vars) - count(variables) == 3 * 3 * 1 * 12  # one input channel fewer
    assert jax.tree.structure(plain_vars) == jax.tree.structure(variables)
    for train in (False, True):
        a, _ = with_sobel.apply(variables, x, train=train, mutable=["batch_stats"])
        b, _ = plain.apply(variables, sobel_filter(x), train=train, mutable=["batch_stats"])
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_batch_norm_statistics_update_only_in_training():
    model = AlexNet(width_multiplier=0.125, cifar_stem=True)
    x = _images(8, 16) + 3.0
    variables = _init(model, x)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert set(updates["batch_stats"]) == {f"conv{i}" for i in range(1, 6)}
    old, new = variables["batch_stats"]["conv1"]["bn"], updates["batch_stats"]["conv1"]["bn"]
    assert not np.allclose(old["mean"], new["mean"]) and not np.allclose(old["var"], new["var"])
    _, eval_updates = model.apply(variables, x, train=False, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, eval_updates["batch_stats"], variables["batch_stats"])


def test_per_view_batch_norm_equals_one_call_per_view():
    """bn_views=2 on an example-major batch = each view through the network on its own."""
    model = AlexNet(width_multiplier=0.125, cifar_stem=True)
    views = _images(2 * 4, 16).reshape(2, 4, 16, 16, 3)
    variables = _init(model, views[0])
    merged = jnp.swapaxes(views, 0, 1).reshape(8, 16, 16, 3)
    out, stats = model.apply(variables, merged, train=True, bn_views=2, mutable=["batch_stats"])
    per_view = [model.apply(variables, v, train=True, mutable=["batch_stats"]) for v in views]
    np.testing.assert_allclose(out.reshape(4, 2, -1)[:, 1], per_view[1][0], rtol=1e-4, atol=1e-5)
    mean_stats = common.tree_mean([s for _, s in per_view])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), stats, mean_stats)


def test_stages_and_pre_relu_features():
    model = AlexNet(width_multiplier=0.125, cifar_stem=True)
    x = _images(4, 32)
    variables = _init(model, x)
    stages = model.apply(variables, x, train=False, return_stages=True)
    h = model.apply(variables, x, train=False)
    pre = model.apply(variables, x, train=False, pre_relu=True)
    np.testing.assert_array_equal(stages["pooled"], h)
    np.testing.assert_array_equal(stages["fc7_pre_relu"], pre)
    np.testing.assert_array_equal(jax.nn.relu(pre), h)
    assert float(jnp.min(pre)) < 0.0  # the clustering features keep their negative part
    # The per-layer probes order layers by the digits in their names (evaluate.run): depth order.
    digits = lambda name: (name == "pooled", int("0" + "".join(c for c in name if c.isdigit())))
    assert sorted(stages, key=digits) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6",
                                          "fc7_pre_relu", "pooled"]


def test_dropout_only_in_training_with_the_drop_path_rng():
    model = AlexNet(width_multiplier=0.125, cifar_stem=True, dropout=0.5)
    x = _images(4, 16)
    variables = _init(model, x)
    rngs = lambda seed: {DROP_PATH_RNG: jax.random.PRNGKey(seed)}
    train = lambda **kw: model.apply(variables, x, train=True, mutable=["batch_stats"], **kw)[0]
    a, b, again, none = train(rngs=rngs(1)), train(rngs=rngs(2)), train(rngs=rngs(1)), train()
    assert not np.allclose(a, b) and not np.allclose(a, none)
    np.testing.assert_array_equal(a, again)
    # Without the rng (a momentum target) or in inference, no dropout.
    no_dropout = AlexNet(width_multiplier=0.125, cifar_stem=True, dropout=0.0)
    no_drop_train = no_dropout.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs(1))[0]
    np.testing.assert_array_equal(none, no_drop_train)
    np.testing.assert_array_equal(model.apply(variables, x, train=False, rngs=rngs(1)),
                                  model.apply(variables, x, train=False))
    # The methods' path: apply_train hands the online encoder that rng.
    via_methods, _ = common.apply_train(model, variables["params"], variables["batch_stats"], x,
                                        jax.random.PRNGKey(1))
    np.testing.assert_array_equal(via_methods, a)


def test_remat_changes_nothing_but_memory():
    x = _images(4, 16)
    model = AlexNet(width_multiplier=0.125, cifar_stem=True)
    variables = _init(model, x)

    def loss(params, remat):
        m = AlexNet(width_multiplier=0.125, cifar_stem=True, remat=remat)
        out, _ = m.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                         mutable=["batch_stats"], rngs={DROP_PATH_RNG: jax.random.PRNGKey(3)})
        return jnp.sum(out ** 2)

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)  # compiled: faster than op by op
    (l0, g0), (l1, g1) = (grad(variables["params"], r) for r in (False, True))
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g0, g1)


def test_bfloat16_compute_float32_outputs():
    model = AlexNet(width_multiplier=0.125, cifar_stem=True, dtype=jnp.bfloat16)
    x = _images(2, 16)
    variables = _init(model, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    stages = model.apply(variables, x, train=False, return_stages=True)
    assert all(v.dtype == jnp.float32 for v in stages.values())


def test_adaptive_avg_pool_bins():
    x = jnp.arange(5.0).reshape(1, 5, 1, 1) * jnp.ones((1, 5, 5, 1))
    out = adaptive_avg_pool(x, 2)  # bins [0, 3) and [2, 5) along each axis, as PyTorch
    np.testing.assert_allclose(out[0, :, 0, 0], [1.0, 3.0])
    np.testing.assert_array_equal(adaptive_avg_pool(x, 5), x)
    np.testing.assert_array_equal(adaptive_avg_pool(jnp.ones((1, 1, 1, 2)), 6), jnp.ones((1, 6, 6, 2)))


def _model_cfg(**overrides):
    cfg = presets.base_config("byol").model
    cfg.update(overrides)
    return cfg


def test_build_encoder_reads_every_field():
    assert set(ALEXNET_FIELDS) <= set(presets.base_config("byol").model)
    enc = build_encoder(_model_cfg(name="alexnet", width=0.25, cifar_stem=True, sobel=True, dropout=0.1,
                                   dtype="float32", remat=True))
    assert isinstance(enc, AlexNet)
    assert (enc.width_multiplier, enc.cifar_stem, enc.sobel, enc.dropout, enc.dtype, enc.remat) == (
        0.25, True, True, 0.1, jnp.float32, True)
    assert enc.feature_dim == 1024
    default = build_encoder(_model_cfg(name="alexnet"))
    assert (default.sobel, default.dropout, default.dtype) == (False, 0.5, jnp.bfloat16)


def test_build_encoder_errors():
    cfg = _model_cfg(name="alexnet").to_dict()
    del cfg["sobel"]
    with pytest.raises(ValueError, match=r"config.model lacks the field\(s\) 'sobel'.*complete_config"):
        build_encoder(cfg)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        build_encoder(_model_cfg(name="alexnet", dropout=1.0))
    with pytest.raises(ValueError, match=r"sobel=True applies to the CNN backbones only.*'vit_tiny'"):
        build_encoder(_model_cfg(name="vit_tiny", sobel=True))
    with pytest.raises(ValueError, match=r"alexnet"):
        build_encoder(_model_cfg(name="alexnet2"))
